//! SPEC R13: with the database gone, REGISTERs get `500` with `Retry-After` and nothing is
//! half-written; the server keeps answering and recovers by itself when the database returns.

mod support;

use registrar::config::{Overrides, Settings};
use registrar::server;
use registrar::store::{ConnectOptions, Store};
use std::time::Duration;
use support::proxy::Proxy;
use support::sip::{RegisterMsg, Udp, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_postgres_outage_is_500_with_retry_after_then_recovery() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("r13_postgres_outage_is_500_with_retry_after_then_recovery");
    };
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let options = ConnectOptions {
        pool_size: 4,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let store = Store::connect(&url, &options).await.unwrap();
    let flags = Overrides {
        listen: vec!["udp:127.0.0.1:0".into()],
        http_listen: Some("127.0.0.1:0".into()),
        retry_after: Some(7),
        auth: Some(registrar::auth::AuthMode::Off),
        ..Overrides::default()
    };
    let settings = Settings::load(None, Some(url), flags).unwrap();
    let running = server::start(&settings, store).await.unwrap();
    let ua = Udp::to(&running).await;

    let reg = RegisterMsg::new("olga").contact("<sip:o@10.0.0.1>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);

    proxy.down();
    let reply = ua
        .ask(&reg.clone().cseq(2).contact("<sip:o@10.0.0.2>").text())
        .await;
    assert_eq!(
        (reply.code, reply.reason.as_str()),
        (500, "Server Internal Error")
    );
    assert_eq!(reply.header("Retry-After"), Some("7"));
    // Requests that need no database are still answered.
    assert_eq!(
        ua.ask(&request("OPTIONS", "sip:example.com")).await.code,
        200
    );

    proxy.up();
    let mut recovered = None;
    for attempt in 3..20 {
        let reply = ua
            .ask(&reg.clone().cseq(attempt).contact("<sip:o@10.0.0.2>").text())
            .await;
        if reply.code == 200 {
            recovered = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reply = recovered.expect("the server recovers once the database is back");
    assert_eq!(reply.contacts().len(), 2);
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        2,
        "nothing half-written, nothing lost"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_sqlite_locked_database_is_500_with_retry_after() {
    let db = support::TestDb::sqlite().await;
    let running = support::sip::start(&db, Overrides::default()).await;
    let ua = Udp::to(&running).await;
    // Another process holding the write lock longer than the busy timeout (5 s).
    let Store::Sqlite(sqlite) = &db.store else {
        unreachable!()
    };
    let mut blocker = sqlite.pool().acquire().await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let reply = ua
        .ask_within(
            &RegisterMsg::new("pete").contact("<sip:p@10.0.0.1>").text(),
            Duration::from_secs(12),
        )
        .await;
    assert_eq!((reply.code, reply.header("Retry-After")), (500, Some("5")));
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
    drop(blocker);
    let reply = ua
        .ask(
            &RegisterMsg::new("pete")
                .cseq(2)
                .contact("<sip:p@10.0.0.1>")
                .text(),
        )
        .await;
    assert_eq!(reply.code, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    running.stop().await;
}

// R13: a row the database refuses is a 500 without Retry-After (retrying will not help).
both_backends!(r13_rejected_row_is_500_without_retry_after, |db| {
    db.refuse_contacts_containing("evil").await;
    let running = support::sip::start(db, Overrides::default()).await;
    let ua = Udp::to(&running).await;
    let reply = ua
        .ask(
            &RegisterMsg::new("quinn")
                .contact("<sip:evil@10.0.0.1>")
                .text(),
        )
        .await;
    assert_eq!((reply.code, reply.header("Retry-After")), (500, None));
    let reply = ua
        .ask(
            &RegisterMsg::new("quinn")
                .cseq(2)
                .contact("<sip:good@10.0.0.1>")
                .text(),
        )
        .await;
    assert_eq!(reply.code, 200);
    running.stop().await;
});
