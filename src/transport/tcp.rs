//! TCP: the listener, and the connections it accepts or the outbound side opens. A task per
//! connection frames messages by Content-Length (SPEC R1) and handles each in a task of its
//! own; one writer task per connection sends responses — and, through the `Connections`
//! registry, anything else addressed to that peer (RFC 3261 §18: reuse the connection). Idle
//! connections are closed; a message without Content-Length is answered 400 and one over the
//! size limit 413, and the connection closed (its framing is lost).

use super::{Handler, Stats, dispatch};
use crate::sip::response::Response;
use crate::sip::wire::{self, parse_u32};
use crate::sip::{Origin, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Open connections at most; beyond, accepting waits for one to close.
const MAX_CONNECTIONS: usize = 4096;

pub struct TcpListener<H> {
    pub listener: TokioListener,
    pub handler: Arc<H>,
    pub settings: ConnectionSettings,
}

/// What every connection of a server shares.
#[derive(Clone)]
pub struct ConnectionSettings {
    pub stats: Arc<Stats>,
    pub connections: Arc<Connections>,
    pub max_message_size: usize,
    pub idle_timeout: Duration,
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

/// Serves `stream` in a task of its own; returns the writer that sends on it and the task, which
/// ends when the connection is closed.
pub fn start_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    handler: Arc<H>,
    settings: &ConnectionSettings,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
    settings.connections.insert(peer, tx.clone());
    let connection = Connection {
        handler,
        settings: settings.clone(),
        origin: Origin {
            transport: Transport::Tcp,
            peer,
            local,
            connection_id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        },
    };
    let writer = tx.clone();
    let inner_tasks = tasks.clone();
    let serving = tasks.spawn(connection.serve(stream, writer, rx, shutdown, inner_tasks));
    (tx, serving)
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
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return;
            };
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
            let (_, serving) = start_connection(
                stream,
                peer,
                local,
                Arc::clone(&self.handler),
                &self.settings,
                shutdown.clone(),
                &tasks,
            );
            // The permit is held for as long as the connection is open.
            tasks.spawn(async move {
                let _ = serving.await;
                drop(permit);
            });
        }
    }
}

struct Connection<H> {
    handler: Arc<H>,
    settings: ConnectionSettings,
    origin: Origin,
}

/// What the start of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Incomplete,
    /// A CRLFCRLF ping (RFC 5626 §3.5.1) of this many bytes: answer CRLF.
    Ping(usize),
    /// Stray line ends before a message: skip them.
    Skip(usize),
    Message(usize),
    /// A complete header section (this long) without Content-Length.
    NoLength(usize),
    TooLarge,
}

impl<H: Handler> Connection<H> {
    async fn serve(
        self,
        stream: TcpStream,
        tx: mpsc::Sender<Vec<u8>>,
        mut rx: mpsc::Receiver<Vec<u8>>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let peer = self.origin.peer;
        let writing = tasks.spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        let this = Arc::new(self);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        'connection: loop {
            loop {
                match frame(&buf, this.settings.max_message_size) {
                    Frame::Incomplete => break,
                    Frame::Ping(n) => {
                        buf.drain(..n);
                        let _ = tx.send(b"\r\n".to_vec()).await;
                    }
                    Frame::Skip(n) => {
                        buf.drain(..n);
                    }
                    Frame::Message(n) => {
                        let data: Vec<u8> = buf.drain(..n).collect();
                        let (this, tx) = (Arc::clone(&this), tx.clone());
                        tasks.spawn(async move { this.message(data, tx).await });
                    }
                    Frame::NoLength(head) => {
                        this.refuse(&buf[..head], 400, "Missing Content-Length", &tx)
                            .await;
                        break 'connection;
                    }
                    Frame::TooLarge => {
                        let head = buf.len().min(this.settings.max_message_size);
                        this.refuse(&buf[..head], 413, "Request Entity Too Large", &tx)
                            .await;
                        break 'connection;
                    }
                }
            }
            let read = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(this.settings.idle_timeout, reader.read(&mut chunk)) => r,
            };
            match read {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TCP read failed");
                    break;
                }
                Err(_) => {
                    tracing::debug!(%peer, "idle TCP connection closed");
                    break;
                }
            }
        }
        this.settings.connections.remove(peer, &tx);
        drop(tx);
        let _ = writing.await;
    }

    async fn message(&self, data: Vec<u8>, tx: mpsc::Sender<Vec<u8>>) {
        let message = match wire::parse(&data) {
            Ok(m) => m,
            Err(_) => {
                self.settings.stats.dropped.fetch_add(1, Ordering::Relaxed);
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
        self.settings.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if let Ok(message) = wire::parse(head)
            && message.is_request()
            && message.header("Via").is_some()
        {
            let _ = tx
                .send(Response::to(&message, code, reason).to_bytes())
                .await;
        }
    }
}

fn frame(buf: &[u8], max: usize) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::Ping(4);
    }
    let blank = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if blank > 0 {
        return if blank == buf.len() {
            Frame::Incomplete
        } else {
            Frame::Skip(blank)
        };
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > max {
            Frame::TooLarge
        } else {
            Frame::Incomplete
        };
    };
    let head_len = end + 4;
    let Some(length) = content_length(&buf[..end]) else {
        return Frame::NoLength(head_len);
    };
    let total = head_len + length as usize;
    if total > max {
        Frame::TooLarge
    } else if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message(total)
    }
}

/// The Content-Length (or `l`) of a header section, if present and valid.
fn content_length(head: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
            .then(|| parse_u32(value))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r1_frames_by_content_length() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nl: 4\r\n\r\nbodyNEXT";
        assert_eq!(frame(msg, 1000), Frame::Message(msg.len() - 4));
        assert_eq!(frame(&msg[..20], 1000), Frame::Incomplete);
        assert_eq!(frame(&msg[..msg.len() - 6], 1000), Frame::Incomplete);
        assert_eq!(frame(b"\r\n\r\nOPTIONS", 1000), Frame::Ping(4));
        assert_eq!(frame(b"\r\nOPTIONS", 1000), Frame::Skip(2));
        assert_eq!(
            frame(b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\n\r\n", 1000),
            Frame::NoLength(33)
        );
        assert_eq!(
            frame(
                b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 5000\r\n\r\n",
                1000
            ),
            Frame::TooLarge
        );
        assert_eq!(frame(&[b'a'; 2000], 1000), Frame::TooLarge);
    }
}
