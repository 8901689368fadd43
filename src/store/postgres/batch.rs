//! The PostgreSQL side of coalescing (SPEC S2): a batch of REGISTERs for distinct AoRs in one
//! transaction — BEGIN; `registrar_lock_and_read()` (migration V1), which takes every AoR's
//! advisory lock in ascending key order (so concurrent batches cannot deadlock) and then, in a
//! statement of its own, reads all their rows and the database's `now`; each REGISTER decided
//! on its own AoR's rows; at most three multi-row writes (delete, update, insert); COMMIT. Four
//! round trips for the usual batch, whatever its size.

use super::rows::{BINDING_COLUMNS, BindingArrays, binding};
use super::{AOR_LOCK_NAMESPACE, PgStore};
use crate::store::binding::{expired_conflicts, live_after};
use crate::store::coalesce::{Batch, Job, Outcome};
use crate::store::{AorSnapshot, Applied, Binding, Plan, StoreError, Written};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::sync::LazyLock;

const LOCK_AND_READ: &str = "SELECT * FROM registrar_lock_and_read($1, $2, $3)";

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

const INSERT_BINDINGS: &str = "INSERT INTO location (ruid, username, domain, contact, received, \
     path, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, \
     instance, reg_id, server_id, connection_id, keepalive, partition) \
     SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], \
     $5::varchar[], $6::varchar[], $7::timestamptz[], $8::float4[], $9::varchar[], $10::int8[], \
     $11::timestamptz[], $12::int4[], $13::int4[], $14::varchar[], $15::varchar[], $16::int4[], \
     $17::varchar[], $18::int4[], $19::int4[], $20::int4[], $21::int4[], $22::int4[]) \
     RETURNING id, ruid";

impl Batch for PgStore {
    async fn run(&self, jobs: &[Job]) -> Result<Vec<Applied<Outcome>>, StoreError> {
        let mut tx = self.begin().await?;
        let (now, mut rows) = lock_and_read(&mut tx, jobs).await?;
        let mut plans: Vec<Plan<Outcome>> = Vec::with_capacity(jobs.len());
        let (mut delete, mut update, mut insert) = (Vec::new(), Vec::new(), Vec::new());
        for (job, rows) in jobs.iter().zip(&rows) {
            let snapshot = AorSnapshot {
                now,
                bindings: rows.iter().filter(|b| b.is_live(now)).cloned().collect(),
            };
            let plan = (job.decide)(&snapshot);
            delete.extend(plan.delete.iter().copied());
            delete.extend(expired_conflicts(&plan, rows, now));
            update.extend(plan.update.iter().cloned());
            insert.extend(plan.insert.iter().cloned());
            plans.push(plan);
        }
        let inserted = write(&mut tx, &delete, &update, insert).await?;
        tx.commit().await?;
        let mut applied = Vec::with_capacity(jobs.len());
        for (plan, before) in plans.into_iter().zip(rows.drain(..)) {
            let mine: Vec<Binding> = plan
                .insert
                .iter()
                .filter_map(|b| inserted.iter().find(|i| i.ruid == b.ruid).cloned())
                .collect();
            let written = Written::of(&plan);
            let bindings = live_after(before, &plan, mine, now);
            applied.push(Applied {
                outcome: plan.outcome,
                now,
                written,
                bindings,
            });
        }
        Ok(applied)
    }
}

/// Locks every AoR of the batch, then reads every row of them (expired ones too: their unique
/// keys may stand in the way of a new binding), per job, with the database's `now`.
async fn lock_and_read(
    conn: &mut PgConnection,
    jobs: &[Job],
) -> Result<(DateTime<Utc>, Vec<Vec<Binding>>), StoreError> {
    let usernames: Vec<&str> = jobs.iter().map(|j| j.aor.username.as_str()).collect();
    let domains: Vec<&str> = jobs.iter().map(|j| j.aor.domain.as_str()).collect();
    let rows = sqlx::query(LOCK_AND_READ)
        .bind(AOR_LOCK_NAMESPACE)
        .bind(&usernames)
        .bind(&domains)
        .fetch_all(conn)
        .await?;
    let now: DateTime<Utc> = match rows.first() {
        Some(row) => row.try_get("now")?,
        None => return Err(StoreError::Corrupt("the AoR read returned no row".into())),
    };
    let mut per_job: Vec<Vec<Binding>> = vec![Vec::new(); jobs.len()];
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
        sqlx::query(AssertSqlSafe(UPDATE_BINDINGS.as_str()))
            .bind(a.ids)
            .bind(a.ruids)
            .bind(a.contacts)
            .bind(a.received)
            .bind(a.paths)
            .bind(a.expires)
            .bind(a.qs)
            .bind(a.callids)
            .bind(a.cseqs)
            .bind(a.last_modified)
            .bind(a.flags)
            .bind(a.cflags)
            .bind(a.user_agents)
            .bind(a.sockets)
            .bind(a.methods)
            .bind(a.instances)
            .bind(a.reg_ids)
            .bind(a.server_ids)
            .bind(a.connection_ids)
            .bind(a.keepalives)
            .bind(a.partitions)
            .execute(&mut *conn)
            .await?;
    }
    if insert.is_empty() {
        return Ok(insert);
    }
    let a = BindingArrays::of(&insert);
    let rows = sqlx::query(INSERT_BINDINGS)
        .bind(a.ruids)
        .bind(a.usernames)
        .bind(a.domains)
        .bind(a.contacts)
        .bind(a.received)
        .bind(a.paths)
        .bind(a.expires)
        .bind(a.qs)
        .bind(a.callids)
        .bind(a.cseqs)
        .bind(a.last_modified)
        .bind(a.flags)
        .bind(a.cflags)
        .bind(a.user_agents)
        .bind(a.sockets)
        .bind(a.methods)
        .bind(a.instances)
        .bind(a.reg_ids)
        .bind(a.server_ids)
        .bind(a.connection_ids)
        .bind(a.keepalives)
        .bind(a.partitions)
        .fetch_all(conn)
        .await?;
    for row in rows {
        let ruid: String = row.try_get("ruid")?;
        let id: i64 = row.try_get("id")?;
        if let Some(b) = insert.iter_mut().find(|b| b.ruid == ruid) {
            b.id = id;
        }
    }
    Ok(insert)
}
