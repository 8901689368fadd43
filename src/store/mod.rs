//! The location store: every binding and pcontact the roles read or write lives here, in
//! PostgreSQL or SQLite (DB_ONLY: nothing is cached in the process).
//!
//! `Store` is an enum over the two backends rather than a trait object: each backend keeps its
//! own SQL dialect, types and locking (SPEC S2), and the generic, closure-taking `update_aor`
//! would not be object-safe anyway. Storage never imports SIP types: roles hand it plain data.

mod binding;
mod coalesce;
mod error;
mod gauges;
mod migrate;
mod pcontact;
mod pcscf_subscription;
mod postgres;
mod sqlite;
mod subscriber;
mod subscription;

pub use binding::{Aor, AorSnapshot, Applied, Binding, Plan, Reads, Removal, Written};
pub use error::StoreError;
pub use gauges::LocationCounts;
pub use migrate::MigrationReport;
pub use pcontact::{
    ContactAddress, Pcontact, PcontactApplied, PcontactChange, PcontactPlan, PcontactSnapshot,
    PublishProgress, RegState, join_uri_list, split_uri_list,
};
pub use pcscf_subscription::{Granted, NewPcscfSubscription, PcscfSubscription};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use subscriber::{Credentials, Subscriber};
pub use subscription::{DialogId, ExpiryWork, NewSubscription, Renewal, Renewed, Subscription};

use std::time::{Duration, Instant};

/// The default database when none is configured: an SQLite file beside the process.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://registrar.db?mode=rwc";

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Upper bound on pooled connections.
    pub pool_size: u32,
    /// How long to keep retrying an unreachable database before giving up.
    pub connect_timeout: Duration,
    /// How long a request may wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// PostgreSQL: `statement_timeout` of our sessions (`lock_timeout` is three quarters of
    /// it), so no statement outlives the request that waits for it (SPEC H6). `None`: the
    /// server's defaults.
    pub statement_timeout: Option<Duration>,
    /// SQLite: `PRAGMA synchronous` (SPEC H9).
    pub sqlite_synchronous: Synchronous,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: None,
            sqlite_synchronous: Synchronous::Full,
        }
    }
}

/// SQLite's durability (SPEC H9). `Full` syncs the WAL at every commit, so an acknowledged
/// binding survives a power cut; `Normal` syncs only at checkpoints and can lose the last
/// commits (never corrupt the file). Coalescing shares each sync among a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

impl Synchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Runs one backend operation, its future boxed. sqlx's query futures are about 14 KiB, and an
/// async fn that awaits one inline is at least that large in every state: each in-flight
/// REGISTER task carried 15 KiB for the read that only bodiless REGISTERs make, 83 MiB of task
/// memory at the peak of an overload (heaptrack; issue 16). A box costs one allocation per
/// database call, which waits a round trip anyway. `update_aor`, the hot path, only waits for
/// its batch and stays inline.
macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Postgres($s) => Box::pin($e).await,
            Store::Sqlite($s) => Box::pin($e).await,
        }
    };
}

impl Store {
    /// Connects to the database named by `url` (`postgres://…` or `sqlite://…`), retrying an
    /// unreachable server until `options.connect_timeout` has passed.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Store, StoreError> {
        match backend_of(url)? {
            Backend::Postgres => Ok(Store::Postgres(PgStore::connect(url, options).await?)),
            Backend::Sqlite => Ok(Store::Sqlite(SqliteStore::connect(url, options).await?)),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies the embedded migrations (SPEC S3).
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        dispatch!(self, s => s.migrate())
    }

