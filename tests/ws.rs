//! SPEC W2/W3 over real WebSocket connections (RFC 7118): the upgrade with the `sip`
//! subprotocol, a browser's REGISTER over `ws:` and `wss:` and what `location` records for it,
//! keep-alives (Ping → Pong, CRLFCRLF → CRLF), and hostile input (H4).

mod support;

use registrar::config::{Overrides, Settings};
use registrar::server::Running;
use std::time::Duration;
use support::TestDb;
use support::sip::Udp;
use support::tls as tls_support;
use support::ws::{RawWs, Ws};
use tokio_tungstenite::tungstenite::Message;

/// A REGISTER as JsSIP 3.13 sends it from a browser: an `.invalid` Via host and Contact host,
/// `transport=ws`, an outbound instance and reg-id.
fn browser_register(user: &str, via: &str, cseq: u32) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/{via} df7jal23ls0d.invalid;branch=z9hG4bK{user}{cseq}\r\n\
         Max-Forwards: 69\r\n\
         To: <sip:{user}@example.com>\r\n\
         From: \"{user}\" <sip:{user}@example.com>;tag=t{user}\r\n\
         Call-ID: c{user}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:x7a{user}@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;\
         +sip.instance=\"<urn:uuid:0c7b4fb6-2d6e-4f48-9e1b-{user:0>12}>\";expires=600\r\n\
         Expires: 600\r\n\
         Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n\
         Supported: path,gruu,outbound\r\n\
         User-Agent: JsSIP 3.13.0\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A server with `ws:` and `wss:` listeners (and UDP, to see that it keeps serving) on `db`.
async fn serve_ws(db: &TestDb, flags: Overrides) -> Running {
    let listen = ["ws:127.0.0.1:0", "wss:127.0.0.1:0", "udp:127.0.0.1:0"];
    tls_support::serve(db, &listen, flags).await
}

/// W2: the browser's REGISTER is answered with one text message echoing its quoted instance
/// and reg-id (JsSIP counts nothing else as registered), with RFC 5626's outbound headers;
/// `location` holds the contact as sent, `received` naming the connection's source with
/// `transport=ws` (for WSS too, as Kamailio writes it) and `socket` the listener.
async fn register_from_a_browser(db: &TestDb, secure: bool) {
    let running = serve_ws(db, Overrides::default()).await;
    let (listener, scheme, via) = match secure {
        false => (running.ws[0], "ws", "WS"),
        true => (running.wss[0], "wss", "WSS"),
    };
    let mut ua = match secure {
        false => Ws::to(listener).await,
        true => Ws::secure_to(listener).await,
    };
    assert_eq!(ua.protocol.as_deref(), Some("sip"), "RFC 7118 §4");
    let reply = ua.ask(&browser_register("wanda", via, 1)).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    let contacts = reply.contacts();
    assert_eq!(contacts.len(), 1, "{}", reply.text);
    assert!(
        contacts[0].contains("+sip.instance=\"<urn:uuid:0c7b4fb6-2d6e-4f48-9e1b-0000000wanda>\"")
            && contacts[0].contains("reg-id=1"),
        "{}",
        contacts[0]
    );
    assert_eq!(reply.header("Require"), Some("outbound"));
    assert!(reply.header("Flow-Timer").is_some());

    let row = db
        .scalar(&format!(
            "SELECT count(*) FROM location WHERE \
             contact = 'sip:x7awanda@df7jal23ls0d.invalid;transport=ws' \
             AND received LIKE 'sip:127.0.0.1:%;transport=ws' \
             AND socket = '{scheme}:{listener}' AND connection_id > 0 \
             AND instance = '<urn:uuid:0c7b4fb6-2d6e-4f48-9e1b-0000000wanda>' AND reg_id = 1"
        ))
        .await;
    assert_eq!(
        row, 1,
        "stored as sent, received and socket naming the WebSocket"
    );

    // A refresh over the same connection keeps one binding.
    let reply = ua.ask(&browser_register("wanda", via, 2)).await;
    assert_eq!(reply.code, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    running.stop().await;
}

both_backends!(w2_a_browser_registers_over_ws, |db| {
    register_from_a_browser(db, false).await;
});

both_backends!(w2_a_browser_registers_over_wss, |db| {
    register_from_a_browser(db, true).await;
});

// W3 (RFC 7118 §6, RFC 5626 §3.5.1): a Ping is answered with a Pong carrying its payload, a
// message holding a double CRLF with a message holding a single CRLF, and the connection
// serves on.
both_backends!(w3_keepalives_over_websocket, |db| {
    let running = serve_ws(db, Overrides::default()).await;
    let mut ua = Ws::to(running.ws[0]).await;
    ua.send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    match ua.next_any(Duration::from_secs(5)).await {
        Some(Message::Pong(payload)) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a Pong, got {other:?}"),
    }
    ua.send(Message::text("\r\n\r\n")).await;
    match ua.next_data(Duration::from_secs(5)).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), "\r\n"),
        other => panic!("expected a CRLF message, got {other:?}"),
    }
    let reply = ua.ask(&browser_register("kai", "WS", 1)).await;
    assert_eq!(reply.code, 200);
    running.stop().await;
});

