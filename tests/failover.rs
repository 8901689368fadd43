//! SPEC F1 over real sockets: the writable primary among a multi-host URL's hosts, found again
//! when the one in use goes or turns read-only, without restarting the registrar; and no 200
//! for a COMMIT that PostgreSQL only committed locally.

mod support;

use registrar::config::{Overrides, Settings};
use registrar::server::{self, Running};
use registrar::store::{ConnectOptions, Store};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};
use support::proxy::Proxy;
use support::sip::{RegisterMsg, Reply, Udp};

const DEADLINE: Duration = Duration::from_secs(2);

/// A registrar on `url` with a short deadline (statement_timeout 0.8 × it, as `serve` sets).
async fn serve(url: &str) -> Running {
    let options = ConnectOptions {
        pool_size: 4,
        connect_timeout: Duration::from_secs(10),
        acquire_timeout: Duration::from_millis(500),
        statement_timeout: Some(DEADLINE.mul_f64(0.8)),
        ..ConnectOptions::default()
    };
    let store = Store::connect(url, &options).await.expect("connect");
    let flags = Overrides {
        listen: vec!["udp:127.0.0.1:0".into()],
        http_listen: Some("off".into()),
        request_deadline: Some(DEADLINE.as_secs_f64()),
        retry_after: Some(3),
        auth: Some(registrar::auth::AuthMode::Off),
        ..Overrides::default()
    };
    let settings = Settings::load(None, Some(url.to_string()), flags).unwrap();
    server::start(&settings, store).await.unwrap()
}

/// `url` with its host list replaced by `hosts` (`h1:p1,h2:p2`) and the libpq attribute added.
fn with_hosts(url: &str, hosts: &[String]) -> String {
    let parsed = url::Url::parse(url).unwrap();
    let user = parsed.username();
    format!(
        "postgres://{user}@{}{}?target_session_attrs=read-write",
        hosts.join(","),
        parsed.path()
    )
}

fn host_of(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    )
}

