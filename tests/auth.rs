//! Digest authentication over real sockets, both backends (SPEC A1–A8).

mod support;

use registrar::auth::nonce::{Sealer, Secret};
use registrar::auth::{AuthMode, digest};
use registrar::config::Overrides;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::digest::{Challenge, add_user};
use support::sip::{RegisterMsg, Udp, start};

const URI: &str = "sip:example.com";

fn digest_on() -> Overrides {
    Overrides {
        auth: Some(AuthMode::Digest),
        ..Overrides::default()
    }
}

fn secret_file(byte: u8) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "{}", String::from_utf8(vec![byte; 40]).unwrap()).unwrap();
    f
}

fn alice() -> RegisterMsg {
    RegisterMsg::new("alice")
        .contact("<sip:alice@192.0.2.1:5060>")
        .header("Expires: 600")
}

/// Asks, answers the challenge, returns the final reply.
async fn register_with_password(
    ua: &Udp,
    msg: &RegisterMsg,
    password: &str,
) -> support::sip::Reply {
    let challenge = Challenge::first(&ua.ask(&msg.text()).await);
    let authorized = msg
        .clone()
        .cseq(msg.cseq + 1)
        .header(&challenge.answer(&msg.user, password, URI, 1));
    ua.ask(&authorized.text()).await
}

both_backends!(a1_a3_a4_challenge_then_authenticated_register, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let server = start(db, digest_on()).await;
    let ua = Udp::to(&server).await;
    let reply = ua.ask(&alice().text()).await;
    assert_eq!(reply.code, 401, "{}", reply.text);
    let challenges = Challenge::all(&reply);
    assert_eq!(challenges.len(), 1, "A3: md5 alone by default");
    let c = &challenges[0];
    assert_eq!(c.realm, "example.com", "A2: the realm is the AoR's domain");
    assert_eq!(c.algorithm.name(), "MD5");
    assert_eq!(c.qop.as_deref(), Some("auth"));
    assert!(c.opaque.is_some() && !c.stale);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);

    let authorized = alice().cseq(2).header(&c.answer("alice", "secret", URI, 1));
    let reply = ua.ask(&authorized.text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);

    // The same nonce, counting up: accepted (A4); a query authenticates too.
    let query = RegisterMsg::new("alice")
        .cseq(3)
        .header(&c.answer("alice", "secret", URI, 2));
    let reply = ua.ask(&query.text()).await;
    assert_eq!(
        (reply.code, reply.contacts().len()),
        (200, 1),
        "{}",
        reply.text
    );
    // A wrong password: a fresh challenge, nothing written.
    let wrong = RegisterMsg::new("alice")
        .cseq(4)
        .contact("<sip:alice@192.0.2.9>")
        .header(&c.answer("alice", "guess", URI, 3));
    let reply = ua.ask(&wrong.text()).await;
    assert_eq!(reply.code, 401, "{}", reply.text);
    assert_ne!(Challenge::first(&reply).nonce, c.nonce, "a fresh nonce");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    server.stop().await;
});

both_backends!(
    a3_a_challenge_needs_no_database_but_verification_does,
    |db| {
        add_user(db, "alice", "example.com", "secret").await;
        let server = start(db, digest_on()).await;
        let ua = Udp::to(&server).await;
        let c = Challenge::first(&ua.ask(&alice().text()).await);
        db.exec("DROP TABLE subscriber").await;
        // Still challenged: no database work for a challenge.
        assert_eq!(ua.ask(&alice().cseq(2).text()).await.code, 401);
        // Credentials are read from the database inside the request (DB_ONLY): now it fails.
        let authorized = alice().cseq(3).header(&c.answer("alice", "secret", URI, 1));
        assert_eq!(ua.ask(&authorized.text()).await.code, 500);
        server.stop().await;
    }
);

