//! A registrar on a hostile network (SPEC H1–H9), over real sockets, both backends.

mod support;

use registrar::auth::AuthMode;
use registrar::config::Overrides;
use std::time::Duration;
use support::sip::{RegisterMsg, Tcp, Udp, request, start};
use tokio::io::AsyncWriteExt;

fn many_contacts(user: &str, n: usize) -> RegisterMsg {
    let mut msg = RegisterMsg::new(user).header("Expires: 600");
    for i in 0..n {
        msg = msg.contact(&format!(
            "<sip:{user}@192.0.2.{}:{};transport=tcp;{}>",
            i % 250 + 1,
            5060 + i,
            "x".repeat(200)
        ));
    }
    msg
}

both_backends!(h1_a_replay_from_elsewhere_is_not_reflected, |db| {
    let server = start(db, Overrides::default()).await;
    // The request an attacker spoofed from its victim's address: the victim got the answer.
    let victim = Udp::from_ip(&server, "127.0.0.2").await;
    let query = many_contacts("hugo", 10).text();
    assert_eq!(victim.ask(&query).await.code, 200);
    // The attacker replays the same bytes from its own address, again and again.
    let attacker = Udp::to(&server).await;
    for _ in 0..5 {
        attacker.send(&query).await;
    }
    assert!(
        victim.recv(Duration::from_millis(500)).await.is_none(),
        "the cached 200 OK went to the victim again"
    );
    // Handled as new requests, answered to whoever sent them (R5's equal CSeq: a retransmission).
    let reply = attacker
        .recv(Duration::from_secs(2))
        .await
        .expect("answered");
    assert_eq!(reply.code, 200);
    // A true retransmission (same source) is still answered from the cache.
    let before = server.stats.retransmissions();
    assert_eq!(victim.ask(&query).await.code, 200);
    assert_eq!(server.stats.retransmissions(), before + 1);
    server.stop().await;
});

both_backends!(h2_unauthenticated_udp_answers_are_no_amplifier, |db| {
    let server = start(
        db,
        Overrides {
            auth: Some(AuthMode::Digest),
            auth_algorithms: Some("sha-256,md5".into()),
            ..Overrides::default()
        },
    )
    .await;
    // A binding that makes the AoR's 200 OK large, written behind the server's back.
    let attacker = Udp::to(&server).await;
    let requests = [
        RegisterMsg::new("ida").text(),
        many_contacts("ida", 10).text(),
        RegisterMsg::new("ida").contact("*").header("Expires: 0").text(),
        RegisterMsg::new("ida")
            .header("Authorization: Digest username=\"ida\", realm=\"example.com\", nonce=\"00\", uri=\"sip:example.com\", response=\"00\"")
            .text(),
        request("OPTIONS", "sip:example.com"),
        request("INVITE", "sip:ida@example.com"),
    ];
    for text in requests {
        let reply = attacker.ask(&text).await;
        let bound = (3 * text.len()).max(1300);
        assert!(
            reply.text.len() <= bound,
            "{} bytes answered {} bytes: {}",
            text.len(),
            reply.text.len(),
            reply.text
        );
    }
    server.stop().await;
});

