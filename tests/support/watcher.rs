//! A reg-event subscriber for the tests (SPEC E1, E2): one UDP socket, one SUBSCRIBE dialog.
//! Responses and NOTIFYs arrive on the same socket; NOTIFYs are answered (200 unless told
//! otherwise) and queued for the test to read.

use super::sip::Reply;
use registrar::server::Running;
use registrar::sip::header::NameAddr;
use registrar::sip::reginfo::{self, Registration};
use registrar::sip::wire::{self, Message, StartLine};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Watcher {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub call_id: String,
    pub cseq: u32,
    /// The registrar's tag, once a 200 gave it.
    pub to_tag: Option<String>,
    /// The status NOTIFYs are answered with.
    pub answer: u16,
    notifies: VecDeque<Message>,
    /// CSeqs of NOTIFYs seen: a retransmission is answered again, not queued again.
    seen: Vec<String>,
}

/// A NOTIFY, read.
#[derive(Debug)]
pub struct Notify {
    pub message: Message,
    pub state: String,
    pub cseq: u32,
    pub version: i64,
    pub full: bool,
    pub registrations: Vec<Registration>,
    pub body: String,
}

impl Notify {
    /// `(uri, state, event)` of every contact.
    pub fn contacts(&self) -> Vec<(String, String, String)> {
        self.registrations
            .iter()
            .flat_map(|r| r.contacts.iter())
            .map(|c| {
                let state = match c.state {
                    reginfo::ContactState::Active => "active",
                    reginfo::ContactState::Terminated => "terminated",
                };
                (
                    c.uri.clone(),
                    state.to_string(),
                    c.event.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl Watcher {
    pub async fn to(server: &Running) -> Watcher {
        Watcher::at(server.udp[0], "127.0.0.1").await
    }

    /// A watcher on `ip` (any of 127.0.0.0/8) subscribing at `server`.
    pub async fn at(server: SocketAddr, ip: &str) -> Watcher {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Watcher {
            socket: UdpSocket::bind((ip, 0)).await.unwrap(),
            server,
            call_id: format!("watch-{n}-{}@test", std::process::id()),
            cseq: 0,
            to_tag: None,
            answer: 200,
            notifies: VecDeque::new(),
            seen: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// A SUBSCRIBE in this dialog for `aor` (`sip:user@domain`), with `Expires` when given and
    /// extra header lines.
    pub fn subscribe_text(&mut self, aor: &str, expires: Option<u32>, extra: &[&str]) -> String {
        self.cseq += 1;
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let mut text = format!(
            "SUBSCRIBE {aor} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-w{n}-{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             To: <{aor}>{to_tag}\r\n\
             From: <sip:watcher@example.com>;tag=w{n}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:watcher@{me}>\r\n\
             Event: reg\r\n\
             Accept: application/reginfo+xml\r\n",
            me = self.addr(),
            n = self.call_id.len(),
            cseq = self.cseq,
            call_id = self.call_id,
        );
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        for line in extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text
    }

    /// Sends `text` and waits for its response (NOTIFYs meanwhile are queued); a 2xx's To tag
    /// becomes the dialog's.
    pub async fn ask(&mut self, text: &str) -> Reply {
        self.socket
            .send_to(text.as_bytes(), self.server)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (message, bytes) = self.recv_until(deadline).await.expect("a response in time");
            if let StartLine::Response { code, .. } = message.start {
                let reply = Reply::parse(&bytes);
                if (200..300).contains(&code) && self.to_tag.is_none() {
                    self.to_tag = message
                        .header("To")
                        .and_then(NameAddr::parse)
                        .and_then(|n| n.param("tag").flatten().map(str::to_string));
                }
                return reply;
            }
        }
    }

    pub async fn subscribe(&mut self, aor: &str, expires: Option<u32>) -> Reply {
        let text = self.subscribe_text(aor, expires, &[]);
        self.ask(&text).await
    }

    /// The next NOTIFY within `wait`.
    pub async fn notify(&mut self, wait: Duration) -> Option<Notify> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.notifies.is_empty() {
            self.recv_until(deadline).await?;
        }
        let message = self.notifies.pop_front()?;
        let body = String::from_utf8_lossy(&message.body).into_owned();
        let registrations = reginfo::parse(&body).expect("a reginfo body");
        let version = attr(&body, "version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        let full = attr(&body, "state").as_deref() == Some("full");
        Some(Notify {
            state: message
                .header("Subscription-State")
                .unwrap_or("")
                .to_string(),
            cseq: message
                .header("CSeq")
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
            version,
            full,
            registrations,
            body,
            message,
        })
    }

    /// Every NOTIFY arriving within `wait`.
    pub async fn notifies_within(&mut self, wait: Duration) -> Vec<Notify> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut all = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.notify(left).await {
                Some(n) => all.push(n),
                None => return all,
            }
        }
    }

    /// One message before `deadline`; a NOTIFY is answered and queued.
    async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Option<(Message, Vec<u8>)> {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let bytes = buf[..n].to_vec();
        let message = wire::parse(&bytes).expect("a SIP message");
        if message.method() == Some("NOTIFY") {
            // Another test's server NOTIFYing a socket this port once was: not our dialog.
            if message.header("Call-ID") != Some(self.call_id.as_str()) {
                let answer = answer(&message, 481);
                self.socket.send_to(answer.as_bytes(), from).await.unwrap();
                return Some((message, bytes));
            }
            let answer = answer(&message, self.answer);
            self.socket.send_to(answer.as_bytes(), from).await.unwrap();
            let key = format!(
                "{:?} {:?}",
                message.header("Call-ID"),
                message.header("CSeq")
            );
            if !self.seen.contains(&key) {
                self.seen.push(key);
                self.notifies.push_back(message.clone());
            }
        }
        Some((message, bytes))
    }
}

fn answer(request: &Message, code: u16) -> String {
    let mut text = format!("SIP/2.0 {code} Answer\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for v in request.headers_named(name) {
            text.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

/// An attribute of the `<reginfo>` element.
fn attr(body: &str, name: &str) -> Option<String> {
    let start = body.find("<reginfo")?;
    let tag = &body[start..start + body[start..].find('>')?];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}