both_backends!(a3_algorithms_in_order_and_either_verifies, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let flags = Overrides {
        auth_algorithms: Some("sha-256,md5".into()),
        ..digest_on()
    };
    let server = start(db, flags).await;
    let ua = Udp::to(&server).await;
    let challenges = Challenge::all(&ua.ask(&alice().text()).await);
    let names: Vec<&str> = challenges.iter().map(|c| c.algorithm.name()).collect();
    assert_eq!(names, ["SHA-256", "MD5"], "RFC 8760 §2.4 order");
    for (i, c) in challenges.iter().enumerate() {
        let msg = alice().call_id(&format!("alg-{i}")).header(&c.answer(
            "alice",
            "secret",
            URI,
            i as u32 + 1,
        ));
        let reply = ua.ask(&msg.text()).await;
        assert_eq!(reply.code, 200, "{}: {}", c.algorithm.name(), reply.text);
    }
    server.stop().await;
});

both_backends!(
    a3_instances_sharing_a_secret_accept_each_others_nonces,
    |db| {
        add_user(db, "alice", "example.com", "secret").await;
        let shared = secret_file(b'k');
        let other = secret_file(b'z');
        let with = |f: &tempfile::NamedTempFile| Overrides {
            auth_secret_file: Some(f.path().to_path_buf()),
            ..digest_on()
        };
        let a = start(db, with(&shared)).await;
        let b = start(db, with(&shared)).await;
        let c = start(db, with(&other)).await;
        let (ua_a, ua_b, ua_c) = (Udp::to(&a).await, Udp::to(&b).await, Udp::to(&c).await);
        let challenge = Challenge::first(&ua_a.ask(&alice().text()).await);
        let msg = alice()
            .cseq(2)
            .header(&challenge.answer("alice", "secret", URI, 1));
        assert_eq!(ua_b.ask(&msg.text()).await.code, 200, "B opens A's nonce");
        let msg = alice()
            .cseq(3)
            .header(&challenge.answer("alice", "secret", URI, 2));
        let reply = ua_c.ask(&msg.text()).await;
        assert_eq!(reply.code, 401, "another secret: forged");
        assert!(!Challenge::first(&reply).stale);
        for s in [a, b, c] {
            s.stop().await;
        }
    }
);

both_backends!(a3_an_expired_nonce_is_stale, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let file = secret_file(b's');
    let flags = Overrides {
        auth_secret_file: Some(file.path().to_path_buf()),
        ..digest_on()
    };
    let server = start(db, flags).await;
    let ua = Udp::to(&server).await;
    // A nonce sealed under the server's secret 301 s ago, instead of waiting 5 minutes.
    let secret = Secret::from_file_bytes(std::fs::read(file.path()).unwrap()).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut challenge = Challenge::first(&ua.ask(&alice().text()).await);
    challenge.nonce = Sealer::new(secret, Duration::from_secs(300)).issue(now_ms - 301_000);
    let msg = alice()
        .cseq(2)
        .header(&challenge.answer("alice", "secret", URI, 1));
    let reply = ua.ask(&msg.text()).await;
    assert_eq!(reply.code, 401, "{}", reply.text);
    let fresh = Challenge::first(&reply);
    assert!(fresh.stale, "A3: stale=true");
    let msg = alice()
        .cseq(3)
        .header(&fresh.answer("alice", "secret", URI, 1));
    assert_eq!(ua.ask(&msg.text()).await.code, 200);
    server.stop().await;
});

both_backends!(a4_a_replay_is_refused, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let server = start(db, digest_on()).await;
    let ua = Udp::to(&server).await;
    let c = Challenge::first(&ua.ask(&alice().text()).await);
    let credentials = c.answer("alice", "secret", URI, 1);
    assert_eq!(
        ua.ask(&alice().cseq(2).header(&credentials).text())
            .await
            .code,
        200
    );
    // The same credentials in a new transaction (an eavesdropper's replay, with a new
    // branch and a contact of its choosing): refused, nothing written.
    let replay = RegisterMsg::new("alice")
        .cseq(3)
        .contact("<sip:mallory@203.0.113.66>")
        .header(&credentials);
    let reply = ua.ask(&replay.text()).await;
    assert_eq!(reply.code, 401, "{}", reply.text);
    assert_eq!(
        db.scalar("SELECT count(*) FROM location WHERE contact LIKE '%mallory%'")
            .await,
        0
    );
    // nc going backwards is a replay too.
    let later = c.answer("alice", "secret", URI, 5);
    assert_eq!(
        ua.ask(&alice().cseq(4).header(&later).text()).await.code,
        200
    );
    let back = c.answer("alice", "secret", URI, 4);
    assert_eq!(
        ua.ask(&alice().cseq(5).header(&back).text()).await.code,
        401
    );
    server.stop().await;
});

