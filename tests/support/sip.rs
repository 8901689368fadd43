//! SIP over real sockets for the tests: start the server on ephemeral ports, send requests over
//! UDP or TCP, read replies (parsed with the project's own wire parser).

use registrar::config::{Overrides, Settings};
use registrar::server::{self, Running};
use registrar::sip::wire::{self, Message, StartLine};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::TestDb;

/// Starts `serve` in-process against the test database on 127.0.0.1, UDP and TCP, port 0.
/// Authentication is off unless `flags` turn it on: the rules of sections R and P are tested
/// without it (SPEC A1), section A's tests ask for it.
pub async fn start(db: &TestDb, flags: Overrides) -> Running {
    let flags = Overrides {
        listen: vec!["udp:127.0.0.1:0".into(), "tcp:127.0.0.1:0".into()],
        http_listen: flags.http_listen.or(Some("127.0.0.1:0".into())),
        auth: flags.auth.or(Some(registrar::auth::AuthMode::Off)),
        ..flags
    };
    let settings = Settings::load(None, Some(db.url.clone()), flags).expect("settings");
    let store = db.second_store().await;
    server::start(&settings, store)
        .await
        .expect("server starts")
}

/// A reply: status, headers, raw text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub reason: String,
    pub message: Message,
    pub text: String,
}

impl Reply {
    pub fn parse(bytes: &[u8]) -> Reply {
        let message = wire::parse(bytes).expect("a parseable reply");
        let StartLine::Response { code, reason } = message.start.clone() else {
            panic!("not a response: {}", String::from_utf8_lossy(bytes));
        };
        Reply {
            code,
            reason,
            message,
            text: String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.message.header(name)
    }

    pub fn headers(&self, name: &str) -> Vec<String> {
        self.message
            .headers_named(name)
            .map(str::to_string)
            .collect()
    }

    /// The Contact values of a 200 OK, one per binding.
    pub fn contacts(&self) -> Vec<String> {
        self.message
            .headers_named("Contact")
            .flat_map(registrar::sip::header::split_list)
            .map(str::to_string)
            .collect()
    }
}

/// A UDP client socket.
pub struct Udp {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Udp {
    pub async fn to(server: &Running) -> Udp {
        Udp::from_ip(server, "127.0.0.1").await
    }

    /// A client on another loopback address (Linux routes all of 127.0.0.0/8 to lo).
    pub async fn from_ip(server: &Running, ip: &str) -> Udp {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        Udp {
            socket,
            server: server.udp[0],
        }
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    pub async fn send(&self, text: &str) {
        self.socket
            .send_to(text.as_bytes(), self.server)
            .await
            .unwrap();
    }

    pub async fn send_bytes(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    /// The next reply, or `None` after `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Reply> {
        let mut buf = vec![0u8; 65_536];
        match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(Reply::parse(&buf[..n])),
            _ => None,
        }
    }

    /// Sends and waits for the reply (panics after 5 s).
    pub async fn ask(&self, text: &str) -> Reply {
        self.ask_within(text, Duration::from_secs(5)).await
    }

    pub async fn ask_within(&self, text: &str, wait: Duration) -> Reply {
        self.send(text).await;
        self.recv(wait).await.expect("a reply in time")
    }
}

/// A TCP connection to the server.
pub struct Tcp {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Tcp {
    pub async fn to(server: &Running) -> Tcp {
        Tcp {
            stream: TcpStream::connect(server.tcp[0]).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// A connection from another loopback address.
    pub async fn from_ip(server: &Running, ip: &str) -> Tcp {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        Tcp {
            stream: socket.connect(server.tcp[0]).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    pub async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    /// The next framed reply, or `None` if the connection closed or `wait` passed.
    pub async fn recv(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = take_frame(&mut self.buf) {
                return Some(Reply::parse(&frame));
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the server closed the connection within `wait` (bytes still arriving count
    /// as open: they are read and dropped). A connection that stays open and silent is not
    /// closed, unlike `recv`'s `None`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    pub async fn ask(&mut self, text: &str) -> Reply {
        self.send(text).await;
        self.recv(Duration::from_secs(5))
            .await
            .expect("a reply within 5 s")
    }
}

/// The first complete message in `buf` (head, blank line, Content-Length bytes), taken out.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Content-Length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    (buf.len() >= end + 4 + len).then(|| buf.drain(..end + 4 + len).collect())
}

static BRANCH: AtomicU32 = AtomicU32::new(0);

/// A REGISTER builder with sensible defaults.
#[derive(Clone, Debug)]
pub struct RegisterMsg {
    pub user: String,
    pub domain: String,
    pub call_id: String,
    pub cseq: u32,
    pub contacts: Vec<String>,
    pub extra: Vec<String>,
    pub transport: &'static str,
    pub port: u16,
    pub branch: Option<String>,
}

impl RegisterMsg {
    pub fn new(user: &str) -> RegisterMsg {
        RegisterMsg {
            user: user.into(),
            domain: "example.com".into(),
            call_id: format!("{user}-call@test"),
            cseq: 1,
            contacts: Vec::new(),
            extra: Vec::new(),
            transport: "UDP",
            port: 5060,
            branch: None,
        }
    }

    pub fn contact(mut self, value: &str) -> Self {
        self.contacts.push(value.to_string());
        self
    }

    pub fn header(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    pub fn cseq(mut self, cseq: u32) -> Self {
        self.cseq = cseq;
        self
    }

    pub fn call_id(mut self, call_id: &str) -> Self {
        self.call_id = call_id.into();
        self
    }

    pub fn via(mut self, transport: &'static str, port: u16) -> Self {
        self.transport = transport;
        self.port = port;
        self
    }

    pub fn branch(mut self, branch: &str) -> Self {
        self.branch = Some(branch.into());
        self
    }

    pub fn text(&self) -> String {
        let branch = self
            .branch
            .clone()
            .unwrap_or_else(|| format!("z9hG4bK-t{}", BRANCH.fetch_add(1, Ordering::Relaxed)));
        let mut t = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{tr} 127.0.0.1:{port};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:{user}@{domain}>\r\n\
             From: <sip:{user}@{domain}>;tag=f{cseq}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             User-Agent: registrar-tests\r\n",
            domain = self.domain,
            tr = self.transport,
            port = self.port,
            user = self.user,
            cseq = self.cseq,
            call_id = self.call_id,
        );
        for c in &self.contacts {
            t.push_str(&format!("Contact: {c}\r\n"));
        }
        for e in &self.extra {
            t.push_str(e);
            t.push_str("\r\n");
        }
        t.push_str("Content-Length: 0\r\n\r\n");
        t
    }
}

/// A non-REGISTER request with all mandatory headers.
pub fn request(method: &str, uri: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:bob@example.com>\r\n\
         From: <sip:alice@example.com>;tag=1\r\n\
         Call-ID: {method}-{n}@test\r\n\
         CSeq: 1 {method}\r\n\
         Content-Length: 0\r\n\r\n",
        n = BRANCH.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `expires` param of a Contact value.
pub fn expires_of(contact: &str) -> Option<u32> {
    contact
        .split(';')
        .find_map(|p| p.trim().strip_prefix("expires="))
        .and_then(|v| v.parse().ok())
}
