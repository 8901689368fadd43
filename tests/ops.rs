//! Operations (SPEC O1, O2): the HTTP listener's health, readiness and metrics, with the values
//! that traffic should move asserted, not only the names. The metrics are process-wide, so the
//! metrics test is one test function per role (tests in this binary that send SIP run one at a
//! time through `SERIAL`).

mod support;

use registrar::auth::AuthMode;
use registrar::config::Overrides;
use registrar::metrics::METRICS;
use std::time::Duration;
use support::TestDb;
use support::digest::{Challenge, add_user};
use support::http::{get, series};
use support::sip::{RegisterMsg, Tcp, Udp, request, start};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_value(name: &str) -> f64 {
    series(&METRICS.encode(), name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o1_o2_registrar_metrics_move_with_traffic() {
    let _one = SERIAL.lock().await;
    let db = TestDb::sqlite().await;
    add_user(&db, "mia", "example.com", "secret").await;
    let server = start(
        &db,
        Overrides {
            auth: Some(AuthMode::Digest),
            ..Overrides::default()
        },
    )
    .await;
    let http = server.http.expect("the HTTP listener is on");
    let names = [
        "registrar_requests_total{method=\"REGISTER\",code=\"401\"}",
        "registrar_requests_total{method=\"REGISTER\",code=\"200\"}",
        "registrar_requests_total{method=\"OPTIONS\",code=\"200\"}",
        "registrar_auth_total{result=\"challenged\"}",
        "registrar_auth_total{result=\"ok\"}",
        "registrar_auth_total{result=\"failed\"}",
        "registrar_retrans_cache_hits_total",
        "registrar_register_duration_seconds_count",
        "registrar_db_batch_size_count",
        "transport_dropped_total{reason=\"unparseable\"}",
    ];
    let before: Vec<f64> = names.iter().map(|n| now_value(n)).collect();

    let ua = Udp::to(&server).await;
    let msg = RegisterMsg::new("mia").contact("<sip:mia@192.0.2.5>");
    let challenge = Challenge::first(&ua.ask(&msg.text()).await);
    let authorized =
        msg.clone()
            .cseq(2)
            .header(&challenge.answer("mia", "secret", "sip:example.com", 1));
    let text = authorized.text();
    assert_eq!(ua.ask(&text).await.code, 200);
    // The same bytes again: a retransmission, answered from the cache.
    assert_eq!(ua.ask(&text).await.code, 200);
    let wrong = msg
        .clone()
        .cseq(3)
        .header(&challenge.answer("mia", "wrong", "sip:example.com", 2));
    assert_eq!(ua.ask(&wrong.text()).await.code, 401);
    assert_eq!(
        ua.ask(&request("OPTIONS", "sip:example.com")).await.code,
        200
    );
    ua.send("this is not SIP\r\n\r\n").await;
    let mut tcp = Tcp::to(&server).await;
    let _ = tcp.closed_within(Duration::from_millis(200)).await;

    let scrape = get(http, "/metrics").await;
    assert_eq!(scrape.status, 200);
    let text = scrape.body;
    let delta = |i: usize| series(&text, names[i]).unwrap_or(0.0) - before[i];
    // 401 twice: the challenge and the wrong password.
    // Two batches: the right and the wrong password are both verified in the database.
    let expected = [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 2.0, 1.0];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(delta(i), *want, "{}\n{text}", names[i]);
    }
    assert_eq!(series(&text, "registrar_bindings"), Some(1.0), "{text}");
    assert_eq!(series(&text, "registrar_aors"), Some(1.0));
    assert_eq!(series(&text, "registrar_inflight_registers"), Some(0.0));
    assert_eq!(series(&text, "transport_tcp_connections"), Some(1.0));
    assert!(series(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(series(&text, "process_open_fds").unwrap() > 3.0);
    assert!(text.contains("process_cpu_seconds_total "));
    drop(tcp);

    assert_eq!(get(http, "/healthz").await.status, 200);
    assert_eq!(get(http, "/nope").await.status, 404);
    let mut ready = 0;
    for _ in 0..50 {
        ready = get(http, "/readyz").await.status;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o1_readyz_follows_the_database() {
    use registrar::config::Settings;
    use registrar::store::{ConnectOptions, Store};
    use support::proxy::Proxy;
    let Some(db) = TestDb::postgres().await else {
        return support::pg::skip("o1_readyz_follows_the_database");
    };
    // It sends a REGISTER during the outage: keep it apart from the metrics tests' deltas.
    let _one = SERIAL.lock().await;
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let flags = Overrides {
        listen: vec!["udp:127.0.0.1:0".into()],
        http_listen: Some("127.0.0.1:0".into()),
        auth: Some(AuthMode::Off),
        ..Overrides::default()
    };
    let settings = Settings::load(None, Some(url.clone()), flags).unwrap();
    let options = ConnectOptions {
        pool_size: 4,
        acquire_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let store = Store::connect(&url, &options).await.unwrap();
    let running = registrar::server::start(&settings, store).await.unwrap();
    let http = running.http.unwrap();
    let until = async |want: u16| {
        for _ in 0..150 {
            let r = get(http, "/readyz").await;
            if r.status == want {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz never answered {want}");
    };
    until(200).await;
    let errors = || now_value("registrar_db_errors_total{kind=\"unavailable\"}");
    let before = errors();
    proxy.down();
    let r = until(503).await;
    // A REGISTER during the outage: 500, counted as a database error of its kind (O2).
    let ua = Udp::to(&running).await;
    let reply = ua
        .ask(&RegisterMsg::new("down").contact("<sip:d@192.0.2.9>").text())
        .await;
    assert_eq!(reply.code, 500);
    assert_eq!(errors() - before, 1.0);
    assert!(r.body.contains("database"), "{}", r.body);
    assert_eq!(
        get(http, "/healthz").await.status,
        200,
        "alive all the same"
    );
    proxy.up();
    until(200).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o2_pcscf_metrics_move_with_traffic() {
    use registrar::config::Role;
    use support::scscf::Scscf;
    let _one = SERIAL.lock().await;
    let db = TestDb::sqlite().await;
    let scscf = Scscf::start().await;
    let server = start(
        &db,
        Overrides {
            role: Some(Role::Pcscf),
            scscf: Some(scscf.uri()),
            notify_window: Some(30.0),
            audit_interval: Some(3600.0),
            t1_ms: Some(40),
            ..Overrides::default()
        },
    )
    .await;
    let http = server.http.unwrap();
    let names = [
        "regevent_notify_total{result=\"applied\"}",
        "regevent_notify_total{result=\"forbidden\"}",
        "pcscf_register_refused_total{reason=\"window\"}",
        "pcscf_register_refused_total{reason=\"publish\"}",
        "pcscf_publish_total{result=\"ok\"}",
    ];
    let before: Vec<f64> = names.iter().map(|n| now_value(n)).collect();
    let ue = Udp::to(&server).await;
    let mut reg = RegisterMsg::new("ue1")
        .via("UDP", ue.port())
        .contact(&format!("<sip:ue1@127.0.0.1:{}>;expires=600", ue.port()));
    reg.domain = "ims.example.com".into();
    assert_eq!(ue.ask(&reg.text()).await.code, 200);
    let contact = format!("sip:ue1@127.0.0.1:{}", ue.port());
    let body = format!(
        "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"1\" state=\"partial\">\
         <registration aor=\"sip:ue1@ims.example.com\" id=\"r\" state=\"active\">\
         <contact id=\"c\" state=\"active\" event=\"refreshed\" expires=\"600\"><uri>{contact}</uri></contact>\
         </registration></reginfo>"
    );
    assert_eq!(scscf.notify(server.udp[0], "reg", &body).await, Some(200));
    let stranger = Udp::from_ip(&server, "127.0.0.2").await;
    let notify = request("NOTIFY", &format!("sip:pcscf@{}", server.udp[0]));
    assert_eq!(stranger.ask(&notify).await.code, 403);
    let first = get(http, "/metrics").await.body;
    assert_eq!(
        series(&first, "pcscf_pcontacts{state=\"REGISTERED\"}"),
        Some(1.0),
        "{first}"
    );
    // Expired 10 s ago: inside the notify window, refused.
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(-10)
    ))
    .await;
    assert_eq!(ue.ask(&reg.clone().cseq(2).text()).await.code, 500);
    // Expired an hour ago: refused, and its expiry PUBLISHed.
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(-3600)
    ))
    .await;
    assert_eq!(ue.ask(&reg.clone().cseq(3).text()).await.code, 500);
    let mut text = String::new();
    for _ in 0..100 {
        text = METRICS.encode();
        if series(&text, names[4]).unwrap_or(0.0) > before[4] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delta = |i: usize| series(&text, names[i]).unwrap_or(0.0) - before[i];
    for (i, want) in [1.0, 1.0, 1.0, 1.0, 1.0].iter().enumerate() {
        assert_eq!(delta(i), *want, "{}\n{text}", names[i]);
    }
    server.stop().await;
}

/// SPEC O4: `--log-format json` writes one JSON object per line, with the timestamp, the
/// level, the message and the request span's `call_id`; never a secret (A7).
#[test]
fn o4_json_logs_carry_the_call_id() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--auth",
            "off",
            "--http-listen",
            "off",
        ])
        .args(["--listen", &format!("udp:127.0.0.1:{port}")])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "registrar=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ua = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    ua.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let text = RegisterMsg::new("json")
        .call_id("json-call-id@test")
        .contact("<sip:j@192.0.2.1>")
        .text();
    let mut answered = false;
    for _ in 0..50 {
        ua.send_to(text.as_bytes(), ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 4096];
        if ua.recv_from(&mut buf).is_ok() {
            answered = true;
            break;
        }
    }
    assert!(answered, "serve answered");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    let change = lines
        .iter()
        .find(|l| l["fields"]["message"] == "registration changed")
        .unwrap_or_else(|| panic!("no registration line in {stderr}"));
    assert_eq!(change["span"]["call_id"], "json-call-id@test", "{change}");
}

fn cli(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Everything but the seconds left, which may tick between two reads.
fn without_expires_in(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(list) = v.as_array_mut() {
        for b in list {
            b.as_object_mut().unwrap().remove("expires_in");
        }
    }
    v
}

both_backends!(o3_admin_api_answers_what_the_cli_answers, |db| {
    use support::http::send;
    // SIP traffic here would move the counters the metrics tests assert.
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let server = start(
        db,
        Overrides {
            http_token_file: Some(token_file),
            ..Overrides::default()
        },
    )
    .await;
    let http = server.http.unwrap();
    let auth = "Authorization: Bearer s3cret-token-0123456789";
    let ua = Udp::to(&server).await;
    for (i, user) in ["ana", "ana", "ben", "cy"].iter().enumerate() {
        let msg = RegisterMsg::new(user)
            .call_id(&format!("c{i}"))
            .contact(&format!("<sip:{user}@192.0.2.{}>", i + 1));
        assert_eq!(ua.ask(&msg.text()).await.code, 200);
    }
    // Token enforcement: none, wrong, right; the ops endpoints never need it.
    let path = "/v1/aors/sip:ana@example.com/bindings";
    assert_eq!(get(http, path).await.status, 401);
    let wrong = send(http, "GET", path, &["Authorization: Bearer nope"], "").await;
    assert_eq!(
        (wrong.status, wrong.json()["error"].is_string()),
        (401, true)
    );
    assert_eq!(get(http, "/metrics").await.status, 200);
    let api = send(http, "GET", path, &[auth], "").await;
    assert_eq!(api.status, 200, "{}", api.body);
    let shown = cli(
        &db.url,
        &["contacts", "show", "sip:ana@example.com", "--json"],
    );
    let cli_json: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(without_expires_in(api.json()), without_expires_in(cli_json));
    assert_eq!(api.json().as_array().unwrap().len(), 2);
    // A bad AoR: 400 with the CLI's message.
    let bad = send(http, "GET", "/v1/aors/tel:+1555/bindings", &[auth], "").await;
    let cli_bad = cli(&db.url, &["contacts", "show", "tel:+1555"]);
    let cli_line = String::from_utf8_lossy(&cli_bad.stderr).trim().to_string();
    assert_eq!(bad.status, 400);
    assert_eq!(
        format!("registrar: {}", bad.json()["error"].as_str().unwrap()),
        cli_line
    );
    // Paging: 4 bindings, pages of 3, then the rest; a bad cursor is 400.
    let first = send(http, "GET", "/v1/bindings?limit=3", &[auth], "")
        .await
        .json();
    assert_eq!(first["bindings"].as_array().unwrap().len(), 3);
    let next = first["next"].as_str().expect("a next cursor").to_string();
    let second = send(
        http,
        "GET",
        &format!("/v1/bindings?limit=3&after={next}"),
        &[auth],
        "",
    )
    .await
    .json();
    assert_eq!(second["bindings"].as_array().unwrap().len(), 1);
    assert!(second["next"].is_null());
    for q in ["after=zz", "limit=0", "limit=99999", "limit=x"] {
        let r = send(http, "GET", &format!("/v1/bindings?{q}"), &[auth], "").await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }
    let huge = format!("/v1/bindings?after={}", "9".repeat(20_000));
    let r = send(http, "GET", &huge, &[auth], "").await;
    assert!(matches!(r.status, 400 | 414 | 431), "{}", r.status);
    assert_eq!(
        send(http, "GET", "/v1/nothing", &[auth], "").await.status,
        404
    );
    // Removal by contact, as the CLI's `contacts rm --contact`.
    let removed = send(
        http,
        "DELETE",
        "/v1/aors/sip:ana@example.com/bindings?contact=sip:ana@192.0.2.1",
        &[auth],
        "",
    )
    .await;
    assert_eq!(removed.json()["removed"], 1);
    // Users: created, changed, refused without a password, removed, then 404.
    let user = "/v1/users/sip:ana@example.com";
    let body = r#"{"password":"pw-1"}"#;
    assert_eq!(send(http, "PUT", user, &[auth], body).await.status, 201);
    assert_eq!(send(http, "PUT", user, &[auth], body).await.status, 200);
    assert_eq!(send(http, "PUT", user, &[auth], "{}").await.status, 400);
    let listed = cli(&db.url, &["users", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(users[0]["aor"], "sip:ana@example.com");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("pw-1"));
    assert_eq!(send(http, "DELETE", user, &[auth], "").await.status, 200);
    assert_eq!(send(http, "DELETE", user, &[auth], "").await.status, 404);
    server.stop().await;
});

/// SPEC O3: an admin API reachable from elsewhere must have a token; refused at start (C6).
#[test]
fn o3_a_non_loopback_listener_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let out = cli(
        &url,
        &[
            "serve",
            "--listen",
            "udp:127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--http-token-file"), "{err}");
}
