//! Unit tests of the registrar decision (SPEC R3–R9), no sockets, no database.

use super::*;
use crate::registrar::request::{Contacts, RequestedContact, Source};
use crate::store::Aor;
use chrono::TimeZone;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

fn contact(uri: &str) -> RequestedContact {
    RequestedContact {
        uri: uri.into(),
        host: uri
            .split('@')
            .nth(1)
            .unwrap_or("h")
            .split(':')
            .next()
            .unwrap()
            .into(),
        port: Some(5060),
        transport: "udp".into(),
        expires: None,
        q: None,
        instance: None,
        reg_id: None,
        methods: None,
    }
}

fn register(contacts: Vec<RequestedContact>) -> Register {
    Register {
        aor: Aor::new("alice", "example.com"),
        call_id: "call-1".into(),
        cseq: 10,
        contacts: Contacts::List(contacts),
        expires_header: None,
        path: None,
        source: None,
        user_agent: Some("ua/1".into()),
        socket: Some("udp:127.0.0.1:5060".into()),
        connection_id: -1,
    }
}

/// Applies a plan to a snapshot the way the store would, assigning ids to inserts.
fn apply(snapshot: &AorSnapshot, plan: &Plan<Outcome>) -> Vec<Binding> {
    let mut out: Vec<Binding> = snapshot
        .bindings
        .iter()
        .filter(|b| !plan.delete.contains(&b.id))
        .map(|b| {
            plan.update
                .iter()
                .find(|u| u.id == b.id)
                .cloned()
                .unwrap_or_else(|| b.clone())
        })
        .collect();
    let first = out.iter().map(|b| b.id).max().unwrap_or(0) + 1;
    for (id, b) in (first..).zip(&plan.insert) {
        out.push(Binding { id, ..b.clone() });
    }
    out
}

/// Runs one REGISTER at `at` over `bindings` and returns (outcome, bindings after).
fn run(
    reg: &Register,
    policy: &Policy,
    bindings: &[Binding],
    at: DateTime<Utc>,
) -> (Outcome, Vec<Binding>) {
    let snapshot = AorSnapshot::of(at, bindings.to_vec());
    let plan = decide(reg, policy, &snapshot);
    let after = apply(&snapshot, &plan);
    (plan.outcome, after)
}

#[test]
fn r3_first_registration_uses_default_expires_and_unspecified_q() {
    let (outcome, after) = run(
        &register(vec![contact("sip:alice@192.0.2.1")]),
        &Policy::default(),
        &[],
        now(),
    );
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!(after.len(), 1);
    let b = &after[0];
    assert_eq!(b.expires, now() + TimeDelta::seconds(3600));
    assert_eq!(b.q, None);
    assert_eq!((b.callid.as_str(), b.cseq), ("call-1", 10));
    assert_eq!(b.user_agent.as_deref(), Some("ua/1"));
    assert!(!b.ruid.is_empty());
}

#[test]
fn r3_param_beats_header_beats_default_and_max_clamps() {
    let policy = Policy::default();
    let mut reg = register(vec![contact("sip:a@h")]);
    reg.expires_header = Some(120);
    assert_eq!(prepare(&reg, &policy), Ok(vec![120]));
    if let Contacts::List(l) = &mut reg.contacts {
        l[0].expires = Some(300);
    }
    assert_eq!(prepare(&reg, &policy), Ok(vec![300]));
    if let Contacts::List(l) = &mut reg.contacts {
        l[0].expires = Some(999_999);
    }
    assert_eq!(prepare(&reg, &policy), Ok(vec![3600]));
    let unlimited = Policy {
        max_expires: 0,
        ..Policy::default()
    };
    assert_eq!(prepare(&reg, &unlimited), Ok(vec![999_999]));
}

