//! SPEC S2 across processes: two `registrar serve` processes on one PostgreSQL database, hit
//! at once with REGISTERs for one AoR, never exceed `max_contacts`, never leave two bindings in
//! single-contact mode, and never lose one. Also C1: SIGTERM ends `serve` with exit 0.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::sip::{RegisterMsg, Reply, request};
use tokio::net::UdpSocket;

/// A `registrar serve` child process, killed if the test ends early.
struct Instance {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Instance {
    async fn start(url: &str, extra: &[&str]) -> Instance {
        let port = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let listen = format!("udp:127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
            .args([
                "serve",
                "--auth",
                "off",
                "--http-listen",
                "off",
                "--listen",
                &listen,
            ])
            .args(extra)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn registrar serve");
        let instance = Instance {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        for _ in 0..100 {
            if ask(
                instance.addr,
                &request("OPTIONS", "sip:example.com"),
                Duration::from_millis(100),
            )
            .await
            .is_some()
            {
                return instance;
            }
        }
        panic!("registrar serve did not come up on {listen}");
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ask(server: std::net::SocketAddr, text: &str, wait: Duration) -> Option<Reply> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(text.as_bytes(), server).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(Reply::parse(&buf[..n])),
        _ => None,
    }
}

/// `n` REGISTERs of distinct contacts for one AoR, alternating between the instances, all at
/// once; returns the status codes.
async fn storm(instances: &[&Instance], n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let server = instances[i % instances.len()].addr;
        let text = RegisterMsg::new("shared")
            .call_id(&format!("storm-{i}"))
            .contact(&format!("<sip:shared@10.1.{}.{}>", i / 250, i % 250))
            .text();
        tasks.push(tokio::spawn(async move {
            ask(server, &text, Duration::from_secs(10))
                .await
                .map(|r| r.code)
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap().expect("every REGISTER answered"));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_two_processes_respect_max_contacts_and_single_contact() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("s2_two_processes_respect_max_contacts_and_single_contact");
    };
    let a = Instance::start(&db.url, &["--max-contacts", "3", "--server-id", "1"]).await;
    let b = Instance::start(&db.url, &["--max-contacts", "3", "--server-id", "2"]).await;
    let codes = storm(&[&a, &b], 40).await;
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 3);
    assert_eq!(
        a.terminate().code(),
        Some(0),
        "SIGTERM ends serve with exit 0"
    );
    assert_eq!(b.terminate().code(), Some(0));

    db.exec("DELETE FROM location").await;
    let a = Instance::start(&db.url, &["--single-contact"]).await;
    let b = Instance::start(&db.url, &["--single-contact"]).await;
    let codes = storm(&[&a, &b], 40).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);

    db.exec("DELETE FROM location").await;
    // H3: --max-contacts defaults to 10; 0 is unlimited.
    let a = Instance::start(&db.url, &["--max-contacts", "0"]).await;
    let b = Instance::start(&db.url, &["--max-contacts", "0"]).await;
    let codes = storm(&[&a, &b], 40).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        40,
        "no binding lost"
    );
}
