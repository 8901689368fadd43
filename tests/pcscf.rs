//! The P-CSCF role (SPEC P1–P7) against an S-CSCF test double, over real sockets, on both
//! backends. Rows are aged with UPDATEs instead of waiting.

mod support;

use registrar::config::{Overrides, Role};
use registrar::server::Running;
use registrar::sip::reginfo::{self, ContactState};
use registrar::sip::wire::Message;
use registrar::store::{ContactAddress, RegState};
use std::time::Duration;
use support::TestDb;
use support::scscf::{Mode, Scscf};
use support::sip::{RegisterMsg, Udp, start};

/// The P-CSCF under test. The notify window (30 s) and audit grace (30 s, so stale after 60 s)
/// are long on purpose: tests age rows with UPDATEs to 10 s (inside the window), 45 s (past the
/// window, inside window + grace) or 120 s and more (stale), at least 10 s from any edge, so that
/// a slow machine cannot carry a row across one between the UPDATE and the request.
fn pcscf_flags(scscf_uri: &str) -> Overrides {
    Overrides {
        role: Some(Role::Pcscf),
        scscf: Some(scscf_uri.to_string()),
        notify_window: Some(30.0),
        audit_grace: Some(30.0),
        audit_interval: Some(3600.0),
        t1_ms: Some(40),
        publish_backoff: Some(0.05),
        publish_max_attempts: Some(3),
        ..Overrides::default()
    }
}

/// A UE registering through the P-CSCF: its Contact is its own UDP socket.
fn ue_register(ue: &Udp, user: &str) -> RegisterMsg {
    let mut m = RegisterMsg::new(user)
        .via("UDP", ue.port())
        .contact(&format!("<sip:{user}@127.0.0.1:{}>;expires=600", ue.port()));
    m.domain = "ims.example.com".into();
    m
}

fn address(ue: &Udp) -> ContactAddress {
    ContactAddress {
        host: "127.0.0.1".into(),
        port: ue.port(),
        protocol: "udp".into(),
    }
}

async fn pcontact_state(db: &TestDb, ue: &Udp) -> Option<(RegState, i64)> {
    let p = db.store.pcontact(&address(ue)).await.unwrap()?;
    let left = (p.expires - chrono::Utc::now()).num_seconds();
    Some((p.reg_state, left))
}

async fn age_pcontacts(db: &TestDb, seconds_ago: i64) {
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(-seconds_ago)
    ))
    .await;
}

/// Waits until `check` holds (polling), or panics naming `what`.
async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn our_port(server: &Running) -> u16 {
    server.udp[0].port()
}

both_backends!(p2_p3_registration_through_the_relay, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    let reply = ue.ask(&ue_register(&ue, "ue1").text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(
        reply.headers("Via").len(),
        1,
        "our Via is gone from the UE's answer"
    );
    assert_eq!(
        reply.header("Service-Route"),
        Some("<sip:orig@scscf.ims.example.com:6060;lr>")
    );
    let relayed: Vec<Message> = scscf.registers();
    assert_eq!(relayed.len(), 1);
    let r = &relayed[0];
    let path = format!("<sip:term@127.0.0.1:{};lr>", our_port(&server));
    assert_eq!(r.header("Path"), Some(path.as_str()));
    assert_eq!(r.header("Require"), Some("path"));
    assert!(r.header("Supported").unwrap().contains("path"));
    assert_eq!(r.header("Max-Forwards"), Some("69"));
    let vias: Vec<&str> = r.headers_named("Via").collect();
    assert_eq!(vias.len(), 2);
    assert!(vias[0].starts_with(&format!(
        "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK",
        our_port(&server)
    )));
    let p = db
        .store
        .pcontact(&address(&ue))
        .await
        .unwrap()
        .expect("pcontact");
    assert_eq!(p.reg_state, RegState::Registered);
    assert_eq!(p.aor, format!("sip:ue1@127.0.0.1:{}", ue.port()));
    let left = (p.expires - chrono::Utc::now()).num_seconds();
    assert!((595..=600).contains(&left), "{left}");
    assert_eq!(
        p.service_routes.as_deref(),
        Some("<sip:orig@scscf.ims.example.com:6060;lr>")
    );
    assert_eq!(
        p.public_ids.as_deref(),
        Some("<sip:ue1@ims.example.com><tel:+15550100>")
    );

    // Re-registration: relayed again, expiry moved.
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(100)
    ))
    .await;
    assert_eq!(
        ue.ask(&ue_register(&ue, "ue1").cseq(2).text()).await.code,
        200
    );
    assert_eq!(scscf.registers().len(), 2);
    assert!(pcontact_state(db, &ue).await.unwrap().1 > 590);

    // De-registration: the S-CSCF lists no live contact; the pcontact goes.
    let mut dereg = ue_register(&ue, "ue1").cseq(3);
    dereg.contacts = vec![format!("<sip:ue1@127.0.0.1:{}>;expires=0", ue.port())];
    assert_eq!(ue.ask(&dereg.text()).await.code, 200);
    assert_eq!(pcontact_state(db, &ue).await, None);
    server.stop().await;
});

