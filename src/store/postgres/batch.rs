//! The PostgreSQL side of coalescing (SPEC S2): a batch of REGISTERs for distinct AoRs in one
//! transaction — BEGIN and every AoR's advisory lock, in ascending key order (so concurrent
//! batches cannot deadlock), in one simple query (`lock.rs`); one read of all their rows with
//! the database's `now`, taken after the locks; each REGISTER decided on its own AoR's rows; at
//! most three multi-row writes (delete, update, insert); COMMIT. Four round trips for the usual
//! batch, whatever its size; five when its REGISTERs authenticate (one read of their
//! credentials).
//!
//! Lock and read stay two statements: a PL/pgSQL function doing both saved a round trip but
//! cost ~200 µs more PostgreSQL CPU per call (pgbench: 7,700 against 12,700 lock-and-read
//! transactions/s on two cores), and under load CPU is what runs out first.

use super::PgStore;
use super::lock::aor_key;
use super::rows::{BINDING_COLUMNS, BindingArrays, FieldArrays, binding};
use super::subscriber::read_subscribers;
use crate::store::binding::expired_conflicts;
use crate::store::coalesce::{Batch, Job, Outcome};
use crate::store::{Aor, AorSnapshot, Applied, Binding, Plan, Reads, StoreError, Subscriber};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::sync::LazyLock;

