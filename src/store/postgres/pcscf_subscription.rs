//! `pcscf_subscription` on PostgreSQL (SPEC E4): the refresh work is claimed as the P-CSCF's
//! expiry PUBLISH is (`claimed_by`/`claimed_until`, `FOR UPDATE SKIP LOCKED`), the claim taking
//! the CSeq of the SUBSCRIBE it will send.

use super::PgStore;
use crate::store::{ContactAddress, Granted, NewPcscfSubscription, PcscfSubscription, StoreError};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use std::time::Duration;

const COLUMNS: &str = "id, host, port, protocol, impu, call_id, from_tag, to_tag, remote_target, \
     route_set, cseq, expires, refresh_at";

fn subscription(row: &PgRow) -> Result<PcscfSubscription, sqlx::Error> {
    Ok(PcscfSubscription {
        id: row.try_get("id")?,
        address: ContactAddress {
            host: row.try_get("host")?,
            port: u16::try_from(row.try_get::<i32, _>("port")?).unwrap_or(0),
            protocol: row.try_get("protocol")?,
        },
        impu: row.try_get("impu")?,
        call_id: row.try_get("call_id")?,
        from_tag: row.try_get("from_tag")?,
        to_tag: row.try_get("to_tag")?,
        remote_target: row.try_get("remote_target")?,
        route_set: row.try_get("route_set")?,
        cseq: row.try_get("cseq")?,
        expires: row.try_get("expires")?,
        refresh_at: row.try_get("refresh_at")?,
    })
}

impl PgStore {
    pub async fn add_pcscf_subscription(
        &self,
        new: &NewPcscfSubscription,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PcscfSubscription>, StoreError> {
        let sql = format!(
            "INSERT INTO pcscf_subscription (host, port, protocol, impu, call_id, from_tag, cseq, \
             expires, refresh_at, claimed_by, claimed_until) VALUES ($1, $2, $3, $4, $5, $6, 1, \
             statement_timestamp() + make_interval(secs => $8), \
             statement_timestamp() + make_interval(secs => $8), $7, \
             statement_timestamp() + make_interval(secs => $8)) \
             ON CONFLICT (host, port, protocol) DO NOTHING RETURNING {COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&new.address.host)
            .bind(i32::from(new.address.port))
            .bind(&new.address.protocol)
            .bind(&new.impu)
            .bind(&new.call_id)
            .bind(&new.from_tag)
            .bind(owner)
            .bind(lease.as_secs_f64())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(subscription).transpose()?)
    }

    pub async fn pcscf_subscription_of_call(
        &self,
        call_id: &str,
    ) -> Result<Option<PcscfSubscription>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM pcscf_subscription WHERE call_id = $1");
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
        let sql = format!(
            "UPDATE pcscf_subscription SET claimed_by = $1, \
             claimed_until = statement_timestamp() + make_interval(secs => $2), cseq = cseq + 1 \
             WHERE id IN (SELECT s.id FROM pcscf_subscription s \
               WHERE (s.claimed_until IS NULL OR s.claimed_until < statement_timestamp()) \
                 AND (s.refresh_at <= statement_timestamp() OR NOT EXISTS (SELECT 1 \
                      FROM pcscf_location p WHERE p.host = s.host AND p.port = s.port \
                        AND p.protocol = s.protocol)) \
               ORDER BY s.refresh_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(subscription).collect::<Result<_, _>>()?)
    }

    pub async fn grant_pcscf_subscription(
        &self,
        id: i64,
        owner: &str,
        granted: &Granted,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pcscf_subscription SET to_tag = COALESCE($3, to_tag), \
             remote_target = COALESCE($4, remote_target), route_set = COALESCE($5, route_set), \
             expires = statement_timestamp() + make_interval(secs => $6), \
             refresh_at = statement_timestamp() + make_interval(secs => $7), \
             claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(&granted.to_tag)
        .bind(&granted.remote_target)
        .bind(&granted.route_set)
        .bind(f64::from(granted.expires_secs))
        .bind(f64::from(granted.refresh_after_secs))
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
            "UPDATE pcscf_subscription SET \
             refresh_at = statement_timestamp() + make_interval(secs => $3), \
             claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(after.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn remove_pcscf_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pcscf_subscription WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