both_backends!(p1_window_refuses_then_publishes_and_releases, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue2").text()).await.code, 200);

    // Expired 10 s ago, within the 30 s window: refused, not relayed, unchanged, no PUBLISH.
    age_pcontacts(db, 10).await;
    let reply = ue.ask(&ue_register(&ue, "ue2").cseq(2).text()).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (500, "Deregister in progress - Please try again")
    );
    assert_eq!(
        scscf.registers().len(),
        1,
        "nothing relayed inside the window"
    );
    assert_eq!(
        pcontact_state(db, &ue).await.unwrap().0,
        RegState::Registered
    );
    assert!(scscf.publishes().is_empty());

    // Expired 45 s ago, past the window: refused, claimed for PUBLISH, published, deleted.
    scscf.on_publish(Mode::Silent);
    age_pcontacts(db, 45).await;
    let reply = ue.ask(&ue_register(&ue, "ue2").cseq(3).text()).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (500, "Deregister in progress - Please try again")
    );
    assert_eq!(scscf.registers().len(), 1);
    let p = db.store.pcontact(&address(&ue)).await.unwrap().unwrap();
    assert_eq!(p.reg_state, RegState::DeregPendingPublish);
    assert!(p.claimed_by.is_some());
    // While the PUBLISH is out, the UE is still refused.
    let reply = ue.ask(&ue_register(&ue, "ue2").cseq(4).text()).await;
    assert_eq!(reply.code, 500);
    scscf.on_publish(Mode::Ok);
    eventually(
        "the PUBLISH to be answered and the pcontact deleted",
        async || pcontact_state(db, &ue).await.is_none(),
    )
    .await;
    let publishes = scscf.publish_transactions();
    let impus: Vec<String> = publishes
        .iter()
        .map(|m| m.header("To").unwrap().to_string())
        .collect();
    assert!(
        impus.iter().all(|t| t == "<sip:ue2@ims.example.com>"),
        "{impus:?}: no PUBLISH to tel:"
    );
    let publish = &publishes[0];
    let pcscf_uri = format!("sip:127.0.0.1:{}", our_port(&server));
    let registrar::sip::wire::StartLine::Request { uri, .. } = &publish.start else {
        panic!()
    };
    assert_eq!(uri, "sip:ue2@ims.example.com");
    assert_eq!(
        publish.header("From").map(|f| f.split(';').next().unwrap()),
        Some("<sip:ue2@ims.example.com>")
    );
    assert_eq!(publish.header("Event"), Some("reg"));
    assert_eq!(publish.header("Expires"), Some("3601"));
    assert_eq!(
        publish.header("Content-Type"),
        Some("application/reginfo+xml")
    );
    assert_eq!(
        publish.header("P-Asserted-Identity"),
        Some(format!("<{pcscf_uri}>").as_str())
    );
    let path = scscf.registers()[0].header("Path").unwrap().to_string();
    assert!(
        path.contains(&pcscf_uri[4..]),
        "a Kamailio S-CSCF finds the PAI in the Path"
    );
    let body = reginfo::parse(std::str::from_utf8(&publish.body).unwrap()).expect("reginfo XML");
    assert_eq!(body.len(), 1);
    assert_eq!(body[0].aor, "sip:ue2@ims.example.com");
    let c = &body[0].contacts[0];
    assert_eq!(
        (c.state.clone(), c.event.as_deref(), c.expires),
        (ContactState::Terminated, Some("unregistered"), Some(0))
    );
    assert_eq!(c.uri, format!("sip:ue2@127.0.0.1:{}", ue.port()));

    // The UE may register again: a new pending pcontact, relayed.
    assert_eq!(
        ue.ask(&ue_register(&ue, "ue2").cseq(5).text()).await.code,
        200
    );
    assert_eq!(scscf.registers().len(), 2);
    assert_eq!(
        pcontact_state(db, &ue).await.unwrap().0,
        RegState::Registered
    );
    server.stop().await;
});

