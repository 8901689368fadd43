//! The registrar role over real UDP and TCP sockets against real databases (SPEC R1–R16),
//! both backends.

mod support;

use registrar::config::Overrides;
use std::time::Duration;
use support::sip::{RegisterMsg, Tcp, Udp, expires_of, request, start};

fn contact_uris(contacts: &[String]) -> Vec<String> {
    contacts
        .iter()
        .map(|c| c[c.find('<').unwrap() + 1..c.find('>').unwrap()].to_string())
        .collect()
}

both_backends!(r5_first_registration_then_refresh, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let first = RegisterMsg::new("alice")
        .contact("<sip:alice@192.0.2.1:5060>")
        .header("Expires: 600");
    let reply = ua.ask(&first.text()).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (200, "OK"),
        "{}",
        reply.text
    );
    assert_eq!(reply.contacts().len(), 1);
    assert_eq!(expires_of(&reply.contacts()[0]), Some(600));
    assert!(reply.header("Date").is_some(), "R10: Date header");
    assert!(reply.header("To").unwrap().contains(";tag="));
    let aor = registrar::sip::aor::parse_aor("sip:alice@example.com", false).unwrap();
    let before = db.store.live_bindings(&aor).await.unwrap().bindings;
    assert_eq!(before.len(), 1);
    // S1: a ruid is minted at insertion (a UUID).
    assert!(
        uuid::Uuid::parse_str(&before[0].ruid).is_ok(),
        "ruid {:?}",
        before[0].ruid
    );
    // Age the binding so the refresh visibly moves its expiry.
    db.exec(&format!(
        "UPDATE location SET expires = {}",
        db.in_seconds(100)
    ))
    .await;
    let refresh = first.clone().cseq(2);
    let reply = ua.ask(&refresh.text()).await;
    assert_eq!(reply.code, 200);
    assert_eq!(expires_of(&reply.contacts()[0]), Some(600));
    let after = db.store.live_bindings(&aor).await.unwrap().bindings;
    assert_eq!(after.len(), 1, "the refresh rewrote the binding in place");
    // S1/R5: the refresh keeps the binding's identity and moves what the REGISTER says.
    assert_eq!(
        (&after[0].ruid, after[0].id),
        (&before[0].ruid, before[0].id),
        "the ruid survives a refresh"
    );
    assert_eq!(after[0].cseq, 2);
    let left = (after[0].expires - after[0].last_modified).num_seconds();
    assert_eq!(left, 600, "expiry moved to 600 s after the refresh");
    server.stop().await;
});

both_backends!(r6_r10_several_contacts_ordered_by_q, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let msg = RegisterMsg::new("bob")
        .contact("<sip:bob@10.0.0.1>;q=0.1, <sip:bob@10.0.0.2>;q=0.9")
        .contact("<sip:bob@10.0.0.3>")
        .contact("<sip:bob@10.0.0.4>;q=0.5");
    let reply = ua.ask(&msg.text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(
        contact_uris(&reply.contacts()),
        [
            "sip:bob@10.0.0.3",
            "sip:bob@10.0.0.2",
            "sip:bob@10.0.0.4",
            "sip:bob@10.0.0.1"
        ],
        "unspecified q ranks as 1.0, then 0.9, 0.5, 0.1"
    );
    assert!(reply.contacts()[1].contains(";q=0.9"));
    assert!(
        !reply.contacts()[0].contains(";q="),
        "unspecified q is not shown"
    );
    // A q outside 0..1 is refused whole.
    let bad = RegisterMsg::new("bob")
        .cseq(2)
        .contact("<sip:bob@10.0.0.9>;q=1.5");
    let reply = ua.ask(&bad.text()).await;
    assert_eq!(reply.code, 400);
    assert_eq!(
        reply.header("P-Registrar-Error"),
        Some("Invalid q param in contact")
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 4);
    server.stop().await;
});

