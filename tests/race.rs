//! SPEC E4, E5: both sides of the registration race ours. A UE registers through our P-CSCF
//! at our registrar (the S-CSCF role of this test); the P-CSCF subscribes to the UE's
//! registration (E4), refreshes and ends that subscription; the registrar's `expired` NOTIFY
//! removes the pcontact (E5), and when that NOTIFY is lost the P-CSCF's PUBLISH removes the
//! binding at the registrar instead (E3, P4). Rows are aged with UPDATEs.

mod support;

use registrar::config::{Overrides, Role};
use registrar::server::Running;
use std::time::Duration;
use support::TestDb;
use support::digest::{Challenge, add_user};
use support::sip::{RegisterMsg, Udp, start};

/// The registrar: digest authentication on (the P-CSCF's SUBSCRIBE and PUBLISH are
/// authorized by the binding's Path), reg-event expiry NOTIFYs within a second, quick
/// transactions.
fn registrar_flags() -> Overrides {
    Overrides {
        auth: Some(registrar::auth::AuthMode::Digest),
        expiry_notify_delay: Some(1.0),
        t1_ms: Some(50),
        ..Overrides::default()
    }
}

/// Our P-CSCF in front of `registrar`: a short notify window, no audit of its own in the way.
fn pcscf_flags(registrar: &Running) -> Overrides {
    Overrides {
        role: Some(Role::Pcscf),
        scscf: Some(format!("sip:{}", registrar.udp[0])),
        notify_window: Some(2.0),
        audit_interval: Some(3600.0),
        t1_ms: Some(50),
        publish_backoff: Some(0.05),
        reginfo_expires: Some(60),
        ..Overrides::default()
    }
}

/// A UE's REGISTER through the P-CSCF (its Contact is its own socket), answering the
/// registrar's challenge as a UE does: the P-CSCF relays the 401 back.
async fn ue_register(ue: &Udp, cseq: u32) -> support::sip::Reply {
    let register = |cseq: u32| {
        RegisterMsg::new("alice")
            .cseq(cseq)
            .via("UDP", ue.port())
            .contact(&format!("<sip:alice@127.0.0.1:{}>;expires=600", ue.port()))
    };
    let first = ue.ask(&register(cseq * 2).text()).await;
    if first.code != 401 {
        return first;
    }
    let challenge = Challenge::first(&first);
    let answer = challenge.answer("alice", "secret", "sip:example.com", 1);
    ue.ask(&register(cseq * 2 + 1).header(&answer).text()).await
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.scalar(sql).await
}

/// Waits until `sql` counts `want`, or panics naming `what`.
async fn until_count(db: &TestDb, sql: &str, want: i64, what: &str) {
    for _ in 0..200 {
        if count(db, sql).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}: {sql} = {}",
        count(db, sql).await
    );
}

const BINDINGS: &str = "SELECT count(*) FROM location";
const PCONTACTS: &str = "SELECT count(*) FROM pcscf_location";
const THEIR_SUBSCRIPTIONS: &str = "SELECT count(*) FROM reg_subscription";
const OUR_SUBSCRIPTIONS: &str = "SELECT count(*) FROM pcscf_subscription WHERE to_tag IS NOT NULL";

/// Both servers on one database (their tables differ), the UE registered through them.
async fn registered(db: &TestDb) -> (Running, Running, Udp) {
    add_user(db, "alice", "example.com", "secret").await;
    let registrar = start(db, registrar_flags()).await;
    let pcscf = start(db, pcscf_flags(&registrar)).await;
    let ue = Udp::to(&pcscf).await;
    let reply = ue_register(&ue, 1).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(count(db, BINDINGS).await, 1);
    assert_eq!(count(db, PCONTACTS).await, 1);
    // E4: the P-CSCF subscribed, from the address in the binding's Path.
    until_count(db, OUR_SUBSCRIPTIONS, 1, "the P-CSCF's subscription").await;
    assert_eq!(count(db, THEIR_SUBSCRIPTIONS).await, 1);
    (registrar, pcscf, ue)
}

// E4: the subscription is refreshed when due (the registrar sees the next CSeq) and ended
// (Expires: 0, both rows gone) once the pcontact is gone, whatever removed it.
both_backends!(e4_pcscf_subscribes_refreshes_and_ends, |db| {
    let (registrar, pcscf, _ue) = registered(db).await;
    let due = count(
        db,
        "SELECT count(*) FROM pcscf_subscription WHERE refresh_at > expires",
    )
    .await;
    assert_eq!(due, 0, "refreshed before it ends");
    db.exec(&format!(
        "UPDATE pcscf_subscription SET refresh_at = {}",
        db.in_seconds(-1)
    ))
    .await;
    until_count(
        db,
        "SELECT count(*) FROM reg_subscription WHERE remote_cseq = 2",
        1,
        "the refresh at the registrar",
    )
    .await;
    db.exec("DELETE FROM pcscf_location").await;
    until_count(db, THEIR_SUBSCRIPTIONS, 0, "the end at the registrar").await;
    until_count(
        db,
        "SELECT count(*) FROM pcscf_subscription",
        0,
        "our row gone",
    )
    .await;
    pcscf.stop().await;
    registrar.stop().await;
});