both_backends!(p1_stale_pcontact_without_identities_is_replaced, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue3").text()).await.code, 200);
    db.exec("UPDATE pcscf_location SET public_ids = '<tel:+15550100>'")
        .await;
    age_pcontacts(db, 120).await;
    assert_eq!(
        ue.ask(&ue_register(&ue, "ue3").cseq(2).text()).await.code,
        200,
        "treated as new"
    );
    assert!(scscf.publishes().is_empty());
    assert_eq!(scscf.registers().len(), 2);
    server.stop().await;
});

both_backends!(p2_silent_scscf_is_408_and_pending_pcontact_removed, |db| {
    let scscf = Scscf::start().await;
    scscf.on_register(Mode::Silent);
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    let msg = ue_register(&ue, "ue4").text();
    ue.send(&msg).await;
    // While relayed, the pcontact is pending.
    eventually("the pending pcontact", async || {
        pcontact_state(db, &ue)
            .await
            .is_some_and(|(s, _)| s == RegState::RegPending)
    })
    .await;
    let reply = ue
        .recv(Duration::from_secs(10))
        .await
        .expect("an answer after 64*T1");
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (408, "Request Timeout")
    );
    assert!(
        scscf.registers().len() > 3,
        "UDP retransmissions: {}",
        scscf.registers().len()
    );
    assert_eq!(pcontact_state(db, &ue).await, None);
    // A refusal removes the pending pcontact too.
    scscf.on_register(Mode::Fail(403));
    assert_eq!(
        ue.ask(&ue_register(&ue, "ue4").cseq(2).text()).await.code,
        403
    );
    assert_eq!(pcontact_state(db, &ue).await, None);
    server.stop().await;
});

both_backends!(p4_unanswered_publish_is_retried_then_given_up, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue5").text()).await.code, 200);
    scscf.on_publish(Mode::Fail(500));
    age_pcontacts(db, 45).await;
    assert_eq!(
        ue.ask(&ue_register(&ue, "ue5").cseq(2).text()).await.code,
        500
    );
    eventually(
        "the PUBLISH to be given up and the pcontact removed",
        async || pcontact_state(db, &ue).await.is_none(),
    )
    .await;
    assert_eq!(
        scscf.publish_transactions().len(),
        3,
        "--publish-max-attempts 3"
    );
    server.stop().await;
});

