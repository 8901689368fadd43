//! SPEC E1, E2: the registrar as the reg-event notifier. SUBSCRIBE for `Event: reg` is
//! authorized, stored in `reg_subscription` and answered 200 then a full NOTIFY; every change
//! of the AoR's bindings is NOTIFYed (partial, next version); an expiry is NOTIFYed by the
//! expiry job, exactly once across instances; a 481 ends the subscription.

mod support;

use registrar::auth::AuthMode;
use registrar::config::Overrides;
use std::time::Duration;
use support::TestDb;
use support::digest::{Challenge, add_user};
use support::sip::{RegisterMsg, Udp, start};
use support::watcher::Watcher;

const ALICE: &str = "sip:alice@example.com";
const WAIT: Duration = Duration::from_secs(5);

fn quick() -> Overrides {
    Overrides {
        expiry_notify_delay: Some(1.0),
        t1_ms: Some(100),
        ..Overrides::default()
    }
}

async fn subscriptions(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM reg_subscription").await
}

// E1: 200 with our tag, Expires and Contact, then at once a full NOTIFY (version 0, CSeq 1)
// listing the live bindings; the subscription is a row.
both_backends!(e1_subscribe_then_full_notify, |db| {
    let server = start(db, quick()).await;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("alice").contact("<sip:alice@192.0.2.1:5060>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    let mut w = Watcher::to(&server).await;
    let ok = w.subscribe(ALICE, None).await;
    assert_eq!(ok.code, 200, "{}", ok.text);
    assert_eq!(ok.header("Expires"), Some("3600"));
    assert!(ok.header("Contact").is_some());
    assert!(w.to_tag.is_some());
    let n = w.notify(WAIT).await.expect("a full NOTIFY");
    assert_eq!((n.version, n.full, n.cseq), (0, true, 1), "{}", n.body);
    assert!(n.state.starts_with("active;expires="), "{}", n.state);
    assert_eq!(n.message.header("Event"), Some("reg"));
    assert_eq!(
        n.contacts(),
        vec![(
            "sip:alice@192.0.2.1:5060".into(),
            "active".into(),
            "registered".into()
        )]
    );
    assert_eq!(n.registrations[0].aor, ALICE);
    assert_eq!(subscriptions(db).await, 1);
    server.stop().await;
});

// E1: Expires default 3600, below 60 is 423 with Min-Expires 60, above 3600 is clamped;
// Expires 0 on a new subscription is a fetch: one terminated NOTIFY, nothing kept.
both_backends!(e1_expires_rules, |db| {
    let server = start(db, quick()).await;
    let mut w = Watcher::to(&server).await;
    let brief = w.subscribe(ALICE, Some(59)).await;
    assert_eq!(brief.code, 423);
    assert_eq!(brief.header("Min-Expires"), Some("60"));
    let mut w = Watcher::to(&server).await;
    assert_eq!(
        w.subscribe(ALICE, Some(7200)).await.header("Expires"),
        Some("3600")
    );
    let mut w = Watcher::to(&server).await;
    assert_eq!(
        w.subscribe(ALICE, Some(60)).await.header("Expires"),
        Some("60")
    );
    assert_eq!(subscriptions(db).await, 2);
    let mut fetch = Watcher::to(&server).await;
    let ok = fetch.subscribe(ALICE, Some(0)).await;
    assert_eq!(ok.code, 200);
    let n = fetch.notify(WAIT).await.expect("the fetch's NOTIFY");
    assert!(n.state.starts_with("terminated"), "{}", n.state);
    assert!(n.full);
    assert_eq!(n.registrations[0].state.as_deref(), Some("init"));
    assert_eq!(subscriptions(db).await, 2, "a fetch keeps nothing");
    server.stop().await;
});

// E1's bad input: a wrong or missing Event, no Contact, a bad Expires, an unknown dialog:
// a 4xx that says so, nothing stored.
both_backends!(e1_bad_subscribes_change_nothing, |db| {
    let server = start(db, quick()).await;
    let mut w = Watcher::to(&server).await;
    let presence = w
        .subscribe_text(ALICE, None, &[])
        .replace("Event: reg", "Event: presence");
    let reply = w.ask(&presence).await;
    assert_eq!(reply.code, 489);
    assert_eq!(reply.header("Allow-Events"), Some("reg"));
    let none = w
        .subscribe_text(ALICE, None, &[])
        .replace("Event: reg\r\n", "");
    assert_eq!(w.ask(&none).await.code, 489);
    let no_contact = w
        .subscribe_text(ALICE, None, &[])
        .replace(&format!("Contact: <sip:watcher@{}>\r\n", w.addr()), "");
    let reply = w.ask(&no_contact).await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (400, "Missing Contact")
    );
    let bad_expires = w.subscribe_text(ALICE, None, &["Expires: soon"]);
    assert_eq!(w.ask(&bad_expires).await.code, 400);
    let not_sip = w.subscribe_text(ALICE, None, &[]).replace(
        &format!("<sip:watcher@{}>", w.addr()),
        "<mailto:w@example.com>",
    );
    assert_eq!(w.ask(&not_sip).await.code, 400);
    w.to_tag = Some("nosuchdialog".into());
    let unknown = w.subscribe(ALICE, Some(600)).await;
    assert_eq!(unknown.code, 481);
    assert_eq!(subscriptions(db).await, 0);
    assert!(w.notify(Duration::from_millis(300)).await.is_none());
    server.stop().await;
});

