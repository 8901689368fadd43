//! `reg_subscription` on SQLite (SPEC E1, E2): the PostgreSQL statements with the process
//! clock in whole seconds. The single writer serializes the number-taking updates.

use super::rows::{BINDING_COLUMNS, binding};
use super::{SqliteStore, from_secs, now, to_secs};
use crate::store::{
    Aor, Binding, DialogId, ExpiryWork, NewSubscription, Renewal, Renewed, StoreError, Subscription,
};
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use std::time::Duration;

const COLUMNS: &str = "id, username, domain, call_id, from_tag, to_tag, local_uri, remote_uri, \
     remote_target, route_set, send_to, local_cseq, remote_cseq, version, expires, notified_until, \
     created";

fn subscription(row: &SqliteRow) -> Result<Subscription, sqlx::Error> {
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
        expires: from_secs(row.try_get("expires")?)?,
        notified_until: from_secs(row.try_get("notified_until")?)?,
        created: DateTime::from_timestamp_micros(row.try_get("created")?)
            .ok_or_else(|| sqlx::Error::Decode("created out of range".into()))?,
    })
}

impl SqliteStore {
    pub async fn add_subscription(
        &self,
        new: &NewSubscription,
    ) -> Result<Subscription, StoreError> {
        let now = to_secs(now());
        let sql = format!(
            "INSERT INTO reg_subscription (username, domain, call_id, from_tag, to_tag, \
             local_uri, remote_uri, remote_target, route_set, send_to, local_cseq, remote_cseq, \
             version, expires, notified_until, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
             ?9, ?10, 1, ?11, 0, ?12, ?13, ?14) RETURNING {COLUMNS}"
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
            .bind(now + i64::from(new.expires_secs))
            .bind(now)
            .bind(Utc::now().timestamp_micros())
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
            "UPDATE reg_subscription SET remote_cseq = ?4, remote_target = ?5, expires = ?6, \
             local_cseq = local_cseq + 1, version = version + 1 \
             WHERE call_id = ?1 AND from_tag = ?2 AND to_tag = ?3 AND remote_cseq < ?4 \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&dialog.call_id)
            .bind(&dialog.remote_tag)
            .bind(&dialog.local_tag)
            .bind(renewal.remote_cseq)
            .bind(&renewal.remote_target)
            .bind(to_secs(now()) + i64::from(renewal.expires_secs))
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok(Renewed::Done(Box::new(subscription(&row)?)));
        }
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM reg_subscription WHERE call_id = ?1 AND from_tag = ?2 AND to_tag = ?3",
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
        // One statement for the whole batch, as on PostgreSQL: sqlx runs SQLite on a worker
        // thread, and each statement is a round trip to it (two thread wake-ups). One UPDATE
        // per changed AoR cost ~30 % more CPU per refresh than before reg-event (issue 16).
        // The AoRs travel as one bound JSON array, never in the SQL text.
        let sql = format!(
            "UPDATE reg_subscription SET local_cseq = local_cseq + 1, version = version + 1 \
             FROM (SELECT json_extract(value, '$[0]') AS u, json_extract(value, '$[1]') AS d, \
                          json_extract(value, '$[2]') AS changed FROM json_each(?1)) AS k \
             WHERE username = k.u AND domain = k.d AND created <= k.changed AND expires > ?2 \
             RETURNING {COLUMNS}"
        );
        let keys: Vec<(&str, &str, i64)> = (changed.iter())
            .map(|(aor, at)| {
                (
                    aor.username.as_str(),
                    aor.domain.as_str(),
                    at.timestamp_micros(),
                )
            })
            .collect();
        // Strings and integers always serialize.
        let keys = serde_json::to_string(&keys).expect("a JSON array of strings and integers");
        // A single statement is its own transaction, and SQLite takes the write lock when it
        // starts (waiting busy_timeout for it), so no BEGIN IMMEDIATE round trips.
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(keys)
            .bind(to_secs(now()))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(subscription).collect::<Result<_, _>>()?)
    }

    pub async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM reg_subscription WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn subscriptions(&self, aor: &Aor) -> Result<Vec<Subscription>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM reg_subscription WHERE username = ?1 AND domain = ?2 \
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
        let now = now();
        let sql = format!(
            "UPDATE reg_subscription SET claimed_by = ?1, claimed_until = ?2, \
             local_cseq = local_cseq + 1, version = version + 1 \
             WHERE id IN (SELECT s.id FROM reg_subscription s \
               WHERE (s.claimed_until IS NULL OR s.claimed_until < ?3) \
                 AND (s.expires <= ?3 OR EXISTS (SELECT 1 FROM location l \
                      WHERE l.username = s.username AND l.domain = s.domain \
                        AND l.expires > s.notified_until AND l.expires <= ?3)) \
               ORDER BY s.id LIMIT ?4) \
             RETURNING {COLUMNS}"
        );
        let lease = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX / 4);
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(to_secs(now) + lease)
            .bind(to_secs(now))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut work = Vec::with_capacity(rows.len());
        for row in &rows {
            let subscription = subscription(row)?;
            let (expired, live) = expiry_reads(&mut tx, &subscription, now).await?;
            work.push(ExpiryWork {
                subscription,
                now,
                expired,
                live,
            });
        }
        tx.commit().await?;
        Ok(work)
    }

    pub async fn finish_expiry_work(
        &self,
        id: i64,
        owner: &str,
        notified_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reg_subscription SET notified_until = ?3, claimed_by = NULL, \
             claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(to_secs(notified_until))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The AoR's bindings that expired in `(notified_until, now]`, and those live at `now`.
async fn expiry_reads(
    conn: &mut SqliteConnection,
    s: &Subscription,
    now: DateTime<Utc>,
) -> Result<(Vec<Binding>, Vec<Binding>), StoreError> {
    let sql = format!(
        "SELECT {BINDING_COLUMNS} FROM location WHERE username = ?1 AND domain = ?2 \
         AND expires > ?3 ORDER BY id"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(&s.aor.username)
        .bind(&s.aor.domain)
        .bind(to_secs(s.notified_until))
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
