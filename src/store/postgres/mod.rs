//! The PostgreSQL backend: production and multi-instance. Per-AoR serialization is a
//! transaction-scoped advisory lock taken in its own statement before the read (SPEC S2); `now`
//! is the database's clock, so every instance agrees on what has expired.

mod batch;
mod location;
mod pcscf;
mod rows;
mod subscriber;

use super::coalesce::Coalescer;
use super::error::acquire_error;
use super::{ConnectOptions, StoreError, redact, with_retry};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::str::FromStr;

/// First key of every per-AoR advisory lock (`pg_advisory_xact_lock(NAMESPACE, hashtext(aor))`).
/// The two-key form lives in a different lock space from the one-key migration lock, so the
/// two can never collide.
pub(crate) const AOR_LOCK_NAMESPACE: i32 = 0x5245_4731; // "REG1"

/// REGISTERs per coalesced transaction at most (SPEC S2; research/hot-path-sql.md: 50 already
/// reaches 33–48k REGISTER/s at the database, more only lengthens each batch's lock hold).
const MAX_BATCH: usize = 64;

#[derive(Clone, Debug)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) options: PgConnectOptions,
    /// `None` in the workers' own copies, so that the queue closes with the last store.
    coalescer: Option<Coalescer>,
}

/// The coalescer's workers: one per CPU, and never the whole pool (reads, cleanup and the P-CSCF
/// need connections too). More workers make smaller batches: on two cores, six workers doubled
/// PostgreSQL's CPU per REGISTER and the p99 against two (BENCHMARKS.md).
fn batch_workers(pool_size: u32) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cpus.min(pool_size.saturating_sub(1) as usize).max(1)
}

impl PgStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<PgStore, StoreError> {
        let mut connect_options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact(url))))?
            .application_name("registrar")
            // Our own values are instants (TIMESTAMPTZ), right in any zone; UTC makes what
            // operators see in this session's logs match what psql shows with PGTZ=UTC.
            // Every query of ours is an index lookup by design. Prepared statements get a
            // generic plan after five runs, and one made while `location` was empty (just
            // created or truncated) is a sequential scan that stays cached as the table grows
            // until autovacuum's next ANALYZE: measured at 4–6 ms per REGISTER instead of
            // 0.1 ms. Keep the planner on the indexes whatever its statistics say.
            .options([("timezone", "UTC"), ("enable_seqscan", "off")]);
        if let Some(limit) = options.statement_timeout {
            // SPEC H6: a statement (or a wait for a lock) that would outlive the request's
            // deadline is cancelled by the server, so the connection comes back to the pool
            // instead of serving a REGISTER whose UA has been answered already.
            let ms = limit.as_millis().max(1);
            connect_options = connect_options.options([
                ("statement_timeout", ms.to_string()),
                ("lock_timeout", (ms * 3 / 4).max(1).to_string()),
            ]);
        }
        // One direct connection first: a pool would retry until its acquire timeout and then
        // report only "timed out", hiding "connection refused" or a bad password.
        with_retry(options.connect_timeout, || async {
            let conn = PgConnection::connect_with(&connect_options).await?;
            let _ = conn.close().await;
            Ok(())
        })
        .await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect_options.clone());
        let mut store = PgStore {
            pool,
            options: connect_options,
            coalescer: None,
        };
        let workers = batch_workers(options.pool_size);
        store.coalescer = Some(Coalescer::start(store.clone(), workers, MAX_BATCH));
        Ok(store)
    }

    fn coalescer(&self) -> Result<&Coalescer, StoreError> {
        self.coalescer
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("REGISTER changes need the store handle".into()))
    }

    /// A transaction on a pooled connection; a pool exhausted for the whole acquire timeout is
    /// `Busy` (overload), not `Unavailable`.
    pub(crate) async fn begin(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(|e| self.acquire_error(e))
    }

    pub(crate) async fn acquire(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
