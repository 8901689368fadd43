//! TCP: the listener, its connection limits, and the connections it accepts or the outbound
//! side opens. Framing, the per-connection limits and the writer are the shared connection
//! layer's (`connection.rs`); TCP only supplies the byte stream. A `tls:` listener is this
//! listener with a TLS handshake between accept and the connection layer (`tls.rs`).

use super::Handler;
use super::connection::{self, ConnectionSettings};
use crate::sip::Transport;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct TcpListener<H> {
    pub listener: TokioListener,
    pub handler: Arc<H>,
    pub settings: ConnectionSettings,
    pub slots: Arc<Slots>,
    /// Set for a `tls:` listener (SPEC W1).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Accepted connections, in all and per source IP (SPEC H4). A connection beyond either limit
/// is closed at once, unanswered; a `Slot` is given back when its connection ends, however it
/// ends.
pub struct Slots {
    max_total: usize,
    max_per_ip: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_ip: usize) -> Slots {
        Slots {
            max_total,
            max_per_ip,
            held: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.lock();
        let per_ip = held.1.get(&ip).copied().unwrap_or(0);
        if held.0 >= self.max_total || per_ip >= self.max_per_ip {
            return None;
        }
        held.0 += 1;
        held.1.insert(ip, per_ip + 1);
        crate::metrics::METRICS.tcp_connections.set(held.0 as i64);
        Some(Slot {
            slots: Arc::clone(self),
            ip,
        })
    }

    /// Connections holding a slot.
    pub fn held(&self) -> usize {
        self.lock().0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        held.0 = held.0.saturating_sub(1);
        crate::metrics::METRICS.tcp_connections.set(held.0 as i64);
        if let Some(n) = held.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.ip);
            }
        }
    }
}

/// Serves a TCP `stream` through the connection layer.
pub fn start_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    handler: Arc<H>,
    settings: &ConnectionSettings,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let _ = stream.set_nodelay(true);
    connection::start(
        stream.into_split(),
        connection::origin(Transport::Tcp, peer, local),
        handler,
        settings,
        shutdown,
        tasks,
    )
}

impl<H: Handler> TcpListener<H> {
    pub async fn run(self, shutdown: CancellationToken, tasks: TaskTracker) {
        let local = match self.listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "TCP listener has no address");
                return;
            }
        };
        let mut backoff = Duration::from_millis(10);
        let mut refused_logged: Option<std::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then keep serving.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(slot) = self.slots.take(peer.ip()) else {
                // Closed at once, unanswered (H4); logged at most once a second.
                if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    refused_logged = Some(std::time::Instant::now());
                    tracing::warn!(%peer, "TCP connection limit reached; connection closed");
                }
                drop(stream);
                continue;
            };
            let handler = Arc::clone(&self.handler);
            let Some(acceptor) = &self.tls else {
                let (_, serving) = start_connection(
                    stream,
                    peer,
                    local,
                    handler,
                    &self.settings,
                    shutdown.clone(),
                    &tasks,
                );
                // The slot is held for as long as the connection is open.
                tasks.spawn(async move {
                    let _ = serving.await;
                    drop(slot);
                });
                continue;
            };
            let (acceptor, settings) = (acceptor.clone(), self.settings.clone());
            let (shutdown, spawner) = (shutdown.clone(), tasks.clone());
            tasks.spawn(async move {
                let Some(stream) =
                    super::tls::handshake(&acceptor, stream, peer, &settings, &shutdown).await
                else {
                    return;
                };
                let (_, serving) = super::tls::start_connection(
                    stream, peer, local, handler, &settings, shutdown, &spawner,
                );
                let _ = serving.await;
                drop(slot);
            });
        }
    }
}