#[test]
fn r3_below_min_expires_is_423_and_zero_is_not() {
    let mut reg = register(vec![contact("sip:a@h")]);
    reg.expires_header = Some(59);
    let (outcome, after) = run(&reg, &Policy::default(), &[], now());
    // Spelled out, not rebuilt from `too_brief`: 423, RFC 3261's reason phrase, and the
    // policy's minimum for the `Min-Expires` header.
    assert_eq!(
        outcome,
        Outcome::Refused(Refusal {
            code: 423,
            reason: "Interval Too Brief",
            registrar_error: Some("Interval too brief"),
            min_expires: Some(60),
        })
    );
    assert!(after.is_empty());
    // Min-Expires is the policy's minimum, whatever it is; nothing is written, even beside a
    // binding that is already there.
    let strict = Policy {
        min_expires: 90,
        ..Policy::default()
    };
    let (_, existing) = run(&register(vec![contact("sip:a@h")]), &strict, &[], now());
    let mut brief = register(vec![contact("sip:b@h")]);
    brief.cseq = 11;
    brief.expires_header = Some(89);
    let (outcome, after) = run(&brief, &strict, &existing, now());
    let Outcome::Refused(refusal) = outcome else {
        panic!("expected 423, got {outcome:?}")
    };
    assert_eq!((refusal.code, refusal.min_expires), (423, Some(90)));
    assert_eq!(after, existing, "423 changes nothing");
    reg.expires_header = Some(0);
    assert_eq!(prepare(&reg, &Policy::default()), Ok(vec![0]));
}

#[test]
fn r5_refresh_keeps_identity_and_moves_expiry() {
    let policy = Policy::default();
    let (_, first) = run(&register(vec![contact("sip:a@h")]), &policy, &[], now());
    let mut again = register(vec![contact("sip:a@h")]);
    again.cseq = 11;
    let later = now() + TimeDelta::seconds(100);
    let (outcome, after) = run(&again, &policy, &first, later);
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].id, &after[0].ruid), (first[0].id, &first[0].ruid));
    assert_eq!(after[0].expires, later + TimeDelta::seconds(3600));
    assert_eq!(after[0].cseq, 11);
}

#[test]
fn r5_lower_cseq_same_call_id_fails_whole_request() {
    let policy = Policy::default();
    let (_, first) = run(&register(vec![contact("sip:a@h")]), &policy, &[], now());
    let mut older = register(vec![contact("sip:b@h"), contact("sip:a@h")]);
    older.cseq = 9;
    let snapshot = AorSnapshot::of(now(), first.clone());
    let plan = decide(&older, &policy, &snapshot);
    assert_eq!(plan.outcome, Outcome::Refused(Refusal::INVALID_CSEQ));
    assert_eq!(
        plan.outcome,
        Outcome::Refused(Refusal::bad_request("Invalid CSeq number"))
    );
    assert!(
        plan.is_unchanged(),
        "nothing may change, not even the new contact b"
    );
}

#[test]
fn r5_equal_cseq_is_a_retransmission_within_20_s_else_400() {
    let policy = Policy::default();
    let reg = register(vec![contact("sip:a@h")]);
    let (_, first) = run(&reg, &policy, &[], now());
    let snapshot = AorSnapshot::of(now() + TimeDelta::seconds(19), first.clone());
    let plan = decide(&reg, &policy, &snapshot);
    assert_eq!(plan.outcome, Outcome::Registered);
    assert!(plan.is_unchanged());
    let snapshot = AorSnapshot::of(now() + TimeDelta::seconds(20), first);
    assert_eq!(
        decide(&reg, &policy, &snapshot).outcome,
        Outcome::Refused(Refusal::INVALID_CSEQ)
    );
}

#[test]
fn r5_new_call_id_replaces_call_id_and_cseq() {
    let policy = Policy::default();
    let (_, first) = run(&register(vec![contact("sip:a@h")]), &policy, &[], now());
    let mut rebooted = register(vec![contact("sip:a@h")]);
    rebooted.call_id = "call-2".into();
    rebooted.cseq = 1;
    let (outcome, after) = run(&rebooted, &policy, &first, now());
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!((after[0].callid.as_str(), after[0].cseq), ("call-2", 1));
    assert_eq!(after[0].ruid, first[0].ruid);
}

