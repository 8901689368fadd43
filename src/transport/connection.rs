//! The connection layer every stream transport shares (SPEC R1, H4, W3): a reader that takes
//! messages from the transport's `Incoming` and hands each to the role in a task of its own,
//! and one writer task that sends responses and anything else addressed to the peer through
//! its `Outgoing` (RFC 3261 §18: reuse the connection, found through the `Connections`
//! registry). Transports differ only in how bytes arrive: TCP and TLS (`tls.rs`) are byte
//! streams cut by Content-Length (`ByteStream`), WebSocket (`ws.rs`) carries one message per
//! WebSocket message.
//!
//! Limits, so that a peer cannot hold more than its share (H4):
//! - at most `max_inflight` of a connection's requests are being handled at once; the reader
//!   waits for one to finish before reading further (backpressure onto the peer's window);
//! - a write that does not complete within `write_timeout` closes the connection, so a peer
//!   that never reads holds a bounded amount of our memory, and not for long;
//! - a message must be complete within `message_timeout` of its first byte (slowloris);
//! - an idle connection is closed after `idle_timeout`.
//!
//! A message without Content-Length is answered 400 and one over the size limit 413, and the
//! connection closed (its framing is lost).

use super::framing::{Frame, Framer};
use super::{Handler, Stats, dispatch};
use crate::config::TcpLimits;
use crate::sip::response::Response;
use crate::sip::wire;
use crate::sip::{Origin, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Responses queued for one connection's writer. With `max_inflight` bounding the requests
/// being handled, this bounds what a peer that never reads can make us hold.
const WRITE_QUEUE: usize = 64;

/// What every connection of a server shares.
#[derive(Clone)]
pub struct ConnectionSettings {
    pub stats: Arc<Stats>,
    pub connections: Arc<Connections>,
    pub max_message_size: usize,
    pub limits: TcpLimits,
}

/// The writer of every open connection, by peer address.
#[derive(Default)]
pub struct Connections {
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

impl Connections {
    pub fn writer(&self, peer: SocketAddr) -> Option<mpsc::Sender<Vec<u8>>> {
        self.lock().get(&peer).filter(|tx| !tx.is_closed()).cloned()
    }

    /// Open connections (inbound and outbound).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, peer: SocketAddr, tx: mpsc::Sender<Vec<u8>>) {
        self.lock().insert(peer, tx);
    }

    fn remove(&self, peer: SocketAddr, tx: &mpsc::Sender<Vec<u8>>) {
        let mut writers = self.lock();
        if writers.get(&peer).is_some_and(|t| t.same_channel(tx)) {
            writers.remove(&peer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static NEXT_CONNECTION: AtomicI32 = AtomicI32::new(1);

/// The origin of a stream connection, with the id `location.connection_id` records for it.
pub fn origin(transport: Transport, peer: SocketAddr, local: SocketAddr) -> Origin {
    Origin {
        transport,
        peer,
        local,
        connection_id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
    }
}

/// Serves one connection in a task of its own; returns the writer that sends on it and the
/// task, which ends when the connection is closed.
pub fn start<H, I, O>(
    (incoming, outgoing): (I, O),
    origin: Origin,
    handler: Arc<H>,
    settings: &ConnectionSettings,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>)
where
    H: Handler,
    I: Incoming,
    O: Outgoing,
{
    let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    settings.connections.insert(origin.peer, tx.clone());
    let connection = Connection {
        handler,
        settings: settings.clone(),
        origin,
        inflight: Arc::new(Semaphore::new(settings.limits.max_inflight.max(1))),
    };
    let closed = shutdown.child_token();
    let writing = tasks.spawn(write(
        outgoing,
        rx,
        settings.limits.write_timeout,
        closed.clone(),
    ));
    let serving =
        tasks.spawn(connection.read(incoming, tx.clone(), writing, closed, tasks.clone()));
    (tx, serving)
}

/// Sends what is queued; a write that takes longer than `timeout` closes the connection.
async fn write<O: Outgoing>(
    mut writer: O,
    mut rx: mpsc::Receiver<Vec<u8>>,
    timeout: std::time::Duration,
    closed: CancellationToken,
) {
    loop {
        let bytes = tokio::select! {
            _ = closed.cancelled() => break,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
        };
        match tokio::time::timeout(timeout, writer.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::debug!("stream write timed out; closing the connection");
                break;
            }
        }
    }
    // Whatever ended the writing ends the reading too.
    closed.cancel();
    let _ = tokio::time::timeout(timeout, writer.close()).await;
}

struct Connection<H> {
    handler: Arc<H>,
    settings: ConnectionSettings,
    origin: Origin,
    inflight: Arc<Semaphore>,
}

impl<H: Handler> Connection<H> {
    async fn read<I: Incoming>(
        self,
        mut incoming: I,
        tx: mpsc::Sender<Vec<u8>>,
        writing: tokio::task::JoinHandle<()>,
        closed: CancellationToken,
        tasks: TaskTracker,
    ) {
        let peer = self.origin.peer;
        let limits = self.settings.limits;
        let this = Arc::new(self);
        loop {
            let frame = tokio::select! {
                _ = closed.cancelled() => break,
                f = incoming.next(&limits) => match f {
                    Ok(frame) => frame,
                    Err(ended) => {
                        ended.log(peer, &this.settings.stats);
                        break;
                    }
                },
            };
            match frame {
                Frame::Incomplete => {}
                Frame::Ping => {
                    let _ = tx.send(b"\r\n".to_vec()).await;
                }
                Frame::Message(data) => {
                    // Backpressure (H4): wait for a slot before reading any further.
                    let permit = tokio::select! {
                        _ = closed.cancelled() => break,
                        p = Arc::clone(&this.inflight).acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    };
                    let (this, tx) = (Arc::clone(&this), tx.clone());
                    tasks.spawn(async move {
                        this.message(data, tx).await;
                        drop(permit);
                    });
                }
                Frame::NoLength(head) => {
                    this.refuse(&head, 400, "Missing Content-Length", &tx).await;
                    break;
                }
                Frame::TooLarge(head) => {
                    this.refuse(&head, 413, "Request Entity Too Large", &tx)
                        .await;
                    break;
                }
            }
        }
        this.settings.connections.remove(peer, &tx);
        drop(tx);
        // Requests still being handled hold senders; the writer ends once they are answered or
        // its write deadline passes. Stop reading now either way.
        if closed.is_cancelled() {
            writing.abort();
        }
        let _ = writing.await;
    }

    async fn message(&self, data: Vec<u8>, tx: mpsc::Sender<Vec<u8>>) {
        let message = match wire::parse(&data) {
            Ok(m) => m,
            Err(_) => {
                self.settings.stats.drop_input("unparseable");
                return;
            }
        };
        if let Some(response) = dispatch(self.handler.as_ref(), message, self.origin).await {
            let _ = tx.send(response.to_bytes()).await;
        }
    }

    /// Answers a message whose framing cannot be trusted, if its headers allow an answer.
    async fn refuse(
        &self,
        head: &[u8],
        code: u16,
        reason: &'static str,
        tx: &mpsc::Sender<Vec<u8>>,
    ) {
        self.settings.stats.drop_input("framing");
        if let Ok(message) = wire::parse(head)
            && message.is_request()
            && message.header("Via").is_some()
        {
            if let Some(method) = message.method() {
                crate::metrics::METRICS.response(method, code);
            }
            let _ = tx
                .send(Response::to(&message, code, reason).to_bytes())
                .await;
        }
    }
}

/// How a transport's messages arrive.
pub trait Incoming: Send + 'static {
    /// The next frame (never `Frame::Incomplete`), or why the connection is over. It must
    /// apply `limits`' message and idle deadlines, and be cancel-safe.
    fn next(&mut self, limits: &TcpLimits) -> impl Future<Output = Result<Frame, Ended>> + Send;
}

/// How a transport sends one message (a response, a request, a keep-alive pong).
pub trait Outgoing: Send + 'static {
    fn send(&mut self, bytes: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the connection politely (TCP FIN, TLS close_notify, WebSocket Close).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Why a connection stopped reading.
#[derive(Debug)]
pub enum Ended {
    /// The peer closed it.
    Closed,
    /// A read failed (reset and the like).
    Failed(String),
    /// The peer broke the transport's own protocol (a bad WebSocket frame, a message over the
    /// size limit): counted as dropped input under this reason.
    Broken(&'static str, String),
    /// A message was not complete within the message timeout of its first byte.
    Late,
    /// Nothing arrived for the idle timeout.
    Idle,
}

impl Ended {
    fn log(&self, peer: SocketAddr, stats: &Stats) {
        match self {
            Ended::Closed => {}
            Ended::Failed(e) => tracing::debug!(%peer, error = %e, "stream read failed"),
            Ended::Broken(reason, e) => {
                stats.drop_input(reason);
                tracing::debug!(%peer, error = %e, "stream broken by the peer; closed");
            }
            Ended::Late => {
                tracing::debug!(%peer, "message not complete within the deadline; closed")
            }
            Ended::Idle => tracing::debug!(%peer, "idle connection closed"),
        }
    }
}

/// A byte stream (TCP, TLS) cut into messages by Content-Length (`framing.rs`).
pub struct ByteStream<R> {
    reader: R,
    framer: Framer,
    chunk: Vec<u8>,
    /// When the message being received must be complete (its first byte + message_timeout).
    message_deadline: Option<Instant>,
}

/// The sending half of a byte stream.
pub struct ByteSink<W>(W);

/// A byte stream's halves as the connection layer takes them.
pub fn byte_stream<R, W>(
    (reader, writer): (R, W),
    max_message_size: usize,
) -> (ByteStream<R>, ByteSink<W>) {
    let incoming = ByteStream {
        reader,
        framer: Framer::new(max_message_size),
        chunk: vec![0u8; 16 * 1024],
        message_deadline: None,
    };
    (incoming, ByteSink(writer))
}

impl<R: AsyncRead + Unpin + Send + 'static> Incoming for ByteStream<R> {
    async fn next(&mut self, limits: &TcpLimits) -> Result<Frame, Ended> {
        loop {
            match self.framer.next_frame() {
                Frame::Incomplete => {}
                frame => return Ok(frame),
            }
            self.message_deadline = match (self.framer.is_partial(), self.message_deadline) {
                (false, _) => None,
                (true, Some(d)) => Some(d),
                (true, None) => Some(Instant::now() + limits.message_timeout),
            };
            let wait_until = self
                .message_deadline
                .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
            match tokio::time::timeout_at(wait_until, self.reader.read(&mut self.chunk)).await {
                Ok(Ok(0)) => return Err(Ended::Closed),
                Ok(Ok(n)) => self.framer.push(&self.chunk[..n]),
                Ok(Err(e)) => return Err(Ended::Failed(e.to_string())),
                Err(_) if self.message_deadline.is_some() => return Err(Ended::Late),
                Err(_) => return Err(Ended::Idle),
            }
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Outgoing for ByteSink<W> {
    async fn send(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.0.write_all(&bytes).await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// A handshake between accept and the connection layer (TLS, the WebSocket upgrade). It counts
/// as a message (SPEC W3): one not done within the message timeout closes the connection, as
/// does one that fails; either is counted as dropped input under `reason`. `None` then, or on
/// shutdown.
pub async fn handshake<T, E: std::fmt::Display>(
    what: &'static str,
    reason: &'static str,
    peer: SocketAddr,
    settings: &ConnectionSettings,
    shutdown: &CancellationToken,
    running: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let bounded = tokio::time::timeout(settings.limits.message_timeout, running);
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => return None,
        outcome = bounded => outcome,
    };
    match outcome {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            settings.stats.drop_input(reason);
            tracing::debug!(%peer, error = %e, "{what} failed; connection closed");
            None
        }
        Err(_) => {
            settings.stats.drop_input(reason);
            tracing::debug!(%peer, "{what} not done within the message timeout; connection closed");
            None
        }
    }
}
