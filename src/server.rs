//! `serve`'s wiring: bind the listeners, plug the role into them, run the background jobs,
//! and stop cleanly on SIGINT/SIGTERM (stop reading, finish what is in flight, exit 0).

use crate::config::{ListenAddr, Role, Settings};
use crate::registrar::{Registrar, RegistrarConfig};
use crate::sip::request::{Invalid, Rejection, Request};
use crate::sip::response::Response;
use crate::sip::wire::Message;
use crate::sip::{Origin, Transport};
use crate::store::Store;
use crate::transport::retrans::ResponseCache;
use crate::transport::tcp::TcpListener;
use crate::transport::udp::UdpListener;
use crate::transport::{Handler, Stats};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// REGISTERs processed at once per instance; more are answered 503 at once (SPEC R13).
const MAX_IN_FLIGHT: usize = 2048;
/// Rows deleted per cleanup statement (SPEC S4).
const CLEANUP_BATCH: u32 = 1000;
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("the P-CSCF role is not implemented yet")]
    RoleNotImplemented,
}

/// A running server: its bound addresses, counters, and the handle that stops it.
pub struct Running {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    store: Store,
}

impl Running {
    /// Stops reading, lets requests in flight finish (up to a bound), closes the pool.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        self.store.close().await;
    }
}

/// Binds every listener and starts serving; returns once all are listening.
pub async fn start(settings: &Settings, store: Store) -> Result<Running, ServerError> {
    let stats = Arc::new(Stats::default());
    let handler = Arc::new(roles(settings, store.clone(), Arc::clone(&stats))?);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let cache = Arc::new(ResponseCache::new(settings.retrans_cache_bytes));
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for listen in &settings.listen {
        let bind_error = |source| ServerError::Bind {
            what: describe(listen),
            source,
        };
        match listen.transport {
            Transport::Udp => {
                let socket = tokio::net::UdpSocket::bind(listen.addr)
                    .await
                    .map_err(bind_error)?;
                udp.push(socket.local_addr().map_err(bind_error)?);
                let listener = UdpListener {
                    socket: Arc::new(socket),
                    handler: Arc::clone(&handler),
                    cache: Arc::clone(&cache),
                    stats: Arc::clone(&stats),
                    max_message_size: settings.max_message_size,
                };
                tasks.spawn(listener.run(shutdown.clone(), tasks.clone()));
            }
            Transport::Tcp => {
                let socket = tokio::net::TcpListener::bind(listen.addr)
                    .await
                    .map_err(bind_error)?;
                tcp.push(socket.local_addr().map_err(bind_error)?);
                let listener = TcpListener {
                    listener: socket,
                    handler: Arc::clone(&handler),
                    stats: Arc::clone(&stats),
                    max_message_size: settings.max_message_size,
                    idle_timeout: settings.tcp_idle_timeout,
                };
                tasks.spawn(listener.run(shutdown.clone(), tasks.clone()));
            }
        }
    }
    if settings.role == Role::Registrar {
        tasks.spawn(cleanup(
            store.clone(),
            settings.cleanup_interval,
            settings.cleanup_grace,
            shutdown.clone(),
        ));
    }
    tracing::info!(?udp, ?tcp, role = ?settings.role, "listening");
    Ok(Running {
        udp,
        tcp,
        stats,
        shutdown,
        tasks,
        store,
    })
}

/// The role `settings` asks for, behind the common request checks.
pub fn roles(settings: &Settings, store: Store, stats: Arc<Stats>) -> Result<Roles, ServerError> {
    let role = match settings.role {
        Role::Registrar => Active::Registrar(Registrar::new(
            store,
            RegistrarConfig {
                policies: settings.policies.clone(),
                case_sensitive: settings.case_sensitive,
                domains: settings.domains.clone(),
                retry_after: settings.retry_after,
                max_in_flight: MAX_IN_FLIGHT,
            },
        )),
        Role::Pcscf => return Err(ServerError::RoleNotImplemented),
    };
    Ok(Roles { role, stats })
}

/// `serve`: start, wait for SIGINT or SIGTERM, stop.
pub async fn run(settings: Settings, store: Store) -> Result<(), ServerError> {
    let running = start(&settings, store).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(ServerError::Signal),
        _ = term.recv() => Ok(()),
    }
}

/// SPEC S4: delete bindings expired longer than `grace`, every `interval`, in batches. Safe in
/// every instance at once.
async fn cleanup(store: Store, interval: Duration, grace: Duration, shutdown: CancellationToken) {
    let interval = interval.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match store.remove_expired_bindings(grace, CLEANUP_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired bindings removed"),
            Err(e) => tracing::warn!(error = %e, "expired-binding cleanup failed"),
        }
    }
}

fn describe(listen: &ListenAddr) -> String {
    format!("{}:{}", listen.transport, listen.addr)
}

/// The role behind the listeners, with the checks every request passes first (SPEC R12).
pub struct Roles {
    role: Active,
    stats: Arc<Stats>,
}

enum Active {
    Registrar(Registrar),
}

impl Roles {
    /// SPEC R11: a request without a Via cannot be answered (dropped and counted); any other
    /// malformed request is answered with the status naming what was wrong.
    fn invalid(&self, invalid: Invalid) -> Option<Response> {
        match invalid.rejection {
            Rejection::Drop(why) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(why, "request dropped");
                None
            }
            Rejection::Answer { code, reason } => {
                tracing::debug!(code, %reason, "malformed request");
                Some(Response::to(&invalid.message, code, reason))
            }
        }
    }
}

impl Handler for Roles {
    async fn handle(&self, message: Message, origin: Origin) -> Option<Response> {
        if !message.is_request() {
            // The registrar sends no requests, so no response is ours to consume.
            return None;
        }
        let request = match Request::from_message(message) {
            Ok(r) => r,
            Err(invalid) => return self.invalid(*invalid),
        };
        match &self.role {
            Active::Registrar(registrar) => registrar.handle(&request, &origin).await,
        }
    }
}
