//! Test harness: a fresh, migrated database per test on either backend, and a macro that runs
//! one test body on both (STYLE: the same body, not two copies).
#![allow(dead_code)]

pub mod digest;
pub mod http;
pub mod pg;
pub mod proxy;
pub mod scscf;
pub mod sip;
pub mod tls;
pub mod watcher;
pub mod ws;

use registrar::store::{Backend, ConnectOptions, Store};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A database of the test's own, dropped (PostgreSQL) or deleted (SQLite) afterwards.
pub struct TestDb {
    pub url: String,
    pub store: Store,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

/// The schema version this build migrates to: the number of migrations it embeds.
pub fn schema_version() -> i64 {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    std::fs::read_dir(dir).expect(dir).count() as i64
}

pub fn options() -> ConnectOptions {
    ConnectOptions {
        pool_size: 8,
        connect_timeout: Duration::from_secs(10),
        acquire_timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    }
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        let store = Store::connect(&url, &options()).await.expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        TestDb {
            url,
            store,
            admin_url: None,
            name: String::new(),
            _dir: Some(dir),
        }
    }

    /// `None` when no PostgreSQL is available (the caller reports the skip).
    pub async fn postgres() -> Option<TestDb> {
        let admin_url = pg::server_url()?.to_string();
        let name = format!(
            "registrar_t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = Store::connect(&admin_url, &options())
            .await
            .expect("reach the test PostgreSQL");
        let Store::Postgres(admin_pg) = &admin else {
            unreachable!()
        };
        // Two statements: a multi-statement string runs as one implicit transaction, which
        // DROP/CREATE DATABASE refuse.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(admin_pg.pool())
                .await
                .expect("create the test database");
        }
        admin.close().await;
        let url = pg::with_database(&admin_url, &name);
        let store = Store::connect(&url, &options())
            .await
            .expect("open the test database");
        store.migrate().await.expect("migrate PostgreSQL");
        Some(TestDb {
            url,
            store,
            admin_url: Some(admin_url),
            name,
            _dir: None,
        })
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// Another, independent connection pool to the same database (a second "instance").
    pub async fn second_store(&self) -> Store {
        Store::connect(&self.url, &options())
            .await
            .expect("second pool")
    }

    /// Runs SQL written for this backend (tests age rows this way instead of sleeping).
    pub async fn exec(&self, sql: &str) -> u64 {
        match &self.store {
            Store::Postgres(s) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(s.pool())
                .await
                .expect(sql)
                .rows_affected(),
            Store::Sqlite(s) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(s.pool())
                .await
                .expect(sql)
                .rows_affected(),
        }
    }

    /// One integer from a query, e.g. `SELECT count(*) FROM location`.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.store {
            Store::Postgres(s) => {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
                    .fetch_one(s.pool())
                    .await
                    .expect(sql)
            }
            Store::Sqlite(s) => sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(s.pool())
                .await
                .expect(sql),
        }
    }

    /// One text value from a query.
    pub async fn text(&self, sql: &str) -> String {
        let text = || sqlx::AssertSqlSafe(sql.to_string());
        match &self.store {
            Store::Postgres(s) => sqlx::query_scalar::<_, String>(text())
                .fetch_one(s.pool())
                .await
                .expect(sql),
            Store::Sqlite(s) => sqlx::query_scalar::<_, String>(text())
                .fetch_one(s.pool())
                .await
                .expect(sql),
        }
    }

    /// Makes the database refuse any binding whose contact contains `word` (a constraint on
    /// PostgreSQL, a trigger on SQLite): a row the database rejects, for SPEC R13 tests.
    pub async fn refuse_contacts_containing(&self, word: &str) {
        match self.backend() {
            Backend::Postgres => {
                self.exec(&format!(
                    "ALTER TABLE location ADD CONSTRAINT no_{word} CHECK (contact NOT LIKE '%{word}%')"
                ))
                .await;
            }
            Backend::Sqlite => {
                self.exec(&format!(
                    "CREATE TRIGGER no_{word} BEFORE INSERT ON location WHEN NEW.contact LIKE '%{word}%' \
                     BEGIN SELECT RAISE(ABORT, 'no {word}'); END"
                ))
                .await;
            }
        }
    }

    /// Drops every table the migrations made, and their history: the database as before
    /// `migrate` (S3, C5).
    pub async fn drop_schema(&self) {
        let drop = match self.backend() {
            Backend::Postgres => {
                "DROP TABLE location, pcscf_location, subscriber, reg_subscription, \
                 pcscf_subscription, refinery_schema_history, version"
            }
            Backend::Sqlite => {
                "DROP TABLE location; DROP TABLE pcscf_location; DROP TABLE subscriber; \
                 DROP TABLE reg_subscription; DROP TABLE pcscf_subscription; \
                 DROP TABLE refinery_schema_history"
            }
        };
        self.exec(drop).await;
    }

    /// SQL for "`seconds` from now" in this backend's time columns.
    pub fn in_seconds(&self, seconds: i64) -> String {
        match self.backend() {
            Backend::Postgres => format!("now() + make_interval(secs => {seconds})"),
            Backend::Sqlite => format!("(unixepoch() + ({seconds}))"),
        }
    }
}

impl TestDb {
    /// For a database kept in a static, which is never dropped: removes it (PostgreSQL) when
    /// the test process exits instead.
    pub fn drop_at_exit(&mut self) {
        let Some(admin_url) = self.admin_url.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        pg::at_exit(Box::new(move || {
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(Store::Postgres(pg)) = Store::connect(&admin_url, &options()).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(pg.pool())
                            .await;
                        pg.pool().close().await;
                    }
                });
            })
            .join();
        }));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin_url) = self.admin_url.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = Store::connect(&admin_url, &options()).await {
                    if let Store::Postgres(pg) = &admin {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(pg.pool())
                            .await;
                    }
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Defines `<name>_sqlite` and `<name>_postgres` from one async body taking `&TestDb`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($db: &$crate::support::TestDb) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::support::TestDb::sqlite().await;
                body(&db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match $crate::support::TestDb::postgres().await {
                    Some(db) => body(&db).await,
                    None => $crate::support::pg::skip(concat!(stringify!($name), "::postgres")),
                }
            }
        }
    };
}
