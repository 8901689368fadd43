//! `subscriber` on SQLite: the credential read inside a coalesced batch's transaction (SPEC A4),
//! and `users add|passwd|rm|list` (A7).

use super::SqliteStore;
use crate::store::{Aor, Credentials, StoreError, Subscriber};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

const SELECT: &str = "SELECT id, username, domain, password, ha1, ha1b, ha1_sha256 FROM subscriber";

pub(super) async fn read_subscriber(
    conn: &mut SqliteConnection,
    aor: &Aor,
) -> Result<Option<Subscriber>, StoreError> {
    let sql = format!("{SELECT} WHERE username = ?1 AND domain = ?2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&aor.username)
        .bind(&aor.domain)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(subscriber).transpose()?)
}

fn subscriber(row: &SqliteRow) -> Result<Subscriber, sqlx::Error> {
    Ok(Subscriber {
        id: row.try_get("id")?,
        aor: Aor::new(
            row.try_get::<String, _>("username")?,
            row.try_get::<String, _>("domain")?,
        ),
        password: row.try_get("password")?,
        ha1: row.try_get("ha1")?,
        ha1b: row.try_get("ha1b")?,
        ha1_sha256: row.try_get("ha1_sha256")?,
    })
}

impl SqliteStore {
    pub async fn subscriber(&self, aor: &Aor) -> Result<Option<Subscriber>, StoreError> {
        let mut conn = self.acquire().await?;
        read_subscriber(&mut conn, aor).await
    }

    pub async fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError> {
        let sql = format!("{SELECT} ORDER BY domain, username");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(subscriber).collect::<Result<_, _>>()?)
    }

    pub async fn add_subscriber(
        &self,
        aor: &Aor,
        credentials: &Credentials,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b, ha1_sha256) \
             VALUES (?1, ?2, '', ?3, ?4, ?5) ON CONFLICT (username, domain) DO NOTHING",
        )
        .bind(&aor.username)
        .bind(&aor.domain)
        .bind(&credentials.ha1)
        .bind(&credentials.ha1b)
        .bind(&credentials.ha1_sha256)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    pub async fn set_credentials(
        &self,
        aor: &Aor,
        credentials: &Credentials,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE subscriber SET password = '', ha1 = ?3, ha1b = ?4, ha1_sha256 = ?5 \
             WHERE username = ?1 AND domain = ?2",
        )
        .bind(&aor.username)
        .bind(&aor.domain)
        .bind(&credentials.ha1)
        .bind(&credentials.ha1b)
        .bind(&credentials.ha1_sha256)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    pub async fn remove_subscriber(&self, aor: &Aor) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM subscriber WHERE username = ?1 AND domain = ?2")
            .bind(&aor.username)
            .bind(&aor.domain)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }
}
