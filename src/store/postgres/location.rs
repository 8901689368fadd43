//! `location` on PostgreSQL: REGISTER changes go through the coalescer (`batch.rs`); here are
//! the reads and the administrative removals.
//!
//! Locks are always their own statement: a lock inside the read (a CTE) would read a snapshot
//! from before the wait and miss bindings committed meanwhile (measured,
//! research/hot-path-sql.md).

use super::batch::read_aors;
use super::rows::{BINDING_COLUMNS, binding};
use super::{AOR_LOCK_NAMESPACE, PgStore};
use crate::store::{Aor, AorSnapshot, Applied, Binding, Plan, Reads, Removal, StoreError};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::time::Duration;

impl PgStore {
    pub async fn update_aor<T, F>(
        &self,
        aor: &Aor,
        reads: Reads,
        decide: F,
    ) -> Result<Applied<T>, StoreError>
    where
        F: Fn(&AorSnapshot) -> Plan<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.coalescer()?.submit(aor, reads, decide).await
    }

    pub async fn live_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let (now, mut rows) = read_aors(&mut conn, &[aor]).await?;
        Ok(AorSnapshot::live(&rows.pop().unwrap_or_default(), now))
    }

    pub async fn all_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let (now, mut rows) = read_aors(&mut conn, &[aor]).await?;
        Ok(AorSnapshot::of(now, rows.pop().unwrap_or_default()))
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
        Ok(AorSnapshot::of(now, bindings))
    }

    pub async fn bindings_page(&self, after: i64, limit: u32) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT statement_timestamp()")
            .fetch_one(&mut *conn)
            .await?;
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM location WHERE id > $1 AND expires > $2 \
             ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        let bindings = rows.iter().map(binding).collect::<Result<_, _>>()?;
        Ok(AorSnapshot::of(now, bindings))
    }

    pub async fn remove_bindings(
        &self,
        aor: &Aor,
        which: &Removal,
    ) -> Result<Vec<Binding>, StoreError> {
        let mut tx = self.begin().await?;
        lock_aor(&mut tx, aor).await?;
        let (filter, value) = match which {
            Removal::All => ("", None),
            Removal::Contact(c) => (" AND contact = $3", Some(c.as_str())),
            Removal::Ruid(r) => (" AND ruid = $3", Some(r.as_str())),
        };
        let sql = format!(
            "DELETE FROM location WHERE username = $1 AND domain = $2{filter} \
             RETURNING {BINDING_COLUMNS}, expires > statement_timestamp() AS live"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(&aor.username)
            .bind(&aor.domain);
        if let Some(v) = value {
            query = query.bind(v);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut live = Vec::new();
        for row in &rows {
            if row.try_get::<bool, _>("live")? {
                live.push(binding(row)?);
            }
        }
        Ok(live)
    }

    /// One batch of SPEC S4's cleanup; returns how many rows went.
    pub async fn remove_expired_batch(
        &self,
        grace: Duration,
        batch: u32,
    ) -> Result<u64, StoreError> {
        // SKIP LOCKED lets every instance run this at once without queueing behind each other.
        let sql = "DELETE FROM location WHERE id IN (SELECT id FROM location \
                   WHERE expires < statement_timestamp() - make_interval(secs => $1) \
                   LIMIT $2 FOR UPDATE SKIP LOCKED)";
        Ok(sqlx::query(sql)
            .bind(grace.as_secs_f64())
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

async fn lock_aor(conn: &mut PgConnection, aor: &Aor) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(AOR_LOCK_NAMESPACE)
        .bind(super::lock::aor_key(aor))
        .execute(conn)
        .await?;
    Ok(())
}
