//! The HTTP listener beside the SIP transports (SPEC O1, O3): `/metrics`, `/healthz`,
//! `/readyz`, and the admin API under `/v1` (`api.rs`).
//! axum on the runtime already in use; nothing here is on a REGISTER's path.
//!
//! Readiness is the database answering: a probe task pings it every second and `/readyz` is
//! 200 while the last answer is under 5 s old (the listeners are bound before this listener
//! starts). Database-backed gauges are refreshed by a scrape at most every 10 s.

pub mod api;

use crate::metrics::{METRICS, StateLabel};
use crate::store::{RegState, Store};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A database answer older than this makes the server not ready.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// Database-backed gauges are read at most this often.
const GAUGES_EVERY: Duration = Duration::from_secs(10);
const PROBE_EVERY: Duration = Duration::from_secs(1);

struct Ops {
    store: Store,
    pcscf: bool,
    started: Instant,
    /// When the database last answered the probe.
    last_answer: Mutex<Option<Instant>>,
    gauges_read: tokio::sync::Mutex<Option<Instant>>,
}

/// Binds `addr` (so that a failure is `serve`'s start-up error) and serves until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    api: api::Api,
    pcscf: bool,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let store = api.store.clone();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let ops = Arc::new(Ops {
        store,
        pcscf,
        started: Instant::now(),
        last_answer: Mutex::new(None),
        gauges_read: tokio::sync::Mutex::new(None),
    });
    tasks.spawn(probe(Arc::clone(&ops), shutdown.clone()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ops)
        .merge(api::routes(Arc::new(api)))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({ "error": "not found" })),
            )
        });
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    Ok(bound)
}

async fn probe(ops: Arc<Ops>, shutdown: CancellationToken) {
    loop {
        let answered = tokio::time::timeout(READY_WITHIN, ops.store.ping()).await;
        if matches!(answered, Ok(Ok(()))) {
            *ops.last_answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let last = *ops.last_answer.lock().unwrap_or_else(|e| e.into_inner());
    match last {
        Some(at) if at.elapsed() < READY_WITHIN => (StatusCode::OK, "ready\n".to_string()),
        Some(at) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the database has not answered for {} s\n",
                at.elapsed().as_secs()
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the database has not answered since the start {} s ago\n",
                ops.started.elapsed().as_secs()
            ),
        ),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    refresh_gauges(&ops).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        METRICS.encode(),
    )
}

/// Reads the database-backed gauges, unless a scrape did within the last 10 s. A database
/// that does not answer leaves them as they were (`/readyz` says why).
async fn refresh_gauges(ops: &Ops) {
    let mut read = ops.gauges_read.lock().await;
    if read.is_some_and(|at| at.elapsed() < GAUGES_EVERY) {
        return;
    }
    *read = Some(Instant::now());
    let wait = Duration::from_secs(2);
    if let Ok(Ok(counts)) = tokio::time::timeout(wait, ops.store.location_counts()).await {
        METRICS.bindings.set(counts.bindings);
        METRICS.aors.set(counts.aors);
    }
    if ops.pcscf
        && let Ok(Ok(states)) = tokio::time::timeout(wait, ops.store.pcontact_counts()).await
    {
        for state in [
            RegState::Registered,
            RegState::RegPending,
            RegState::Deregistered,
            RegState::DeregPendingPublish,
        ] {
            let n = states
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| n)
                .sum();
            METRICS
                .pcscf_pcontacts
                .get_or_create(&StateLabel {
                    state: state_label(state),
                })
                .set(n);
        }
    }
}

fn state_label(state: RegState) -> &'static str {
    match state {
        RegState::Registered => "REGISTERED",
        RegState::RegPending => "REG_PENDING",
        RegState::Deregistered => "DEREGISTERED",
        RegState::DeregPendingPublish => "DEREG_PENDING_PUBLISH",
        RegState::Other(_) => "other",
    }
}
