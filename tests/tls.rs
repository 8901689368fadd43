//! SPEC W1/W3 over real TLS connections: REGISTER over a `tls:` listener, what `location`
//! records for it, RFC 5626 keep-alives, and hostile input on the TLS port (H4).

mod support;

use registrar::config::{Overrides, Settings};
use registrar::server::{self, Running};
use std::time::Duration;
use support::TestDb;
use support::sip::{RegisterMsg, Tcp, Udp};
use support::tls::{self as tls_support, Tls};
use tokio::io::AsyncWriteExt;

/// A REGISTER of `user` over TLS with a `sips:` contact at `ip`.
fn over_tls(user: &str, ip: &str) -> RegisterMsg {
    RegisterMsg::new(user)
        .via("TLS", 5061)
        .contact(&format!("<sips:{user}@{ip}:5061>"))
}

/// A server with a `tls:` listener (and TCP, to see that it keeps serving) on `db`.
async fn serve_tls(db: &TestDb, flags: Overrides) -> Running {
    let listen = ["tls:127.0.0.1:0", "tcp:127.0.0.1:0", "udp:127.0.0.1:0"];
    tls_support::serve(db, &listen, flags).await
}

// W1: a REGISTER over TLS is answered on its connection; the contact is stored as sent
// (`sips:`), `socket` names the TLS listener, `connection_id` the connection.
both_backends!(w1_register_over_tls_is_stored_with_its_listener, |db| {
    let running = serve_tls(db, Overrides::default()).await;
    let mut ua = Tls::to(&running).await;
    let reply = ua.ask(&over_tls("tina", "10.0.0.1").text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    assert_eq!(reply.contacts().len(), 1);
    let listener = running.tls[0];
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM location WHERE contact = 'sips:tina@10.0.0.1:5061' \
             AND socket = 'tls:{listener}' AND connection_id > 0"
        ))
        .await,
        1,
        "stored as sent, with the TLS listener as socket"
    );
    running.stop().await;
});

// W3: a double-CRLF ping over TLS is answered with a single CRLF, and the connection serves
// on (RFC 5626 §3.5.1).
both_backends!(w3_crlf_keepalive_over_tls, |db| {
    let running = serve_tls(db, Overrides::default()).await;
    let mut ua = Tls::to(&running).await;
    ua.send(b"\r\n\r\n").await;
    assert_eq!(
        ua.read_some(Duration::from_secs(5)).await.as_deref(),
        Some(&b"\r\n"[..])
    );
    let reply = ua.ask(&over_tls("kurt", "10.0.0.2").text()).await;
    assert_eq!(reply.code, 200);
    running.stop().await;
});

// W3 (RFC 5626 §6): a 200 OK to an outbound REGISTER over a stream carries Require: outbound
// and Flow-Timer (half the idle timeout); not for a REGISTER without reg-id, not over UDP
// (whose keep-alives would be STUN, which we do not answer).
both_backends!(
    w3_outbound_register_gets_require_outbound_and_flow_timer,
    |db| {
        let running = serve_tls(
            db,
            Overrides {
                tcp_idle_timeout: Some(90.0),
                ..Overrides::default()
            },
        )
        .await;
        let outbound = |user: &str, transport: &'static str| {
            RegisterMsg::new(user)
            .via(transport, 5061)
            .header("Supported: outbound, path")
            .contact(&format!(
                "<sips:{user}@10.0.0.4:5061>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0000000000{}>\";reg-id=1",
                user.len()
            ))
        };
        let mut ua = Tls::to(&running).await;
        let reply = ua.ask(&outbound("olaf", "TLS").text()).await;
        assert_eq!(reply.code, 200, "{}", reply.text);
        assert_eq!(reply.header("Require"), Some("outbound"));
        assert_eq!(reply.header("Flow-Timer"), Some("45"));

        let plain = over_tls("pia", "10.0.0.5");
        let reply = ua.ask(&plain.text()).await;
        assert_eq!((reply.code, reply.header("Require")), (200, None));

        let udp = Udp::to(&running).await;
        let reply = udp.ask(&outbound("quinn", "UDP").text()).await;
        assert_eq!(reply.code, 200);
        assert_eq!(
            (reply.header("Require"), reply.header("Flow-Timer")),
            (None, None)
        );
        running.stop().await;
    }
);

/// A plain TCP connection to the TLS port.
async fn raw_to_tls_port(running: &Running) -> Tcp {
    let mut tcp = Tcp::to(running).await;
    tcp.stream = tokio::net::TcpStream::connect(running.tls[0])
        .await
        .unwrap();
    tcp
}

// H4/W3: plaintext SIP, binary garbage and a handshake that never finishes on the TLS port:
// each connection is closed (the last within the message timeout), and the server serves on.
both_backends!(
    w3_hostile_input_on_the_tls_port_closes_only_that_connection,
    |db| {
        let running = serve_tls(
            db,
            Overrides {
                tcp_message_timeout: Some(1.0),
                ..Overrides::default()
            },
        )
        .await;

        let mut plaintext = raw_to_tls_port(&running).await;
        plaintext
            .send(
                &RegisterMsg::new("mallory")
                    .via("TCP", 5060)
                    .contact("<sip:m@10.0.0.9>")
                    .text(),
            )
            .await;
        assert!(
            plaintext.closed_within(Duration::from_secs(3)).await,
            "plaintext on the TLS port: closed"
        );

        let mut garbage = raw_to_tls_port(&running).await;
        let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = garbage.stream.write_all(&noise).await;
        assert!(
            garbage.closed_within(Duration::from_secs(3)).await,
            "binary garbage: closed"
        );

        let mut silent = raw_to_tls_port(&running).await;
        assert!(
            silent.closed_within(Duration::from_secs(4)).await,
            "a handshake that never starts is bounded by the message timeout"
        );

        let mut ua = Tls::to(&running).await;
        let reply = ua.ask(&over_tls("nina", "10.0.0.3").text()).await;
        assert_eq!(reply.code, 200, "the server serves on");
        assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
        running.stop().await;
    }
);

#[tokio::test]
async fn w1_a_tls_listener_needs_a_usable_certificate() {
    let flags = |cert: Option<std::path::PathBuf>, key: Option<std::path::PathBuf>| Overrides {
        listen: vec!["tls:127.0.0.1:0".into()],
        tls_cert: cert,
        tls_key: key,
        ..Overrides::default()
    };
    let err = Settings::load(None, None, flags(None, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs --tls-cert and --tls-key"), "{err}");
    let err = Settings::load(None, None, flags(Some(tls_support::cert()), None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("go together"), "{err}");

    // Files that exist but hold no certificate, or a key for another certificate: the
    // server does not start, and says which file.
    let db = TestDb::sqlite().await;
    let settings = Settings::load(
        None,
        Some(db.url.clone()),
        flags(Some(tls_support::key()), Some(tls_support::key())),
    )
    .unwrap();
    let err = match server::start(&settings, db.second_store().await).await {
        Ok(_) => panic!("a key file is no certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--tls-cert"), "{err}");
}