// E1: a refresh in the dialog renews it and NOTIFYs the full state again (next version and
// CSeq); `Expires: 0` ends it with a terminated NOTIFY and removes the row; a replayed CSeq is
// refused.
both_backends!(e1_refresh_and_unsubscribe, |db| {
    let server = start(db, quick()).await;
    let mut w = Watcher::to(&server).await;
    assert_eq!(w.subscribe(ALICE, Some(600)).await.code, 200);
    assert_eq!(w.notify(WAIT).await.unwrap().version, 0);
    let refresh = w.subscribe(ALICE, Some(900)).await;
    assert_eq!(
        (refresh.code, refresh.header("Expires")),
        (200, Some("900"))
    );
    let n = w.notify(WAIT).await.expect("a NOTIFY for the refresh");
    assert_eq!((n.version, n.cseq, n.full), (1, 2, true));
    w.cseq -= 1;
    // A new transaction (another branch) with an old CSeq, not a retransmission.
    let replay = w
        .subscribe_text(ALICE, Some(900), &[])
        .replace("branch=z9hG4bK-w", "branch=z9hG4bK-x");
    let replay = w.ask(&replay).await;
    assert_eq!(replay.code, 500, "a CSeq not above the last");
    let end = w.subscribe(ALICE, Some(0)).await;
    assert_eq!(end.code, 200);
    let n = w.notify(WAIT).await.expect("the final NOTIFY");
    assert!(n.state.starts_with("terminated"), "{}", n.state);
    assert_eq!(n.version, 2);
    // The row goes once the final NOTIFY is answered.
    for _ in 0..50 {
        if subscriptions(db).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subscriptions(db).await, 0);
    server.stop().await;
});

