//! The PostgreSQL backend: production and multi-instance. Per-AoR serialization is a
//! transaction-scoped advisory lock taken in its own statement before the read (SPEC S2); `now`
//! is the database's clock, so every instance agrees on what has expired.

mod batch;
mod location;
mod lock;
mod pcscf;
mod pcscf_subscription;
mod primary;
mod rows;
mod subscriber;
mod subscription;

use super::coalesce::Coalescer;
use super::error::acquire_error;
use super::{ConnectOptions, StoreError, redact, with_retry};
use primary::{Primary, READ_ONLY_CHECK, follow_primary, split_hosts};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::sync::Arc;

/// First key of every per-AoR advisory lock (`pg_advisory_xact_lock(NAMESPACE, hashtext(aor))`,
/// the second computed by `lock::aor_key`).
/// The two-key form lives in a different lock space from the one-key migration lock, so the
/// two can never collide.
pub(crate) const AOR_LOCK_NAMESPACE: i32 = 0x5245_4731; // "REG1"

/// REGISTERs per coalesced transaction at most (SPEC S2; research/hot-path-sql.md: 50 already
/// reaches 33–48k REGISTER/s at the database, more only lengthens each batch's lock hold).
const MAX_BATCH: usize = 64;

#[derive(Clone, Debug)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// The URL's hosts and the writable one in use (SPEC F1).
    primary: Arc<Primary>,
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

/// The session settings of every connection of ours to one host.
fn session_options(url: &str, options: &ConnectOptions) -> Result<PgConnectOptions, String> {
    let mut connect_options = PgConnectOptions::from_str(url)
        .map_err(|e| e.to_string())?
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
        // instead of serving a REGISTER whose UA has been answered already. It never cuts a
        // COMMIT's wait for a synchronous standby short (batch.rs says why).
        let ms = limit.as_millis().max(1);
        connect_options = connect_options.options([
            ("statement_timeout", ms.to_string()),
            ("lock_timeout", (ms * 3 / 4).max(1).to_string()),
        ]);
    }
    Ok(connect_options)
}

impl PgStore {
    /// Connects to the writable host of `url` (one host, or libpq's comma-separated list),
    /// retrying until `options.connect_timeout` has passed.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<PgStore, StoreError> {
        let invalid = |e: String| StoreError::InvalidUrl(format!("{}: {e}", redact(url)));
        let mut hosts = Vec::new();
        for host in split_hosts(url).map_err(invalid)? {
            hosts.push((
                host.label,
                session_options(&host.url, options).map_err(invalid)?,
            ));
        }
        let primary = Arc::new(Primary::new(hosts));
        // One direct session per host first: a pool would retry until its acquire timeout
        // and then report only "timed out", hiding "connection refused" or a bad password.
        let first = with_retry(options.connect_timeout, || primary.find()).await?;
        primary.switch_to(first);
        let (_, label, connect_options) = primary.current();
        if primary.has_alternatives() {
            tracing::info!(host = %label, "writable primary");
        }
        let (checker, retired) = (primary.clone(), primary.clone());
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .min_connections(0)
            // No ping before each acquire: it was a round trip on every batch's path. A session
            // that died meanwhile fails its batch's first statement instead (answered like any
            // transient failure, 500/503 with Retry-After), and sqlx's ping on release, which
            // runs after the answer, closes it.
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            // F1: the pool never holds a read-only session (a standby, a demoted primary).
            // One query per new session, none per request.
            .after_connect(move |conn, _| {
                let primary = checker.clone();
                Box::pin(async move {
                    let read_only: bool = sqlx::query_scalar(READ_ONLY_CHECK)
                        .fetch_one(&mut *conn)
                        .await?;
                    if read_only {
                        primary.suspect();
                        return Err(sqlx::Error::Protocol(
                            "read-only session: a standby, or default_transaction_read_only".into(),
                        ));
                    }
                    Ok(())
                })
            })
            .before_acquire(move |_, meta| {
                let keep = !retired.is_retired(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_lazy_with(connect_options.clone());
        if primary.has_alternatives() {
            tokio::spawn(follow_primary(primary.clone(), pool.clone()));
        }
        let mut store = PgStore {
            pool,
            primary,
            coalescer: None,
        };
        let workers = batch_workers(options.pool_size);
        store.coalescer = Some(Coalescer::start(store.clone(), workers, MAX_BATCH));
        Ok(store)
    }

    /// Options for a session of its own on the host in use (migrations).
    pub(crate) fn session_options(&self) -> Arc<PgConnectOptions> {
        self.pool.connect_options()
    }

    /// Reacts to a failed operation: a read-only or unreachable primary sends the resolver
    /// looking for another (SPEC F1).
    pub(crate) fn observe(&self, error: StoreError) -> StoreError {
        self.primary.observe(&error);
        error
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

    /// A transaction holding the advisory locks of `keys` (SPEC S2): `BEGIN` and the locks in
    /// one round trip (`lock::begin_and_lock`).
    pub(crate) async fn begin_locked(
        &self,
        keys: &mut Vec<i32>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let statement = sqlx::AssertSqlSafe(lock::begin_and_lock(keys));
        (self.pool.begin_with(statement).await).map_err(|e| self.acquire_error(e))
    }

    pub(crate) async fn acquire(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
        self.pool.acquire().await.map_err(|e| self.acquire_error(e))
    }

    fn acquire_error(&self, e: sqlx::Error) -> StoreError {
        self.observe(acquire_error(
            e,
            self.pool.size(),
            self.pool.options().get_max_connections(),
        ))
    }

    /// The connection pool, for tests and tools that need plain SQL.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