    /// Lets `decide` change one AoR's bindings atomically, serialized with every other change
    /// of that AoR in any process (SPEC S2): lock, read the live bindings and `now`, decide,
    /// write, commit. Returns the decision's outcome and the live bindings afterwards.
    ///
    /// `decide` may be called more than once (a REGISTER retried alone after its shared batch
    /// failed); it must be a pure function of the snapshot. `reads` says whether the snapshot
    /// also carries the AoR's subscriber row (an authenticated REGISTER, SPEC A4).
    pub async fn update_aor<T, F>(
        &self,
        aor: &Aor,
        reads: Reads,
        decide: F,
    ) -> Result<Applied<T>, StoreError>
    where
        F: Fn(&AorSnapshot) -> Plan<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        match self {
            Store::Postgres(s) => s.update_aor(aor, reads, decide).await,
            Store::Sqlite(s) => s.update_aor(aor, reads, decide).await,
        }
    }

    /// The live bindings of one AoR, read without taking its lock.
    pub async fn live_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        dispatch!(self, s => s.live_bindings(aor))
    }

    /// Every row of one AoR, live or expired but not yet cleaned up (SPEC E3: a PUBLISH for a
    /// binding that just expired is authorized by that binding's Path).
    pub async fn all_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        dispatch!(self, s => s.all_bindings(aor))
    }

    /// Every live binding of every AoR, ordered by AoR.
    pub async fn dump_bindings(&self) -> Result<AorSnapshot, StoreError> {
        dispatch!(self, s => s.dump_bindings())
    }

    /// Live bindings with `id > after`, in id order, at most `limit` (SPEC O3's paged dump: a
    /// keyset page, so each costs an index range whatever the table's size).
    pub async fn bindings_page(&self, after: i64, limit: u32) -> Result<AorSnapshot, StoreError> {
        dispatch!(self, s => s.bindings_page(after, limit))
    }

    /// Administrative removal under the AoR's lock; returns the live bindings that went.
    pub async fn remove_bindings(
        &self,
        aor: &Aor,
        which: &Removal,
    ) -> Result<Vec<Binding>, StoreError> {
        dispatch!(self, s => s.remove_bindings(aor, which))
    }

    /// Deletes bindings that expired more than `grace` ago, `batch` rows per statement so that
    /// no statement holds many row locks (SPEC S4). Returns how many rows went.
    pub async fn remove_expired_bindings(
        &self,
        grace: Duration,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let started = Instant::now();
            let done = dispatch!(self, s => s.remove_expired_batch(grace, batch))?;
            total += done;
            if done < u64::from(batch) {
                return Ok(total);
            }
            // Cleanup is background work: resting as long as each batch took leaves REGISTERs
            // at least half of the database while a backlog drains (100,000 expired rows
            // doubled the p99 of refreshes without the pause; BENCHMARKS.md).
            tokio::time::sleep(started.elapsed()).await;
        }
    }

    /// The pcontact of one UE contact address, live or expired.
    pub async fn pcontact(&self, address: &ContactAddress) -> Result<Option<Pcontact>, StoreError> {
        dispatch!(self, s => s.pcontact(address))
    }

    /// Pcontacts whose public identities include `impu`.
    pub async fn pcontacts_by_impu(&self, impu: &str) -> Result<Vec<Pcontact>, StoreError> {
        dispatch!(self, s => s.pcontacts_by_impu(impu))
    }

    /// Every pcontact, in any state.
    pub async fn dump_pcontacts(&self) -> Result<Vec<Pcontact>, StoreError> {
        dispatch!(self, s => s.dump_pcontacts())
    }

    /// Lets `decide` change the pcontact of one contact address atomically, serialized with
    /// every other change of that address and with the expiry job's claims (SPEC P1, P3, P6).
    pub async fn update_pcontact<T, F>(
        &self,
        address: &ContactAddress,
        decide: F,
    ) -> Result<PcontactApplied<T>, StoreError>
    where
        F: FnOnce(&PcontactSnapshot) -> PcontactPlan<T> + Send,
        T: Send,
    {
        dispatch!(self, s => s.update_pcontact(address, decide))
    }

    /// SPEC P5: atomically marks up to `limit` stale pcontacts `DEREG_PENDING_PUBLISH` and
    /// claimed by `owner` for `lease`, and returns them: pcontacts expired for `stale_after`
    /// or longer, and pcontacts whose earlier claim lapsed (an instance that died). No two
    /// callers ever get the same pcontact while a lease runs.
    pub async fn claim_stale_pcontacts(
        &self,
        stale_after: Duration,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Pcontact>, StoreError> {
        dispatch!(self, s => s.claim_stale_pcontacts(stale_after, owner, lease, limit))
    }

    /// Deletes `REG_PENDING` pcontacts expired for `stale_after` or longer (SPEC P5).
    pub async fn remove_stale_pending(&self, stale_after: Duration) -> Result<u64, StoreError> {
        dispatch!(self, s => s.remove_stale_pending(stale_after))
    }

    /// Records PUBLISH progress and extends the lease, if `owner` still holds the claim.
    pub async fn renew_claim(
        &self,
        id: i64,
        owner: &str,
        lease: Duration,
        progress: &PublishProgress,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.renew_claim(id, owner, lease, progress))
    }

    /// Deletes a claimed pcontact once its PUBLISH work is over, if `owner` still holds it.
    pub async fn finish_claim(&self, id: i64, owner: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.finish_claim(id, owner))
    }

    /// SPEC E4: a new P-CSCF subscription for a pcontact, claimed by `owner` until its first
    /// SUBSCRIBE is answered; `None` when the pcontact has one already.
    pub async fn add_pcscf_subscription(
        &self,
        new: &NewPcscfSubscription,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<PcscfSubscription>, StoreError> {
        dispatch!(self, s => s.add_pcscf_subscription(new, owner, lease))
    }

    /// The P-CSCF subscription whose dialog has this Call-ID (SPEC H5).
    pub async fn pcscf_subscription_of_call(
        &self,
        call_id: &str,
    ) -> Result<Option<PcscfSubscription>, StoreError> {
        dispatch!(self, s => s.pcscf_subscription_of_call(call_id))
    }

    /// SPEC E4: claims subscriptions due for a refresh, or whose pcontact is gone, taking the
    /// CSeq of the SUBSCRIBE each gets (the claim of SPEC P5).
    pub async fn claim_pcscf_subscriptions(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<PcscfSubscription>, StoreError> {
        dispatch!(self, s => s.claim_pcscf_subscriptions(owner, lease, limit))
    }

    /// Records what the S-CSCF's 2xx granted and releases the claim, if `owner` holds it.
    pub async fn grant_pcscf_subscription(
        &self,
        id: i64,
        owner: &str,
        granted: &Granted,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.grant_pcscf_subscription(id, owner, granted))
    }

    /// Releases the claim with the next attempt due `after` from now.
    pub async fn retry_pcscf_subscription(
        &self,
        id: i64,
        owner: &str,
        after: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.retry_pcscf_subscription(id, owner, after))
    }

    pub async fn remove_pcscf_subscription(&self, id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove_pcscf_subscription(id))
    }

    /// The subscriber row of an AoR (SPEC A2), if the user exists.
    pub async fn subscriber(&self, aor: &Aor) -> Result<Option<Subscriber>, StoreError> {
        dispatch!(self, s => s.subscriber(aor))
    }

    /// Every subscriber, ordered by domain and user.
    pub async fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError> {
        dispatch!(self, s => s.subscribers())
    }

    /// Creates a user with these hashes; `false` when the user exists already (SPEC A7).
    pub async fn add_subscriber(
        &self,
        aor: &Aor,
        credentials: &Credentials,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.add_subscriber(aor, credentials))
    }

    /// Replaces a user's credentials (clearing any plaintext); `false` when there is no user.
    pub async fn set_credentials(
        &self,
        aor: &Aor,
        credentials: &Credentials,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.set_credentials(aor, credentials))
    }

    /// Deletes a user; `false` when there was none.
    pub async fn remove_subscriber(&self, aor: &Aor) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove_subscriber(aor))
    }

    /// SPEC E1: a new reg-event subscription; its first NOTIFY is CSeq 1, version 0.
    pub async fn add_subscription(
        &self,
        new: &NewSubscription,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, s => s.add_subscription(new))
    }

    /// SPEC E1: refreshes (or, with 0 s, ends) a subscription dialog, taking the numbers of
    /// the NOTIFY that answers it.
    pub async fn renew_subscription(
        &self,
        dialog: &DialogId,
        renewal: &Renewal,
    ) -> Result<Renewed, StoreError> {
        dispatch!(self, s => s.renew_subscription(dialog, renewal))
    }

    /// SPEC E2: the live subscriptions of these AoRs (distinct), each with the numbers of its
    /// next NOTIFY taken, in one statement. Only subscriptions that existed when the AoR
    /// changed (its `now`, see `RegEvents::changed`): a later one was sent the state after the
    /// change in full.
    pub async fn next_notifies(
        &self,
        changed: &[(Aor, chrono::DateTime<chrono::Utc>)],
    ) -> Result<Vec<Subscription>, StoreError> {
        dispatch!(self, s => s.next_notifies(changed))
    }

    /// Every subscription of an AoR, as stored (nothing taken).
    pub async fn subscriptions(&self, aor: &Aor) -> Result<Vec<Subscription>, StoreError> {
        dispatch!(self, s => s.subscriptions(aor))
    }

    pub async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove_subscription(id))
    }

    /// SPEC E2: claims, for `owner` and `lease`, up to `limit` subscriptions that ended or whose
    /// AoR has bindings that expired since they were last told, taking the numbers of the
    /// NOTIFY each gets. No two callers get the same subscription while a lease runs (the
    /// claim of SPEC P5).
    pub async fn claim_expiry_work(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ExpiryWork>, StoreError> {
        dispatch!(self, s => s.claim_expiry_work(owner, lease, limit))
    }

    /// Moves a claimed subscription's watermark to `notified_until` and releases the claim, if
    /// `owner` still holds it.
    pub async fn finish_expiry_work(
        &self,
        id: i64,
        owner: &str,
        notified_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.finish_expiry_work(id, owner, notified_until))
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        dispatch!(self, s => s.close())
    }
}

