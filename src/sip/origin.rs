//! Where a message came in: plain data the transport hands to the roles, so that roles can
//! fill `received`/`socket` without ever touching a socket.

use std::fmt;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26; SPEC W1): a stream like TCP, its bytes decrypted first.
    Tls,
    /// SIP over WebSocket (RFC 7118; SPEC W2): one SIP message per WebSocket message.
    Ws,
    /// SIP over secure WebSocket: WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The `transport=` URI parameter that reaches a peer over this transport: RFC 7118 §5.2
    /// defines `ws` for both WebSocket flavours (the secure one is a `sips:` URI), and Kamailio
    /// writes `received` that way.
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Wss => "ws",
            other => other.as_str(),
        }
    }

    /// Stream transports carry a connection: responses and requests to the peer reuse it.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    /// A transport by name, in any case: `udp`, `tcp`, `tls`, `ws` or `wss`.
    pub fn from_name(name: &str) -> Option<Transport> {
        [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// `proto:ip:port`, the form of `--listen` and of the sockets Kamailio and we store
    /// (`Origin::socket`, a subscription's `send_to`).
    pub fn parse_socket(text: &str) -> Option<(Transport, SocketAddr)> {
        let (proto, addr) = text.split_once(':')?;
        Some((Transport::from_name(proto)?, addr.parse().ok()?))
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub transport: Transport,
    /// The packet's source.
    pub peer: SocketAddr,
    /// The listener it arrived on.
    pub local: SocketAddr,
    /// Kamailio's `connection_id`: −1 for UDP, our connection number for TCP.
    pub connection_id: i32,
}

impl Origin {
    /// Kamailio's `socket` form: `proto:ip:port` of the listener.
    pub fn socket(&self) -> String {
        format!("{}:{}", self.transport, self.local)
    }

    /// The peer's address as it appears in a URI host (IPv6 in brackets).
    pub fn peer_host(&self) -> String {
        match self.peer {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    }
}
