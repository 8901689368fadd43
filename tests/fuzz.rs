//! SPEC R15: random and mutated messages through the whole request path — parse, checks,
//! registrar decision, database, response serialization — never panic, and the server keeps
//! answering. Seeds are RFC 4475's torture messages and typical REGISTERs; mutations flip,
//! insert, delete and splice bytes and SIP tokens. With authentication on (SPEC A4, H2), random
//! and mutated `Authorization` values get a small 400/401/403 and never write.

mod support;

use proptest::prelude::*;
use registrar::auth::AuthMode;
use registrar::config::{Overrides, Settings};
use registrar::server::{Roles, roles};
use registrar::sip::outbound::{Destination, Outbound, SendFuture};
use registrar::sip::{Origin, Transport};
use registrar::transport::{Stats, respond};
use std::sync::{Arc, OnceLock};

/// The registrar never sends requests of its own; nothing should reach this.
struct Nowhere;

impl Outbound for Nowhere {
    fn send(&self, _to: Destination, _bytes: Vec<u8>) -> SendFuture<'_> {
        Box::pin(async { Err(std::io::Error::other("the registrar sends nothing")) })
    }
}

struct Rig {
    runtime: tokio::runtime::Runtime,
    handler: Roles,
    db: support::TestDb,
}

/// One SQLite-backed registrar per authentication mode for the whole property run.
fn rig(auth: AuthMode) -> &'static Rig {
    static OFF: OnceLock<Rig> = OnceLock::new();
    static DIGEST: OnceLock<Rig> = OnceLock::new();
    let cell = match auth {
        AuthMode::Off => &OFF,
        AuthMode::Digest => &DIGEST,
    };
    cell.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = runtime.block_on(support::TestDb::sqlite());
        if auth == AuthMode::Digest {
            runtime.block_on(support::digest::add_user(
                &db,
                "alice",
                "example.com",
                "secret",
            ));
        }
        let flags = Overrides {
            auth: Some(auth),
            ..Overrides::default()
        };
        let settings = Settings::load(None, Some(db.url.clone()), flags).unwrap();
        let handler = runtime
            .block_on(roles(
                &settings,
                db.store.clone(),
                Arc::new(Stats::default()),
                Arc::new(Nowhere),
                None,
                tokio_util::sync::CancellationToken::new(),
            ))
            .unwrap();
        Rig {
            runtime,
            handler,
            db,
        }
    })
}

fn origin(transport: Transport) -> Origin {
    Origin {
        transport,
        peer: "198.51.100.20:40000".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        connection_id: 7,
    }
}

fn run(bytes: &[u8]) -> Option<Vec<u8>> {
    run_with(AuthMode::Off, bytes)
}