both_backends!(h3_limits_are_400_naming_them_and_write_nothing, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let long_contact = format!("<sip:{}@192.0.2.1>", "a".repeat(520));
    let long_instance = format!(
        "<sip:x@192.0.2.1>;+sip.instance=\"<urn:{}>\"",
        "u".repeat(252)
    );
    let quoted_instance = r#"<sip:x@192.0.2.1>;+sip.instance="<urn:a\";x=\"y>";reg-id=1"#;
    for (msg, why) in [
        (
            RegisterMsg::new("lim").contact(&long_contact),
            "Contact/received too long",
        ),
        (
            RegisterMsg::new("lim").contact(&long_instance),
            "+sip.instance too long",
        ),
        (many_contacts("lim", 11), "Too many contacts in REGISTER"),
        (
            RegisterMsg::new("lim").contact(quoted_instance),
            "Contact parse error",
        ),
    ] {
        let reply = ua.ask(&msg.text()).await;
        assert_eq!(
            (reply.code, reply.header("P-Registrar-Error")),
            (400, Some(why)),
            "{}",
            reply.text
        );
    }
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    // The longest instance allowed (256 as stored) is fine, and so are 10 contacts.
    let fits = format!(
        "<sip:x@192.0.2.1>;+sip.instance=\"<urn:{}>\"",
        "u".repeat(250)
    );
    assert_eq!(
        ua.ask(&RegisterMsg::new("lim").contact(&fits).text())
            .await
            .code,
        200
    );
    assert_eq!(ua.ask(&many_contacts("ten", 10).text()).await.code, 200);
    // --max-contacts defaults to 10: an eleventh binding is refused (R7).
    let reply = ua
        .ask(
            &RegisterMsg::new("ten")
                .call_id("other")
                .contact("<sip:ten@192.0.2.99>")
                .text(),
        )
        .await;
    assert_eq!(reply.code, 503, "{}", reply.text);
    server.stop().await;
});

/// VmRSS of this process (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

