//! The REGISTER load client of bench/run's TLS rows (issue 15): Debian's SIPp is built without
//! TLS, so this sends the same REGISTER as bench/scenarios/register.xml over TLS, open loop at
//! a fixed rate spread over a number of connections (one per UA group, as phones keep theirs),
//! and prints one JSON line: REGISTERs sent, 200s, failures (another answer, or none within
//! the timeout), answers later than 500 ms (where a UDP phone would have retransmitted: what
//! bench/run's strict column counts), the seconds from the first send to the last answer, and
//! response times.
//!
//!   cargo build --release --example tls-load
//!   target/release/examples/tls-load --target 127.0.0.1:5061 --ca tests/data/tls/ca.pem \
//!       --users users.csv --count 24000 --rate 4000 --connections 32 [--timeout-ms 8000]
//!
//! `--users` is a SIPp injection file (`SEQUENTIAL`, then `user;domain;…` lines): REGISTER n
//! is for line n, starting over at the end, as SIPp's `-inf` sends them; `--count` REGISTERs
//! in all (default: one per line).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// SIP's T1: a UDP client retransmits a request unanswered this long.
const LATE: Duration = Duration::from_millis(500);

struct Options {
    target: SocketAddr,
    ca: String,
    users: Vec<(String, String)>,
    count: usize,
    rate: f64,
    connections: usize,
    timeout: Duration,
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    failed: u64,
    late: u64,
    times_ms: Vec<f64>,
    last_answer: Option<Instant>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut target, mut ca, mut users, mut rate, mut count) = (None, None, None, None, None);
    let (mut connections, mut timeout_ms) = (32usize, 8000u64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--target" => target = Some(value.parse().map_err(|e| bad(&e))?),
            "--ca" => ca = Some(value),
            "--users" => users = Some(read_users(&value).map_err(|e| bad(&e))?),
            "--count" => count = Some(value.parse::<usize>().map_err(|e| bad(&e))?),
            "--rate" => rate = Some(value.parse::<f64>().map_err(|e| bad(&e))?),
            "--connections" => connections = value.parse().map_err(|e| bad(&e))?,
            "--timeout-ms" => timeout_ms = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let users: Vec<_> = users.ok_or("--users is required")?;
    if users.is_empty() {
        return Err("--users: no user in the file".into());
    }
    Ok(Options {
        target: target.ok_or("--target is required")?,
        ca: ca.ok_or("--ca is required")?,
        count: count.unwrap_or(users.len()),
        users,
        rate: rate.filter(|r| *r > 0.0).ok_or("--rate > 0 is required")?,
        connections: connections.max(1),
        timeout: Duration::from_millis(timeout_ms),
    })
}

fn read_users(path: &str) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(';');
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect())
}

fn connector(ca: &str) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {ca}: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("--ca {ca}: {e}"))?)
            .map_err(|e| format!("--ca {ca}: {e}"))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn register(user: &str, domain: &str, local: SocketAddr, id: usize) -> String {
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bK-tls-{id};rport\r\n\
         From: <sip:{user}@{domain}>;tag=t{id}\r\n\
         To: <sip:{user}@{domain}>\r\n\
         Call-ID: tls-{id}-{pid}@bench\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@192.0.2.10:5060>\r\n\
         Max-Forwards: 70\r\n\
         Expires: 3600\r\n\
         User-Agent: bench\r\n\
         Content-Length: 0\r\n\r\n",
        pid = std::process::id(),
    )
}

/// The status code and Call-ID of the first whole response in `buf`, taken out.
fn take_response(buf: &mut Vec<u8>) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if buf.len() < end + 4 + length {
        return None;
    }
    buf.drain(..end + 4 + length);
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, header("Call-ID").unwrap_or_default()))
}

async fn connection(
    options: Arc<Options>,
    connector: TlsConnector,
    index: usize,
    start: Instant,
    outcome: Arc<Mutex<Outcome>>,
) -> Result<(), String> {
    let connecting = async {
        let tcp = TcpStream::connect(options.target)
            .await
            .map_err(|e| format!("connect {}: {e}", options.target))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::from(options.target.ip());
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok::<_, String>((stream, local))
    };
    let (stream, local) = tokio::time::timeout(options.timeout, connecting)
        .await
        .map_err(|_| format!("no TLS connection within {:?}", options.timeout))??;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    let reading = {
        let (pending, outcome) = (Arc::clone(&pending), Arc::clone(&outcome));
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while let Some((code, call_id)) = take_response(&mut buf) {
                    let Some(sent) = pending.lock().unwrap().remove(&call_id) else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut outcome = outcome.lock().unwrap();
                    if now - sent > LATE {
                        outcome.late += 1;
                    }
                    if code == 200 {
                        outcome.ok += 1;
                        outcome.times_ms.push((now - sent).as_secs_f64() * 1000.0);
                    } else {
                        outcome.failed += 1;
                    }
                    outcome.last_answer = Some(now);
                }
            }
        })
    };

    let interval = Duration::from_secs_f64(1.0 / options.rate);
    let mut sent = 0;
    for id in (index..options.count).step_by(options.connections) {
        tokio::time::sleep_until(start + interval * id as u32).await;
        let (user, domain) = &options.users[id % options.users.len()];
        let message = register(user, domain, local, id);
        let call_id = format!("tls-{id}-{}@bench", std::process::id());
        pending.lock().unwrap().insert(call_id, Instant::now());
        if writer.write_all(message.as_bytes()).await.is_err() {
            break;
        }
        sent += 1;
    }
    let deadline = Instant::now() + options.timeout;
    while Instant::now() < deadline && !pending.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reading.abort();
    let unanswered = pending.lock().unwrap().len() as u64;
    let unsent = (index..options.count).step_by(options.connections).count() - sent;
    outcome.lock().unwrap().failed += unanswered + unsent as u64;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = match options() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("tls-load: {e}");
            std::process::exit(2);
        }
    };
    let connector = match connector(&options.ca) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tls-load: {e}");
            std::process::exit(2);
        }
    };
    // Connections first (handshakes are not what is measured), then one shared clock.
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let start = Instant::now() + Duration::from_millis(500);
    let tasks: Vec<_> = (0..options.connections)
        .map(|i| {
            tokio::spawn(connection(
                Arc::clone(&options),
                connector.clone(),
                i,
                start,
                Arc::clone(&outcome),
            ))
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("tls-load: {e}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("tls-load: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut outcome = outcome.lock().unwrap();
    let seconds = outcome
        .last_answer
        .map_or(0.001, |t| t.saturating_duration_since(start).as_secs_f64());
    outcome.times_ms.sort_by(f64::total_cmp);
    println!(
        "{{\"sent\": {}, \"ok\": {}, \"failed\": {}, \"late\": {}, \"seconds\": {:.3}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        options.count,
        outcome.ok,
        outcome.failed,
        outcome.late,
        seconds.max(0.001),
        percentile(&outcome.times_ms, 50.0),
        percentile(&outcome.times_ms, 99.0),
    );
}
