//! `pcscf_subscription` on SQLite (SPEC E4): the PostgreSQL statements with the process clock
//! in whole seconds; the single writer serializes the claims.

use super::{SqliteStore, from_secs, now, to_secs};
use crate::store::{ContactAddress, Granted, NewPcscfSubscription, PcscfSubscription, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};
use std::time::Duration;

const COLUMNS: &str = "id, host, port, protocol, impu, call_id, from_tag, to_tag, remote_target, \
     route_set, cseq, expires, refresh_at";

fn subscription(row: &SqliteRow) -> Result<PcscfSubscription, sqlx::Error> {
    Ok(PcscfSubscription {
        id: row.try_get("id")?,
        address: ContactAddress {
            host: row.try_get("host")?,
            port: u16::try_from(row.try_get::<i64, _>("port")?).unwrap_or(0),
            protocol: row.try_get("protocol")?,
        },
        impu: row.try_get("impu")?,
        call_id: row.try_get("call_id")?,
        from_tag: row.try_get("from_tag")?,
        to_tag: row.try_get("to_tag")?,
        remote_target: row.try_get("remote_target")?,
        route_set: row.try_get("route_set")?,
        cseq: row.try_get("cseq")?,
        expires: from_secs(row.try_get("expires")?)?,
        refresh_at: from_secs(row.try_get("refresh_at")?)?,
    })
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

impl SqliteStore {
    pub async fn add_pcscf_subscription(
        &self,
        new: &NewPcscfSubscription,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PcscfSubscription>, StoreError> {
        let sql = format!(
            "INSERT INTO pcscf_subscription (host, port, protocol, impu, call_id, from_tag, cseq, \
             expires, refresh_at, claimed_by, claimed_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, \
             ?8, ?8, ?7, ?8) ON CONFLICT (host, port, protocol) DO NOTHING RETURNING {COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&new.address.host)
            .bind(i64::from(new.address.port))
            .bind(&new.address.protocol)
            .bind(&new.impu)
            .bind(&new.call_id)
            .bind(&new.from_tag)
            .bind(owner)
            .bind(to_secs(now()) + secs(lease))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(subscription).transpose()?)
    }

    pub async fn pcscf_subscription_of_call(
        &self,
        call_id: &str,
    ) -> Result<Option<PcscfSubscription>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM pcscf_subscription WHERE call_id = ?1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(subscription).transpose()?)
    }

    pub async fn claim_pcscf_subscriptions(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<PcscfSubscription>, StoreError> {
        let now = to_secs(now());
        let sql = format!(
            "UPDATE pcscf_subscription SET claimed_by = ?1, claimed_until = ?2, cseq = cseq + 1 \
             WHERE id IN (SELECT s.id FROM pcscf_subscription s \
               WHERE (s.claimed_until IS NULL OR s.claimed_until < ?3) \
                 AND (s.refresh_at <= ?3 OR NOT EXISTS (SELECT 1 FROM pcscf_location p \
                      WHERE p.host = s.host AND p.port = s.port AND p.protocol = s.protocol)) \
               ORDER BY s.refresh_at LIMIT ?4) \
             RETURNING {COLUMNS}"
        );
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(now + secs(lease))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.iter().map(subscription).collect::<Result<_, _>>()?)
    }

    pub async fn grant_pcscf_subscription(
        &self,
        id: i64,
        owner: &str,
        granted: &Granted,
    ) -> Result<bool, StoreError> {
        let now = to_secs(now());
        let done = sqlx::query(
            "UPDATE pcscf_subscription SET to_tag = COALESCE(?3, to_tag), \
             remote_target = COALESCE(?4, remote_target), route_set = COALESCE(?5, route_set), \
             expires = ?6, refresh_at = ?7, claimed_by = NULL, claimed_until = NULL \
             WHERE id = ?1 AND claimed_by = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(&granted.to_tag)
        .bind(&granted.remote_target)
        .bind(&granted.route_set)
        .bind(now + i64::from(granted.expires_secs))
        .bind(now + i64::from(granted.refresh_after_secs))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn retry_pcscf_subscription(
        &self,
        id: i64,
        owner: &str,
        after: Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pcscf_subscription SET refresh_at = ?3, claimed_by = NULL, \
             claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(to_secs(now()) + secs(after).max(1))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn remove_pcscf_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pcscf_subscription WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