#[test]
fn r5_expires_zero_removes_only_that_contact() {
    let policy = Policy::default();
    let (_, two) = run(
        &register(vec![contact("sip:a@h"), contact("sip:b@h")]),
        &policy,
        &[],
        now(),
    );
    assert_eq!(two.len(), 2);
    let mut remove = register(vec![RequestedContact {
        expires: Some(0),
        ..contact("sip:a@h")
    }]);
    remove.cseq = 11;
    let (outcome, after) = run(&remove, &policy, &two, now());
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!(
        after.iter().map(|b| b.contact.as_str()).collect::<Vec<_>>(),
        ["sip:b@h"]
    );
    // Removing an unknown contact is not an error and changes nothing.
    let mut unknown = register(vec![RequestedContact {
        expires: Some(0),
        ..contact("sip:zz@h")
    }]);
    unknown.cseq = 12;
    let snapshot = AorSnapshot::of(now(), after);
    assert!(decide(&unknown, &policy, &snapshot).is_unchanged());
}

#[test]
fn r5_instance_matches_across_contact_changes_without_cseq_check() {
    let policy = Policy::default();
    let with_instance = |uri: &str| RequestedContact {
        instance: Some("<urn:uuid:0001>".into()),
        reg_id: Some(1),
        ..contact(uri)
    };
    let (_, first) = run(
        &register(vec![with_instance("sip:a@10.0.0.1")]),
        &policy,
        &[],
        now(),
    );
    let mut moved = register(vec![with_instance("sip:a@10.0.0.2")]);
    moved.cseq = 3; // lower than stored 10, same Call-ID: no check for instance matches
    let (outcome, after) = run(&moved, &policy, &first, now());
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].contact, "sip:a@10.0.0.2");
    assert_eq!(after[0].ruid, first[0].ruid);
    assert_eq!(
        (after[0].instance.as_deref(), after[0].reg_id),
        (Some("<urn:uuid:0001>"), 1)
    );
}

#[test]
fn r4_wildcard_removes_all_with_expires_zero_only() {
    let policy = Policy::default();
    let (_, two) = run(
        &register(vec![contact("sip:a@h"), contact("sip:b@h")]),
        &policy,
        &[],
        now(),
    );
    let mut star = register(vec![]);
    star.contacts = Contacts::Wildcard;
    star.call_id = "other".into();
    star.cseq = 1;
    assert_eq!(
        run(&star, &policy, &two, now()).0,
        Outcome::Refused(Refusal::STAR_EXPIRES)
    );
    star.expires_header = Some(30);
    assert_eq!(
        run(&star, &policy, &two, now()).0,
        Outcome::Refused(Refusal::STAR_EXPIRES)
    );
    star.expires_header = Some(0);
    let (outcome, after) = run(&star, &policy, &two, now());
    assert_eq!(outcome, Outcome::Registered);
    assert!(after.is_empty());
}

#[test]
fn r4_wildcard_with_stale_cseq_on_same_call_id_removes_nothing() {
    let policy = Policy::default();
    let (_, two) = run(&register(vec![contact("sip:a@h")]), &policy, &[], now());
    let mut star = register(vec![]);
    star.contacts = Contacts::Wildcard;
    star.expires_header = Some(0);
    star.cseq = 10; // equal to the stored CSeq of the same Call-ID
    let snapshot = AorSnapshot::of(now(), two);
    let plan = decide(&star, &policy, &snapshot);
    assert_eq!(plan.outcome, Outcome::Refused(Refusal::INVALID_CSEQ));
    assert!(plan.is_unchanged());
}

#[test]
fn r6_q_is_kept_in_thousandths() {
    let (_, after) = run(
        &register(vec![RequestedContact {
            q: Some(500),
            ..contact("sip:a@h")
        }]),
        &Policy::default(),
        &[],
        now(),
    );
    assert_eq!(after[0].q, Some(500));
}