both_backends!(p6_notify_terminated_active_and_malformed, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue6").text()).await.code, 200);
    let contact = format!("sip:ue6@127.0.0.1:{}", ue.port());
    let doc = |state: &str, expires: u32| {
        format!(
            "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"1\" state=\"partial\">\
             <registration aor=\"sip:ue6@ims.example.com\" id=\"r\" state=\"active\">\
             <contact id=\"c\" state=\"{state}\" event=\"registered\" expires=\"{expires}\"><uri>{contact}</uri></contact>\
             </registration></reginfo>"
        )
    };
    let pcscf = server.udp[0];
    assert_eq!(
        scscf.notify(pcscf, "reg", "<reginfo><registration").await,
        Some(400)
    );
    assert_eq!(
        pcontact_state(db, &ue).await.unwrap().0,
        RegState::Registered,
        "malformed: nothing changed"
    );
    assert_eq!(
        scscf.notify(pcscf, "presence", &doc("active", 10)).await,
        Some(489)
    );
    assert_eq!(
        scscf.notify(pcscf, "reg", &doc("active", 120)).await,
        Some(200)
    );
    let left = pcontact_state(db, &ue).await.unwrap().1;
    assert!(
        (115..=120).contains(&left),
        "active renews the expiry: {left}"
    );
    assert_eq!(
        scscf.notify(pcscf, "reg", &doc("terminated", 0)).await,
        Some(200)
    );
    assert_eq!(pcontact_state(db, &ue).await, None, "terminated deletes");
    server.stop().await;
});

both_backends!(p5_audit_publishes_stale_and_drops_stuck_pending, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let (stale, pending, fresh) = (db.in_seconds(-300), db.in_seconds(-300), db.in_seconds(300));
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) VALUES \
         ('sip:a@10.0.0.1', '10.0.0.1', 5060, 'udp', 2, {stale}, '<sip:a@ims.example.com><tel:+1>'), \
         ('sip:b@10.0.0.2', '10.0.0.2', 5060, 'udp', 4, {pending}, NULL), \
         ('sip:c@10.0.0.3', '10.0.0.3', 5060, 'udp', 2, {fresh}, '<sip:c@ims.example.com>')"
    ))
    .await;
    registrar::pcscf::audit::pass(server.pcscf.as_ref().unwrap()).await;
    eventually("the stale pcontact published and removed", async || {
        db.scalar("SELECT count(*) FROM pcscf_location").await == 1
    })
    .await;
    let to: Vec<String> = scscf
        .publish_transactions()
        .iter()
        .map(|m| m.header("To").unwrap().to_string())
        .collect();
    assert_eq!(to, ["<sip:a@ims.example.com>"]);
    assert_eq!(
        db.scalar("SELECT count(*) FROM pcscf_location WHERE host = '10.0.0.3'")
            .await,
        1
    );
    server.stop().await;
});

both_backends!(p2_relay_over_tcp, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.tcp_uri())).await;
    let ue = Udp::to(&server).await;
    let reply = ue.ask(&ue_register(&ue, "ue7").text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    let r = &scscf.registers()[0];
    assert!(r.header("Via").unwrap().starts_with("SIP/2.0/TCP "));
    assert_eq!(
        pcontact_state(db, &ue).await.unwrap().0,
        RegState::Registered
    );
    server.stop().await;
});

