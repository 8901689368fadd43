//! SPEC F1: which PostgreSQL host we write to. A URL may list several hosts, libpq's way
//! (`postgres://h1:5432,h2:5433/db?target_session_attrs=read-write`); sqlx connects to one host
//! and ignores `target_session_attrs`, so choosing the writable primary — at start and again
//! whenever the one we use fails or turns read-only — is done here.
//!
//! Three pieces keep the pool on the primary without a check on the hot path:
//! - every new pooled session asks `pg_is_in_recovery()`/`transaction_read_only` once
//!   (`after_connect`); a read-only session is refused, so the pool never holds one;
//! - a session that returned SQLSTATE 25006, and every session opened before the primary
//!   moved, is retired: the pool closes sessions older than the last retirement at their next
//!   acquire instead of reusing them;
//! - a resolver task, woken by those failures (and by connection errors), tries the hosts
//!   until one is writable and points the pool's future connections at it.

use crate::store::StoreError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long one host may take to accept a session and say whether it is writable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds over the hosts while none is writable (a failover in progress).
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// `true` when the session cannot write: a standby, or `default_transaction_read_only`.
pub(super) const READ_ONLY_CHECK: &str =
    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'";

/// One host of the URL, as its own single-host URL and a label for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HostUrl {
    pub label: String,
    pub url: String,
}

/// Splits a libpq multi-host URL into one URL per host, in the listed order, with
/// `target_session_attrs` removed (we always need a writable session, it is what a registrar
/// does). A single-host URL comes back as itself.
pub(super) fn split_hosts(url: &str) -> Result<Vec<HostUrl>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "no '://' after the scheme".to_string())?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let tail = without_session_attrs(tail)?;
    let mut out = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err("an empty host in the host list".into());
        }
        out.push(HostUrl {
            label: host.to_string(),
            url: format!("{scheme}://{userinfo}{host}{tail}"),
        });
    }
    Ok(out)
}

