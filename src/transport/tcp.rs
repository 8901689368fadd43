//! TCP: the listener, its connection limits, and the connections it accepts or the outbound
//! side opens. Framing, the per-connection limits and the writer are the shared connection
//! layer's (`connection.rs`); TCP only supplies the byte stream. `tls:`, `ws:` and `wss:`
//! listeners are this listener with handshakes between accept and the connection layer: TLS
//! (`tls.rs`), the WebSocket upgrade (`ws.rs`), or both.

use super::Handler;
use super::connection::{self, ConnectionSettings, Incoming, Outgoing};
use super::ws::{WsIncoming, WsOutgoing};
use crate::sip::Transport;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct TcpListener<H> {
    pub listener: TokioListener,
    pub handler: Arc<H>,
    pub settings: ConnectionSettings,
    pub slots: Arc<Slots>,
    pub handshake: Handshake,
}

/// What runs between accept and the connection layer; each step is bounded by the message
/// timeout (W3).
#[derive(Clone)]
pub enum Handshake {
    /// `tcp:`: none.
    None,
    /// `tls:` (SPEC W1).
    Tls(TlsAcceptor),
    /// `ws:` (SPEC W2): the HTTP upgrade.
    Ws,
    /// `wss:`: TLS, then the HTTP upgrade.
    Wss(TlsAcceptor),
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
        connection::byte_stream(stream.into_split(), settings.max_message_size),
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
            let (handshake, settings) = (self.handshake.clone(), self.settings.clone());
            let (shutdown, spawner) = (shutdown.clone(), tasks.clone());
            tasks.spawn(async move {
                let connection = Accepted {
                    peer,
                    local,
                    settings: &settings,
                    shutdown: &shutdown,
                };
                if let Some(serving) = connection.serve(stream, handshake, handler, &spawner).await
                {
                    let _ = serving.await;
                }
                // The slot is held for as long as the connection is open.
                drop(slot);
            });
        }
    }
}

/// An accepted connection on its way to the connection layer.
struct Accepted<'a> {
    peer: SocketAddr,
    local: SocketAddr,
    settings: &'a ConnectionSettings,
    shutdown: &'a CancellationToken,
}

impl Accepted<'_> {
    /// Runs the listener's handshakes and starts serving; `None` when a handshake failed.
    async fn serve<H: Handler>(
        &self,
        stream: TcpStream,
        handshake: Handshake,
        handler: Arc<H>,
        tasks: &TaskTracker,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let max = self.settings.max_message_size;
        let serving = match handshake {
            Handshake::None => return Some(self.start_tcp(stream, handler, tasks)),
            Handshake::Tls(acceptor) => {
                let stream = self.tls(&acceptor, stream).await?;
                let io = connection::byte_stream(tokio::io::split(stream), max);
                self.start(io, Transport::Tls, handler, tasks)
            }
            Handshake::Ws => {
                let _ = stream.set_nodelay(true);
                let io = self.upgrade(stream).await?;
                self.start(io, Transport::Ws, handler, tasks)
            }
            Handshake::Wss(acceptor) => {
                let stream = self.tls(&acceptor, stream).await?;
                let io = self.upgrade(stream).await?;
                self.start(io, Transport::Wss, handler, tasks)
            }
        };
        Some(serving)
    }

    fn start_tcp<H: Handler>(
        &self,
        stream: TcpStream,
        handler: Arc<H>,
        tasks: &TaskTracker,
    ) -> tokio::task::JoinHandle<()> {
        let (settings, shutdown) = (self.settings, self.shutdown.clone());
        start_connection(
            stream, self.peer, self.local, handler, settings, shutdown, tasks,
        )
        .1
    }

    fn start<H: Handler, I: Incoming, O: Outgoing>(
        &self,
        io: (I, O),
        transport: Transport,
        handler: Arc<H>,
        tasks: &TaskTracker,
    ) -> tokio::task::JoinHandle<()> {
        let origin = connection::origin(transport, self.peer, self.local);
        let shutdown = self.shutdown.clone();
        connection::start(io, origin, handler, self.settings, shutdown, tasks).1
    }

    async fn upgrade<S>(&self, stream: S) -> Option<(WsIncoming<S>, WsOutgoing<S>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        super::ws::upgrade(stream, self.peer, self.settings, self.shutdown).await
    }

    async fn tls(
        &self,
        acceptor: &TlsAcceptor,
        stream: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        super::tls::handshake(acceptor, stream, self.peer, self.settings, self.shutdown).await
    }
}
