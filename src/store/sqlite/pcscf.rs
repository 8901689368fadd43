//! `pcscf_location` on SQLite: every change runs in a `BEGIN IMMEDIATE` transaction, which
//! serializes it with every other writer, the expiry job's claims included.

use super::rows::{PCONTACT_COLUMNS, pcontact};
use super::{SqliteStore, now, to_secs};
use crate::store::{
    ContactAddress, Pcontact, PcontactApplied, PcontactChange, PcontactPlan, PcontactSnapshot,
    PublishProgress, StoreError,
};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use std::time::Duration;

const WRITE_COLUMNS: &str = "aor, host, port, protocol, received, received_port, \
     received_proto, path, rinstance, reg_state, expires, service_routes, socket, public_ids, \
     claimed_by, claimed_until, publish_attempts, next_publish_at, published_ids, last_modified";

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

impl SqliteStore {
    pub async fn pcontact(&self, address: &ContactAddress) -> Result<Option<Pcontact>, StoreError> {
        let mut conn = self.acquire().await?;
        read(&mut conn, address).await
    }

    pub async fn pcontacts_by_impu(&self, impu: &str) -> Result<Vec<Pcontact>, StoreError> {
        let sql = format!(
            "SELECT {PCONTACT_COLUMNS} FROM pcscf_location \
             WHERE instr(public_ids, '<' || ?1 || '>') > 0 ORDER BY id"
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
        let mut tx = self.begin_write().await?;
        let now = now();
        let snapshot = PcontactSnapshot {
            now,
            pcontact: read(&mut tx, address).await?,
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
        let now = to_secs(now());
        let sql = format!(
            "UPDATE pcscf_location SET reg_state = 32, claimed_by = ?1, claimed_until = ?2, \
             last_modified = ?3 \
             WHERE id IN (SELECT id FROM pcscf_location \
               WHERE (reg_state NOT IN (4, 32) AND expires < ?4) \
                  OR (reg_state = 32 AND (claimed_until IS NULL OR claimed_until < ?3)) \
               ORDER BY expires LIMIT ?5) \
             RETURNING {PCONTACT_COLUMNS}"
        );
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(now + secs(lease))
            .bind(now)
            .bind(now - secs(stale_after))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.iter().map(pcontact).collect::<Result<_, _>>()?)
    }

    pub async fn remove_stale_pending(&self, stale_after: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM pcscf_location WHERE reg_state = 4 AND expires < ?1")
            .bind(to_secs(now()) - secs(stale_after))
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
        let now = to_secs(now());
        let done = sqlx::query(
            "UPDATE pcscf_location SET claimed_until = ?3, published_ids = ?4, \
             publish_attempts = ?5, next_publish_at = ?6, last_modified = ?7 \
             WHERE id = ?1 AND claimed_by = ?2",
        )
        .bind(id)
        .bind(owner)
        .bind(now + secs(lease))
        .bind(&progress.published_ids)
        .bind(progress.attempts)
        .bind(progress.next_publish_at.map(to_secs))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn finish_claim(&self, id: i64, owner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pcscf_location WHERE id = ?1 AND claimed_by = ?2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn read(
    conn: &mut SqliteConnection,
    address: &ContactAddress,
) -> Result<Option<Pcontact>, StoreError> {
    let sql = format!(
        "SELECT {PCONTACT_COLUMNS} FROM pcscf_location \
         WHERE host = ?1 AND port = ?2 AND protocol = ?3"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(&address.host)
        .bind(i64::from(address.port))
        .bind(&address.protocol)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(pcontact).transpose()?)
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds `WRITE_COLUMNS` in order.
fn bind_columns<'q>(
    query: SqliteQuery<'q>,
    p: &'q Pcontact,
    now: DateTime<Utc>,
) -> SqliteQuery<'q> {
    query
        .bind(&p.aor)
        .bind(&p.address.host)
        .bind(i64::from(p.address.port))
        .bind(&p.address.protocol)
        .bind(&p.received)
        .bind(p.received_port)
        .bind(&p.received_proto)
        .bind(&p.path)
        .bind(&p.rinstance)
        .bind(p.reg_state.to_column())
        .bind(to_secs(p.expires))
        .bind(&p.service_routes)
        .bind(&p.socket)
        .bind(&p.public_ids)
        .bind(&p.claimed_by)
        .bind(p.claimed_until.map(to_secs))
        .bind(p.publish_attempts)
        .bind(p.next_publish_at.map(to_secs))
        .bind(&p.published_ids)
        .bind(to_secs(now))
}

async fn insert(
    conn: &mut SqliteConnection,
    p: Pcontact,
    now: DateTime<Utc>,
) -> Result<Pcontact, StoreError> {
    let sql = format!(
        "INSERT INTO pcscf_location ({WRITE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
         ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20) RETURNING id"
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
    conn: &mut SqliteConnection,
    id: i64,
    p: Pcontact,
    now: DateTime<Utc>,
) -> Result<Pcontact, StoreError> {
    let set = WRITE_COLUMNS
        .split(", ")
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("UPDATE pcscf_location SET {set} WHERE id = ?21");
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

async fn delete(conn: &mut SqliteConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM pcscf_location WHERE id = ?1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