both_backends!(r5_r4_removal_by_expires_zero_and_wildcard, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let two = RegisterMsg::new("carol")
        .contact("<sip:c@10.0.0.1>")
        .contact("<sip:c@10.0.0.2>");
    assert_eq!(ua.ask(&two.text()).await.code, 200);
    let remove = RegisterMsg::new("carol")
        .cseq(2)
        .contact("<sip:c@10.0.0.1>;expires=0");
    let reply = ua.ask(&remove.text()).await;
    assert_eq!(contact_uris(&reply.contacts()), ["sip:c@10.0.0.2"]);
    // `*` needs Expires: 0 ...
    let star = RegisterMsg::new("carol").cseq(3).contact("*");
    let reply = ua.ask(&star.text()).await;
    assert_eq!(reply.code, 400);
    assert_eq!(
        reply.header("P-Registrar-Error"),
        Some("* used in contact and expires is not zero")
    );
    // ... and must stand alone.
    let mixed = RegisterMsg::new("carol")
        .cseq(4)
        .contact("*")
        .contact("<sip:c@h>")
        .header("Expires: 0");
    assert_eq!(ua.ask(&mixed.text()).await.code, 400);
    let star = RegisterMsg::new("carol")
        .cseq(5)
        .contact("*")
        .header("Expires: 0");
    let reply = ua.ask(&star.text()).await;
    assert_eq!(reply.code, 200);
    assert!(reply.contacts().is_empty());
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    server.stop().await;
});

both_backends!(r3_423_min_expires_and_clamping, |db| {
    let server = start(
        db,
        Overrides {
            min_expires: Some(120),
            max_expires: Some(1800),
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    let short = RegisterMsg::new("dave").contact("<sip:d@10.0.0.1>;expires=30");
    let reply = ua.ask(&short.text()).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (423, "Interval Too Brief")
    );
    assert_eq!(reply.header("Min-Expires"), Some("120"));
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    let long = RegisterMsg::new("dave")
        .cseq(2)
        .contact("<sip:d@10.0.0.1>")
        .header("Expires: 86400");
    let reply = ua.ask(&long.text()).await;
    assert_eq!(reply.code, 200);
    assert_eq!(
        expires_of(&reply.contacts()[0]),
        Some(1800),
        "clamped to max_expires"
    );
    // R3: an unusable `expires` param (empty (quoted), non-numeric, negative, > 2^32-1) is
    // treated as absent, so the request's Expires header (900) applies: not 0 (a removal), not the
    // default, not a 400 or 423.
    let mut cseq = 3;
    for (i, unusable) in ["soon", "\"\"", "-5", "4294967296", "1e3"]
        .iter()
        .enumerate()
    {
        let uri = format!("sip:d@10.0.1.{i}");
        let weird = RegisterMsg::new("dave")
            .cseq(cseq)
            .contact(&format!("<{uri}>;expires={unusable}"))
            .header("Expires: 900");
        cseq += 1;
        let reply = ua.ask(&weird.text()).await;
        assert_eq!(reply.code, 200, "expires={unusable}: {}", reply.text);
        let listed = reply
            .contacts()
            .into_iter()
            .find(|c| c.contains(&format!("<{uri}>")));
        assert_eq!(
            listed.as_deref().and_then(expires_of),
            Some(900),
            "expires={unusable} falls back to the Expires header: {:?}",
            reply.contacts()
        );
    }
    // Without an Expires header it falls back to the default (3600), here clamped to 1800.
    let weird = RegisterMsg::new("dave")
        .cseq(cseq)
        .contact("<sip:d@10.0.2.1>;expires=soon");
    let reply = ua.ask(&weird.text()).await;
    assert_eq!(reply.code, 200);
    let listed = reply
        .contacts()
        .into_iter()
        .find(|c| c.contains("<sip:d@10.0.2.1>"));
    assert_eq!(listed.as_deref().and_then(expires_of), Some(1800));
    server.stop().await;
});

both_backends!(r5_cseq_ordering_and_retransmissions, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("erin")
        .cseq(10)
        .contact("<sip:e@10.0.0.1>")
        .branch("z9hG4bK-erin-10");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    // The same datagram again: answered from the cache, nothing written.
    let again = ua.ask(&reg.text()).await;
    assert_eq!(again.code, 200);
    assert_eq!(server.stats.retransmissions(), 1);
    // Same CSeq, new branch (e.g. another instance saw the first): R5's retransmission rule.
    let same = reg.clone().branch("z9hG4bK-erin-10b");
    let reply = ua.ask(&same.text()).await;
    assert_eq!(reply.code, 200);
    // A lower CSeq on the same Call-ID for a stored binding fails the whole request: not even
    // the new contact beside it is stored.
    let older = RegisterMsg::new("erin")
        .cseq(9)
        .contact("<sip:e@10.0.0.2>")
        .contact("<sip:e@10.0.0.1>");
    let reply = ua.ask(&older.text()).await;
    assert_eq!(
        (reply.code, reply.header("P-Registrar-Error")),
        (400, Some("Invalid CSeq number"))
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    assert_eq!(db.scalar("SELECT cseq FROM location").await, 10);
    // A different Call-ID may use any CSeq.
    let rebooted = RegisterMsg::new("erin")
        .call_id("other")
        .cseq(1)
        .contact("<sip:e@10.0.0.1>");
    assert_eq!(ua.ask(&rebooted.text()).await.code, 200);
    assert_eq!(db.scalar("SELECT cseq FROM location").await, 1);
    // An equal CSeq more than 20 s after the write is refused: age last_modified instead of waiting.
    db.exec(&format!(
        "UPDATE location SET last_modified = {}",
        db.in_seconds(-30)
    ))
    .await;
    let late = RegisterMsg::new("erin")
        .call_id("other")
        .cseq(1)
        .contact("<sip:e@10.0.0.1>");
    assert_eq!(ua.ask(&late.text()).await.code, 400);
    server.stop().await;
});

both_backends!(r15_compact_headers_and_comma_separated_contacts, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let text = "REGISTER sip:example.com SIP/2.0\r\n\
        v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-compact;rport\r\n\
        t: <sip:frank@example.com>\r\n\
        f: \"Frank, Jr.\" <sip:frank@example.com>;tag=1\r\n\
        i: compact-1\r\n\
        CSeq : 1 REGISTER\r\n\
        m: <sip:f@10.0.0.1>;expires=300, \"F\" <sip:f@[2001:db8::1]:5070>\r\n \
         ;q=0.5, sip:f@10.0.0.3;unknownparam\r\n\
        l: 0\r\n\r\n";
    let reply = ua.ask(text).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    let mut uris = contact_uris(&reply.contacts());
    uris.sort();
    assert_eq!(
        uris,
        [
            "sip:f@10.0.0.1",
            "sip:f@10.0.0.3",
            "sip:f@[2001:db8::1]:5070"
        ]
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM location WHERE username = 'frank'")
            .await,
        3
    );
    server.stop().await;
});

