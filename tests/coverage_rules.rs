//! Rules that had no test (issue 18), over real sockets and the built binary: R13's overload
//! 503 (REGISTERs in flight, and the wait for a pooled connection), S4's cleanup task in
//! running instances, C1's `--db-connect-timeout` and `--no-migrate`. Rows are aged with
//! UPDATEs; nothing sleeps through an expiry.

mod support;

use registrar::config::{Overrides, Settings};
use registrar::server;
use registrar::store::{Backend, ConnectOptions, Store};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::TestDb;
use support::sip::{RegisterMsg, Udp, start};

/// Holds the whole database so that every REGISTER waits on it: PostgreSQL, an exclusive lock
/// on `location`; SQLite, the write lock. Dropped (or `release`d), it lets go.
enum Blocker {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl Blocker {
    async fn hold(db: &TestDb) -> Blocker {
        match &db.store {
            Store::Postgres(s) => {
                let mut tx = s.pool().begin().await.unwrap();
                sqlx::query("LOCK TABLE location IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                Blocker::Postgres(tx)
            }
            Store::Sqlite(s) => {
                Blocker::Sqlite(s.pool().begin_with("BEGIN IMMEDIATE").await.unwrap())
            }
        }
    }

    async fn release(self) {
        match self {
            Blocker::Postgres(tx) => tx.rollback().await.unwrap(),
            Blocker::Sqlite(tx) => tx.rollback().await.unwrap(),
        }
    }
}

// R13: REGISTERs in flight are bounded (1,024). With the database stuck, 1,300 REGISTERs for
// distinct AoRs: those past the bound are answered 503 with Retry-After at once — before any of
// the waiting ones is answered (500 with Retry-After at the request deadline, H6); none is a
// 200. The server recovers when the database does.
both_backends!(r13_overload_in_flight_bound_is_503_at_once, |db| {
    let server = start(
        db,
        Overrides {
            request_deadline: Some(3.0),
            retry_after: Some(7),
            ..Overrides::default()
        },
    )
    .await;
    let ua = std::sync::Arc::new(Udp::to(&server).await);
    let blocker = Blocker::hold(db).await;
    const SENT: usize = 1300;
    let started = Instant::now();
    let reader = {
        let ua = std::sync::Arc::clone(&ua);
        tokio::spawn(async move {
            let mut replies = Vec::new();
            while replies.len() < SENT {
                match ua.recv(Duration::from_secs(8)).await {
                    Some(r) => replies.push((started.elapsed(), r)),
                    None => break,
                }
            }
            replies
        })
    };
    for chunk in 0..SENT / 50 {
        for i in chunk * 50..(chunk + 1) * 50 {
            let reg = RegisterMsg::new(&format!("load{i}")).contact(&format!(
                "<sip:load@10.{}.{}.1>",
                i / 250,
                i % 250
            ));
            ua.send(&reg.text()).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replies = reader.await.unwrap();
    blocker.release().await;
    let refused: Vec<Duration> = replies
        .iter()
        .filter(|(_, r)| r.code == 503)
        .map(|(t, _)| *t)
        .collect();
    assert!(
        refused.len() <= SENT - 1024,
        "{} refused: the bound is 1,024 REGISTERs in flight",
        refused.len()
    );
    assert!(
        refused.len() >= 100,
        "{} of {SENT} refused at the in-flight bound (codes: {:?})",
        refused.len(),
        replies
            .iter()
            .map(|(_, r)| r.code)
            .collect::<std::collections::BTreeSet<_>>()
    );
    for (_, r) in &replies {
        assert!(
            matches!(r.code, 503 | 500),
            "only 503 (overload) or 500 (deadline) while the database is stuck: {}",
            r.text
        );
        assert_eq!(r.header("Retry-After"), Some("7"), "{}", r.text);
    }
    let first_500 = replies
        .iter()
        .filter(|(_, r)| r.code == 500)
        .map(|(t, _)| *t)
        .min()
        .expect("the waiting REGISTERs answered at the deadline");
    let last_503 = refused.iter().max().unwrap();
    assert!(
        *last_503 < first_500,
        "the 503s come at once ({last_503:?}), not after the deadline ({first_500:?})"
    );
    // Recovery.
    let mut code = 0;
    for attempt in 0..50 {
        let reg = RegisterMsg::new("after-load")
            .cseq(attempt + 1)
            .contact("<sip:after@10.9.9.9>");
        code = ua.ask(&reg.text()).await.code;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code, 200, "serving again once the database is");
    server.stop().await;
});

/// The server on a store of its own: one pooled connection, a short wait for it.
async fn start_on_small_pool(db: &TestDb) -> (server::Running, Store) {
    let options = ConnectOptions {
        pool_size: 1,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let store = Store::connect(&db.url, &options).await.unwrap();
    let flags = Overrides {
        listen: vec!["udp:127.0.0.1:0".into()],
        http_listen: Some("127.0.0.1:0".into()),
        retry_after: Some(7),
        auth: Some(registrar::auth::AuthMode::Off),
        ..Overrides::default()
    };
    let settings = Settings::load(None, Some(db.url.clone()), flags).unwrap();
    let running = server::start(&settings, store.clone()).await.unwrap();
    (running, store)
}

// R13: the wait for a pooled connection is bounded: with the pool's only connection taken, a
// REGISTER is answered 503 with Retry-After when the wait runs out, and nothing is written.
both_backends!(r13_overload_pool_wait_is_503, |db| {
    let (server, store) = start_on_small_pool(db).await;
    let ua = Udp::to(&server).await;
    let held: Box<dyn std::any::Any + Send> = match &store {
        Store::Postgres(s) => Box::new(s.pool().acquire().await.unwrap()),
        Store::Sqlite(s) => Box::new(s.pool().acquire().await.unwrap()),
    };
    let reg = RegisterMsg::new("pool").contact("<sip:pool@10.0.0.1>");
    let reply = ua.ask(&reg.text()).await;
    assert_eq!(
        (
            reply.code,
            reply.reason.as_str(),
            reply.header("Retry-After")
        ),
        (503, "Service Unavailable", Some("7")),
        "{}",
        reply.text
    );
    drop(held);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    let reply = ua.ask(&reg.clone().cseq(2).text()).await;
    assert_eq!(reply.code, 200, "{}", reply.text);
    server.stop().await;
});

/// SQL inserting `n` bindings named `prefix{i}` that expire at `expires` (an SQL expression).
fn bindings(n: usize, prefix: &str, expires: &str) -> String {
    format!(
        "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < {last}) \
         INSERT INTO location (ruid, username, domain, contact, expires, callid, cseq, last_modified) \
         SELECT '{prefix}-' || i, '{prefix}' || i, 'example.com', 'sip:{prefix}@192.0.2.' || (i % 250), \
         {expires}, 'c', 1, {expires} FROM k",
        last = n - 1
    )
}

async fn eventually_zero(db: &TestDb, sql: &str, what: &str) {
    for _ in 0..100 {
        if db.scalar(sql).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

// S4: the cleanup task of running instances deletes rows expired longer than --cleanup-grace,
// in batches, again every --cleanup-interval, in every instance at once; rows within the grace
// and live ones stay.
both_backends!(s4_cleanup_task_runs_in_every_instance, |db| {
    let flags = || Overrides {
        cleanup_interval: Some(0.2),
        cleanup_grace: Some(60.0),
        ..Overrides::default()
    };
    let (a, b) = (start(db, flags()).await, start(db, flags()).await);
    db.exec(&bindings(2500, "old", &db.in_seconds(-120))).await;
    db.exec(&bindings(1, "recent", &db.in_seconds(-10))).await;
    db.exec(&bindings(1, "live", &db.in_seconds(600))).await;
    eventually_zero(
        db,
        "SELECT count(*) FROM location WHERE username LIKE 'old%'",
        "2,500 rows expired past the grace removed by the two instances",
    )
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM location").await,
        2,
        "expired within the grace, and live: kept"
    );
    // Instance a stops; b's task, on its next rounds, removes what expires later.
    a.stop().await;
    db.exec(&bindings(10, "later", &db.in_seconds(-120))).await;
    eventually_zero(
        db,
        "SELECT count(*) FROM location WHERE username LIKE 'later%'",
        "rows aged after the first round removed by the remaining instance",
    )
    .await;
    db.exec(&format!(
        "UPDATE location SET expires = {} WHERE username LIKE 'recent%'",
        db.in_seconds(-61)
    ))
    .await;
    eventually_zero(
        db,
        "SELECT count(*) FROM location WHERE username LIKE 'recent%'",
        "the row now past the grace removed",
    )
    .await;
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    let ua = Udp::to(&b).await;
    assert_eq!(
        ua.ask(&RegisterMsg::new("still").contact("<sip:s@10.0.0.1>").text())
            .await
            .code,
        200
    );
    b.stop().await;
});

/// `registrar serve` as a process, on a UDP port of its own.
struct Serve {
    child: Option<Child>,
    port: u16,
}

impl Serve {
    fn spawn(url: &str, args: &[&str]) -> Serve {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
            .args(["serve", "--listen", &format!("udp:127.0.0.1:{port}")])
            .args(["--auth", "off", "--http-listen", "off"])
            .args(args)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn registrar serve");
        Serve {
            child: Some(child),
            port,
        }
    }

    /// Whether it answers OPTIONS within `wait`.
    async fn answers_within(&self, wait: Duration) -> bool {
        let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let options = support::sip::request("OPTIONS", "sip:example.com");
            let _ = probe
                .send_to(options.as_bytes(), ("127.0.0.1", self.port))
                .await;
            let mut buf = [0u8; 4096];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut buf)).await
            {
                return true;
            }
        }
        false
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP proxy to the test PostgreSQL, down, and the database URL through it.
async fn unreachable_database(db: &TestDb) -> (support::proxy::Proxy, String) {
    let (proxy, url) = support::proxy::Proxy::in_front_of(&db.url).await;
    proxy.down();
    (proxy, url)
}

// C1: `serve` waits for an unreachable database (here it comes up after 2 s of a 20 s
// --db-connect-timeout) and then serves; with a short timeout it gives up after waiting, with
// C6's one-line message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_serve_waits_for_the_database_up_to_db_connect_timeout() {
    let Some(db) = TestDb::postgres().await else {
        return support::pg::skip("c1_serve_waits_for_the_database_up_to_db_connect_timeout");
    };
    let (proxy, url) = unreachable_database(&db).await;
    let mut patient = Serve::spawn(&url, &["--db-connect-timeout", "20"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        patient
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "still waiting for the database after 2 s"
    );
    proxy.up();
    assert!(
        patient.answers_within(Duration::from_secs(10)).await,
        "serving once the database is reachable"
    );
    drop(patient);

    proxy.down();
    let started = Instant::now();
    let mut impatient = Serve::spawn(&url, &["--db-connect-timeout", "3"]);
    let output = impatient
        .child
        .take()
        .unwrap()
        .wait_with_output_within(Duration::from_secs(15));
    let elapsed = started.elapsed();
    let output = output.expect("gave up within the timeout and some slack");
    assert!(!output.status.success());
    assert!(
        elapsed >= Duration::from_millis(1500),
        "gave up after {elapsed:?}: it did not wait"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("registrar: ") && last.contains("database"),
        "C6's one line last: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

trait WaitWithin {
    fn wait_with_output_within(self, wait: Duration) -> Option<std::process::Output>;
}

impl WaitWithin for Child {
    /// `wait_with_output`, or `None` (the child killed) when it runs longer than `wait`.
    fn wait_with_output_within(mut self, wait: Duration) -> Option<std::process::Output> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.try_wait().ok()?.is_some() {
                return self.wait_with_output().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
        let _ = self.wait();
        None
    }
}

/// Whether `table` exists in the test database.
async fn has_table(db: &TestDb, table: &str) -> bool {
    let sql = match db.backend() {
        Backend::Postgres => format!(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '{table}'"
        ),
        Backend::Sqlite => {
            format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
        }
    };
    db.scalar(&sql).await > 0
}

// C1/S3: `serve --no-migrate` leaves an empty database as it is; `serve` migrates it.
both_backends!(c1_no_migrate_leaves_the_schema_alone, |db| {
    db.drop_schema().await;
    let serve = Serve::spawn(&db.url, &["--no-migrate"]);
    assert!(serve.answers_within(Duration::from_secs(15)).await);
    assert!(
        !has_table(db, "location").await && !has_table(db, "refinery_schema_history").await,
        "--no-migrate: nothing created"
    );
    drop(serve);
    let serve = Serve::spawn(&db.url, &[]);
    assert!(serve.answers_within(Duration::from_secs(15)).await);
    assert!(
        has_table(db, "location").await && has_table(db, "refinery_schema_history").await,
        "without --no-migrate, serve migrates"
    );
    drop(serve);
});
