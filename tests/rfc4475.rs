//! RFC 4475's torture messages (copied byte for byte into tests/data/rfc4475) sent as UDP
//! datagrams to the running server: none crashes it, each gets the answer RFC 4475 describes
//! (tests/data/rfc4475-expectations.md explains each choice), and the REGISTER messages leave
//! what SPEC R12 says in the database.

mod support;

use registrar::config::Overrides;
use registrar::sip::aor::parse_aor;
use std::collections::HashMap;
use std::time::Duration;
use support::sip::{Udp, start};

fn corpus(file: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/rfc4475/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every message that is not a REGISTER, with the status it must get (`None`: no answer).
const OTHERS: &[(&str, Option<u16>)] = &[
    ("valid/esc01.dat", Some(405)),
    ("valid/esc02.dat", Some(501)),
    ("valid/intmeth.dat", Some(501)),
    ("valid/longreq.dat", Some(405)),
    ("valid/lwsdisp.dat", Some(200)),
    ("valid/mpart01.dat", Some(405)),
    ("valid/noreason.dat", None),
    ("valid/semiuri.dat", Some(200)),
    ("valid/transports.dat", Some(200)),
    ("valid/unreason.dat", None),
    ("valid/wsinv.dat", Some(405)),
    ("invalid/badaspec.dat", Some(400)),
    ("invalid/badbranch.dat", Some(200)),
    ("invalid/baddate.dat", Some(405)),
    ("invalid/baddn.dat", Some(400)),
    ("invalid/badinv01.dat", Some(400)),
    ("invalid/badvers.dat", Some(505)),
    ("invalid/bcast.dat", None),
    ("invalid/bext01.dat", Some(420)),
    ("invalid/bigcode.dat", None),
    ("invalid/clerr.dat", Some(400)),
    ("invalid/escruri.dat", Some(400)),
    ("invalid/insuf.dat", Some(400)),
    ("invalid/inv2543.dat", Some(405)),
    ("invalid/invut.dat", Some(405)),
    ("invalid/ltgtruri.dat", Some(400)),
    ("invalid/lwsruri.dat", Some(400)),
    ("invalid/lwsstart.dat", Some(400)),
    ("invalid/mcl01.dat", Some(400)),
    ("invalid/mismatch01.dat", Some(400)),
    ("invalid/mismatch02.dat", Some(501)),
    ("invalid/multi01.dat", Some(400)),
    ("invalid/ncl.dat", Some(400)),
    ("invalid/novelsc.dat", Some(416)),
    ("invalid/quotbal.dat", Some(400)),
    ("invalid/scalarlg.dat", None),
    ("invalid/sdp01.dat", Some(405)),
    ("invalid/test.dat", None),
    ("invalid/trws.dat", Some(400)),
    ("invalid/unkscm.dat", Some(416)),
    ("invalid/zeromf.dat", Some(200)),
];

/// The Call-ID(s) of a message as our parser reads them (compact `i:` included), the key a
/// reply is matched by; for bytes it cannot parse, the raw `Call-ID:` line.
fn call_id_key(bytes: &[u8]) -> String {
    if let Ok(m) = registrar::sip::wire::parse(bytes) {
        return m.headers_named("Call-ID").collect::<Vec<_>>().join(", ");
    }
    String::from_utf8_lossy(bytes)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            matches!(name.trim().to_ascii_lowercase().as_str(), "call-id" | "i")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

both_backends!(r11_r12_every_torture_message_gets_its_answer, |db| {
    let server = start(db, Overrides::default()).await;
    let ua = Udp::to(&server).await;
    let mut expected: HashMap<String, (&str, Option<u16>)> = HashMap::new();
    for (file, answer) in OTHERS {
        let bytes = corpus(file);
        let key = call_id_key(&bytes);
        assert!(
            expected.insert(key.clone(), (file, *answer)).is_none(),
            "two messages share the Call-ID {key:?}"
        );
        ua.send_bytes(&bytes).await;
    }
    // Replies are matched to messages by Call-ID, whatever order they come in. Then an OPTIONS
    // sent last: its answer comes after any answer to the messages before it that were handled
    // (none of the silent ones may have one).
    let mut got: HashMap<String, Vec<u16>> = HashMap::new();
    let answers = OTHERS.iter().filter(|(_, a)| a.is_some()).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut received = 0;
    while received < answers {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(reply) = ua.recv(wait).await else {
            break;
        };
        received += 1;
        got.entry(call_id_key(reply.text.as_bytes()))
            .or_default()
            .push(reply.code);
    }
    let marker = support::sip::request("OPTIONS", "sip:example.com");
    let marker_key = call_id_key(marker.as_bytes());
    ua.send(&marker).await;
    loop {
        let reply = ua
            .recv(Duration::from_secs(5))
            .await
            .expect("the OPTIONS sent last is answered");
        let key = call_id_key(reply.text.as_bytes());
        if key == marker_key {
            assert_eq!(reply.code, 200, "still serving");
            break;
        }
        got.entry(key).or_default().push(reply.code);
    }
    let mut wrong = Vec::new();
    for (key, (file, answer)) in &expected {
        let codes = got.remove(key).unwrap_or_default();
        let want: Vec<u16> = answer.iter().copied().collect();
        if codes != want {
            wrong.push(format!("{file}: expected {want:?}, got {codes:?}"));
        }
    }
    for (key, codes) in got {
        wrong.push(format!(
            "a reply to no message sent (Call-ID {key:?}): {codes:?}"
        ));
    }
    wrong.sort();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        0,
        "no binding from non-REGISTERs"
    );
    server.stop().await;
});

/// Sends one REGISTER file to a fresh server on this database and returns the status.
async fn register_file(db: &support::TestDb, file: &str) -> u16 {
    register_file_with(db, file, Overrides::default()).await
}

async fn register_file_with(db: &support::TestDb, file: &str, flags: Overrides) -> u16 {
    let server = start(db, flags).await;
    let ua = Udp::to(&server).await;
    let bytes = corpus(file);
    ua.send_bytes(&bytes).await;
    let reply = ua.recv(Duration::from_secs(5)).await.expect(file);
    assert_eq!(
        call_id_key(reply.text.as_bytes()),
        call_id_key(&bytes),
        "{file}: the reply is to this message"
    );
    server.stop().await;
    reply.code
}

async fn contacts_of(db: &support::TestDb, aor: &str) -> Vec<String> {
    let aor = parse_aor(aor, false).unwrap();
    let mut c: Vec<String> = db
        .store
        .live_bindings(&aor)
        .await
        .unwrap()
        .bindings
        .into_iter()
        .map(|b| b.contact)
        .collect();
    c.sort();
    c
}

both_backends!(r12_dblreq_stores_one_binding, |db| {
    assert_eq!(register_file(db, "valid/dblreq.dat").await, 200);
    assert_eq!(
        contacts_of(db, "sip:j.user@example.com").await,
        ["sip:j.user@host.example.com"]
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        1,
        "the INVITE behind it is ignored"
    );
});

both_backends!(r12_escnull_keeps_its_username_and_no_nul, |db| {
    assert_eq!(register_file(db, "valid/escnull.dat").await, 200);
    assert_eq!(
        db.scalar("SELECT count(*) FROM location WHERE username = 'null-%00-null'")
            .await,
        2
    );
    assert_eq!(
        contacts_of(db, "sip:null-%00-null@example.com").await,
        ["sip:%00%00@host5.example.com", "sip:%00@host5.example.com"]
    );
    // PostgreSQL refuses NUL in text outright (the REGISTER would have failed); SQLite would
    // store it silently, so look.
    if db.backend() == registrar::store::Backend::Sqlite {
        let nul = "SELECT count(*) FROM location WHERE instr(username || contact, char(0)) > 0";
        assert_eq!(db.scalar(nul).await, 0);
    }
});

both_backends!(r12_cparam01_param_is_a_header_param, |db| {
    assert_eq!(register_file(db, "invalid/cparam01.dat").await, 200);
    assert_eq!(
        contacts_of(db, "sip:watson@example.com").await,
        ["sip:+19725552222@gw1.example.net"]
    );
});

both_backends!(r12_cparam02_param_is_inside_the_uri, |db| {
    assert_eq!(register_file(db, "invalid/cparam02.dat").await, 200);
    assert_eq!(
        contacts_of(db, "sip:watson@example.com").await,
        ["sip:+19725552222@gw1.example.net;unknownparam"]
    );
});

both_backends!(r12_regaut01_is_a_query, |db| {
    assert_eq!(register_file(db, "invalid/regaut01.dat").await, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
});

both_backends!(a8_regaut01_is_challenged_with_auth_on, |db| {
    let flags = Overrides {
        auth: Some(registrar::auth::AuthMode::Digest),
        ..Overrides::default()
    };
    assert_eq!(
        register_file_with(db, "invalid/regaut01.dat", flags).await,
        401
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
});

both_backends!(r12_regescrt_keeps_the_contact_byte_exact, |db| {
    assert_eq!(register_file(db, "invalid/regescrt.dat").await, 200);
    assert_eq!(
        contacts_of(db, "sip:user@example.com").await,
        ["sip:user@example.com?Route=%3Csip:sip.example.com%3E"]
    );
});

both_backends!(r12_rejected_registers_store_nothing, |db| {
    for file in [
        "invalid/regbadct.dat",
        "invalid/scalar02.dat",
        "invalid/unksm2.dat",
    ] {
        assert_eq!(register_file(db, file).await, 400, "{file}");
    }
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
});