both_backends!(p_end_to_end_in_front_of_our_own_registrar, |db| {
    let registrar_server = start(db, Overrides::default()).await;
    let upstream = format!("sip:{}", registrar_server.udp[0]);
    let pcscf_server = start(db, pcscf_flags(&upstream)).await;
    let ue = Udp::to(&pcscf_server).await;
    let reply = ue.ask(&ue_register(&ue, "ue8").text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    let path = format!("<sip:term@127.0.0.1:{};lr>", pcscf_server.udp[0].port());
    assert_eq!(
        reply.header("Path"),
        Some(path.as_str()),
        "the registrar echoes our Path"
    );
    let aor = registrar::sip::aor::parse_aor("sip:ue8@ims.example.com", false).unwrap();
    let b = &db.store.live_bindings(&aor).await.unwrap().bindings[0];
    assert_eq!(b.path.as_deref(), Some(path.as_str()));
    let p = db.store.pcontact(&address(&ue)).await.unwrap().unwrap();
    assert_eq!(p.reg_state, RegState::Registered);
    assert_eq!(
        p.public_ids.as_deref(),
        Some("<sip:ue8@ims.example.com>"),
        "no P-Associated-URI: the To URI"
    );
    pcscf_server.stop().await;
    registrar_server.stop().await;
});

both_backends!(p4_silent_scscf_publish_times_out_then_is_given_up, |db| {
    let scscf = Scscf::start().await;
    let flags = Overrides {
        publish_max_attempts: Some(2),
        ..pcscf_flags(&scscf.uri())
    };
    let server = start(db, flags).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue9").text()).await.code, 200);
    scscf.on_publish(Mode::Silent);
    age_pcontacts(db, 45).await;
    assert_eq!(
        ue.ask(&ue_register(&ue, "ue9").cseq(2).text()).await.code,
        500
    );
    // Each attempt is a UDP transaction retransmitted until 64*T1 (2.56 s here).
    eventually(
        "both unanswered attempts given up and the pcontact removed",
        async || pcontact_state(db, &ue).await.is_none(),
    )
    .await;
    assert_eq!(scscf.publish_transactions().len(), 2);
    assert!(
        scscf.publishes().len() > 4,
        "retransmitted: {}",
        scscf.publishes().len()
    );
    server.stop().await;
});

both_backends!(p2_provisional_answers_reach_the_ue, |db| {
    let scscf = Scscf::start().await;
    scscf.on_register(Mode::ProvisionalThenOk);
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    ue.send(&ue_register(&ue, "ue10").text()).await;
    let first = ue
        .recv(Duration::from_secs(5))
        .await
        .expect("the 183 first");
    assert_eq!(first.code, 183);
    assert_eq!(first.headers("Via").len(), 1, "without our Via");
    let last = ue.recv(Duration::from_secs(5)).await.expect("then the 200");
    assert_eq!(last.code, 200);
    server.stop().await;
});

both_backends!(h5_notify_only_from_the_scscf_and_expires_clamped, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue7").text()).await.code, 200);
    let contact = format!("sip:ue7@127.0.0.1:{}", ue.port());
    let doc = |state: &str, expires: u64| {
        format!(
            "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"1\" state=\"partial\">\
             <registration aor=\"sip:ue7@ims.example.com\" id=\"r\" state=\"active\">\
             <contact id=\"c\" state=\"{state}\" event=\"registered\" expires=\"{expires}\"><uri>{contact}</uri></contact>\
             </registration></reginfo>"
        )
    };
    // A stranger on another address, with a Via naming the S-CSCF: 403, nothing changes.
    let stranger = Udp::from_ip(&server, "127.0.0.2").await;
    let body = doc("terminated", 0);
    let spoofed = format!(
        "NOTIFY sip:pcscf@{pcscf} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {scscf};branch=z9hG4bK-spoof\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:pcscf@{pcscf}>;tag=p1\r\n\
         From: <sip:u@ims.example.com>;tag=s1\r\n\
         Call-ID: spoof@scscf\r\n\
         CSeq: 1 NOTIFY\r\n\
         Event: reg\r\n\
         Subscription-State: active;expires=600\r\n\
         Content-Type: application/reginfo+xml\r\n\
         Content-Length: {len}\r\n\r\n{body}",
        pcscf = server.udp[0],
        scscf = scscf.udp,
        len = body.len(),
    );
    let reply = stranger.ask(&spoofed).await;
    assert_eq!(reply.code, 403, "{}", reply.text);
    assert_eq!(
        pcontact_state(db, &ue).await.unwrap().0,
        RegState::Registered,
        "a spoofed NOTIFY deletes nothing"
    );
    // From the S-CSCF, an expires of 136 years is clamped to --max-expires (3600 by default).
    assert_eq!(
        scscf
            .notify(server.udp[0], "reg", &doc("active", 4_294_967_295))
            .await,
        Some(200)
    );
    let left = pcontact_state(db, &ue).await.unwrap().1;
    assert!((3590..=3600).contains(&left), "clamped: {left}");
    server.stop().await;
});

