//! `reg_subscription` on PostgreSQL (SPEC E1, E2). Every statement that leads to a NOTIFY takes
//! that NOTIFY's CSeq and `version` in the same statement (`… + 1 RETURNING`), so instances
//! NOTIFYing one subscription at once never reuse a number. The expiry job's claim is
//! `pcscf_location`'s: `claimed_by`/`claimed_until`, `FOR UPDATE SKIP LOCKED`.

use super::PgStore;
use super::rows::{BINDING_COLUMNS, binding};
use crate::store::{
    Aor, DialogId, ExpiryWork, NewSubscription, Renewal, Renewed, StoreError, Subscription,
};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::time::Duration;

const COLUMNS: &str = "id, username, domain, call_id, from_tag, to_tag, local_uri, remote_uri, \
     remote_target, route_set, send_to, local_cseq, remote_cseq, version, expires, notified_until, \
     created";

fn subscription(row: &PgRow) -> Result<Subscription, sqlx::Error> {
    Ok(Subscription {
        id: row.try_get("id")?,
        aor: Aor::new(
            row.try_get::<String, _>("username")?,
            row.try_get::<String, _>("domain")?,
        ),
        dialog: DialogId {
            call_id: row.try_get("call_id")?,
            remote_tag: row.try_get("from_tag")?,
            local_tag: row.try_get("to_tag")?,
        },
        local_uri: row.try_get("local_uri")?,
        remote_uri: row.try_get("remote_uri")?,
        remote_target: row.try_get("remote_target")?,
        route_set: row.try_get("route_set")?,
        send_to: row.try_get("send_to")?,
        local_cseq: row.try_get("local_cseq")?,
        remote_cseq: row.try_get("remote_cseq")?,
        version: row.try_get("version")?,
        expires: row.try_get("expires")?,
        notified_until: row.try_get("notified_until")?,
        created: row.try_get("created")?,
    })
}

