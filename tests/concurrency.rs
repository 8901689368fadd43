//! SPEC S2: concurrent REGISTERs for one AoR through two independent connection pools (two
//! "instances") serialize: `max_contacts` is never exceeded, single-contact mode never leaves
//! two bindings, and no binding is lost. Both backends.

mod support;

use registrar::registrar::{
    Contacts, Outcome, Policy, Refusal, Register, RequestedContact, register_administratively,
};
use registrar::store::{Aor, Store};

const REGISTERS: usize = 24;

fn request(i: usize) -> Register {
    let uri = format!("sip:alice@10.0.{}.{}:5060", i / 200, i % 200);
    Register {
        aor: Aor::new("alice", "example.com"),
        call_id: format!("call-{i}"),
        cseq: 1,
        contacts: Contacts::List(vec![RequestedContact {
            host: uri[10..].split(':').next().unwrap().to_string(),
            uri,
            port: Some(5060),
            transport: "udp".into(),
            expires: Some(600),
            q: None,
            instance: None,
            reg_id: None,
            methods: None,
        }]),
        expires_header: None,
        path: None,
        source: None,
        user_agent: None,
        socket: None,
        connection_id: -1,
    }
}

/// Fires `REGISTERS` REGISTERs at once, alternating between the two stores; returns how many
/// were accepted.
async fn storm(a: &Store, b: &Store, policy: &Policy) -> usize {
    let mut tasks = Vec::new();
    for i in 0..REGISTERS {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            register_administratively(&store, &policy, &request(i)).await
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        match t
            .await
            .unwrap()
            .expect("no database error under contention")
        {
            r if r.outcome == Outcome::Registered => accepted += 1,
            r => assert_eq!(r.outcome, Outcome::Refused(Refusal::TOO_MANY)),
        }
    }
    accepted
}

both_backends!(s2_r7_max_contacts_holds_under_concurrency, |db| {
    let other = db.second_store().await;
    let policy = Policy {
        max_contacts: 3,
        ..Policy::default()
    };
    let accepted = storm(&db.store, &other, &policy).await;
    assert_eq!(accepted, 3);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 3);
});

both_backends!(s2_r8_single_contact_leaves_one_binding, |db| {
    let other = db.second_store().await;
    let policy = Policy {
        single_contact: true,
        ..Policy::default()
    };
    let accepted = storm(&db.store, &other, &policy).await;
    assert_eq!(accepted, REGISTERS);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
});

both_backends!(s2_no_binding_is_lost, |db| {
    let other = db.second_store().await;
    let accepted = storm(&db.store, &other, &Policy::default()).await;
    assert_eq!(accepted, REGISTERS);
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        REGISTERS as i64
    );
    let live = db
        .store
        .live_bindings(&Aor::new("alice", "example.com"))
        .await
        .unwrap();
    assert_eq!(live.bindings.len(), REGISTERS);
});

// S2/R13 with coalescing: REGISTERs for many AoRs at once share transactions; one the
// database refuses fails alone, every other one is stored.
both_backends!(s2_a_refused_register_does_not_fail_its_batch, |db| {
    db.refuse_contacts_containing("evil").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = db.store.clone();
        let mut wanted = request(i);
        wanted.aor = Aor::new(format!("user{i}"), "example.com");
        if i == 13
            && let Contacts::List(list) = &mut wanted.contacts
        {
            list[0].uri = "sip:evil@10.6.6.6".into();
        }
        tasks.push(tokio::spawn(async move {
            register_administratively(&store, &Policy::default(), &wanted)
                .await
                .map(|r| r.outcome)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let result = t.await.unwrap();
        if i == 13 {
            assert!(
                matches!(result, Err(registrar::store::StoreError::Rejected(_))),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap(), Outcome::Registered, "REGISTER {i}");
        }
    }
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 39);
});
