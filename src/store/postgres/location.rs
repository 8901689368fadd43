//! `location` on PostgreSQL: the per-AoR locked read-decide-write of a REGISTER and the
//! administrative reads and removals.
//!
//! A change costs BEGIN, lock, read, one statement per kind of write (delete / update / insert,
//! each multi-row), COMMIT: five round trips for the usual REGISTER that touches one kind.
//! The lock is its own statement: a lock inside the read (a CTE) would read a snapshot from
//! before the wait and miss bindings committed meanwhile (measured, research/hot-path-sql.md).

use super::rows::{BINDING_COLUMNS, BindingArrays, binding};
use super::{AOR_LOCK_NAMESPACE, PgStore};
use crate::store::binding::{expired_conflicts, live_after};
use crate::store::{Aor, AorSnapshot, Applied, Binding, Plan, Removal, StoreError, Written};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::sync::LazyLock;
use std::time::Duration;

static READ_AOR: LazyLock<String> = LazyLock::new(|| {
    // statement_timestamp() is taken after the lock (an earlier statement) was granted; the
    // LEFT JOIN yields `now` even when the AoR has no rows.
    let cols = BINDING_COLUMNS
        .split(", ")
        .map(|c| format!("l.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT statement_timestamp() AS now, {cols} FROM (VALUES (1)) AS one \
         LEFT JOIN location l ON l.username = $1 AND l.domain = $2"
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

const INSERT_BINDINGS: &str = "INSERT INTO location (ruid, username, domain, contact, received, \
     path, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, \
     instance, reg_id, server_id, connection_id, keepalive, partition) \
     SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], \
     $5::varchar[], $6::varchar[], $7::timestamptz[], $8::float4[], $9::varchar[], $10::int8[], \
     $11::timestamptz[], $12::int4[], $13::int4[], $14::varchar[], $15::varchar[], $16::int4[], \
     $17::varchar[], $18::int4[], $19::int4[], $20::int4[], $21::int4[], $22::int4[]) \
     RETURNING id, ruid";

impl PgStore {
    pub async fn update_aor<T, F>(&self, aor: &Aor, decide: F) -> Result<Applied<T>, StoreError>
    where
        F: FnOnce(&AorSnapshot) -> Plan<T> + Send,
        T: Send,
    {
        let mut tx = self.begin().await?;
        lock_aor(&mut tx, aor).await?;
        let (now, rows) = read_aor(&mut tx, aor).await?;
        let snapshot = AorSnapshot {
            now,
            bindings: rows.iter().filter(|b| b.is_live(now)).cloned().collect(),
        };
        let plan = decide(&snapshot);
        if plan.is_unchanged() {
            tx.commit().await?;
            return Ok(Applied {
                outcome: plan.outcome,
                now,
                written: Written::default(),
                bindings: snapshot.bindings,
            });
        }
        let mut delete = plan.delete.clone();
        delete.extend(expired_conflicts(&plan, &rows, now));
        let inserted = write_plan(&mut tx, &delete, &plan.update, plan.insert.clone()).await?;
        tx.commit().await?;
        let written = Written::of(&plan);
        let bindings = live_after(rows, &plan, inserted, now);
        Ok(Applied {
            outcome: plan.outcome,
            now,
            written,
            bindings,
        })
    }

    pub async fn live_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let (now, rows) = read_aor(&mut conn, aor).await?;
        Ok(AorSnapshot {
            now,
            bindings: rows.into_iter().filter(|b| b.is_live(now)).collect(),
        })
    }

    pub async fn dump_bindings(&self) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT statement_timestamp()")
            .fetch_one(&mut *conn)
            .await?;
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM location WHERE expires > $1 \
             ORDER BY domain, username, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        let bindings = rows.iter().map(binding).collect::<Result<_, _>>()?;
        Ok(AorSnapshot { now, bindings })
    }

    pub async fn remove_bindings(&self, aor: &Aor, which: &Removal) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        lock_aor(&mut tx, aor).await?;
        let (filter, value) = match which {
            Removal::All => ("", None),
            Removal::Contact(c) => (" AND contact = $3", Some(c.as_str())),
            Removal::Ruid(r) => (" AND ruid = $3", Some(r.as_str())),
        };
        let sql = format!(
            "DELETE FROM location WHERE username = $1 AND domain = $2{filter} \
             RETURNING expires > statement_timestamp() AS live"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(&aor.username)
            .bind(&aor.domain);
        if let Some(v) = value {
            query = query.bind(v);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut live = 0;
        for row in rows {
            if row.try_get::<bool, _>("live")? {
                live += 1;
            }
        }
        Ok(live)
    }

    pub async fn remove_expired_bindings(
        &self,
        grace: Duration,
        batch: u32,
    ) -> Result<u64, StoreError> {
        // SKIP LOCKED lets every instance run this at once without queueing behind each other.
        let sql = "DELETE FROM location WHERE id IN (SELECT id FROM location \
                   WHERE expires < statement_timestamp() - make_interval(secs => $1) \
                   LIMIT $2 FOR UPDATE SKIP LOCKED)";
        let mut total = 0;
        loop {
            let done = sqlx::query(sql)
                .bind(grace.as_secs_f64())
                .bind(i64::from(batch))
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += done;
            if done < u64::from(batch) {
                return Ok(total);
            }
        }
    }
}

async fn lock_aor(conn: &mut PgConnection, aor: &Aor) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(AOR_LOCK_NAMESPACE)
        .bind(aor.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Every row of the AoR, expired ones included (their unique keys may stand in the way of a new
/// binding), and the database's `now`.
async fn read_aor(
    conn: &mut PgConnection,
    aor: &Aor,
) -> Result<(DateTime<Utc>, Vec<Binding>), StoreError> {
    let rows = sqlx::query(AssertSqlSafe(READ_AOR.as_str()))
        .bind(&aor.username)
        .bind(&aor.domain)
        .fetch_all(conn)
        .await?;
    let now: DateTime<Utc> = match rows.first() {
        Some(row) => row.try_get("now")?,
        None => return Err(StoreError::Corrupt("the AoR read returned no row".into())),
    };
    let mut bindings = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<i64>, _>("id")?.is_some() {
            bindings.push(binding(row)?);
        }
    }
    Ok((now, bindings))
}

/// Deletes, then updates, then inserts (so a freed unique key can be taken again), one multi-row
/// statement each; returns the inserted bindings with the ids the database assigned.
async fn write_plan(
    conn: &mut PgConnection,
    delete: &[i64],
    update: &[Binding],
    insert: Vec<Binding>,
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
    insert_bindings(conn, insert).await
}

async fn insert_bindings(
    conn: &mut PgConnection,
    mut inserted: Vec<Binding>,
) -> Result<Vec<Binding>, StoreError> {
    if inserted.is_empty() {
        return Ok(inserted);
    }
    let a = BindingArrays::of(&inserted);
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
        if let Some(b) = inserted.iter_mut().find(|b| b.ruid == ruid) {
            b.id = id;
        }
    }
    Ok(inserted)
}