#[test]
fn r7_max_contacts_refuses_growth_whole() {
    let policy = Policy {
        max_contacts: 2,
        ..Policy::default()
    };
    let (_, two) = run(
        &register(vec![contact("sip:a@h"), contact("sip:b@h")]),
        &policy,
        &[],
        now(),
    );
    let mut third = register(vec![contact("sip:c@h")]);
    third.cseq = 11;
    let snapshot = AorSnapshot::of(now(), two.clone());
    let plan = decide(&third, &policy, &snapshot);
    assert_eq!(plan.outcome, Outcome::Refused(Refusal::TOO_MANY));
    assert!(plan.is_unchanged());
    // Swapping one for another keeps the count: allowed.
    let mut swap = register(vec![
        RequestedContact {
            expires: Some(0),
            ..contact("sip:a@h")
        },
        contact("sip:c@h"),
    ]);
    swap.cseq = 12;
    let (outcome, after) = run(&swap, &policy, &two, now());
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!(after.len(), 2);
    // Over a lowered limit, a refresh is still allowed.
    let lowered = Policy {
        max_contacts: 1,
        ..Policy::default()
    };
    let mut refresh = register(vec![contact("sip:a@h")]);
    refresh.cseq = 13;
    assert_eq!(run(&refresh, &lowered, &two, now()).0, Outcome::Registered);
}

#[test]
fn r8_single_contact_keeps_only_the_first_new_contact() {
    let policy = Policy {
        single_contact: true,
        ..Policy::default()
    };
    let (_, first) = run(&register(vec![contact("sip:a@h")]), &policy, &[], now());
    let mut next = register(vec![contact("sip:b@h"), contact("sip:c@h")]);
    next.call_id = "call-2".into();
    let (outcome, after) = run(&next, &policy, &first, now());
    assert_eq!(outcome, Outcome::Registered);
    assert_eq!(
        after.iter().map(|b| b.contact.as_str()).collect::<Vec<_>>(),
        ["sip:b@h"]
    );
}

#[test]
fn r9_received_only_behind_nat_and_without_path() {
    let source = |host: &str, port: u16, differs_from_via: bool| {
        Some(Source {
            host: host.into(),
            port,
            transport: "udp".into(),
            differs_from_via,
        })
    };
    let received = |reg: &Register| {
        run(reg, &Policy::default(), &[], now()).1[0]
            .received
            .clone()
    };
    // The source differs from the Via (rport case): stored.
    let mut reg = register(vec![contact("sip:a@198.51.100.1:5060")]);
    reg.source = source("203.0.113.9", 40000, true);
    assert_eq!(
        received(&reg).as_deref(),
        Some("sip:203.0.113.9:40000;transport=udp")
    );
    // Via matches the source, Contact on another (public) port: no NAT, not stored.
    reg.source = source("198.51.100.1", 40000, false);
    assert_eq!(received(&reg), None);
    // An RFC 1918 Contact is NAT even with a matching Via.
    let mut private = register(vec![contact("sip:a@192.168.1.20:5060")]);
    private.source = source("203.0.113.9", 40000, false);
    assert_eq!(
        received(&private).as_deref(),
        Some("sip:203.0.113.9:40000;transport=udp")
    );
    // Never with Path.
    private.path = Some("<sip:edge.example.com;lr>".into());
    assert_eq!(received(&private), None);
    // Behind NAT but reaching us from the Contact's own address: nothing to add.
    let mut same = register(vec![contact("sip:a@10.0.0.1:5060")]);
    same.source = source("10.0.0.1", 5060, true);
    assert_eq!(received(&same), None);
}

#[test]
fn duplicate_contacts_in_one_register_make_one_binding() {
    let (_, after) = run(
        &register(vec![
            contact("sip:a@h"),
            RequestedContact {
                expires: Some(120),
                ..contact("sip:a@h")
            },
        ]),
        &Policy::default(),
        &[],
        now(),
    );
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].expires, now() + TimeDelta::seconds(120));
}

#[test]
fn query_changes_nothing() {
    let mut reg = register(vec![]);
    reg.contacts = Contacts::None;
    let plan = decide(&reg, &Policy::default(), &AorSnapshot::of(now(), vec![]));
    assert_eq!(plan.outcome, Outcome::Registered);
    assert!(plan.is_unchanged());
}
