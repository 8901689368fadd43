//! SPEC P5 across processes: two `registrar serve --role pcscf` processes on one PostgreSQL
//! database find 50 stale pcontacts; the S-CSCF double receives exactly one PUBLISH per public
//! identity, none twice, and every pcontact is gone afterwards.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::scscf::Scscf;

struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(url: &str, scscf: &str) -> Instance {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args([
            "serve",
            "--role",
            "pcscf",
            "--scscf",
            scscf,
            "--http-listen",
            "off",
        ])
        .args(["--listen", &format!("udp:127.0.0.1:{port}")])
        .args([
            "--audit-interval",
            "0.2",
            "--notify-window",
            "1",
            "--audit-grace",
            "1",
            "--t1-ms",
            "100",
        ])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn registrar serve --role pcscf");
    Instance(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_two_instances_publish_each_identity_exactly_once() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("p5_two_instances_publish_each_identity_exactly_once");
    };
    let scscf = Scscf::start().await;
    let mut values = Vec::new();
    for i in 0..50 {
        values.push(format!(
            "('sip:ue{i}@10.9.0.{i}', '10.9.0.{i}', 5060, 'udp', 2, now() - interval '10 minutes', \
             '<sip:ue{i}@ims.example.com><sip:alias{i}@ims.example.com><tel:+1555{i:04}>')"
        ));
    }
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) VALUES {}",
        values.join(", ")
    ))
    .await;
    let _a = start(&db.url, &scscf.uri());
    let _b = start(&db.url, &scscf.uri());
    let mut left = i64::MAX;
    for _ in 0..300 {
        left = db.scalar("SELECT count(*) FROM pcscf_location").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "every stale pcontact published and removed");
    let mut per_identity: HashMap<String, usize> = HashMap::new();
    for publish in scscf.publish_transactions() {
        *per_identity
            .entry(publish.header("To").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_identity.len(),
        100,
        "two sip: identities per pcontact, no tel:"
    );
    let twice: Vec<_> = per_identity.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
}