// E2: every REGISTER change is NOTIFYed, partial, with the next version: registered,
// refreshed, unregistered (and the registration terminated when none is left).
both_backends!(e2_register_changes_are_notified, |db| {
    let server = start(db, quick()).await;
    let mut w = Watcher::to(&server).await;
    assert_eq!(w.subscribe(ALICE, None).await.code, 200);
    let full = w.notify(WAIT).await.unwrap();
    assert_eq!(full.registrations[0].state.as_deref(), Some("init"));
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("alice").contact("<sip:alice@192.0.2.1:5060>;expires=600");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    let n = w.notify(WAIT).await.expect("registered");
    assert_eq!((n.version, n.full), (1, false));
    assert_eq!(
        n.contacts(),
        vec![(
            "sip:alice@192.0.2.1:5060".into(),
            "active".into(),
            "registered".into()
        )]
    );
    assert_eq!(ua.ask(&reg.clone().cseq(2).text()).await.code, 200);
    let n = w.notify(WAIT).await.expect("refreshed");
    assert_eq!(n.version, 2);
    assert_eq!(n.contacts()[0].2, "refreshed");
    let gone = RegisterMsg::new("alice")
        .cseq(3)
        .contact("<sip:alice@192.0.2.1:5060>;expires=0");
    assert_eq!(ua.ask(&gone.text()).await.code, 200);
    let n = w.notify(WAIT).await.expect("unregistered");
    assert_eq!(n.version, 3);
    assert_eq!(
        n.contacts(),
        vec![(
            "sip:alice@192.0.2.1:5060".into(),
            "terminated".into(),
            "unregistered".into()
        )]
    );
    assert_eq!(n.registrations[0].state.as_deref(), Some("terminated"));
    // A query changes nothing, and nothing is NOTIFYed for it.
    assert_eq!(
        ua.ask(&RegisterMsg::new("alice").cseq(4).text()).await.code,
        200
    );
    assert!(w.notify(Duration::from_millis(500)).await.is_none());
    server.stop().await;
});

// E2: a binding that expires is NOTIFYed `expired` by the job within the delay, once.
both_backends!(e2_expiry_is_notified_once, |db| {
    let server = start(db, quick()).await;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("alice")
        .contact("<sip:alice@192.0.2.1:5060>;expires=600")
        .contact("<sip:alice@192.0.2.2:5060>;expires=600");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    let mut w = Watcher::to(&server).await;
    assert_eq!(w.subscribe(ALICE, None).await.code, 200);
    assert_eq!(w.notify(WAIT).await.unwrap().contacts().len(), 2);
    // Expiries before the subscription are not its news: let it age past SQLite's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    db.exec(&format!(
        "UPDATE location SET expires = {} WHERE contact = 'sip:alice@192.0.2.1:5060'",
        db.in_seconds(0)
    ))
    .await;
    let n = w
        .notify(Duration::from_secs(3))
        .await
        .expect("an expired NOTIFY");
    assert_eq!(n.version, 1);
    assert_eq!(
        n.contacts(),
        vec![(
            "sip:alice@192.0.2.1:5060".into(),
            "terminated".into(),
            "expired".into()
        )]
    );
    assert_eq!(n.registrations[0].state.as_deref(), Some("active"));
    assert!(
        w.notify(Duration::from_secs(2)).await.is_none(),
        "an expiry is NOTIFYed once"
    );
    server.stop().await;
});

