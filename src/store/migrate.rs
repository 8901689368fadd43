//! Schema migrations: plain SQL under `migrations/{postgres,sqlite}`, embedded at build time and
//! applied by refinery (SPEC S3).
//!
//! refinery has no sqlx driver, so this file implements refinery's async traits for a newtype
//! over one sqlx connection. That keeps one connection configuration (URL, TLS, timeouts) and one
//! SQLite library in the build, and lets the migration run hold a PostgreSQL advisory lock on
//! the very connection that migrates — without it, instances starting together race on
//! `CREATE TABLE` (7 of 8 failed, measured in research/rust-deps.md §2).

use super::{PgStore, SqliteStore, StoreError};
use refinery::{Migration, Report, Runner};
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqliteConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod embedded_postgres {
    refinery::embed_migrations!("migrations/postgres");
}

mod embedded_sqlite {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Key of the session-level advisory lock held while migrating (one-key form; the per-AoR locks
/// use the two-key form and cannot collide with it).
const MIGRATION_LOCK: i64 = 0x5245_474d_4947; // "REGMIG"

/// What a migration run did.
#[derive(Clone, Debug, Default)]
pub struct MigrationReport {
    /// `V<n>__<name>` of each migration applied by this run, in order.
    pub applied: Vec<String>,
    /// The schema version after the run.
    pub version: i64,
}

macro_rules! sqlx_migrator {
    ($name:ident, $conn:ty) => {
        struct $name($conn);

        impl AsyncQuery<Vec<Migration>> for $name {
            async fn query<'a>(
                &'a mut self,
                query: &'a str,
            ) -> Result<Vec<Migration>, sqlx::Error> {
                let rows = sqlx::query(AssertSqlSafe(query))
                    .fetch_all(&mut self.0)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let applied_on: String = row.try_get(2)?;
                        let checksum: String = row.try_get(3)?;
                        Ok(Migration::applied(
                            row.try_get(0)?,
                            row.try_get(1)?,
                            OffsetDateTime::parse(&applied_on, &Rfc3339)
                                .map_err(|e| sqlx::Error::Decode(e.into()))?,
                            checksum
                                .parse::<u64>()
                                .map_err(|e| sqlx::Error::Decode(e.into()))?,
                        ))
                    })
                    .collect()
            }
        }

        impl AsyncMigrate for $name {}
    };
}

sqlx_migrator!(PgMigrator, PgConnection);
sqlx_migrator!(SqliteMigrator, SqliteConnection);

/// PostgreSQL: each migration (its SQL and its history row) in a transaction of its own; the
/// run as a whole is serialized by the advisory lock.
impl AsyncTransaction for PgMigrator {
    type Error = sqlx::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, sqlx::Error> {
        let mut tx = self.0.begin().await?;
        let mut count = 0;
        for query in queries {
            // raw_sql: a migration file holds several statements, which a prepared statement
            // cannot.
            sqlx::raw_sql(AssertSqlSafe(query))
                .execute(&mut *tx)
                .await?;
            count += 1;
        }
        tx.commit().await?;
        Ok(count)
    }
}

/// SQLite has no advisory locks: the whole run is one `BEGIN IMMEDIATE` transaction (opened by
/// `SqliteStore::migrate`), which makes a second migrating process wait, and each migration a
/// savepoint inside it.
impl AsyncTransaction for SqliteMigrator {
    type Error = sqlx::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, sqlx::Error> {
        sqlx::raw_sql("SAVEPOINT migration")
            .execute(&mut self.0)
            .await?;
        let mut count = 0;
        for query in queries {
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(query))
                .execute(&mut self.0)
                .await
            {
                let _ = sqlx::raw_sql("ROLLBACK TO migration; RELEASE migration")
                    .execute(&mut self.0)
                    .await;
                return Err(e);
            }
            count += 1;
        }
        sqlx::raw_sql("RELEASE migration")
            .execute(&mut self.0)
            .await?;
        Ok(count)
    }
}

impl PgStore {
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        // A connection of its own, closed at the end: the session lock dies with it even if a
        // step fails, and never goes back to the pool.
        let conn = PgConnection::connect_with(&self.session_options()).await?;
        let mut migrator = PgMigrator(conn);
        // Migrations (an index on a large table) and the wait for another instance's
        // migration may take longer than a request's statement timeout.
        sqlx::raw_sql("SET statement_timeout = 0; SET lock_timeout = 0")
            .execute(&mut migrator.0)
            .await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut migrator.0)
            .await?;
        let result = run(embedded_postgres::migrations::runner(), &mut migrator).await;
        let _ = migrator.0.close().await;
        result
    }
}

impl SqliteStore {
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let conn = SqliteConnection::connect_with(&self.options).await?;
        let mut migrator = SqliteMigrator(conn);
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut migrator.0)
            .await?;
        let result = run(embedded_sqlite::migrations::runner(), &mut migrator).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = sqlx::raw_sql(end).execute(&mut migrator.0).await;
        let _ = migrator.0.close().await;
        ended?;
        result
    }
}

async fn run<M: AsyncMigrate>(
    runner: Runner,
    migrator: &mut M,
) -> Result<MigrationReport, StoreError> {
    let known = latest_version(&runner);
    let report: Report = runner.run_async(migrator).await.map_err(|e| {
        use refinery::error::Kind;
        match e.kind() {
            // A migration in the database that this binary does not carry: a newer binary ran.
            Kind::MissingVersion(m) if i64::from(m.version()) > known => StoreError::SchemaTooNew {
                database: i64::from(m.version()),
                binary: known,
            },
            _ => StoreError::Migration(e.to_string()),
        }
    })?;
    let applied = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    Ok(MigrationReport {
        applied,
        version: known,
    })
}

fn latest_version(runner: &Runner) -> i64 {
    runner
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both dialects must carry the same migrations, version for version (SPEC S3).
    #[test]
    fn both_backends_have_the_same_migrations() {
        let names = |r: Runner| {
            r.get_migrations()
                .iter()
                .map(|m| format!("V{}__{}", m.version(), m.name()))
                .collect::<Vec<_>>()
        };
        let pg = names(embedded_postgres::migrations::runner());
        let lite = names(embedded_sqlite::migrations::runner());
        assert!(!pg.is_empty());
        assert_eq!(pg, lite);
    }
}