both_backends!(r7_max_contacts_refuses_with_503, |db| {
    let server = start(
        db,
        Overrides {
            max_contacts: Some(2),
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    let two = RegisterMsg::new("gina").contact("<sip:g@10.0.0.1>, <sip:g@10.0.0.2>");
    assert_eq!(ua.ask(&two.text()).await.code, 200);
    let third = RegisterMsg::new("gina").cseq(2).contact("<sip:g@10.0.0.3>");
    let reply = ua.ask(&third.text()).await;
    assert_eq!(
        (reply.code, reply.header("P-Registrar-Error")),
        (503, Some("Too many registered contacts"))
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 2);
    server.stop().await;
});

both_backends!(r8_single_contact_mode, |db| {
    let server = start(
        db,
        Overrides {
            single_contact: Some(true),
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    assert_eq!(
        ua.ask(&RegisterMsg::new("hank").contact("<sip:h@10.0.0.1>").text())
            .await
            .code,
        200
    );
    let reply = ua
        .ask(
            &RegisterMsg::new("hank")
                .call_id("new")
                .contact("<sip:h@10.0.0.2>, <sip:h@10.0.0.3>")
                .text(),
        )
        .await;
    assert_eq!(reply.code, 200);
    assert_eq!(contact_uris(&reply.contacts()), ["sip:h@10.0.0.2"]);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    server.stop().await;
});

both_backends!(r10_path_is_stored_and_echoed_or_420, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let without_support = RegisterMsg::new("ivy")
        .contact("<sip:i@10.0.0.1>")
        .header("Path: <sip:edge.example.com;lr>");
    let reply = ua.ask(&without_support.text()).await;
    assert_eq!(
        (reply.code, reply.header("Unsupported")),
        (420, Some("path"))
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        0,
        "420 writes nothing"
    );
    let with_support = RegisterMsg::new("ivy")
        .cseq(2)
        .contact("<sip:i@10.0.0.1>")
        .header("Path: <sip:edge1.example.com;lr>, <sip:edge2.example.com;lr>")
        .header("Supported: path");
    let reply = ua.ask(&with_support.text()).await;
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.headers("Path"),
        ["<sip:edge1.example.com;lr>, <sip:edge2.example.com;lr>"]
    );
    let stored = registrar::sip::aor::parse_aor("sip:ivy@example.com", false).unwrap();
    let b = db.store.live_bindings(&stored).await.unwrap().bindings;
    assert_eq!(
        b[0].path.as_deref(),
        Some("<sip:edge1.example.com;lr>,<sip:edge2.example.com;lr>")
    );
    assert_eq!(
        b[0].received, None,
        "with Path the first hop reaches the UA"
    );
    // An unknown Require tag is 420 naming it.
    let require = RegisterMsg::new("ivy")
        .cseq(3)
        .contact("<sip:i@10.0.0.1>")
        .header("Require: foo, path");
    let reply = ua.ask(&require.text()).await;
    assert_eq!(
        (reply.code, reply.header("Unsupported")),
        (420, Some("foo"))
    );
    server.stop().await;
});

both_backends!(r9_r10_query_and_stored_attributes, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("jo")
        .via("UDP", ua.port())
        .contact("<sip:jo@10.9.9.9:5080>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000000a>\";reg-id=1;methods=\"INVITE,MESSAGE\"");
    let reply = ua.ask(&reg.text()).await;
    assert_eq!(reply.code, 200);
    assert!(
        reply.contacts()[0]
            .contains("+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000000a>\";reg-id=1")
    );
    let query = RegisterMsg::new("jo").cseq(2);
    let reply = ua.ask(&query.text()).await;
    assert_eq!((reply.code, reply.contacts().len()), (200, 1));
    let aor = registrar::sip::aor::parse_aor("sip:jo@example.com", false).unwrap();
    let b = &db.store.live_bindings(&aor).await.unwrap().bindings[0];
    assert_eq!(
        b.received.as_deref(),
        Some(format!("sip:127.0.0.1:{};transport=udp", ua.port()).as_str())
    );
    assert_eq!(
        b.socket.as_deref(),
        Some(format!("udp:{}", server.udp[0]).as_str())
    );
    assert_eq!(b.user_agent.as_deref(), Some("registrar-tests"));
    assert_eq!(
        b.instance.as_deref(),
        Some("<urn:uuid:00000000-0000-0000-0000-00000000000a>")
    );
    assert_eq!(
        (b.reg_id, b.methods, b.connection_id, b.cseq),
        (1, Some(1 | 256), -1, 1)
    );
    server.stop().await;
});

both_backends!(r11_options_405_501_and_responses, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let reply = ua.ask(&request("OPTIONS", "sip:example.com")).await;
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.header("Allow"),
        Some("REGISTER, OPTIONS, SUBSCRIBE, PUBLISH")
    );
    let reply = ua.ask(&request("INVITE", "sip:bob@example.com")).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (405, "Method Not Allowed")
    );
    assert_eq!(
        reply.header("Allow"),
        Some("REGISTER, OPTIONS, SUBSCRIBE, PUBLISH")
    );
    let reply = ua.ask(&request("FOO", "sip:bob@example.com")).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (501, "Not Implemented")
    );
    ua.send(&request("ACK", "sip:bob@example.com")).await;
    ua.send("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\nCall-ID: r\r\nCSeq: 1 INVITE\r\n\r\n").await;
    assert!(
        ua.recv(Duration::from_millis(300)).await.is_none(),
        "ACK and responses get no reply"
    );
    server.stop().await;
});