both_backends!(h5_a_pcontact_live_again_publishes_afresh, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    assert_eq!(ue.ask(&ue_register(&ue, "ue8").text()).await.code, 200);
    // Progress of an earlier, interrupted expiry.
    db.exec(
        "UPDATE pcscf_location SET published_ids = '<sip:ue8@ims.example.com>', \
         publish_attempts = 2",
    )
    .await;
    let contact = format!("sip:ue8@127.0.0.1:{}", ue.port());
    let body = format!(
        "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"1\" state=\"partial\">\
         <registration aor=\"sip:ue8@ims.example.com\" id=\"r\" state=\"active\">\
         <contact id=\"c\" state=\"active\" event=\"refreshed\" expires=\"600\"><uri>{contact}</uri></contact>\
         </registration></reginfo>"
    );
    assert_eq!(scscf.notify(server.udp[0], "reg", &body).await, Some(200));
    let p = db.store.pcontact(&address(&ue)).await.unwrap().unwrap();
    assert_eq!(
        (p.published_ids, p.publish_attempts),
        (None, 0),
        "live again: the next expiry PUBLISHes every identity"
    );
    server.stop().await;
});

// P5: the audit claims only pcontacts expired for notify_window + audit_grace (60 s here) or
// longer. One expired 45 s ago (past the window, inside the grace) is left alone, as is a
// REG_PENDING one as recent; a stale one is published.
both_backends!(p5_audit_leaves_pcontacts_inside_window_and_grace, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let (recent, stale) = (db.in_seconds(-45), db.in_seconds(-300));
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) VALUES \
         ('sip:a@10.0.0.1', '10.0.0.1', 5060, 'udp', 2, {recent}, '<sip:a@ims.example.com>'), \
         ('sip:b@10.0.0.2', '10.0.0.2', 5060, 'udp', 4, {recent}, NULL), \
         ('sip:c@10.0.0.3', '10.0.0.3', 5060, 'udp', 2, {stale}, '<sip:c@ims.example.com>')"
    ))
    .await;
    registrar::pcscf::audit::pass(server.pcscf.as_ref().unwrap()).await;
    eventually("the stale pcontact published and removed", async || {
        db.scalar("SELECT count(*) FROM pcscf_location WHERE host = '10.0.0.3'")
            .await
            == 0
    })
    .await;
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pcscf_location WHERE host = '10.0.0.1' \
             AND reg_state = 2 AND claimed_by IS NULL"
        )
        .await,
        1,
        "inside window + grace: not claimed"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM pcscf_location WHERE host = '10.0.0.2'")
            .await,
        1,
        "a REG_PENDING pcontact inside the grace is not dropped"
    );
    let to: Vec<String> = scscf
        .publish_transactions()
        .iter()
        .map(|m| m.header("To").unwrap().to_string())
        .collect();
    assert_eq!(to, ["<sip:c@ims.example.com>"]);
    server.stop().await;
});

// R11: the P-CSCF role allows NOTIFY besides REGISTER and OPTIONS, and says so.
both_backends!(r11_pcscf_allow_includes_notify, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    let reply = ue
        .ask(&support::sip::request("OPTIONS", "sip:pcscf.example.com"))
        .await;
    assert_eq!(reply.code, 200);
    assert_eq!(reply.header("Allow"), Some("REGISTER, OPTIONS, NOTIFY"));
    let reply = ue
        .ask(&support::sip::request("INVITE", "sip:bob@ims.example.com"))
        .await;
    assert_eq!(
        (reply.code, reply.header("Allow")),
        (405, Some("REGISTER, OPTIONS, NOTIFY"))
    );
    assert!(scscf.registers().is_empty());
    server.stop().await;
});

// P1: no Contact, `Contact: *`, or a Contact that is no pcontact: 400, nothing relayed, nothing
// stored.
both_backends!(p1_unusable_contact_is_400, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    let mut none = ue_register(&ue, "ue11");
    none.contacts.clear();
    let mut star = ue_register(&ue, "ue11").cseq(2);
    star.contacts = vec!["*".into()];
    star.extra.push("Expires: 0".into());
    let mut tel = ue_register(&ue, "ue11").cseq(3);
    tel.contacts = vec!["<tel:+15550100>".into()];
    let mut garbled = ue_register(&ue, "ue11").cseq(4);
    garbled.contacts = vec!["<sip:ue11@127.0.0.1:5060".into()];
    for (what, msg) in [
        ("no Contact", none),
        ("Contact: *", star),
        ("a tel: Contact", tel),
        ("an unparsable Contact", garbled),
    ] {
        let reply = ue.ask(&msg.text()).await;
        assert_eq!(reply.code, 400, "{what}: {}", reply.text);
    }
    assert!(scscf.registers().is_empty(), "nothing relayed");
    assert_eq!(db.scalar("SELECT count(*) FROM pcscf_location").await, 0);
    server.stop().await;
});

