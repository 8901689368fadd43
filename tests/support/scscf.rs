//! An S-CSCF test double on UDP and TCP: answers REGISTER with 200 OK, `Service-Route` and
//! `P-Associated-URI` (or stays silent, or answers an error, on demand), records every
//! REGISTER and PUBLISH it receives, and can send NOTIFYs to the P-CSCF.

use registrar::sip::header::{NameAddr, split_list};
use registrar::sip::wire::{self, Message};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 2xx (REGISTER: 200 with the contacts and their expires).
    Ok,
    /// No answer at all.
    Silent,
    /// This error status.
    Fail(u16),
    /// A 183 first, then the 200 (REGISTER only).
    ProvisionalThenOk,
}

/// Builds the Contact (and Expires) header lines of a 200 OK to a REGISTER.
type ContactLines = Arc<dyn Fn(&Message) -> String + Send + Sync>;

#[derive(Default)]
struct State {
    register_mode: Option<Mode>,
    publish_mode: Option<Mode>,
    /// Per identity (the PUBLISH's To URI), before `publish_mode`.
    publish_modes: std::collections::HashMap<String, Mode>,
    /// Instead of echoing the REGISTER's contacts.
    register_contacts: Option<ContactLines>,
    registers: Vec<Message>,
    publishes: Vec<Message>,
}

pub struct Scscf {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    socket: Arc<UdpSocket>,
    state: Arc<Mutex<State>>,
    responses: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
}