both_backends!(r11_r12_malformed_and_garbage, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let no_call_id = RegisterMsg::new("kim")
        .contact("<sip:k@h>")
        .text()
        .replace("Call-ID: kim-call@test\r\n", "");
    let reply = ua.ask(&no_call_id).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (400, "Missing Call-ID header")
    );
    let wrong_method = RegisterMsg::new("kim")
        .contact("<sip:k@h>")
        .text()
        .replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE");
    assert_eq!(ua.ask(&wrong_method).await.code, 400);
    let tel = RegisterMsg::new("kim")
        .contact("<sip:k@h>")
        .text()
        .replace("To: <sip:kim@example.com>", "To: <tel:+15550100>");
    let reply = ua.ask(&tel).await;
    assert_eq!(
        (reply.code, reply.header("P-Registrar-Error")),
        (400, Some("To URI not SIP or SIPS"))
    );
    let userless = RegisterMsg::new("kim")
        .contact("<sip:k@h>")
        .text()
        .replace("To: <sip:kim@example.com>", "To: <sip:example.com>");
    assert_eq!(
        ua.ask(&userless).await.header("P-Registrar-Error"),
        Some("No username in To URI")
    );
    for garbage in [
        &b"\x00\x01\x02\x03"[..],
        b"hello world",
        b"\r\n\r\n",
        b"REGISTER\r\n\r\n",
        &[0xff; 1200],
    ] {
        ua.send_bytes(garbage).await;
    }
    assert!(
        ua.recv(Duration::from_millis(300)).await.is_none(),
        "garbage gets no reply"
    );
    assert!(server.stats.dropped() >= 3);
    let fine = RegisterMsg::new("kim").contact("<sip:k@10.0.0.1>");
    assert_eq!(
        ua.ask(&fine.text()).await.code,
        200,
        "still serving after garbage"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    server.stop().await;
});

