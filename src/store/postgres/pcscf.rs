//! `pcscf_location` on PostgreSQL. A change to one contact address takes a transaction-scoped
//! advisory lock on the address (the row may not exist yet) and reads the row `FOR UPDATE`, so
//! that it also waits for — and then sees — a claim of the expiry job, which locks rows with
//! `FOR UPDATE SKIP LOCKED`.

use super::PgStore;
use super::rows::{PCONTACT_COLUMNS, pcontact};
use crate::store::{
    ContactAddress, Pcontact, PcontactApplied, PcontactChange, PcontactPlan, PcontactSnapshot,
    PublishProgress, StoreError,
};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::time::Duration;

/// First key of the per-address advisory locks (two-key form, apart from the AoR locks).
const PCONTACT_LOCK_NAMESPACE: i32 = 0x5043_5343; // "PCSC"

const WRITE_COLUMNS: &str = "aor, host, port, protocol, received, received_port, \
     received_proto, path, rinstance, reg_state, expires, service_routes, socket, public_ids, \
     claimed_by, claimed_until, publish_attempts, next_publish_at, published_ids, last_modified";

impl PgStore {
    pub async fn pcontact(&self, address: &ContactAddress) -> Result<Option<Pcontact>, StoreError> {
        let mut conn = self.acquire().await?;
        read(&mut conn, address, false).await
    }

    pub async fn pcontacts_by_impu(&self, impu: &str) -> Result<Vec<Pcontact>, StoreError> {
        let sql = format!(
            "SELECT {PCONTACT_COLUMNS} FROM pcscf_location \
             WHERE strpos(public_ids, '<' || $1 || '>') > 0 ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(impu)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(pcontact).collect::<Result<_, _>>()?)
    }

    pub async fn dump_pcontacts(&self) -> Result<Vec<Pcontact>, StoreError> {
        let sql = format!("SELECT {PCONTACT_COLUMNS} FROM pcscf_location ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(pcontact).collect::<Result<_, _>>()?)
    }

    pub async fn update_pcontact<T, F>(
        &self,
        address: &ContactAddress,
        decide: F,
    ) -> Result<PcontactApplied<T>, StoreError>
    where
        F: FnOnce(&PcontactSnapshot) -> PcontactPlan<T> + Send,
        T: Send,
    {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(PCONTACT_LOCK_NAMESPACE)
            .bind(address.to_string())
            .execute(&mut *tx)
            .await?;
        let current = read(&mut tx, address, true).await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT statement_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        let snapshot = PcontactSnapshot {
            now,
            pcontact: current,
        };
        let plan = decide(&snapshot);
        let current_id = snapshot.pcontact.as_ref().map(|p| p.id);
        let after = match plan.change {
            PcontactChange::Keep => snapshot.pcontact,
            PcontactChange::Insert(p) => Some(insert(&mut tx, p, now).await?),
            PcontactChange::Update(p) => match current_id {
                Some(id) => Some(update(&mut tx, id, p, now).await?),
                None => Some(insert(&mut tx, p, now).await?),
            },
            PcontactChange::Delete => {
                if let Some(id) = current_id {
                    delete(&mut tx, id).await?;
                }
                None
            }
            PcontactChange::Replace(p) => {
                if let Some(id) = current_id {
                    delete(&mut tx, id).await?;
                }
                Some(insert(&mut tx, p, now).await?)
            }
        };
        tx.commit().await?;
        Ok(PcontactApplied {
            outcome: plan.outcome,
            now,
            pcontact: after,
        })
    }

    pub async fn claim_stale_pcontacts(
        &self,
        stale_after: Duration,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Pcontact>, StoreError> {
        let sql = format!(
            "UPDATE pcscf_location SET reg_state = 32, claimed_by = $1, \
             claimed_until = statement_timestamp() + make_interval(secs => $2), \
             last_modified = statement_timestamp() \
             WHERE id IN (SELECT id FROM pcscf_location \
               WHERE (reg_state NOT IN (4, 32) \
                      AND expires < statement_timestamp() - make_interval(secs => $3)) \
                  OR (reg_state = 32 \
                      AND (claimed_until IS NULL OR claimed_until < statement_timestamp())) \
               ORDER BY expires LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING {PCONTACT_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(stale_after.as_secs_f64())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(pcontact).collect::<Result<_, _>>()?)
    }

    pub async fn remove_stale_pending(&self, stale_after: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM pcscf_location WHERE reg_state = 4 \
             AND expires < statement_timestamp() - make_interval(secs => $1)",
        )
        .bind(stale_after.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn renew_claim(
        &self,
        id: i64,
        owner: &str,
        lease: Duration,
        progress: &PublishProgress,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pcscf_location SET claimed_until = statement_timestamp() + make_interval(secs => $3), \
             published_ids = $4, publish_attempts = $5, next_publish_at = $6, \
             last_modified = statement_timestamp() WHERE id = $1 AND claimed_by = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(&progress.published_ids)
        .bind(progress.attempts)
        .bind(progress.next_publish_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn finish_claim(&self, id: i64, owner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pcscf_location WHERE id = $1 AND claimed_by = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn read(
    conn: &mut PgConnection,
    address: &ContactAddress,
    for_update: bool,
) -> Result<Option<Pcontact>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT {PCONTACT_COLUMNS} FROM pcscf_location \
         WHERE host = $1 AND port = $2 AND protocol = $3{lock}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(&address.host)
        .bind(i32::from(address.port))
        .bind(&address.protocol)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(pcontact).transpose()?)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `WRITE_COLUMNS` in order.
fn bind_columns<'q>(query: PgQuery<'q>, p: &'q Pcontact, now: DateTime<Utc>) -> PgQuery<'q> {
    query
        .bind(&p.aor)
        .bind(&p.address.host)
        .bind(i32::from(p.address.port))
        .bind(&p.address.protocol)
        .bind(&p.received)
        .bind(p.received_port)
        .bind(&p.received_proto)
        .bind(&p.path)
        .bind(&p.rinstance)
        .bind(p.reg_state.to_column())
        .bind(p.expires)
        .bind(&p.service_routes)
        .bind(&p.socket)
        .bind(&p.public_ids)
        .bind(&p.claimed_by)
        .bind(p.claimed_until)
        .bind(p.publish_attempts)
        .bind(p.next_publish_at)
        .bind(&p.published_ids)
        .bind(now)
}

async fn insert(
    conn: &mut PgConnection,
    p: Pcontact,
    now: DateTime<Utc>,
) -> Result<Pcontact, StoreError> {
    let sql = format!(
        "INSERT INTO pcscf_location ({WRITE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
         $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING id"
    );
    let id: i64 = bind_columns(sqlx::query(AssertSqlSafe(sql)), &p, now)
        .fetch_one(conn)
        .await?
        .try_get("id")?;
    Ok(Pcontact {
        id,
        last_modified: now,
        ..p
    })
}

async fn update(
    conn: &mut PgConnection,
    id: i64,
    p: Pcontact,
    now: DateTime<Utc>,
) -> Result<Pcontact, StoreError> {
    let set = WRITE_COLUMNS
        .split(", ")
        .enumerate()
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("UPDATE pcscf_location SET {set} WHERE id = $21");
    bind_columns(sqlx::query(AssertSqlSafe(sql)), &p, now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(Pcontact {
        id,
        last_modified: now,
        ..p
    })
}

async fn delete(conn: &mut PgConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM pcscf_location WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
