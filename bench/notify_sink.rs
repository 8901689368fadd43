//! The reg-event subscriber of bench/run's `registrar-subscribed` row (issue 13): one UDP
//! socket standing for every subscriber, answering each NOTIFY it receives with 200 at once
//! (an unanswered NOTIFY would be retransmitted and, after 64·T1, end its subscription), and
//! counting them. It prints the count once a second on stdout (`notifies N`), so the bench can
//! tell that NOTIFYs flowed while REGISTERs were measured.
//!
//!   cargo build --release --example notify-sink
//!   target/release/examples/notify-sink --listen 127.0.0.1:5099

use std::time::Duration;
use tokio::net::UdpSocket;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr,
        _ => {
            eprintln!("usage: notify-sink --listen IP:PORT");
            std::process::exit(2);
        }
    };
    let socket = UdpSocket::bind(&listen).await.unwrap_or_else(|e| {
        eprintln!("notify-sink: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    // It stands for many subscribers, each with its own socket: a registrar's fan-out of
    // NOTIFYs must not overflow one default-sized buffer (the drops would come back as
    // retransmitted NOTIFYs and be counted against the registrar).
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
    let mut buf = vec![0u8; 65_536];
    let mut count: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, peer)) = received else { continue };
                if let Some(answer) = ok_for(&buf[..n]) {
                    count += 1;
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
            _ = tick.tick() => println!("notifies {count}"),
        }
    }
}

/// `SIP/2.0 200 OK` echoing a NOTIFY's Via, From, To, Call-ID and CSeq; `None` for anything
/// else.
fn ok_for(request: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(request).ok()?;
    if !text.starts_with("NOTIFY ") {
        return None;
    }
    let head = &text[..text.find("\r\n\r\n")?];
    let mut answer = String::from("SIP/2.0 200 OK\r\n");
    for line in head.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or("").trim();
        if ["Via", "From", "To", "Call-ID", "CSeq"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            answer.push_str(line);
            answer.push_str("\r\n");
        }
    }
    answer.push_str("Content-Length: 0\r\n\r\n");
    Some(answer.into_bytes())
}