/// A port nothing listens on.
fn dead_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// REGISTERs (CSeq 10, 11, …) until one is answered 200 or `within` passes; every answer must
/// come within the deadline and be 200, or 500/503 with Retry-After (SPEC F1, H6).
async fn until_200(ua: &Udp, reg: &RegisterMsg, first_cseq: u32, within: Duration) -> Duration {
    let started = Instant::now();
    for cseq in first_cseq.. {
        let asked = Instant::now();
        let reply: Reply = ua
            .ask_within(&reg.clone().cseq(cseq).text(), DEADLINE * 2)
            .await;
        assert!(
            asked.elapsed() <= DEADLINE + Duration::from_millis(500),
            "answered after {:?}, past the deadline",
            asked.elapsed()
        );
        if reply.code == 200 {
            return started.elapsed();
        }
        assert!(
            matches!(reply.code, 500 | 503) && reply.header("Retry-After").is_some(),
            "a failure is 500/503 with Retry-After: {}",
            reply.text
        );
        assert!(
            started.elapsed() < within,
            "no 200 within {within:?}; last answer {}",
            reply.code
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_dead_first_host_is_skipped() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("f1_a_dead_first_host_is_skipped");
    };
    let url = with_hosts(&db.url, &[dead_port(), host_of(&db.url)]);
    let running = serve(&url).await;
    let ua = Udp::to(&running).await;
    let reg = RegisterMsg::new("fiona").contact("<sip:f@10.0.0.1>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_when_the_host_in_use_goes_the_next_one_serves_without_a_restart() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("f1_when_the_host_in_use_goes_the_next_one_serves");
    };
    // Two "hosts": two proxies in front of the same server.
    let (first, _) = Proxy::in_front_of(&db.url).await;
    let (second, _) = Proxy::in_front_of(&db.url).await;
    let url = with_hosts(&db.url, &[first.addr.to_string(), second.addr.to_string()]);
    let running = serve(&url).await;
    let ua = Udp::to(&running).await;
    let reg = RegisterMsg::new("gina").contact("<sip:g@10.0.0.1>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);

    first.down();
    let took = until_200(&ua, &reg, 10, Duration::from_secs(10)).await;
    eprintln!("the second host served {took:?} after the first went");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    // And it stays there: the first host is not tried again while the second works.
    first.up();
    assert_eq!(ua.ask(&reg.clone().cseq(100).text()).await.code, 200);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_read_only_database_is_500_then_recovers_after_reset() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("f1_a_read_only_database_is_500_then_recovers_after_reset");
    };
    let name = url::Url::parse(&db.url).unwrap().path()[1..].to_string();
    let mut admin = PgConnection::connect(support::pg::server_url().unwrap())
        .await
        .unwrap();
    let running = serve(&db.url).await;
    let ua = Udp::to(&running).await;
    let reg = RegisterMsg::new("hana").contact("<sip:h@10.0.0.1>");
    assert_eq!(ua.ask(&reg.text()).await.code, 200);

    // A primary turned read-only (a demoted node answers the same way): new sessions cannot
    // write; the registrar's sessions are ended, so it has to open new ones.
    for sql in [
        format!("ALTER DATABASE {name} SET default_transaction_read_only = on"),
        format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let moved = reg.clone().contact("<sip:h@10.0.0.2>");
    for cseq in 2..5 {
        let asked = Instant::now();
        let reply = ua
            .ask_within(&moved.clone().cseq(cseq).text(), DEADLINE * 2)
            .await;
        assert!(asked.elapsed() <= DEADLINE + Duration::from_millis(500));
        assert!(
            matches!(reply.code, 500 | 503) && reply.header("Retry-After").is_some(),
            "read-only: 500/503 with Retry-After, got {}",
            reply.text
        );
    }

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} RESET default_transaction_read_only"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    until_200(&ua, &moved, 10, Duration::from_secs(10)).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM location WHERE contact = 'sip:h@10.0.0.2'")
            .await,
        1
    );
    running.stop().await;
}

/// A COMMIT that waits for a synchronous standby longer than `statement_timeout` must not be
/// cancelled by it: PostgreSQL would report success ("committed locally, but might not have
/// been replicated") and we would answer 200 for a binding a failover can lose (SPEC F1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_commit_waiting_for_a_standby_is_never_answered_200() {
    // A private cluster whose commits wait for a synchronous standby that never comes. The
    // cluster's own synchronous_commit is off, so the migration and this admin session never
    // wait for the standby; only the registrar's sessions (the database's setting) do.
    let Some(admin_url) = support::pg::start_cluster("-c synchronous_commit=off") else {
        return support::pg::skip("f1_a_commit_waiting_for_a_standby_is_never_answered_200");
    };
    let url = support::pg::with_database(&admin_url, "postgres");
    let migrated = Store::connect(&url, &support::options()).await.unwrap();
    migrated.migrate().await.unwrap();
    migrated.close().await;
    let mut admin = PgConnection::connect(&url).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
        "ALTER DATABASE postgres SET synchronous_commit = on",
    ] {
        sqlx::raw_sql(sql).execute(&mut admin).await.unwrap();
    }

    let running = serve(&url).await;
    let ua = Udp::to(&running).await;
    let asked = Instant::now();
    let reply = ua
        .ask_within(
            &RegisterMsg::new("ines").contact("<sip:i@10.0.0.1>").text(),
            DEADLINE * 3,
        )
        .await;
    assert!(asked.elapsed() <= DEADLINE + Duration::from_millis(500));
    assert_eq!(
        (reply.code, reply.header("Retry-After").is_some()),
        (500, true),
        "a commit not acknowledged by the standby is no 200: {}",
        reply.text
    );

    // Release the waiting COMMIT so the server can stop.
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = ''",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sql).execute(&mut admin).await.unwrap();
    }
    running.stop().await;
}