both_backends!(r16_served_domains, |db| {
    let server = start(
        db,
        Overrides {
            domains: vec!["Example.COM".into()],
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    let mut other = RegisterMsg::new("lee").contact("<sip:l@10.0.0.1>");
    other.domain = "elsewhere.org".into();
    let reply = ua.ask(&other.text()).await;
    assert_eq!((reply.code, reply.reason.as_str()), (404, "Not Found"));
    assert_eq!(
        ua.ask(&RegisterMsg::new("lee").contact("<sip:l@10.0.0.1>").text())
            .await
            .code,
        200
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    server.stop().await;
});

both_backends!(r1_tcp_registration_framing_and_keepalive, |db| {
    let server = start(db, Overrides::default()).await;
    let mut tcp = Tcp::to(&server).await;
    let reg = RegisterMsg::new("mia")
        .via("TCP", tcp.port())
        .contact("<sip:m@10.0.0.1;transport=tcp>");
    let reply = tcp.ask(&reg.text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    // Two requests in one write, then a ping: both answered in order, the ping ponged.
    let two = format!(
        "{}{}",
        reg.clone().cseq(2).text(),
        request("OPTIONS", "sip:example.com")
    );
    tcp.send(&two).await;
    let mut codes = [
        tcp.recv(Duration::from_secs(5)).await.unwrap(),
        tcp.recv(Duration::from_secs(5)).await.unwrap(),
    ];
    codes.sort_by_key(|r| r.header("CSeq").unwrap().to_string());
    assert_eq!(codes.iter().map(|r| r.code).collect::<Vec<_>>(), [200, 200]);
    let aor = registrar::sip::aor::parse_aor("sip:mia@example.com", false).unwrap();
    let b = &db.store.live_bindings(&aor).await.unwrap().bindings[0];
    assert!(b.connection_id > 0, "TCP bindings carry the connection id");
    assert!(b.socket.as_deref().unwrap().starts_with("tcp:"));
    // No Content-Length on TCP: 400 and the connection is closed.
    let mut bare = Tcp::to(&server).await;
    let no_length = reg
        .clone()
        .cseq(3)
        .text()
        .replace("Content-Length: 0\r\n", "");
    let reply = bare.ask(&no_length).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (400, "Missing Content-Length")
    );
    assert!(
        bare.closed_within(Duration::from_secs(2)).await,
        "closed, not merely silent"
    );
    server.stop().await;
});

both_backends!(r1_tcp_idle_connections_are_closed, |db| {
    let server = start(
        db,
        Overrides {
            tcp_idle_timeout: Some(0.3),
            ..Overrides::default()
        },
    )
    .await;
    let mut tcp = Tcp::to(&server).await;
    assert!(
        tcp.closed_within(Duration::from_secs(3)).await,
        "closed by the server after the idle timeout"
    );
    server.stop().await;
});

both_backends!(r1_oversized_messages, |db| {
    let server = start(
        db,
        Overrides {
            max_message_size: Some(2000),
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    let big = RegisterMsg::new("ned")
        .contact("<sip:n@10.0.0.1>")
        .header(&format!("X-Pad: {}", "x".repeat(3000)));
    ua.send(&big.text()).await;
    assert!(
        ua.recv(Duration::from_millis(300)).await.is_none(),
        "UDP: dropped"
    );
    let mut tcp = Tcp::to(&server).await;
    let reply = tcp.ask(&big.via("TCP", 5060).text()).await;
    assert_eq!(reply.code, 413);
    server.stop().await;
});

both_backends!(r9_received_only_when_nat_is_detected, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let stored = |user: &str| {
        let aor =
            registrar::sip::aor::parse_aor(&format!("sip:{user}@example.com"), false).unwrap();
        let store = db.store.clone();
        async move {
            store.live_bindings(&aor).await.unwrap().bindings[0]
                .received
                .clone()
        }
    };
    // sipsak's way: Via names the source exactly, the Contact listens on another port.
    let plain = RegisterMsg::new("r9a")
        .via("UDP", ua.port())
        .contact("<sip:r9a@127.0.0.1:5099>");
    assert_eq!(ua.ask(&plain.text()).await.code, 200);
    assert_eq!(
        stored("r9a").await,
        None,
        "no NAT: a proxy must use the Contact"
    );
    // The source differs from the Via (a NAT rewrote the port): stored.
    let natted = RegisterMsg::new("r9b").contact("<sip:r9b@127.0.0.1:5099>");
    assert_eq!(ua.ask(&natted.text()).await.code, 200);
    let source = format!("sip:127.0.0.1:{};transport=udp", ua.port());
    assert_eq!(stored("r9b").await.as_deref(), Some(source.as_str()));
    // An RFC 1918 Contact is NAT even when the Via matches the source.
    let private = RegisterMsg::new("r9c")
        .via("UDP", ua.port())
        .contact("<sip:r9c@192.168.1.20:5060>");
    assert_eq!(ua.ask(&private.text()).await.code, 200);
    assert_eq!(stored("r9c").await.as_deref(), Some(source.as_str()));
    // Never with Path, NAT or not.
    let path = RegisterMsg::new("r9d")
        .contact("<sip:r9d@192.168.1.21:5060>")
        .header("Path: <sip:edge.example.com;lr>")
        .header("Supported: path");
    assert_eq!(ua.ask(&path.text()).await.code, 200);
    assert_eq!(stored("r9d").await, None);
    server.stop().await;
});

// R10: bindings of equal q are listed newest `last_modified` first (the database id plays no
// part: the older row, refreshed, comes first).
both_backends!(r10_equal_q_ties_newest_last_modified_first, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let a = RegisterMsg::new("tie").contact("<sip:tie@10.0.0.1>;q=0.5");
    assert_eq!(ua.ask(&a.text()).await.code, 200);
    let b = RegisterMsg::new("tie")
        .call_id("tie-b")
        .contact("<sip:tie@10.0.0.2>;q=0.5");
    assert_eq!(ua.ask(&b.text()).await.code, 200);
    db.exec(&format!(
        "UPDATE location SET last_modified = {} WHERE contact = 'sip:tie@10.0.0.1'",
        db.in_seconds(-100)
    ))
    .await;
    db.exec(&format!(
        "UPDATE location SET last_modified = {} WHERE contact = 'sip:tie@10.0.0.2'",
        db.in_seconds(-50)
    ))
    .await;
    let query = RegisterMsg::new("tie").call_id("tie-q");
    let reply = ua.ask(&query.text()).await;
    assert_eq!(
        contact_uris(&reply.contacts()),
        ["sip:tie@10.0.0.2", "sip:tie@10.0.0.1"],
        "b was modified last"
    );
    // Refreshing a (the older row) makes it the newest.
    let reply = ua.ask(&a.clone().cseq(2).text()).await;
    assert_eq!(reply.code, 200);
    assert_eq!(
        contact_uris(&reply.contacts()),
        ["sip:tie@10.0.0.1", "sip:tie@10.0.0.2"],
        "a was refreshed last"
    );
    server.stop().await;
});

// R12: each mandatory header missing is a 400 naming it, nothing written; without a Via there
// is nowhere to answer (dropped, counted).
both_backends!(r12_missing_mandatory_headers, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    // A new branch each time, or the retransmission cache would answer.
    let full = || RegisterMsg::new("mand").contact("<sip:m@10.0.0.1>").text();
    for (line, reason) in [
        (
            "From: <sip:mand@example.com>;tag=f1\r\n",
            "Missing From header",
        ),
        ("To: <sip:mand@example.com>\r\n", "Missing To header"),
        ("CSeq: 1 REGISTER\r\n", "Missing CSeq header"),
        ("Call-ID: mand-call@test\r\n", "Missing Call-ID header"),
    ] {
        let request = full();
        assert!(request.contains(line), "{line:?} in {request}");
        let reply = ua.ask(&request.replace(line, "")).await;
        assert_eq!(
            (reply.code, reply.reason.as_str()),
            (400, reason),
            "{}",
            reply.text
        );
    }
    let dropped = server.stats.dropped();
    let request = full();
    let via = request
        .lines()
        .find(|l| l.starts_with("Via:"))
        .unwrap()
        .to_string();
    ua.send(&request.replace(&format!("{via}\r\n"), "")).await;
    assert!(
        ua.recv(Duration::from_millis(500)).await.is_none(),
        "no Via: no answer"
    );
    assert_eq!(server.stats.dropped(), dropped + 1, "counted as dropped");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    server.stop().await;
});

// R1 + R5: once the retransmission cache has evicted an answer, the same datagram again is
// handled as a request, and R5's equal-CSeq rule answers it: 200 with nothing written within
// 20 s of the write, 400 later.
both_backends!(r1_r5_equal_cseq_after_cache_eviction, |db| {
    let server = start(
        db,
        Overrides {
            retrans_cache_bytes: Some(4096),
            ..Overrides::default()
        },
    )
    .await;
    let ua = Udp::to(&server).await;
    let first = RegisterMsg::new("evict")
        .cseq(5)
        .contact("<sip:ev@10.0.0.1>")
        .branch("z9hG4bK-evict-5")
        .text();
    assert_eq!(ua.ask(&first).await.code, 200);
    assert_eq!(ua.ask(&first).await.code, 200);
    assert_eq!(server.stats.retransmissions(), 1, "cached at first");
    let written = db
        .scalar("SELECT count(*) FROM location WHERE cseq = 5")
        .await;
    assert_eq!(written, 1);
    let last_modified = "SELECT CAST(last_modified AS TEXT) FROM location WHERE cseq = 5";
    let before = text_of(db, last_modified).await;
    // Answers for other AoRs push it out of the 4 KiB cache.
    let evict = async || {
        for i in 0..20 {
            let other = RegisterMsg::new(&format!("filler{i}"))
                .contact(&format!("<sip:f@10.0.1.{i}>"))
                .text();
            assert_eq!(ua.ask(&other).await.code, 200);
        }
    };
    evict().await;
    let reply = ua.ask(&first).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(contact_uris(&reply.contacts()), ["sip:ev@10.0.0.1"]);
    assert_eq!(
        server.stats.retransmissions(),
        1,
        "not answered from the cache"
    );
    assert_eq!(
        text_of(db, last_modified).await,
        before,
        "a retransmission writes nothing"
    );
    // More than 20 s after the write, the same CSeq is refused.
    db.exec(&format!(
        "UPDATE location SET last_modified = {} WHERE cseq = 5",
        db.in_seconds(-30)
    ))
    .await;
    evict().await;
    let reply = ua.ask(&first).await;
    assert_eq!(
        (reply.code, reply.header("P-Registrar-Error")),
        (400, Some("Invalid CSeq number"))
    );
    assert_eq!(server.stats.retransmissions(), 1);
    server.stop().await;
});

async fn text_of(db: &support::TestDb, sql: &str) -> String {
    use registrar::store::Store;
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match &db.store {
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
    }
}

// R1: the largest datagram IPv4 carries (65,507 bytes, within the default --max-message-size
// of 65,535) is read whole and answered. (A datagram over 64 KiB cannot be sent at all: the
// kernel refuses it, so "dropped" is the only possible outcome and needs no test.)
both_backends!(r1_largest_datagram_is_read_whole, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let head = RegisterMsg::new("big").contact("<sip:big@10.0.0.1>").text();
    let mut text = head
        .trim_end_matches("Content-Length: 0\r\n\r\n")
        .to_string();
    let tail = "Content-Length: 0\r\n\r\n";
    // Padding header lines of 500 to 1,000 bytes (a line may not exceed 8 KiB).
    let line = |len: usize| format!("X-Pad: {}\r\n", "x".repeat(len - "X-Pad: \r\n".len()));
    while 65_507 - text.len() - tail.len() > 2000 {
        text.push_str(&line(1000));
    }
    let room = 65_507 - text.len() - tail.len();
    text.push_str(&line(room / 2));
    text.push_str(&line(room - room / 2));
    text.push_str(tail);
    assert_eq!(text.len(), 65_507);
    let reply = ua.ask(&text).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    server.stop().await;
});
