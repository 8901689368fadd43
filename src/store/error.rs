//! Storage errors, sorted by what the caller should do about them (SPEC R13): retry later
//! (`Unavailable`), give up on this request (`Rejected`), or fix the deployment.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),

    /// The database cannot be reached or failed transiently (connection refused or lost, pool
    /// exhausted, locked, serialization failure). A SIP caller answers 500 with Retry-After.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),

    /// Every pooled connection stayed busy for the whole acquire timeout: overload. A SIP
    /// caller answers 503 with Retry-After.
    #[error("database busy: no connection free within the acquire timeout")]
    Busy,

    /// No host of the URL accepts writes (a standby, or `default_transaction_read_only`): a
    /// failover in progress, or a misconfiguration (SPEC F1). Retried like `Unavailable`.
    #[error("no writable PostgreSQL primary: {0} is read-only")]
    ReadOnly(String),

    /// The database refused a value or a constraint failed. Retrying the same request will not
    /// help: 500 without Retry-After.
    #[error("database rejected the change: {0}")]
    Rejected(#[source] sqlx::Error),

    /// The server refused us for good: bad credentials, unknown database.
    #[error("database refused the connection: {0}")]
    Refused(#[source] sqlx::Error),

    /// The tables are missing: the database was never migrated.
    #[error("the database has no registrar tables; run `registrar migrate` first ({0})")]
    NotMigrated(#[source] sqlx::Error),

    /// A row that cannot be read back (a bug or a foreign writer's row we cannot decode).
    #[error("unexpected database content: {0}")]
    Corrupt(String),

    #[error("migration failed: {0}")]
    Migration(String),

    #[error(
        "database schema is at version {database}, newer than this binary knows (up to {binary}); \
         run a newer registrar"
    )]
    SchemaTooNew { database: i64, binary: i64 },
}

impl StoreError {
    /// The same failure for another caller of a shared batch: same variant (so the same SIP
    /// answer), the message kept (`sqlx::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> StoreError {
        let again = |e: &sqlx::Error| sqlx::Error::Protocol(e.to_string());
        match self {
            StoreError::InvalidUrl(s) => StoreError::InvalidUrl(s.clone()),
            StoreError::Unavailable(e) => StoreError::Unavailable(again(e)),
            StoreError::Busy => StoreError::Busy,
            StoreError::ReadOnly(s) => StoreError::ReadOnly(s.clone()),
            StoreError::Rejected(e) => StoreError::Rejected(again(e)),
            StoreError::Refused(e) => StoreError::Refused(again(e)),
            StoreError::NotMigrated(e) => StoreError::NotMigrated(again(e)),
            other => StoreError::Corrupt(other.to_string()),
        }
    }

    /// Whether a retry after a pause may succeed (the SIP answer carries Retry-After).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Busy | StoreError::ReadOnly(_)
        )
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) => {
                use sqlx::error::ErrorKind;
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let constraint = !matches!(db.kind(), ErrorKind::Other);
                // PostgreSQL class 22 = data exception, 23 = integrity constraint violation.
                // Class 28 = invalid authorization, 3D = invalid catalog (no such database).
                if code.starts_with("28") || code.starts_with("3D") {
                    return StoreError::Refused(err);
                }
                // 42P01 = undefined table; SQLite has no code for it, only the message.
                if code == "42P01" || db.message().starts_with("no such table") {
                    return StoreError::NotMigrated(err);
                }
                // SQLite: primary result codes 18 TOOBIG, 19 CONSTRAINT, 20 MISMATCH.
                let sqlite_primary = code.parse::<i32>().ok().map(|c| c & 0xff);
                if constraint
                    || code.starts_with("22")
                    || code.starts_with("23")
                    || matches!(sqlite_primary, Some(18..=20))
                {
                    StoreError::Rejected(err)
                } else {
                    StoreError::Unavailable(err)
                }
            }
            sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(err.to_string()),
            _ => StoreError::Unavailable(err),
        }
    }
}

/// Sorts a failure to get a pooled connection: a full pool is overload (`Busy`); a pool that
/// could not even open its connections is an unavailable database.
pub(crate) fn acquire_error(err: sqlx::Error, open: u32, max: u32) -> StoreError {
    match err {
        sqlx::Error::PoolTimedOut if open >= max => StoreError::Busy,
        other => StoreError::from(other),
    }
}