fn run_with(auth: AuthMode, bytes: &[u8]) -> Option<Vec<u8>> {
    let rig = rig(auth);
    rig.runtime
        .block_on(respond(&rig.handler, bytes, origin(Transport::Udp)))
}

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for folder in ["valid", "invalid"] {
        let dir = format!("{}/tests/data/rfc4475/{folder}", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(dir).unwrap() {
            seeds.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    // As many REGISTERs again, so that mutations reach the decision and the database often.
    use support::sip::RegisterMsg;
    let registers = [
        RegisterMsg::new("fuzz")
            .contact("<sip:fuzz@10.0.0.1>;expires=600;q=0.5, \"F\" <sip:fuzz@[2001:db8::1]:5070>"),
        RegisterMsg::new("fuzz")
            .contact("<sip:fuzz@10.0.0.1>")
            .header("Path: <sip:edge.example.com;lr>")
            .header("Supported: path"),
        RegisterMsg::new("fuzz").contact("*").header("Expires: 0"),
        RegisterMsg::new("fuzz")
            .contact("<sip:fuzz@10.0.0.2>;+sip.instance=\"<urn:uuid:1>\";reg-id=1"),
        RegisterMsg::new("fuzz").contact("sip:fuzz@10.0.0.3;expires=0"),
        RegisterMsg::new("fuzz"),
        RegisterMsg::new("other")
            .cseq(7)
            .contact("<sip:o@10.0.0.9>")
            .header("Expires: 120"),
    ];
    for _ in 0..7 {
        seeds.extend(registers.iter().map(|r| r.text().into_bytes()));
    }
    seeds
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"@",
    b"%00",
    b"%",
    b"=",
    b"*",
    b"Contact: *\r\n",
    b"Expires: 0\r\n",
    b"l: 99999\r\n",
    b"CSeq: 4294967296 REGISTER\r\n",
    b";expires=",
    b";q=",
    b"sip:",
    b"tel:",
    b"[",
    b"]",
    b"\x00",
    b"\xff",
    b"SIP/2.0",
    b"REGISTER",
    b"+sip.instance=\"<urn:uuid:1>\"",
    b";reg-id=0",
    b"Require: x\r\n",
    b"Path: <sip:p;lr>\r\n",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutate(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = data.len().max(1);
        match *m {
            Mutation::Flip(at, bits) => {
                if !data.is_empty() {
                    data[at % len] ^= bits;
                }
            }
            Mutation::Insert(at, token) => {
                let at = at % (data.len() + 1);
                let token = TOKENS[token % TOKENS.len()];
                data.splice(at..at, token.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n % 16).min(data.len());
                if at < end {
                    data.drain(at..end);
                }
            }
            Mutation::Truncate(at) => data.truncate(at % len),
            Mutation::Duplicate(at, n) => {
                let at = at % len;
                let end = (at + n % 64).min(data.len());
                let copy = data[at.min(end)..end].to_vec();
                data.splice(at..at, copy);
            }
        }
    }
    data
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Delete(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn r15_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = run(&bytes);
    }

    #[test]
    fn r15_mutated_messages_never_panic(seed in 0usize..200, mutations in proptest::collection::vec(mutation(), 1..4)) {
        let seeds = seeds();
        let data = mutate(seeds[seed % seeds.len()].clone(), &mutations);
        if let Some(reply) = run(&data) {
            // Whatever comes back is a well-formed SIP response.
            prop_assert!(reply.starts_with(b"SIP/2.0 "), "{}", String::from_utf8_lossy(&reply));
            prop_assert!(registrar::sip::wire::parse(&reply).is_ok());
        }
    }
}

/// A REGISTER for alice whose credentials were computed with a wrong password, so that no
/// mutation of them can authenticate.
fn wrongly_authorized(authorization: &str) -> Vec<u8> {
    support::sip::RegisterMsg::new("alice")
        .contact("<sip:alice@10.0.0.1>")
        .header(authorization)
        .text()
        .into_bytes()
}

fn wrong_credentials() -> String {
    // A nonce this rig never issued: the mutations exercise the parser and the nonce checks.
    let challenge = support::digest::Challenge {
        realm: "example.com".into(),
        nonce: "00000191a8c2e5f0aabbccddeeff00112233445566778899aabbccddeeff0011".into(),
        opaque: Some("0011223344556677".into()),
        algorithm: registrar::auth::Algorithm::Md5,
        qop: Some("auth".into()),
        stale: false,
    };
    challenge.answer("alice", "wrong", "sip:example.com", 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// SPEC A4/H2: random and mutated `Authorization` headers through the whole path.
    #[test]
    fn a4_h2_random_authorization_is_refused_small_and_writes_nothing(
        random in proptest::collection::vec(any::<u8>(), 0..300),
        mutations in proptest::collection::vec(mutation(), 1..4),
        pick in 0u8..3,
    ) {
        let header = match pick {
            0 => format!("Authorization: {}", String::from_utf8_lossy(&random).replace(['\r', '\n'], " ")),
            1 => String::from_utf8_lossy(&mutate(wrong_credentials().into_bytes(), &mutations)).into_owned(),
            _ => format!("Authorization: Digest {}", String::from_utf8_lossy(&random).replace(['\r', '\n'], " ")),
        };
        let request = wrongly_authorized(&header);
        if let Some(reply) = run_with(AuthMode::Digest, &request) {
            let text = String::from_utf8_lossy(&reply);
            prop_assert!(
                text.starts_with("SIP/2.0 400 ") || text.starts_with("SIP/2.0 401 ") || text.starts_with("SIP/2.0 403 "),
                "{header:?} -> {text}"
            );
            prop_assert!(reply.len() <= (3 * request.len()).max(1300), "H2: {} bytes for {}", reply.len(), request.len());
        }
        let rig = rig(AuthMode::Digest);
        let written = rig.runtime.block_on(rig.db.scalar("SELECT count(*) FROM location"));
        prop_assert_eq!(written, 0);
    }
}

#[test]
fn r15_still_serving_after_the_storm() {
    for bytes in [
        &b"\x00garbage"[..],
        b"REGISTER sip:x SIP/2.0\r\n\r\n",
        b"\r\n",
    ] {
        let _ = run(bytes);
    }
    let fine = support::sip::RegisterMsg::new("after")
        .contact("<sip:after@10.0.0.1>")
        .text();
    let reply = run(fine.as_bytes()).expect("an answer");
    assert!(
        reply.starts_with(b"SIP/2.0 200 OK"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}
