//! `subscriber` on PostgreSQL: the credential read that joins a coalesced batch (one statement
//! for every AoR of the batch that authenticates, SPEC A4), and `users add|passwd|rm|list` (A7).

use super::PgStore;
use crate::store::{Aor, Credentials, StoreError, Subscriber};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

const COLUMNS: &str = "id, username, domain, password, ha1, ha1b, ha1_sha256";

/// The subscriber row of each AoR (`None` for users that do not exist), in `aors` order.
pub(super) async fn read_subscribers(
    conn: &mut PgConnection,
    aors: &[&Aor],
) -> Result<Vec<Option<Subscriber>>, StoreError> {
    let usernames: Vec<&str> = aors.iter().map(|a| a.username.as_str()).collect();
    let domains: Vec<&str> = aors.iter().map(|a| a.domain.as_str()).collect();
    let rows = sqlx::query(
        "SELECT k.i, s.id, s.username, s.domain, s.password, s.ha1, s.ha1b, s.ha1_sha256 \
         FROM unnest($1::varchar[], $2::varchar[]) WITH ORDINALITY AS k(username, domain, i) \
         JOIN subscriber AS s ON s.username = k.username AND s.domain = k.domain",
    )
    .bind(&usernames)
    .bind(&domains)
    .fetch_all(conn)
    .await?;
    let mut found = vec![None; aors.len()];
    for row in &rows {
        let i: i64 = row.try_get("i")?;
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| found.get_mut(i)) {
            *slot = Some(subscriber(row)?);
        }
    }
    Ok(found)
}

fn subscriber(row: &PgRow) -> Result<Subscriber, sqlx::Error> {
    Ok(Subscriber {
        id: i64::from(row.try_get::<i32, _>("id")?),
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

impl PgStore {
    pub async fn subscriber(&self, aor: &Aor) -> Result<Option<Subscriber>, StoreError> {
        let mut conn = self.acquire().await?;
        Ok(read_subscribers(&mut conn, &[aor]).await?.pop().flatten())
    }

    pub async fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM subscriber ORDER BY domain, username");
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
             VALUES ($1, $2, '', $3, $4, $5) ON CONFLICT (username, domain) DO NOTHING",
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
            "UPDATE subscriber SET password = '', ha1 = $3, ha1b = $4, ha1_sha256 = $5 \
             WHERE username = $1 AND domain = $2",
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
        let removed = sqlx::query("DELETE FROM subscriber WHERE username = $1 AND domain = $2")
            .bind(&aor.username)
            .bind(&aor.domain)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }
}
