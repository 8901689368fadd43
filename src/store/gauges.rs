//! What the operations endpoints read from the database (SPEC O1, O2): a liveness probe and the
//! counts behind `registrar_bindings`, `registrar_aors` and `pcscf_pcontacts`. Never on the
//! request path: the HTTP listener asks at most every 10 s.

use super::{RegState, Store, StoreError};

/// Live bindings and the AoRs they belong to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocationCounts {
    pub bindings: i64,
    pub aors: i64,
}

impl Store {
    /// One round trip to the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => {
                sqlx::query("SELECT 1").execute(s.pool()).await?;
            }
            Store::Sqlite(s) => {
                sqlx::query("SELECT 1").execute(s.pool()).await?;
            }
        }
        Ok(())
    }

    /// Live bindings (`expires > now`) and distinct AoRs among them; the expires index bounds
    /// the scan to live rows.
    pub async fn location_counts(&self) -> Result<LocationCounts, StoreError> {
        let (bindings, aors): (i64, i64) = match self {
            Store::Postgres(s) => {
                sqlx::query_as(
                    "SELECT count(*), count(DISTINCT (username, domain)) FROM location \
                     WHERE expires > now()",
                )
                .fetch_one(s.pool())
                .await?
            }
            Store::Sqlite(s) => {
                sqlx::query_as(
                    "SELECT count(*), count(DISTINCT username || '@' || domain) FROM location \
                     WHERE expires > unixepoch()",
                )
                .fetch_one(s.pool())
                .await?
            }
        };
        Ok(LocationCounts { bindings, aors })
    }

    /// Pcontacts per state, by the state's name (REGISTERED, REG_PENDING, …).
    pub async fn pcontact_counts(&self) -> Result<Vec<(RegState, i64)>, StoreError> {
        let sql = "SELECT reg_state, count(*) FROM pcscf_location GROUP BY reg_state";
        let rows: Vec<(i16, i64)> = match self {
            Store::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
            Store::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(state, n)| (RegState::from_column(state), n))
            .collect())
    }
}