/// The path and query without `target_session_attrs`, refusing values that ask for a
/// read-only session: the registrar writes on every REGISTER.
fn without_session_attrs(tail: &str) -> Result<String, String> {
    let Some((path, query)) = tail.split_once('?') else {
        return Ok(tail.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => match value {
                "read-write" | "primary" | "any" => {}
                other => {
                    return Err(format!(
                        "target_session_attrs={other}: the registrar writes, so it always \
                         uses the read-write primary (read-write, primary or any)"
                    ));
                }
            },
            _ => kept.push(pair),
        }
    }
    Ok(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

/// The hosts, the one in use, and when sessions were last retired.
#[derive(Debug)]
pub(crate) struct Primary {
    hosts: Vec<(String, PgConnectOptions)>,
    current: AtomicUsize,
    born: Instant,
    /// Sessions opened before this instant (nanoseconds after `born`; 0: none) are retired.
    retired_before: AtomicU64,
    wake: Notify,
}

impl Primary {
    pub(super) fn new(hosts: Vec<(String, PgConnectOptions)>) -> Primary {
        Primary {
            hosts,
            current: AtomicUsize::new(0),
            born: Instant::now(),
            retired_before: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    pub(super) fn has_alternatives(&self) -> bool {
        self.hosts.len() > 1
    }

    /// The options of the host in use.
    pub(super) fn current(&self) -> (usize, &str, &PgConnectOptions) {
        let i = self.current.load(Ordering::Relaxed);
        (i, &self.hosts[i].0, &self.hosts[i].1)
    }

    /// The first writable host, trying the one in use first and then the others in the URL's
    /// order; the error of the last host tried when none is.
    pub(super) async fn find(&self) -> Result<usize, StoreError> {
        let first = self.current.load(Ordering::Relaxed);
        let order = std::iter::once(first).chain((0..self.hosts.len()).filter(|&i| i != first));
        let mut last = None;
        for i in order {
            let (label, options) = &self.hosts[i];
            match probe(options).await {
                Ok(true) => return Ok(i),
                Ok(false) => {
                    tracing::debug!(host = %label, "host is read-only");
                    last = Some(StoreError::ReadOnly(label.clone()));
                }
                Err(e) => {
                    tracing::debug!(host = %label, error = %e, "host not reachable");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::InvalidUrl("no host".into())))
    }

    /// Makes host `i` the one in use; `true` when that is a change.
    pub(super) fn switch_to(&self, i: usize) -> bool {
        self.current.swap(i, Ordering::Relaxed) != i
    }

    /// Something suggests the host in use is gone or read-only: have the resolver look.
    pub(super) fn suspect(&self) {
        self.wake.notify_one();
    }

    pub(super) async fn suspected(&self) {
        self.wake.notified().await;
    }

    /// Retires every session opened until now (SPEC F1: a session that returned 25006 is
    /// never reused, nor one that still points at a demoted primary).
    pub(super) fn retire_sessions(&self) {
        let now = self.born.elapsed().as_nanos().max(1);
        self.retired_before
            .fetch_max(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether a session of this age was opened before the last retirement.
    pub(super) fn is_retired(&self, age: Duration) -> bool {
        let before = self.retired_before.load(Ordering::Relaxed);
        if before == 0 {
            return false;
        }
        let opened = self.born.elapsed().saturating_sub(age).as_nanos();
        opened < u128::from(before)
    }

    /// Reacts to a failed database operation: a read-only error retires the sessions and
    /// wakes the resolver; a lost connection wakes the resolver.
    pub(super) fn observe(&self, error: &StoreError) {
        match error {
            StoreError::Unavailable(e) if is_read_only(e) => {
                tracing::warn!(
                    "the database refused a write as read-only (25006); looking for the primary"
                );
                self.retire_sessions();
                self.suspect();
            }
            StoreError::Unavailable(_) | StoreError::Busy | StoreError::ReadOnly(_) => {
                self.suspect()
            }
            _ => {}
        }
    }
}

/// SQLSTATE 25006, read_only_sql_transaction: a standby, or a primary made read-only.
pub(super) fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

/// Whether a host accepts a session within `PROBE_TIMEOUT` and that session can write.
async fn probe(options: &PgConnectOptions) -> Result<bool, StoreError> {
    let attempt = async {
        let mut conn = PgConnection::connect_with(options).await?;
        let read_only: bool = sqlx::query_scalar(READ_ONLY_CHECK)
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<bool, sqlx::Error>(!read_only)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no session within {PROBE_TIMEOUT:?}"),
            ),
        ))),
    }
}

/// Keeps the pool pointed at the writable primary until the pool closes: woken by a suspicion,
/// it tries the hosts every `RETRY_PAUSE` until one is writable.
pub(super) async fn follow_primary(primary: std::sync::Arc<Primary>, pool: sqlx::PgPool) {
    loop {
        tokio::select! {
            _ = primary.suspected() => {}
            // Notice a closed pool even when nothing goes wrong.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if pool.is_closed() { return; }
                continue;
            }
        }
        loop {
            if pool.is_closed() {
                return;
            }
            match primary.find().await {
                Ok(i) => {
                    if primary.switch_to(i) {
                        let (_, label, options) = primary.current();
                        tracing::warn!(host = %label, "the writable primary moved; new sessions go there");
                        pool.set_connect_options(options.clone());
                        primary.retire_sessions();
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no writable primary yet");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(url: &str) -> Vec<String> {
        split_hosts(url)
            .unwrap()
            .into_iter()
            .map(|h| h.url)
            .collect()
    }

    #[test]
    fn f1_a_multi_host_url_becomes_one_url_per_host() {
        assert_eq!(
            urls(
                "postgres://u:pw@h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=read-write&sslmode=disable"
            ),
            [
                "postgres://u:pw@h1:5432/db?sslmode=disable",
                "postgres://u:pw@h2:5433/db?sslmode=disable",
                "postgres://u:pw@[::1]:5434/db?sslmode=disable",
            ]
        );
        assert_eq!(
            urls("postgres://h1,h2/db"),
            ["postgres://h1/db", "postgres://h2/db"]
        );
        assert_eq!(
            urls("postgresql://u@h:1/db?target_session_attrs=primary"),
            ["postgresql://u@h:1/db"]
        );
        assert_eq!(urls("postgres://h:1"), ["postgres://h:1"]);
        let labels: Vec<String> = split_hosts("postgres://u:pw@h1:1,h2:2/db")
            .unwrap()
            .into_iter()
            .map(|h| h.label)
            .collect();
        assert_eq!(labels, ["h1:1", "h2:2"]);
    }

    #[test]
    fn f1_read_only_session_attrs_and_empty_hosts_are_refused() {
        let err = split_hosts("postgres://h1,h2/db?target_session_attrs=standby").unwrap_err();
        assert!(err.contains("target_session_attrs=standby"), "{err}");
        assert!(split_hosts("postgres://h1,,h2/db").is_err());
        assert!(split_hosts("h1,h2/db").is_err());
    }

    #[test]
    fn f1_sessions_older_than_a_retirement_are_retired() {
        let primary = Primary::new(Vec::new());
        assert!(!primary.is_retired(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(5));
        primary.retire_sessions();
        // Opened 4 ms after start (age ≈ elapsed − 4 ms): before the retirement.
        assert!(primary.is_retired(Duration::from_millis(2)));
        std::thread::sleep(Duration::from_millis(5));
        // Opened just now: after it.
        assert!(!primary.is_retired(Duration::ZERO));
    }
}