/// Picks the backend from the URL scheme.
pub fn backend_of(url: &str) -> Result<Backend, StoreError> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "postgres" | "postgresql" => Ok(Backend::Postgres),
        "sqlite" => Ok(Backend::Sqlite),
        "" => Err(StoreError::InvalidUrl(format!(
            "'{}' has no scheme (use postgres://… or sqlite://…)",
            redact(url)
        ))),
        other => Err(StoreError::InvalidUrl(format!(
            "unsupported scheme '{other}' in '{}' (use postgres://… or sqlite://…)",
            redact(url)
        ))),
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // A multi-host URL (`u:pw@h1:1,h2:2`) is no URL to the `url` crate: cut the password
        // out of the user info by hand.
        Err(_) => {
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_string();
            };
            let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
            match authority.rfind('@').map(|at| &authority[..at]) {
                Some(userinfo) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***{}", &rest[userinfo.len()..])
                }
                _ => url.to_string(),
            }
        }
    }
}

/// Retries `attempt` with a short pause until it succeeds, fails for a reason other than
/// unavailability, or `deadline` passes.
async fn with_retry<T, Fut>(
    deadline: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && start.elapsed() + pause < deadline => {
                tracing::info!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_the_url_scheme() {
        assert_eq!(backend_of("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(
            backend_of("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(backend_of(DEFAULT_DATABASE_URL).unwrap(), Backend::Sqlite);
        let err = backend_of("mysql://root@h/db").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme 'mysql'"), "{err}");
        assert!(backend_of("registrar.db").is_err());
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            redact("postgres://u:secret@h1:5432,h2:5433/db?target_session_attrs=read-write"),
            "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
        assert_eq!(redact("postgres://u@h1,h2/db"), "postgres://u@h1,h2/db");
    }
}