both_backends!(h4_a_peer_that_never_reads_holds_bounded_memory, |db| {
    let server = start(
        db,
        Overrides {
            tcp_write_timeout: Some(1.0),
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    // Ten large bindings make every query's 200 OK ~3 KB.
    assert_eq!(ua.ask(&many_contacts("big", 10).text()).await.code, 200);
    let before = rss_kib();
    let mut hog = tokio::net::TcpStream::connect(server.tcp[0]).await.unwrap();
    let query = RegisterMsg::new("big").via("TCP", 1).text();
    // Pipeline queries and never read. Our writes stop completing once the server stops
    // reading (backpressure); stop after 5 s either way.
    let flood = async {
        for _ in 0..100_000 {
            if hog.write_all(query.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
    // Meanwhile another client is served.
    let other = RegisterMsg::new("other").contact("<sip:o@192.0.2.7>");
    assert_eq!(ua.ask(&other.text()).await.code, 200);
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
    // The write timeout closes the hog's connection and gives its slot back.
    let mut released = false;
    for _ in 0..100 {
        if server.slots.held() == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "slot released: {} held", server.slots.held());
    server.stop().await;
});

both_backends!(h4_slowloris_is_closed_within_the_message_deadline, |db| {
    let server = start(
        db,
        Overrides {
            tcp_message_timeout: Some(0.5),
            ..Overrides::default()
        },
    )
    .await;
    let mut slow = Tcp::to(&server).await;
    let text = RegisterMsg::new("slow").via("TCP", slow.port()).text();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in text.bytes() {
        if slow.stream.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        if slow.closed_within(Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection outlived its message deadline");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
});

both_backends!(h4_per_ip_limit_closes_at_once_and_slots_come_back, |db| {
    let server = start(
        db,
        Overrides {
            tcp_max_per_ip: Some(3),
            ..Overrides::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Tcp::to(&server).await);
    }
    for _ in 0..50 {
        if server.slots.held() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.slots.held(), 3);
    let mut fourth = Tcp::to(&server).await;
    assert!(
        fourth.closed_within(Duration::from_secs(1)).await,
        "beyond the limit: closed at once"
    );
    // Another IP still gets in.
    let mut elsewhere = Tcp::from_ip(&server, "127.0.0.2").await;
    let msg = RegisterMsg::new("tcp2").via("TCP", elsewhere.port());
    assert_eq!(elsewhere.ask(&msg.text()).await.code, 200);
    // Closing one gives its slot back.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut tcp = Tcp::to(&server).await;
        if !tcp.closed_within(Duration::from_millis(100)).await {
            again = Some(tcp);
            break;
        }
    }
    let mut again = again.expect("a slot came back");
    let msg = RegisterMsg::new("tcp1").via("TCP", again.port());
    assert_eq!(again.ask(&msg.text()).await.code, 200);
    server.stop().await;
});

both_backends!(h4_tcp_fuzz_leaves_no_connection_behind, |db| {
    let server = start(
        db,
        Overrides {
            tcp_message_timeout: Some(1.0),
            tcp_idle_timeout: Some(2.0),
            ..Overrides::default()
        },
    )
    .await;
    let valid = RegisterMsg::new("fz").via("TCP", 1).text();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut tasks = Vec::new();
    for n in 0..60 {
        let mode = n % 4;
        let garbage: Vec<u8> = (0..(next() % 3000) as usize)
            .map(|_| next() as u8)
            .collect();
        let cut = (next() as usize) % valid.len();
        let (addr, valid) = (server.tcp[0], valid.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let _ = match mode {
                // Random bytes, then an abrupt close.
                0 => s.write_all(&garbage).await,
                // A partial frame, then an abrupt close.
                1 => s.write_all(&valid.as_bytes()[..cut]).await,
                // A partial frame left hanging (the message deadline closes it).
                2 => {
                    let _ = s.write_all(&valid.as_bytes()[..cut]).await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(())
                }
                // Messages, then garbage, then close.
                _ => {
                    let _ = s.write_all(valid.repeat(3).as_bytes()).await;
                    s.write_all(&garbage).await
                }
            };
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tcp = Tcp::to(&server).await;
    let msg = RegisterMsg::new("after").via("TCP", tcp.port());
    assert_eq!(tcp.ask(&msg.text()).await.code, 200, "still serving");
    drop(tcp);
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = server.slots.held();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "every connection gave its slot back");
    server.stop().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6_a_frozen_postgres_is_answered_within_the_deadline() {
    use registrar::config::Settings;
    use registrar::store::{ConnectOptions, Store};
    use support::proxy::Proxy;
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("h6_a_frozen_postgres_is_answered_within_the_deadline");
    };
    // The proxy holds every byte while stalled: what a SIGSTOPped PostgreSQL looks like from
    // here, without freezing the server the other tests share.
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let flags = Overrides {
        listen: vec!["udp:127.0.0.1:0".into()],
        http_listen: Some("127.0.0.1:0".into()),
        auth: Some(AuthMode::Off),
        request_deadline: Some(1.0),
        ..Overrides::default()
    };
    let settings = Settings::load(None, Some(url.clone()), flags).unwrap();
    let options = ConnectOptions {
        pool_size: 4,
        // Neither the pool's nor the session's timeouts: the request deadline alone must
        // answer in time.
        acquire_timeout: Duration::from_secs(30),
        statement_timeout: None,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&url, &options).await.unwrap();
    let running = registrar::server::start(&settings, store).await.unwrap();
    let ua = Udp::to(&running).await;
    let reg = |n: u32| {
        RegisterMsg::new(&format!("frozen{n}"))
            .contact(&format!("<sip:f@192.0.2.{n}>"))
            .text()
    };
    assert_eq!(ua.ask(&reg(1)).await.code, 200);

    proxy.stall();
    for n in 2..6 {
        let started = std::time::Instant::now();
        let reply = ua.ask_within(&reg(n), Duration::from_secs(3)).await;
        let took = started.elapsed();
        assert!(
            matches!(reply.code, 500 | 503),
            "{}: {}",
            reply.code,
            reply.text
        );
        assert!(reply.header("Retry-After").is_some());
        assert!(
            took < Duration::from_millis(1500),
            "answered after {took:?}"
        );
    }
    proxy.resume();
    let mut code = 0;
    for n in 10..40 {
        code = ua.ask(&reg(n)).await.code;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code, 200, "200s resume by themselves");
    running.stop().await;
}

both_backends!(h9_sqlite_is_synchronous_full_by_default, |db| {
    if let registrar::store::Store::Sqlite(s) = &db.store {
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(level, 2, "FULL");
    } else {
        let level: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(match &db.store {
                registrar::store::Store::Postgres(p) => p.pool(),
                _ => unreachable!(),
            })
            .await
            .unwrap();
        assert_eq!(level, "on", "PostgreSQL's COMMIT waits for the WAL flush");
    }
});