// E5: the UE stops refreshing; the registrar's expired NOTIFY reaches the P-CSCF and deletes
// the pcontact, so the UE's next REGISTER is relayed as new, never refused.
both_backends!(e5_expired_notify_frees_the_ue, |db| {
    let (registrar, pcscf, ue) = registered(db).await;
    // Expiries before the subscription are not its news: let SQLite's second pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    db.exec(&format!(
        "UPDATE location SET expires = {}",
        db.in_seconds(0)
    ))
    .await;
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(0)
    ))
    .await;
    until_count(db, PCONTACTS, 0, "the pcontact deleted by the NOTIFY").await;
    let reply = ue_register(&ue, 2).await;
    assert_eq!(reply.code, 200, "relayed as new: {}", reply.text);
    assert_eq!(count(db, PCONTACTS).await, 1);
    pcscf.stop().await;
    registrar.stop().await;
});

// E5 with the NOTIFY lost (the registrar has no subscription to send it in): the P-CSCF
// refuses within the notify window, then PUBLISHes; the registrar removes the binding; the UE
// registers again.
both_backends!(e5_lost_notify_publish_ends_the_race, |db| {
    let (registrar, pcscf, ue) = registered(db).await;
    db.exec("DELETE FROM reg_subscription").await;
    db.exec(&format!(
        "UPDATE location SET expires = {}",
        db.in_seconds(-1)
    ))
    .await;
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(-1)
    ))
    .await;
    let refused = ue_register(&ue, 2).await;
    assert_eq!(refused.code, 500, "inside the notify window");
    db.exec(&format!(
        "UPDATE pcscf_location SET expires = {}",
        db.in_seconds(-5)
    ))
    .await;
    let refused = ue_register(&ue, 3).await;
    assert_eq!(refused.code, 500, "past the window: refused and PUBLISHed");
    until_count(db, BINDINGS, 0, "the binding removed by the PUBLISH").await;
    until_count(db, PCONTACTS, 0, "the pcontact deleted after its PUBLISH").await;
    let reply = ue_register(&ue, 4).await;
    assert_eq!(reply.code, 200, "registered again: {}", reply.text);
    assert_eq!(count(db, BINDINGS).await, 1);
    pcscf.stop().await;
    registrar.stop().await;
});

/// A NOTIFY of `contact` terminated, in the dialog `call_id` with our tag `to_tag`.
fn notify(pcscf: &Running, from: &Udp, call_id: &str, to_tag: &str, contact: &str) -> String {
    let body = registrar::sip::reginfo::terminated_contact("sip:alice@example.com", contact, "n1");
    format!(
        "NOTIFY sip:pcscf@{pcscf} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.5:{port};branch=z9hG4bK-h5-{n}\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:pcscf@{pcscf}>;tag={to_tag}\r\n\
         From: <sip:alice@example.com>;tag=s1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 9 NOTIFY\r\n\
         Event: reg\r\n\
         Subscription-State: active;expires=600\r\n\
         Content-Type: application/reginfo+xml\r\n\
         Content-Length: {len}\r\n\r\n{body}",
        pcscf = pcscf.udp[0],
        port = from.port(),
        n = uuid::Uuid::new_v4().simple(),
        len = body.len(),
    )
}

// H5 with E4: a NOTIFY inside the P-CSCF's own subscription dialog is accepted from any
// address (here not the S-CSCF's); the same NOTIFY outside it, or with another tag, is 403.
both_backends!(h5_notify_in_our_dialog_is_accepted, |db| {
    let (registrar, pcscf, ue) = registered(db).await;
    let call_id = db.text("SELECT call_id FROM pcscf_subscription").await;
    let tag = db.text("SELECT from_tag FROM pcscf_subscription").await;
    let contact = format!("sip:alice@127.0.0.1:{}", ue.port());
    let elsewhere = Udp::from_ip(&pcscf, "127.0.0.5").await;
    let outside = notify(&pcscf, &elsewhere, "not-ours@x", &tag, &contact);
    assert_eq!(elsewhere.ask(&outside).await.code, 403);
    let wrong_tag = notify(&pcscf, &elsewhere, &call_id, "not-our-tag", &contact);
    assert_eq!(elsewhere.ask(&wrong_tag).await.code, 403);
    assert_eq!(count(db, PCONTACTS).await, 1);
    let inside = notify(&pcscf, &elsewhere, &call_id, &tag, &contact);
    let r = elsewhere.ask(&inside).await;
    assert_eq!(r.code, 200, "{}\n{inside}", r.text);
    assert_eq!(count(db, PCONTACTS).await, 0, "P6 applied");
    pcscf.stop().await;
    registrar.stop().await;
});
