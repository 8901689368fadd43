//! SIP over WebSocket (RFC 7118; SPEC W2, W3): the HTTP upgrade a `ws:` or `wss:` listener
//! runs between accept (and, for `wss:`, the TLS handshake) and the shared connection layer,
//! and how messages arrive and leave on it. One SIP message is one WebSocket message, so there
//! is no Content-Length framing here; the connection layer's limits, writer and in-flight bound
//! are the same as for TCP and TLS.

use super::connection::{self, ConnectionSettings, Ended, Incoming, Outgoing};
use super::framing::Frame;
use crate::config::TcpLimits;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// The subprotocol RFC 7118 §4 registers for SIP.
const SUBPROTOCOL: &str = "sip";

/// The HTTP upgrade of an accepted stream (TCP, or TLS for `wss:`). The client must offer the
/// `sip` subprotocol; one that does not gets 400 and the connection is closed (RFC 7118 §4:
/// without it neither side knows the messages are SIP). The upgrade counts as a message (W3):
/// not done within `--tcp-message-timeout`, the connection is closed. `None` when it failed.
pub async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    settings: &ConnectionSettings,
    shutdown: &CancellationToken,
) -> Option<(WsIncoming<S>, WsOutgoing<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let progress = Arc::new(Progress::default());
    let watched = Watched {
        inner: stream,
        progress: Arc::clone(&progress),
    };
    // A WebSocket message, like any SIP message, is bounded by --max-message-size (H4); a
    // fragmented one is reassembled up to that bound and no further.
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let upgrading =
        tokio_tungstenite::accept_hdr_async_with_config(watched, offer_sip, Some(config));
    let socket = connection::handshake(
        "WebSocket upgrade",
        "ws_upgrade",
        peer,
        settings,
        shutdown,
        upgrading,
    )
    .await?;
    progress.message_done();
    let (sink, stream) = socket.split();
    let incoming = WsIncoming {
        stream,
        progress,
        idle_since: Instant::now(),
    };
    Some((incoming, WsOutgoing(sink)))
}

/// The upgrade's answer: `Sec-WebSocket-Protocol: sip` when the client offered it, else 400.
#[allow(clippy::result_large_err)] // the type tungstenite's callback must return
fn offer_sip(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if !offered {
        let mut refusal =
            ErrorResponse::new(Some("the sip WebSocket subprotocol is required".into()));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

type Socket<S> = WebSocketStream<Watched<S>>;

/// Messages arriving on a WebSocket.
pub struct WsIncoming<S> {
    stream: SplitStream<Socket<S>>,
    progress: Arc<Progress>,
    /// The last complete message (or the upgrade): the idle timeout counts from here.
    idle_since: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Incoming for WsIncoming<S> {
    async fn next(&mut self, limits: &TcpLimits) -> Result<Frame, Ended> {
        loop {
            // tungstenite only hands over whole messages, so the slowloris bound (H4) counts
            // from the first byte the socket delivered since the last message instead.
            let started = self.progress.started();
            let deadline = match started {
                Some(first_byte) => first_byte + limits.message_timeout,
                None => self.idle_since + limits.idle_timeout,
            };
            let message = tokio::select! {
                m = self.stream.next() => m,
                // A message began while we waited for the idle deadline: wait for its own.
                _ = self.progress.began.notified(), if started.is_none() => continue,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(if started.is_some() { Ended::Late } else { Ended::Idle });
                }
            };
            self.progress.message_done();
            self.idle_since = Instant::now();
            match message {
                None => return Err(Ended::Closed),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Err(Ended::Closed);
                }
                Some(Err(WsError::Io(e))) => return Err(Ended::Failed(e.to_string())),
                Some(Err(e)) => return Err(Ended::Broken("websocket", e.to_string())),
                Some(Ok(Message::Text(text))) => {
                    if let Some(frame) = frame_of(text.as_bytes()) {
                        return Ok(frame);
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some(frame) = frame_of(&bytes) {
                        return Ok(frame);
                    }
                }
                // tungstenite answers a Ping with a Pong and a Close with a Close itself
                // (RFC 6455 §5.5; RFC 7118 §6); either still counts as life on the connection.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
            }
        }
    }
}

/// One WebSocket message as the connection layer sees it: a SIP message, or an RFC 5626
/// keep-alive (W3: a message holding a double CRLF is answered with a single CRLF). A message
/// of line ends only that is not a ping is ignored, as between messages on TCP.
fn frame_of(bytes: &[u8]) -> Option<Frame> {
    if bytes.iter().all(|&b| b == b'\r' || b == b'\n') {
        return bytes
            .windows(4)
            .any(|w| w == b"\r\n\r\n")
            .then_some(Frame::Ping);
    }
    Some(Frame::Message(bytes.to_vec()))
}

/// Messages leaving on a WebSocket: text frames, as SIP is text and browsers expect it
/// (RFC 7118 §5.1 allows either); binary only for bytes that are not UTF-8.
pub struct WsOutgoing<S>(SplitSink<Socket<S>, Message>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Outgoing for WsOutgoing<S> {
    async fn send(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        let message = match String::from_utf8(bytes) {
            Ok(text) => Message::text(text),
            Err(e) => Message::binary(e.into_bytes()),
        };
        self.0.send(message).await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.0.close().await;
    }
}

/// When the first byte of the message being received arrived, as seen below tungstenite.
#[derive(Default)]
struct Progress {
    first_byte: Mutex<Option<Instant>>,
    began: Notify,
}

impl Progress {
    fn started(&self) -> Option<Instant> {
        *self.lock()
    }

    fn bytes_arrived(&self) {
        let mut first = self.lock();
        if first.is_none() {
            *first = Some(Instant::now());
            self.began.notify_one();
        }
    }

    fn message_done(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.first_byte.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The stream under tungstenite, reporting when bytes arrive.
pub struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3_a_double_crlf_message_is_a_ping_and_other_line_ends_are_ignored() {
        assert_eq!(frame_of(b"\r\n\r\n"), Some(Frame::Ping));
        assert_eq!(frame_of(b"\r\n"), None);
        assert_eq!(
            frame_of(b"OPTIONS sip:x SIP/2.0\r\n\r\n"),
            Some(Frame::Message(b"OPTIONS sip:x SIP/2.0\r\n\r\n".to_vec()))
        );
    }
}