// W2: an upgrade that does not offer the `sip` subprotocol is refused with 400; one offering it
// among others gets `sip`.
#[tokio::test]
async fn w2_the_upgrade_requires_the_sip_subprotocol() {
    let db = TestDb::sqlite().await;
    let running = serve_ws(&db, Overrides::default()).await;
    let addr = running.ws[0];
    assert_eq!(Ws::upgrade(addr, false, None).await.err(), Some(400));
    assert_eq!(
        Ws::upgrade(addr, false, Some("chat")).await.err(),
        Some(400)
    );
    let ws = Ws::upgrade(addr, false, Some("chat, sip")).await.unwrap();
    assert_eq!(ws.protocol.as_deref(), Some("sip"));
    let ws = Ws::upgrade(running.wss[0], true, Some("sip"))
        .await
        .unwrap();
    assert_eq!(ws.protocol.as_deref(), Some("sip"));
    running.stop().await;
}

// W2/H4: a SIP message in a fragmented WebSocket message (text frame + continuation frames) is
// reassembled and answered; a message over --max-message-size, frames that are not WebSocket
// at all, a message left unfinished and an upgrade never sent each close only their own
// connection (the last two within the message timeout), and the server serves on.
both_backends!(w2_fragments_and_hostile_input_on_websocket, |db| {
    let running = serve_ws(
        db,
        Overrides {
            tcp_message_timeout: Some(1.0),
            max_message_size: Some(4096),
            ..Overrides::default()
        },
    )
    .await;
    let addr = running.ws[0];

    let register = browser_register("fred", "WS", 1);
    let (a, rest) = register.as_bytes().split_at(40);
    let (b, c) = rest.split_at(100);
    let mut fragmented = RawWs::to(addr).await;
    let mut frames = RawWs::frame(false, 1, a);
    frames.extend(RawWs::frame(false, 0, b));
    frames.extend(RawWs::frame(true, 0, c));
    fragmented.send(&frames).await;
    let (opcode, reply) = fragmented
        .recv_frame(Duration::from_secs(5))
        .await
        .expect("a reply to the reassembled message");
    assert_eq!(opcode, 1, "a text frame");
    assert!(
        reply.starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let mut oversized = RawWs::to(addr).await;
    oversized
        .send(&RawWs::frame(true, 1, &vec![b'a'; 5000]))
        .await;
    assert!(
        oversized.closed_within(Duration::from_secs(3)).await,
        "a message over the size limit: closed"
    );

    let mut garbage = RawWs::to(addr).await;
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    garbage.send(&noise).await;
    assert!(
        garbage.closed_within(Duration::from_secs(3)).await,
        "bytes that are not WebSocket frames: closed"
    );

    let mut unfinished = RawWs::to(addr).await;
    let frame = RawWs::frame(true, 1, register.as_bytes());
    unfinished.send(&frame[..frame.len() / 2]).await;
    assert!(
        unfinished.closed_within(Duration::from_secs(4)).await,
        "a message not finished within the message timeout: closed"
    );

    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        use tokio::io::AsyncReadExt;
        silent.read(&mut byte).await
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an upgrade never sent is bounded by the message timeout"
    );

    let mut ua = Ws::to(addr).await;
    let reply = ua.ask(&browser_register("gina", "WS", 1)).await;
    assert_eq!(reply.code, 200, "the server serves on");
    let udp = Udp::to(&running).await;
    let reply = udp
        .ask(
            &support::sip::RegisterMsg::new("hugo")
                .contact("<sip:h@10.0.0.8>")
                .text(),
        )
        .await;
    assert_eq!(reply.code, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 3);
    running.stop().await;
});

#[tokio::test]
async fn w2_a_wss_listener_needs_a_certificate() {
    let err = Settings::load(
        None,
        None,
        Overrides {
            listen: vec!["wss:127.0.0.1:0".into()],
            ..Overrides::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a wss: listener needs --tls-cert and --tls-key"),
        "{err}"
    );
    let ok = Settings::load(
        None,
        None,
        Overrides {
            listen: vec!["ws:127.0.0.1:0".into()],
            ..Overrides::default()
        },
    );
    assert!(ok.is_ok(), "ws: needs no certificate");
}
