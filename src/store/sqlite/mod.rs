//! The SQLite backend: the embedded default for one process. SQLite has a single writer, so
//! `BEGIN IMMEDIATE` (taken before the read) serializes every change, per AoR included (SPEC S2);
//! REGISTERs waiting together share one such transaction (the coalescer, one worker);
//! sqlx's deferred BEGIN would fail read-then-write transactions under concurrency instead of
//! waiting. WAL lets readers proceed beside the writer. `now` is the process clock, in whole
//! seconds because the columns are INTEGER Unix seconds.

mod location;
mod pcscf;
mod pcscf_subscription;
mod rows;
mod subscriber;
mod subscription;

use super::coalesce::Coalescer;
use super::error::acquire_error;
use super::{ConnectOptions, StoreError, redact};
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// How long a writer waits for the write lock before the request fails as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// REGISTERs per coalesced transaction at most.
const MAX_BATCH: usize = 64;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    pub(crate) options: std::sync::Arc<SqliteConnectOptions>,
    /// `None` in the worker's own copy, so that the queue closes with the last store.
    coalescer: Option<Coalescer>,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<SqliteStore, StoreError> {
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact(url))))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.sqlite_synchronous {
                super::Synchronous::Full => SqliteSynchronous::Full,
                super::Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // A file either opens or it does not: no point in waiting for it.
        let pool = SqlitePoolOptions::new()
            .max_connections(options.pool_size.clamp(1, 8))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options.clone())
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Unavailable(e) => StoreError::Refused(e),
                other => other,
            })?;
        let mut store = SqliteStore {
            pool,
            options: std::sync::Arc::new(connect_options),
            coalescer: None,
        };
        // One worker: SQLite has one writer, and a second would only wait in the busy handler.
        store.coalescer = Some(Coalescer::start(store.clone(), 1, MAX_BATCH));
        Ok(store)
    }

    fn coalescer(&self) -> Result<&Coalescer, StoreError> {
        self.coalescer
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("REGISTER changes need the store handle".into()))
    }

    /// A write transaction (`BEGIN IMMEDIATE`); a pool exhausted for the whole acquire timeout
    /// is `Busy` (overload), not `Unavailable`.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.acquire_error(e))
    }

    pub(crate) async fn acquire(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StoreError> {
        self.pool.acquire().await.map_err(|e| self.acquire_error(e))
    }

    fn acquire_error(&self, e: sqlx::Error) -> StoreError {
        acquire_error(
            e,
            self.pool.size(),
            self.pool.options().get_max_connections(),
        )
    }

    /// The connection pool, for tests and tools that need plain SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The process clock, truncated to the whole seconds the columns hold.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

pub(crate) fn to_secs(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

pub(crate) fn from_secs(secs: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {secs} out of range").into()))
}