// E2: a 481 to a NOTIFY ends the subscription (its row goes); so does no answer at all.
both_backends!(e2_481_ends_the_subscription, |db| {
    let server = start(db, quick()).await;
    let mut w = Watcher::to(&server).await;
    assert_eq!(w.subscribe(ALICE, None).await.code, 200);
    w.notify(WAIT).await.unwrap();
    w.answer = 481;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("alice").contact("<sip:alice@192.0.2.1:5060>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    w.notify(WAIT).await.expect("the NOTIFY answered 481");
    for _ in 0..50 {
        if subscriptions(db).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subscriptions(db).await, 0);
    // A silent subscriber: Timer F (64·T1 = 6.4 s here) ends it too.
    let mut silent = Watcher::to(&server).await;
    assert_eq!(silent.subscribe(ALICE, None).await.code, 200);
    drop(silent);
    let mut gone = false;
    for _ in 0..100 {
        if subscriptions(db).await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "no answer ends the subscription");
    server.stop().await;
});

// E2: a removal through the admin API is NOTIFYed `deactivated`.
both_backends!(e2_api_removal_is_deactivated, |db| {
    let server = start(db, quick()).await;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("alice").contact("<sip:alice@192.0.2.1:5060>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    let mut w = Watcher::to(&server).await;
    assert_eq!(w.subscribe(ALICE, None).await.code, 200);
    w.notify(WAIT).await.unwrap();
    let http = server.http.expect("the operations listener");
    let reply = support::http::send(
        http,
        "DELETE",
        "/v1/aors/sip:alice@example.com/bindings",
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let n = w.notify(WAIT).await.expect("deactivated");
    assert_eq!(
        n.contacts(),
        vec![(
            "sip:alice@192.0.2.1:5060".into(),
            "terminated".into(),
            "deactivated".into()
        )]
    );
    server.stop().await;
});

// E1 with authentication on: no credentials → 401; the subscriber's own credentials → 200;
// the P-CSCF in a live binding's Path (its source host and port) needs none; another port of
// that host is challenged.
both_backends!(e1_who_may_subscribe, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let flags = Overrides {
        auth: Some(AuthMode::Digest),
        ..quick()
    };
    let server = start(db, flags).await;
    let mut w = Watcher::to(&server).await;
    let challenge = w.subscribe(ALICE, None).await;
    assert_eq!(challenge.code, 401);
    let c = Challenge::first(&challenge);
    let answer = c.answer_for("SUBSCRIBE", "alice", "secret", ALICE, 1);
    let text = w.subscribe_text(ALICE, None, &[&answer]);
    let ok = w.ask(&text).await;
    assert_eq!(ok.code, 200, "{}", ok.text);
    let mut wrong = Watcher::to(&server).await;
    let c = Challenge::first(&wrong.subscribe(ALICE, None).await);
    let answer = c.answer_for("SUBSCRIBE", "alice", "wrong", ALICE, 1);
    let text = wrong.subscribe_text(ALICE, None, &[&answer]);
    assert_eq!(wrong.ask(&text).await.code, 401);
    // A binding registered through a P-CSCF at 127.0.0.7 (its Path).
    let pcscf = Watcher::at(server.udp[0], "127.0.0.7").await;
    let path = format!("Path: <sip:term@{};lr>", pcscf.addr());
    let ua = Udp::to(&server).await;
    let c = Challenge::first(&ua.ask(&RegisterMsg::new("alice").text()).await);
    let reg = RegisterMsg::new("alice")
        .cseq(2)
        .contact("<sip:alice@192.0.2.1:5060>")
        .header(&path)
        .header("Supported: path")
        .header(&c.answer("alice", "secret", "sip:example.com", 1));
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    let mut pcscf = pcscf;
    assert_eq!(
        pcscf.subscribe(ALICE, None).await.code,
        200,
        "the Path's P-CSCF"
    );
    let mut elsewhere = Watcher::at(server.udp[0], "127.0.0.7").await;
    assert_eq!(
        elsewhere.subscribe(ALICE, None).await.code,
        401,
        "same host, other port"
    );
    assert_eq!(subscriptions(db).await, 2);
    server.stop().await;
});

/// E2 across instances: two registrars on one PostgreSQL, 50 AoRs each with a subscription
/// (half made at each instance) and a binding that expires: exactly 50 `expired` NOTIFYs in
/// all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_two_instances_notify_each_expiry_once() {
    let Some(db) = TestDb::postgres().await else {
        return support::pg::skip("e2_two_instances_notify_each_expiry_once");
    };
    let (a, b) = (start(&db, quick()).await, start(&db, quick()).await);
    let ua = Udp::to(&a).await;
    let mut watchers = Vec::new();
    for i in 0..50 {
        let user = format!("u{i}");
        let reg = RegisterMsg::new(&user).contact(&format!("<sip:{user}@192.0.2.1:5060>"));
        assert_eq!(ua.ask(&reg.text()).await.code, 200);
        let at = if i % 2 == 0 { a.udp[0] } else { b.udp[0] };
        let mut w = Watcher::at(at, "127.0.0.1").await;
        assert_eq!(
            w.subscribe(&format!("sip:{user}@example.com"), None)
                .await
                .code,
            200
        );
        w.notify(WAIT).await.expect("full NOTIFY");
        watchers.push(w);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    db.exec(&format!(
        "UPDATE location SET expires = {}",
        db.in_seconds(0)
    ))
    .await;
    // Slow subscribers: nothing answered for 1.5 s, so every NOTIFY is still in its
    // transaction through several passes of both jobs; only the claim keeps them from taking
    // the same subscription again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut expired = 0;
    let collect = watchers
        .iter_mut()
        .map(|w| w.notifies_within(Duration::from_secs(4)));
    for notifies in futures_util::future::join_all(collect).await {
        for n in notifies {
            expired += n.contacts().iter().filter(|c| c.2 == "expired").count();
        }
    }
    assert_eq!(expired, 50, "each expiry NOTIFYed by exactly one instance");
    a.stop().await;
    b.stop().await;
}

/// A P-CSCF's PUBLISH (SPEC P4's body) of `contact` terminated for `aor`.
fn publish(aor: &str, contact: &str, from: std::net::SocketAddr, n: u32) -> String {
    let body = registrar::sip::reginfo::terminated_contact(aor, contact, &format!("p{n}"));
    format!(
        "PUBLISH {aor} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-pub{n};rport\r\n\
         Max-Forwards: 70\r\n\
         To: <{aor}>\r\n\
         From: <{aor}>;tag=p{n}\r\n\
         Call-ID: publish-{n}@test\r\n\
         CSeq: {n} PUBLISH\r\n\
         Event: reg\r\n\
         Expires: 3601\r\n\
         Content-Type: application/reginfo+xml\r\n\
         P-Asserted-Identity: <sip:term@{from}>\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn bindings_of(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM location").await
}

// E3: with auth on, the P-CSCF in the binding's Path (its source host and port) PUBLISHes the
// contact terminated: 200 with SIP-ETag and Expires (at most 3600), the binding is gone, the
// subscriber hears `deactivated`; again when already gone: 200. Anyone else: 403, nothing
// changes; a `--trusted-publisher` network needs no Path.
both_backends!(e3_publish_removes_the_binding_and_notifies, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let flags = Overrides {
        auth: Some(AuthMode::Digest),
        trusted_publisher: vec!["127.0.0.9/32".into()],
        ..quick()
    };
    let server = start(db, flags).await;
    let mut pcscf = Watcher::at(server.udp[0], "127.0.0.7").await;
    let ua = Udp::to(&server).await;
    let c = Challenge::first(&ua.ask(&RegisterMsg::new("alice").text()).await);
    let reg = |cseq: u32, contact: &str, nc: u32| {
        RegisterMsg::new("alice")
            .cseq(cseq)
            .contact(contact)
            .header(&format!("Path: <sip:term@{};lr>", pcscf.addr()))
            .header("Supported: path")
            .header(&c.answer("alice", "secret", "sip:example.com", nc))
            .text()
    };
    assert_eq!(
        ua.ask(&reg(2, "<sip:alice@192.0.2.1:5060>", 1)).await.code,
        200
    );
    assert_eq!(
        ua.ask(&reg(3, "<sip:alice@192.0.2.2:5060>", 2)).await.code,
        200
    );
    let mut w = Watcher::to(&server).await;
    let c2 = Challenge::first(&w.subscribe(ALICE, None).await);
    let answer = c2.answer_for("SUBSCRIBE", "alice", "secret", ALICE, 1);
    let text = w.subscribe_text(ALICE, None, &[&answer]);
    assert_eq!(w.ask(&text).await.code, 200);
    assert_eq!(w.notify(WAIT).await.unwrap().contacts().len(), 2);

    let mut stranger = Watcher::at(server.udp[0], "127.0.0.8").await;
    let refused = stranger
        .ask(&publish(
            ALICE,
            "sip:alice@192.0.2.1:5060",
            stranger.addr(),
            1,
        ))
        .await;
    assert_eq!(refused.code, 403);
    assert_eq!(bindings_of(db).await, 2);

    let ok = pcscf
        .ask(&publish(ALICE, "sip:alice@192.0.2.1:5060", pcscf.addr(), 2))
        .await;
    assert_eq!(ok.code, 200, "{}", ok.text);
    assert!(ok.header("SIP-ETag").is_some_and(|e| !e.is_empty()));
    assert_eq!(ok.header("Expires"), Some("3600"));
    assert_eq!(bindings_of(db).await, 1);
    let n = w.notify(WAIT).await.expect("deactivated");
    assert_eq!(
        n.contacts(),
        vec![(
            "sip:alice@192.0.2.1:5060".into(),
            "terminated".into(),
            "deactivated".into()
        )]
    );
    assert_eq!(n.registrations[0].state.as_deref(), Some("active"));
    let again = pcscf
        .ask(&publish(ALICE, "sip:alice@192.0.2.1:5060", pcscf.addr(), 3))
        .await;
    assert_eq!(again.code, 200, "already gone is still 200");
    assert!(
        w.notify(Duration::from_millis(500)).await.is_none(),
        "nothing changed"
    );

    // An expired binding still authorizes its P-CSCF (that is when a P-CSCF PUBLISHes).
    db.exec(&format!(
        "UPDATE location SET expires = {}",
        db.in_seconds(-30)
    ))
    .await;
    let late = pcscf
        .ask(&publish(ALICE, "sip:alice@192.0.2.2:5060", pcscf.addr(), 4))
        .await;
    assert_eq!(late.code, 200);
    assert_eq!(bindings_of(db).await, 0);

    let mut trusted = Watcher::at(server.udp[0], "127.0.0.9").await;
    let ok = trusted
        .ask(&publish(
            ALICE,
            "sip:alice@192.0.2.3:5060",
            trusted.addr(),
            5,
        ))
        .await;
    assert_eq!(ok.code, 200, "a --trusted-publisher network");
    server.stop().await;
});

// E3's bad input: a wrong Event, a body that is not reginfo, a body for another AoR: a 4xx,
// nothing removed.
both_backends!(e3_bad_publishes_change_nothing, |db| {
    let server = start(db, quick()).await;
    let ua = Udp::to(&server).await;
    let reg = RegisterMsg::new("alice").contact("<sip:alice@192.0.2.1:5060>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    let mut p = Watcher::at(server.udp[0], "127.0.0.7").await;
    let good = publish(ALICE, "sip:alice@192.0.2.1:5060", p.addr(), 1);
    let presence = good.replace("Event: reg", "Event: presence");
    assert_eq!(p.ask(&presence).await.code, 489);
    let pidf = publish(ALICE, "sip:alice@192.0.2.1:5060", p.addr(), 2)
        .replace("application/reginfo+xml", "application/pidf+xml");
    assert_eq!(p.ask(&pidf).await.code, 415);
    let text = publish(ALICE, "sip:alice@192.0.2.1:5060", p.addr(), 3);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let garbage = "<reginfo><registration".to_string() + &" ".repeat(body.len() - 22);
    let broken = format!("{head}\r\n\r\n{garbage}");
    assert_eq!(p.ask(&broken).await.code, 400);
    let other = publish(ALICE, "sip:alice@192.0.2.1:5060", p.addr(), 4).replace(
        "<registration aor=\"sip:alice@example.com\"",
        "<registration aor=\"sip:bobby@example.com\"",
    );
    assert_eq!(p.ask(&other).await.code, 400);
    assert_eq!(bindings_of(db).await, 1);
    server.stop().await;
});