static READ_AORS: LazyLock<String> = LazyLock::new(|| {
    let cols = BINDING_COLUMNS
        .split(", ")
        .map(|c| format!("l.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    // LATERAL: one index lookup per AoR, whatever the planner thinks of unnest's row count.
    format!(
        "SELECT statement_timestamp() AS now, k.i, {cols} \
         FROM unnest($1::varchar[], $2::varchar[]) WITH ORDINALITY AS k(username, domain, i) \
         LEFT JOIN LATERAL (SELECT * FROM location \
           WHERE location.username = k.username AND location.domain = k.domain) AS l ON true"
    )
});

static UPDATE_BINDINGS: LazyLock<String> = LazyLock::new(|| {
    let set = BINDING_COLUMNS
        .split(", ")
        .filter(|c| !matches!(*c, "id" | "username" | "domain"))
        .map(|c| format!("{c} = u.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE location AS l SET {set} FROM unnest($1::int8[], $2::varchar[], $3::varchar[], \
         $4::varchar[], $5::varchar[], $6::timestamptz[], $7::float4[], $8::varchar[], \
         $9::int8[], $10::timestamptz[], $11::int4[], $12::int4[], $13::varchar[], \
         $14::varchar[], $15::int4[], $16::varchar[], $17::int4[], $18::int4[], $19::int4[], \
         $20::int4[], $21::int4[]) AS u(id, ruid, contact, received, path, expires, q, callid, \
         cseq, last_modified, flags, cflags, user_agent, socket, methods, instance, reg_id, \
         server_id, connection_id, keepalive, partition) WHERE l.id = u.id"
    )
});

const INSERT_BINDINGS: &str = "INSERT INTO location (username, domain, ruid, contact, received, \
     path, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, \
     instance, reg_id, server_id, connection_id, keepalive, partition) \
     SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], \
     $5::varchar[], $6::varchar[], $7::timestamptz[], $8::float4[], $9::varchar[], $10::int8[], \
     $11::timestamptz[], $12::int4[], $13::int4[], $14::varchar[], $15::varchar[], $16::int4[], \
     $17::varchar[], $18::int4[], $19::int4[], $20::int4[], $21::int4[], $22::int4[]) \
     RETURNING id, ruid";

impl Batch for PgStore {
    async fn run(&self, jobs: &[Job]) -> Result<Vec<Applied<Outcome>>, StoreError> {
        run(self, jobs).await.map_err(|e| self.observe(e))
    }
}

async fn run(store: &PgStore, jobs: &[Job]) -> Result<Vec<Applied<Outcome>>, StoreError> {
    let mut keys: Vec<i32> = jobs.iter().map(|j| aor_key(&j.aor)).collect();
    let mut tx = store.begin_locked(&mut keys).await?;
    let aors: Vec<&Aor> = jobs.iter().map(|j| &j.aor).collect();
    let (now, mut rows) = read_aors(&mut tx, &aors).await?;
    let mut subscribers = subscribers_wanted(&mut tx, jobs).await?;
    let mut plans: Vec<Plan<Outcome>> = Vec::with_capacity(jobs.len());
    let (mut delete, mut update, mut insert) = (Vec::new(), Vec::new(), Vec::new());
    for ((job, rows), subscriber) in jobs.iter().zip(&rows).zip(subscribers.iter_mut()) {
        let mut snapshot = AorSnapshot::live(rows, now);
        snapshot.subscriber = subscriber.take();
        let plan = (job.decide)(&snapshot);
        if job.gave_up() {
            plans.push(plan);
            continue;
        }
        delete.extend(plan.delete.iter().copied());
        delete.extend(expired_conflicts(&plan, rows, now));
        update.extend(plan.update.iter().cloned());
        insert.extend(plan.insert.iter().cloned());
        plans.push(plan);
    }
    let inserted = write(&mut tx, &delete, &update, insert).await?;
    // `statement_timeout` cannot turn this COMMIT's wait for a synchronous standby into
    // PostgreSQL's "committed locally, but might not have been replicated" (success with a
    // WARNING sqlx drops): the server disarms the timeout before committing (measured on
    // PostgreSQL 15, tests/failover.rs). Only a cancel request could, and we never send one:
    // the request deadline answers the UA 500 and leaves the COMMIT alone (SPEC F1).
    tx.commit().await?;
    let mut applied = Vec::with_capacity(jobs.len());
    for (plan, before) in plans.into_iter().zip(rows.drain(..)) {
        let mine: Vec<Binding> = plan
            .insert
            .iter()
            .filter_map(|b| inserted.iter().find(|i| i.ruid == b.ruid).cloned())
            .collect();
        applied.push(Applied::after(plan, before, mine, now));
    }
    Ok(applied)
}

/// The subscriber row of each job that asked for one (SPEC A4): one statement for the whole
/// batch, none when no job authenticates.
async fn subscribers_wanted(
    conn: &mut PgConnection,
    jobs: &[Job],
) -> Result<Vec<Option<Subscriber>>, StoreError> {
    let wanted: Vec<&Aor> = jobs
        .iter()
        .filter(|j| j.reads == Reads::WithSubscriber)
        .map(|j| &j.aor)
        .collect();
    let mut found = if wanted.is_empty() {
        Vec::new()
    } else {
        read_subscribers(conn, &wanted).await?
    }
    .into_iter();
    Ok(jobs
        .iter()
        .map(|j| match j.reads {
            Reads::WithSubscriber => found.next().flatten(),
            Reads::Bindings => None,
        })
        .collect())
}

/// Every row of every AoR of the batch (expired ones too: their unique keys may stand in the
/// way of a new binding), per job, and the database's `now`.
pub(super) async fn read_aors(
    conn: &mut PgConnection,
    aors: &[&Aor],
) -> Result<(DateTime<Utc>, Vec<Vec<Binding>>), StoreError> {
    let usernames: Vec<&str> = aors.iter().map(|a| a.username.as_str()).collect();
    let domains: Vec<&str> = aors.iter().map(|a| a.domain.as_str()).collect();
    let rows = sqlx::query(AssertSqlSafe(READ_AORS.as_str()))
        .bind(&usernames)
        .bind(&domains)
        .fetch_all(conn)
        .await?;
    let now: DateTime<Utc> = match rows.first() {
        Some(row) => row.try_get("now")?,
        None => return Err(StoreError::Corrupt("the AoR read returned no row".into())),
    };
    let mut per_job: Vec<Vec<Binding>> = vec![Vec::new(); aors.len()];
    for row in &rows {
        if row.try_get::<Option<i64>, _>("id")?.is_none() {
            continue;
        }
        let i: i64 = row.try_get("i")?;
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| per_job.get_mut(i)) {
            slot.push(binding(row)?);
        }
    }
    Ok((now, per_job))
}

/// Deletes, then updates, then inserts (so a freed unique key can be taken again), one
/// multi-row statement each, skipped when empty; returns the inserted bindings with their ids.
async fn write(
    conn: &mut PgConnection,
    delete: &[i64],
    update: &[Binding],
    mut insert: Vec<Binding>,
) -> Result<Vec<Binding>, StoreError> {
    if !delete.is_empty() {
        sqlx::query("DELETE FROM location WHERE id = ANY($1)")
            .bind(delete)
            .execute(&mut *conn)
            .await?;
    }
    if !update.is_empty() {
        let a = BindingArrays::of(update);
        let query = sqlx::query(AssertSqlSafe(UPDATE_BINDINGS.as_str())).bind(a.ids);
        bind_fields(query, a.fields).execute(&mut *conn).await?;
    }
    if insert.is_empty() {
        return Ok(insert);
    }
    let a = BindingArrays::of(&insert);
    let query = sqlx::query(INSERT_BINDINGS)
        .bind(a.usernames)
        .bind(a.domains);
    let rows = bind_fields(query, a.fields).fetch_all(conn).await?;
    for row in rows {
        let ruid: String = row.try_get("ruid")?;
        let id: i64 = row.try_get("id")?;
        if let Some(b) = insert.iter_mut().find(|b| b.ruid == ruid) {
            b.id = id;
        }
    }
    Ok(insert)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds the columns both writes share, `ruid` to `partition`, in `BINDING_COLUMNS` order.
fn bind_fields(query: PgQuery<'_>, f: FieldArrays) -> PgQuery<'_> {
    query
        .bind(f.ruids)
        .bind(f.contacts)
        .bind(f.received)
        .bind(f.paths)
        .bind(f.expires)
        .bind(f.qs)
        .bind(f.callids)
        .bind(f.cseqs)
        .bind(f.last_modified)
        .bind(f.flags)
        .bind(f.cflags)
        .bind(f.user_agents)
        .bind(f.sockets)
        .bind(f.methods)
        .bind(f.instances)
        .bind(f.reg_ids)
        .bind(f.server_ids)
        .bind(f.connection_ids)
        .bind(f.keepalives)
        .bind(f.partitions)
}