both_backends!(a4_unknown_user_and_wrong_password_look_alike, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let server = start(db, digest_on()).await;
    let ua = Udp::to(&server).await;
    let shape = |r: &support::sip::Reply| {
        let mut names: Vec<String> = r.message.headers.iter().map(|h| h.name.clone()).collect();
        names.sort();
        (r.code, r.reason.clone(), names)
    };
    let wrong = register_with_password(&ua, &alice(), "guess").await;
    let nobody = RegisterMsg::new("nobody")
        .contact("<sip:nobody@192.0.2.1>")
        .header("Expires: 600");
    let unknown = register_with_password(&ua, &nobody, "guess").await;
    assert_eq!(wrong.code, 401);
    assert_eq!(shape(&wrong), shape(&unknown));
    assert_eq!(
        wrong.text.len(),
        unknown.text.len() + "alice".len() * 3 - "nobody".len() * 3,
        "same size but for the names"
    );
    server.stop().await;
});

both_backends!(a4_uri_realm_and_malformed_credentials, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let server = start(db, digest_on()).await;
    let ua = Udp::to(&server).await;
    let c = Challenge::first(&ua.ask(&alice().text()).await);
    // `uri` must be the Request-URI.
    let other_uri = c.answer("alice", "secret", "sip:elsewhere.example.com", 1);
    let reply = ua.ask(&alice().cseq(2).header(&other_uri).text()).await;
    assert_eq!(reply.code, 400, "{}", reply.text);
    // Credentials for another realm are not ours: challenged.
    let mut foreign = c.clone();
    foreign.realm = "other.org".into();
    let reply = ua
        .ask(
            &alice()
                .cseq(3)
                .header(&foreign.answer("alice", "secret", URI, 1))
                .text(),
        )
        .await;
    assert_eq!(reply.code, 401);
    // Malformed or duplicated: 400, nothing written.
    let good = c.answer("alice", "secret", URI, 2);
    let malformed = [
        "Authorization: Digest username=\"alice\", realm=\"example.com\"".to_string(),
        good.replace("nc=00000002", "nc=2"),
        good.replace("response=\"", "response=\"zz"),
        good.replace("\", uri", "\" uri"),
        format!("{good}, nonce=\"again\""),
    ];
    for (i, m) in malformed.iter().enumerate() {
        let reply = ua.ask(&alice().cseq(10 + i as u32).header(m).text()).await;
        assert_eq!(reply.code, 400, "{m}: {}", reply.text);
    }
    let twice = alice().cseq(20).header(&good).header(&good);
    assert_eq!(
        ua.ask(&twice.text()).await.code,
        400,
        "duplicated credentials"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    server.stop().await;
});

both_backends!(a5_credentials_of_another_user_are_forbidden, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    add_user(db, "bob", "example.com", "bobs").await;
    let server = start(db, digest_on()).await;
    let ua = Udp::to(&server).await;
    let c = Challenge::first(&ua.ask(&alice().text()).await);
    let reply = ua
        .ask(
            &alice()
                .cseq(2)
                .header(&c.answer("bob", "bobs", URI, 1))
                .text(),
        )
        .await;
    assert_eq!(reply.code, 403, "{}", reply.text);
    assert_eq!(reply.header("P-Registrar-Error"), Some("Auth ID mismatch"));
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    // Third-party registration by the AoR's own credentials: the From is not compared.
    let third = alice().cseq(3).header(&c.answer("alice", "secret", URI, 2));
    let text = third
        .text()
        .replace("From: <sip:alice@", "From: <sip:assistant@");
    assert_eq!(ua.ask(&text).await.code, 200);
    // `user@domain` as username uses Kamailio's ha1b.
    let with_domain = c.answer("alice@example.com", "secret", URI, 3);
    assert_eq!(
        ua.ask(&alice().cseq(4).header(&with_domain).text())
            .await
            .code,
        200
    );
    server.stop().await;
});