impl PgStore {
    pub async fn add_subscription(
        &self,
        new: &NewSubscription,
    ) -> Result<Subscription, StoreError> {
        let sql = format!(
            "INSERT INTO reg_subscription (username, domain, call_id, from_tag, to_tag, \
             local_uri, remote_uri, remote_target, route_set, send_to, local_cseq, remote_cseq, \
             version, expires, notified_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             1, $11, 0, statement_timestamp() + make_interval(secs => $12), \
             statement_timestamp()) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&new.aor.username)
            .bind(&new.aor.domain)
            .bind(&new.dialog.call_id)
            .bind(&new.dialog.remote_tag)
            .bind(&new.dialog.local_tag)
            .bind(&new.local_uri)
            .bind(&new.remote_uri)
            .bind(&new.remote_target)
            .bind(&new.route_set)
            .bind(&new.send_to)
            .bind(new.remote_cseq)
            .bind(f64::from(new.expires_secs))
            .fetch_one(&self.pool)
            .await?;
        Ok(subscription(&row)?)
    }

    pub async fn renew_subscription(
        &self,
        dialog: &DialogId,
        renewal: &Renewal,
    ) -> Result<Renewed, StoreError> {
        let sql = format!(
            "UPDATE reg_subscription SET remote_cseq = $4, remote_target = $5, \
             expires = statement_timestamp() + make_interval(secs => $6), \
             local_cseq = local_cseq + 1, version = version + 1 \
             WHERE call_id = $1 AND from_tag = $2 AND to_tag = $3 AND remote_cseq < $4 \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&dialog.call_id)
            .bind(&dialog.remote_tag)
            .bind(&dialog.local_tag)
            .bind(renewal.remote_cseq)
            .bind(&renewal.remote_target)
            .bind(f64::from(renewal.expires_secs))
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok(Renewed::Done(Box::new(subscription(&row)?)));
        }
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM reg_subscription WHERE call_id = $1 AND from_tag = $2 AND to_tag = $3",
        )
        .bind(&dialog.call_id)
        .bind(&dialog.remote_tag)
        .bind(&dialog.local_tag)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match exists {
            Some(_) => Renewed::Stale,
            None => Renewed::Unknown,
        })
    }

    pub async fn next_notifies(
        &self,
        changed: &[(Aor, DateTime<Utc>)],
    ) -> Result<Vec<Subscription>, StoreError> {
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let usernames: Vec<&str> = changed.iter().map(|(a, _)| a.username.as_str()).collect();
        let domains: Vec<&str> = changed.iter().map(|(a, _)| a.domain.as_str()).collect();
        let times: Vec<DateTime<Utc>> = changed.iter().map(|(_, t)| *t).collect();
        let returning = COLUMNS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE reg_subscription AS s SET local_cseq = s.local_cseq + 1, \
             version = s.version + 1 \
             FROM unnest($1::varchar[], $2::varchar[], $3::timestamptz[]) AS k(u, d, changed) \
             WHERE s.username = k.u AND s.domain = k.d AND s.created <= k.changed \
             AND s.expires > statement_timestamp() RETURNING {returning}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(&usernames)
            .bind(&domains)
            .bind(&times)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(subscription).collect::<Result<_, _>>()?)
    }

    pub async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM reg_subscription WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn subscriptions(&self, aor: &Aor) -> Result<Vec<Subscription>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM reg_subscription WHERE username = $1 AND domain = $2 \
             ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(&aor.username)
            .bind(&aor.domain)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(subscription).collect::<Result<_, _>>()?)
    }

    pub async fn claim_expiry_work(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ExpiryWork>, StoreError> {
        let sql = format!(
            "UPDATE reg_subscription SET claimed_by = $1, \
             claimed_until = statement_timestamp() + make_interval(secs => $2), \
             local_cseq = local_cseq + 1, version = version + 1 \
             WHERE id IN (SELECT s.id FROM reg_subscription s \
               WHERE (s.claimed_until IS NULL OR s.claimed_until < statement_timestamp()) \
                 AND (s.expires <= statement_timestamp() OR EXISTS (SELECT 1 FROM location l \
                      WHERE l.username = s.username AND l.domain = s.domain \
                        AND l.expires > s.notified_until \
                        AND l.expires <= statement_timestamp())) \
               ORDER BY s.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}, statement_timestamp() AS now"
        );
        let mut conn = self.acquire().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        let mut work = Vec::with_capacity(rows.len());
        for row in &rows {
            let subscription = subscription(row)?;
            let now: DateTime<Utc> = row.try_get("now")?;
            let (expired, live) = expiry_reads(&mut conn, &subscription, now).await?;
            work.push(ExpiryWork {
                subscription,
                now,
                expired,
                live,
            });
        }
        Ok(work)
    }

    pub async fn finish_expiry_work(
        &self,
        id: i64,
        owner: &str,
        notified_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reg_subscription SET notified_until = $3, claimed_by = NULL, \
             claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(notified_until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The AoR's bindings that expired in `(notified_until, now]`, and those live at `now`.
async fn expiry_reads(
    conn: &mut PgConnection,
    s: &Subscription,
    now: DateTime<Utc>,
) -> Result<(Vec<crate::store::Binding>, Vec<crate::store::Binding>), StoreError> {
    let sql = format!(
        "SELECT {BINDING_COLUMNS} FROM location WHERE username = $1 AND domain = $2 \
         AND expires > $3 ORDER BY id"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(&s.aor.username)
        .bind(&s.aor.domain)
        .bind(s.notified_until)
        .fetch_all(conn)
        .await?;
    let (mut expired, mut live) = (Vec::new(), Vec::new());
    for row in &rows {
        let b = binding(row)?;
        if b.expires > now {
            live.push(b);
        } else {
            expired.push(b);
        }
    }
    Ok((expired, live))
}