// P3: the matching Contact of the 2xx without an `expires` param takes the reply's Expires
// header.
both_backends!(p3_expires_header_when_the_contact_has_none, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let ue = Udp::to(&server).await;
    let contact = format!("<sip:ue12@127.0.0.1:{}>", ue.port());
    scscf.on_register_contacts(move |_| format!("Contact: {contact}\r\nExpires: 300\r\n"));
    assert_eq!(ue.ask(&ue_register(&ue, "ue12").text()).await.code, 200);
    let (state, left) = pcontact_state(db, &ue).await.expect("pcontact");
    assert_eq!(state, RegState::Registered);
    assert!((290..=300).contains(&left), "the Expires header: {left}");
    server.stop().await;
});

// P3: a 2xx whose contacts differ from the UE's in port or transport lists no matching contact:
// a de-registration, the pcontact goes.
both_backends!(p3_port_or_transport_mismatch_is_no_match, |db| {
    let scscf = Scscf::start().await;
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    for (what, wrong) in [
        ("another port", "<sip:ue13@127.0.0.1:{other}>;expires=600"),
        (
            "another transport",
            "<sip:ue13@127.0.0.1:{port};transport=tcp>;expires=600",
        ),
    ] {
        let ue = Udp::to(&server).await;
        let line = wrong
            .replace("{port}", &ue.port().to_string())
            .replace("{other}", &(ue.port() ^ 1).to_string());
        scscf.on_register_contacts(move |_| format!("Contact: {line}\r\n"));
        let reply = ue.ask(&ue_register(&ue, "ue13").text()).await;
        assert_eq!(reply.code, 200, "{what}: the answer is relayed");
        assert_eq!(
            pcontact_state(db, &ue).await,
            None,
            "{what}: not the UE's contact, so no pcontact"
        );
    }
    server.stop().await;
});

// P4: retry state is per identity. Two identities the S-CSCF refuses are each tried
// --publish-max-attempts (3) times, the one it accepts once; then the pcontact goes.
both_backends!(p4_each_identity_has_its_own_retries, |db| {
    let scscf = Scscf::start().await;
    scscf.on_publish_for("sip:p4a@ims.example.com", Mode::Fail(500));
    scscf.on_publish_for("sip:p4b@ims.example.com", Mode::Fail(503));
    let server = start(db, pcscf_flags(&scscf.uri())).await;
    let stale = db.in_seconds(-300);
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) VALUES \
         ('sip:p4@10.0.0.4', '10.0.0.4', 5060, 'udp', 2, {stale}, \
          '<sip:p4a@ims.example.com><sip:p4b@ims.example.com><sip:p4c@ims.example.com><tel:+15550104>')"
    ))
    .await;
    registrar::pcscf::audit::pass(server.pcscf.as_ref().unwrap()).await;
    eventually("every identity done and the pcontact removed", async || {
        db.scalar("SELECT count(*) FROM pcscf_location").await == 0
    })
    .await;
    let mut per_identity = std::collections::BTreeMap::new();
    for m in scscf.publish_transactions() {
        *per_identity
            .entry(m.header("To").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_identity.into_iter().collect::<Vec<_>>(),
        [
            ("<sip:p4a@ims.example.com>".to_string(), 3),
            ("<sip:p4b@ims.example.com>".to_string(), 3),
            ("<sip:p4c@ims.example.com>".to_string(), 1),
        ]
    );
    server.stop().await;
});