impl Scscf {
    pub async fn start() -> Scscf {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let scscf = Scscf {
            udp: socket.local_addr().unwrap(),
            tcp: tcp.local_addr().unwrap(),
            socket: Arc::clone(&socket),
            state: Arc::clone(&state),
            responses: tokio::sync::Mutex::new(rx),
        };
        {
            let (socket, state, tx) = (Arc::clone(&socket), Arc::clone(&state), tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    let Ok(message) = wire::parse(&buf[..n]) else {
                        continue;
                    };
                    if !message.is_request() {
                        let _ = tx.send(message);
                        continue;
                    }
                    for reply in answer(&state, &message) {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                }
            });
        }
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        while let Some(len) = frame(&buf) {
                            let data: Vec<u8> = buf.drain(..len).collect();
                            if let Ok(message) = wire::parse(&data)
                                && message.is_request()
                            {
                                for reply in answer(&state, &message) {
                                    let _ = stream.write_all(&reply).await;
                                }
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        scscf
    }

    /// `sip:127.0.0.1:PORT` (UDP) for `--scscf`.
    pub fn uri(&self) -> String {
        format!("sip:{}", self.udp)
    }

    pub fn tcp_uri(&self) -> String {
        format!("sip:{};transport=tcp", self.tcp)
    }

    pub fn on_register(&self, mode: Mode) {
        self.lock().register_mode = Some(mode);
    }

    pub fn on_publish(&self, mode: Mode) {
        self.lock().publish_mode = Some(mode);
    }

    /// PUBLISHes for this identity (`sip:…`, as in the To header) are answered so.
    pub fn on_publish_for(&self, impu: &str, mode: Mode) {
        self.lock().publish_modes.insert(impu.to_string(), mode);
    }

    /// A 200 OK to a REGISTER carries the Contact/Expires header lines `lines` returns (each
    /// ending in CRLF) instead of the REGISTER's own contacts.
    pub fn on_register_contacts(&self, lines: impl Fn(&Message) -> String + Send + Sync + 'static) {
        self.lock().register_contacts = Some(Arc::new(lines));
    }

    pub fn registers(&self) -> Vec<Message> {
        self.lock().registers.clone()
    }

    /// Every PUBLISH datagram or message received, retransmissions included.
    pub fn publishes(&self) -> Vec<Message> {
        self.lock().publishes.clone()
    }

    /// PUBLISH transactions (distinct top-Via branches), first copy of each.
    pub fn publish_transactions(&self) -> Vec<Message> {
        let mut seen = std::collections::HashSet::new();
        self.publishes()
            .into_iter()
            .filter(|m| seen.insert(top_branch(m)))
            .collect()
    }

    /// Sends a NOTIFY with a reginfo body to the P-CSCF and returns the status it answers.
    pub async fn notify(&self, pcscf: SocketAddr, event: &str, body: &str) -> Option<u16> {
        let text = format!(
            "NOTIFY sip:pcscf@{pcscf} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-notify-{n}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:pcscf@{pcscf}>;tag=p1\r\n\
             From: <sip:u@ims.example.com>;tag=s1\r\n\
             Call-ID: notify-{n}@scscf\r\n\
             CSeq: 1 NOTIFY\r\n\
             Event: {event}\r\n\
             Subscription-State: active;expires=600\r\n\
             Content-Type: application/reginfo+xml\r\n\
             Content-Length: {len}\r\n\r\n{body}",
            me = self.udp,
            n = uuid::Uuid::new_v4().simple(),
            len = body.len(),
        );
        self.socket.send_to(text.as_bytes(), pcscf).await.unwrap();
        let mut rx = self.responses.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => {
                    if m.header("CSeq").is_some_and(|c| c.ends_with("NOTIFY")) {
                        return match m.start {
                            wire::StartLine::Response { code, .. } => Some(code),
                            _ => None,
                        };
                    }
                }
                _ => return None,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

fn top_branch(m: &Message) -> String {
    let via = m.header("Via").unwrap_or("");
    let top = split_list(via).first().copied().unwrap_or("").to_string();
    top.split(';')
        .find_map(|p| p.trim().strip_prefix("branch="))
        .unwrap_or("")
        .to_string()
}

fn frame(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim().eq_ignore_ascii_case("content-length") || n.trim().eq_ignore_ascii_case("l"))
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    (buf.len() >= end + 4 + len).then_some(end + 4 + len)
}

/// The double's behaviour: record, then answer as the mode says.
fn answer(state: &Mutex<State>, request: &Message) -> Vec<Vec<u8>> {
    let mut s = state.lock().unwrap();
    let mode = match request.method() {
        Some("REGISTER") => {
            s.registers.push(request.clone());
            s.register_mode.unwrap_or(Mode::Ok)
        }
        Some("PUBLISH") => {
            s.publishes.push(request.clone());
            let impu = NameAddr::parse(request.header("To").unwrap_or("")).map(|n| n.uri);
            impu.and_then(|i| s.publish_modes.get(&i).copied())
                .or(s.publish_mode)
                .unwrap_or(Mode::Ok)
        }
        _ => Mode::Ok,
    };
    let register_contacts = s.register_contacts.clone();
    drop(s);
    let (provisional, code) = match mode {
        Mode::Silent => return Vec::new(),
        Mode::Fail(code) => (false, code),
        Mode::Ok => (false, 200),
        Mode::ProvisionalThenOk => (true, 200),
    };
    let mut replies = Vec::new();
    if provisional {
        replies.push(reply(request, 183, "Session Progress", ""));
    }
    let mut extra = String::new();
    if code == 200 && request.method() == Some("REGISTER") {
        match &register_contacts {
            Some(lines) => extra.push_str(&lines(request)),
            None => {
                let header_expires = request
                    .header("Expires")
                    .and_then(|e| e.trim().parse::<u32>().ok());
                for item in request.headers_named("Contact").flat_map(split_list) {
                    let Some(c) = NameAddr::parse(item) else {
                        continue;
                    };
                    let expires = c
                        .param("expires")
                        .flatten()
                        .and_then(|e| e.parse::<u32>().ok())
                        .or(header_expires)
                        .unwrap_or(3600);
                    if expires > 0 {
                        extra.push_str(&format!("Contact: <{}>;expires={expires}\r\n", c.uri));
                    }
                }
            }
        }
        let user = NameAddr::parse(request.header("To").unwrap_or(""))
            .map(|n| n.uri)
            .unwrap_or_default();
        extra.push_str("Service-Route: <sip:orig@scscf.ims.example.com:6060;lr>\r\n");
        extra.push_str(&format!("P-Associated-URI: <{user}>, <tel:+15550100>\r\n"));
    }
    if request.method() == Some("PUBLISH") && code == 200 {
        extra.push_str("Expires: 3601\r\n");
    }
    let reason = if code == 200 { "OK" } else { "Error" };
    replies.push(reply(request, code, reason, &extra));
    replies
}

fn reply(request: &Message, code: u16, reason: &str, extra: &str) -> Vec<u8> {
    let mut text = format!("SIP/2.0 {code} {reason}\r\n");
    for via in request.headers_named("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        text.push_str(&format!(
            "{name}: {}\r\n",
            request.header(name).unwrap_or("")
        ));
    }
    text.push_str(&format!(
        "To: {};tag=scscf\r\n",
        request.header("To").unwrap_or("")
    ));
    text.push_str(extra);
    text.push_str("Content-Length: 0\r\n\r\n");
    text.into_bytes()
}
