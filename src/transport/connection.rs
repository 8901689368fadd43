//! The connection layer every stream transport shares (SPEC R1, H4): a reader that frames
//! messages (`framing`) and hands each to the role in a task of its own, and one writer task
//! that sends responses and anything else addressed to the peer (RFC 3261 §18: reuse the
//! connection, found through the `Connections` registry). TCP and TLS (`tls.rs`) plug their
//! streams in here; they differ only in how bytes arrive.
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
pub fn start<H, R, W>(
    (reader, writer): (R, W),
    origin: Origin,
    handler: Arc<H>,
    settings: &ConnectionSettings,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>)
where
    H: Handler,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
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
        writer,
        rx,
        settings.limits.write_timeout,
        closed.clone(),
    ));
    let serving = tasks.spawn(connection.read(reader, tx.clone(), writing, closed, tasks.clone()));
    (tx, serving)
}

/// Sends what is queued; a write that takes longer than `timeout` closes the connection.
async fn write<W: AsyncWrite + Unpin>(
    mut writer: W,
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
        match tokio::time::timeout(timeout, writer.write_all(&bytes)).await {
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
    let _ = tokio::time::timeout(timeout, writer.shutdown()).await;
}

struct Connection<H> {
    handler: Arc<H>,
    settings: ConnectionSettings,
    origin: Origin,
    inflight: Arc<Semaphore>,
}

impl<H: Handler> Connection<H> {
    async fn read<R: AsyncRead + Unpin>(
        self,
        mut reader: R,
        tx: mpsc::Sender<Vec<u8>>,
        writing: tokio::task::JoinHandle<()>,
        closed: CancellationToken,
        tasks: TaskTracker,
    ) {
        let peer = self.origin.peer;
        let limits = self.settings.limits;
        let this = Arc::new(self);
        let mut framer = Framer::new(this.settings.max_message_size);
        let mut chunk = vec![0u8; 16 * 1024];
        // When the message being received must be complete (its first byte + message_timeout).
        let mut message_deadline: Option<Instant> = None;
        'connection: loop {
            loop {
                match framer.next_frame() {
                    Frame::Incomplete => break,
                    Frame::Ping => {
                        let _ = tx.send(b"\r\n".to_vec()).await;
                    }
                    Frame::Message(data) => {
                        // Backpressure (H4): wait for a slot before reading any further.
                        let permit = tokio::select! {
                            _ = closed.cancelled() => break 'connection,
                            p = Arc::clone(&this.inflight).acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break 'connection,
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
                        break 'connection;
                    }
                    Frame::TooLarge(head) => {
                        this.refuse(&head, 413, "Request Entity Too Large", &tx)
                            .await;
                        break 'connection;
                    }
                }
            }
            message_deadline = match (framer.is_partial(), message_deadline) {
                (false, _) => None,
                (true, Some(d)) => Some(d),
                (true, None) => Some(Instant::now() + limits.message_timeout),
            };
            let wait_until =
                message_deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
            let read = tokio::select! {
                _ = closed.cancelled() => break,
                r = tokio::time::timeout_at(wait_until, reader.read(&mut chunk)) => r,
            };
            match read {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => framer.push(&chunk[..n]),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "stream read failed");
                    break;
                }
                Err(_) if message_deadline.is_some() => {
                    tracing::debug!(%peer, "message not complete within the deadline; closed");
                    break;
                }
                Err(_) => {
                    tracing::debug!(%peer, "idle connection closed");
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
