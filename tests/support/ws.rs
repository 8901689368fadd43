//! SIP over WebSocket for tests (SPEC W2): a well-behaved client (tokio-tungstenite, offering
//! the `sip` subprotocol) over `ws:` or `wss:`, and a raw one that writes frames by hand for
//! the hostile cases.

use super::sip::Reply;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Ws {
    pub socket: WebSocketStream<Box<dyn Io>>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// The HTTP upgrade request a SIP WebSocket client sends, offering `protocol`.
fn upgrade_request(
    url: &str,
    protocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    request
}

impl Ws {
    /// A `ws:` connection, upgraded with the `sip` subprotocol.
    pub async fn to(addr: SocketAddr) -> Ws {
        Ws::upgrade(addr, false, Some("sip"))
            .await
            .expect("upgrade")
    }

    /// A `wss:` connection (TLS trusting the test CA), upgraded with the `sip` subprotocol.
    pub async fn secure_to(addr: SocketAddr) -> Ws {
        Ws::upgrade(addr, true, Some("sip")).await.expect("upgrade")
    }

    /// The upgrade's outcome, offering `protocol`; the HTTP status when refused.
    pub async fn upgrade(addr: SocketAddr, tls: bool, protocol: Option<&str>) -> Result<Ws, u16> {
        let (io, url): (Box<dyn Io>, String) = if tls {
            let stream = super::tls::connect(addr).await;
            (
                Box::new(stream),
                format!("wss://127.0.0.1:{}/", addr.port()),
            )
        } else {
            let stream = TcpStream::connect(addr).await.unwrap();
            (Box::new(stream), format!("ws://{addr}/"))
        };
        match tokio_tungstenite::client_async(upgrade_request(&url, protocol), io).await {
            Ok((socket, response)) => Ok(Ws {
                socket,
                protocol: response
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap().to_string()),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("upgrade failed: {e}"),
        }
    }

    pub async fn send(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next data message (text or binary), skipping control frames; `None` when closed or
    /// silent for `wait`.
    pub async fn next_data(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => return Some(m),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// The next message of any kind, control frames included.
    pub async fn next_any(&mut self, wait: Duration) -> Option<Message> {
        match tokio::time::timeout(wait, self.socket.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            _ => None,
        }
    }

    /// Sends a SIP message as one text message; the reply, which must come as one text message.
    pub async fn ask(&mut self, text: &str) -> Reply {
        self.send(Message::text(text.to_string())).await;
        match self.next_data(Duration::from_secs(5)).await {
            Some(Message::Text(reply)) => Reply::parse(reply.as_bytes()),
            other => panic!("expected a text message with the reply, got {other:?}"),
        }
    }
}

/// A hand-driven client: the upgrade written as text, then frames built byte by byte.
pub struct RawWs {
    pub stream: TcpStream,
}

impl RawWs {
    /// Connects and upgrades with the `sip` subprotocol; panics unless 101.
    pub async fn to(addr: SocketAddr) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs { stream }
    }

    /// A client frame (masked, as RFC 6455 §5.3 requires of clients).
    pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The payload of the next unfragmented server frame (servers do not mask), with its
    /// opcode; `None` when closed or silent for `wait`.
    pub async fn recv_frame(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(wait, async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.stream.read_exact(&mut b).await.ok()?;
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.stream.read_exact(&mut b).await.ok()?;
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some((head[0] & 0x0f, payload))
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether the server closed the connection within `wait` (a Close frame, or the socket).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // A Close frame from the server (opcode 8) ends it too.
                Ok(Ok(n)) if n >= 1 && chunk[0] & 0x0f == 8 => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}
