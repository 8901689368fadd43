//! `pcscf_location` on PostgreSQL.

use super::PgStore;
use super::rows::{PCONTACT_COLUMNS, pcontact};
use crate::store::{ContactAddress, Pcontact, StoreError};
use sqlx::AssertSqlSafe;

impl PgStore {
    pub async fn pcontact(&self, address: &ContactAddress) -> Result<Option<Pcontact>, StoreError> {
        let sql = format!(
            "SELECT {PCONTACT_COLUMNS} FROM pcscf_location \
             WHERE host = $1 AND port = $2 AND protocol = $3"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&address.host)
            .bind(i32::from(address.port))
            .bind(&address.protocol)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(pcontact).transpose()?)
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
}