both_backends!(a2_rows_written_the_kamctl_way_authenticate, |db| {
    // kamctl's default: plaintext password only. And a row with only ha1.
    db.exec(
        "INSERT INTO subscriber (username, domain, password) VALUES ('carol', 'example.com', 'pw')",
    )
    .await;
    let ha1 = digest::ha1(
        registrar::auth::Algorithm::Md5,
        "dave",
        "example.com",
        "pw2",
    );
    db.exec(&format!(
        "INSERT INTO subscriber (username, domain, ha1) VALUES ('dave', 'example.com', '{ha1}')"
    ))
    .await;
    let flags = Overrides {
        auth_algorithms: Some("sha-256,md5".into()),
        ..digest_on()
    };
    let server = start(db, flags).await;
    let ua = Udp::to(&server).await;
    for (user, password) in [("carol", "pw"), ("dave", "pw2")] {
        let msg = RegisterMsg::new(user)
            .contact(&format!("<sip:{user}@192.0.2.5>"))
            .header("Expires: 600");
        let challenges = Challenge::all(&ua.ask(&msg.text()).await);
        let (sha, md5) = (&challenges[0], &challenges[1]);
        let reply = ua
            .ask(
                &msg.clone()
                    .cseq(2)
                    .header(&md5.answer(user, password, URI, 1))
                    .text(),
            )
            .await;
        assert_eq!(reply.code, 200, "{user} MD5: {}", reply.text);
        let reply = ua
            .ask(
                &msg.clone()
                    .cseq(3)
                    .header(&sha.answer(user, password, URI, 2))
                    .text(),
            )
            .await;
        // carol's plaintext gives a SHA-256 hash; dave has only ha1 (A5: like a wrong password).
        let expected = if user == "carol" { 200 } else { 401 };
        assert_eq!(reply.code, expected, "{user} SHA-256: {}", reply.text);
    }
    server.stop().await;
});

both_backends!(a6_a_brute_forcing_ip_is_banned_and_others_are_not, |db| {
    add_user(db, "alice", "example.com", "secret").await;
    let flags = Overrides {
        auth_fail_limit: Some(2),
        ..digest_on()
    };
    let server = start(db, flags).await;
    let attacker = Udp::to(&server).await;
    // Challenges are not failures.
    for i in 0..5 {
        assert_eq!(attacker.ask(&alice().cseq(i + 1).text()).await.code, 401);
    }
    let c = Challenge::first(&attacker.ask(&alice().cseq(6).text()).await);
    for i in 0..3 {
        let reply = register_with_password(&attacker, &alice().cseq(10 + 2 * i), "guess").await;
        assert_eq!(reply.code, 401, "failure {} is answered 401", i + 1);
    }
    // Banned: even the right password is refused.
    let right = alice()
        .cseq(30)
        .header(&c.answer("alice", "secret", URI, 1));
    let reply = attacker.ask(&right.text()).await;
    assert_eq!(reply.code, 403, "{}", reply.text);
    // Another source registers meanwhile.
    let other = Udp::from_ip(&server, "127.0.0.2").await;
    let reply = register_with_password(&other, &alice().cseq(40), "secret").await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    // A banned source costs no database work: with the credentials gone it is still 403.
    db.exec("DROP TABLE subscriber").await;
    assert_eq!(attacker.ask(&alice().cseq(50).text()).await.code, 403);
    server.stop().await;
});
