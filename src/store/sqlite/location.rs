//! `location` on SQLite. REGISTER changes go through the coalescer: one `BEGIN IMMEDIATE`
//! transaction for every REGISTER waiting (distinct AoRs), each row read and written by its
//! own statement — in-process, a statement costs no round trip; the commit is what is shared.

use super::rows::{BINDING_COLUMNS, binding};
use super::subscriber::read_subscriber;
use super::{SqliteStore, now, to_secs};
use crate::store::binding::{expired_conflicts, q_to_column};
use crate::store::coalesce::{Batch, Job, Outcome};
use crate::store::{Aor, AorSnapshot, Applied, Binding, Plan, Reads, Removal, StoreError};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use std::sync::LazyLock;
use std::time::Duration;

static READ_AOR: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {BINDING_COLUMNS} FROM location WHERE username = ?1 AND domain = ?2")
});

const UPDATE_BINDING: &str = "UPDATE location SET ruid = ?2, contact = ?3, received = ?4, \
     path = ?5, expires = ?6, q = ?7, callid = ?8, cseq = ?9, last_modified = ?10, flags = ?11, \
     cflags = ?12, user_agent = ?13, socket = ?14, methods = ?15, instance = ?16, reg_id = ?17, \
     server_id = ?18, connection_id = ?19, keepalive = ?20, partition = ?21 WHERE id = ?1";

const INSERT_BINDING: &str = "INSERT INTO location (username, domain, ruid, contact, received, \
     path, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, \
     instance, reg_id, server_id, connection_id, keepalive, partition) VALUES (?1, ?2, ?3, ?4, \
     ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) \
     RETURNING id";

impl SqliteStore {
    pub async fn update_aor<T, F>(
        &self,
        aor: &Aor,
        reads: Reads,
        decide: F,
    ) -> Result<Applied<T>, StoreError>
    where
        F: Fn(&AorSnapshot) -> Plan<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.coalescer()?.submit(aor, reads, decide).await
    }

    pub async fn live_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let now = now();
        Ok(AorSnapshot::live(&read_aor(&mut conn, aor).await?, now))
    }

    pub async fn all_bindings(&self, aor: &Aor) -> Result<AorSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let now = now();
        Ok(AorSnapshot::of(now, read_aor(&mut conn, aor).await?))
    }

    pub async fn dump_bindings(&self) -> Result<AorSnapshot, StoreError> {
        let now = now();
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM location WHERE expires > ?1 \
             ORDER BY domain, username, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_secs(now))
            .fetch_all(&self.pool)
            .await?;
        let bindings = rows.iter().map(binding).collect::<Result<_, _>>()?;
        Ok(AorSnapshot::of(now, bindings))
    }

    pub async fn bindings_page(&self, after: i64, limit: u32) -> Result<AorSnapshot, StoreError> {
        let now = now();
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM location WHERE id > ?1 AND expires > ?2 \
             ORDER BY id LIMIT ?3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(to_secs(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let bindings = rows.iter().map(binding).collect::<Result<_, _>>()?;
        Ok(AorSnapshot::of(now, bindings))
    }

    pub async fn remove_bindings(
        &self,
        aor: &Aor,
        which: &Removal,
    ) -> Result<Vec<Binding>, StoreError> {
        let mut tx = self.begin_write().await?;
        let (filter, value) = match which {
            Removal::All => ("", None),
            Removal::Contact(c) => (" AND contact = ?4", Some(c.as_str())),
            Removal::Ruid(r) => (" AND ruid = ?4", Some(r.as_str())),
        };
        let sql = format!(
            "DELETE FROM location WHERE username = ?1 AND domain = ?2{filter} \
             RETURNING {BINDING_COLUMNS}, expires > ?3 AS live"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(&aor.username)
            .bind(&aor.domain)
            .bind(to_secs(now()));
        if let Some(v) = value {
            query = query.bind(v);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut live = Vec::new();
        for row in &rows {
            if row.try_get::<bool, _>("live")? {
                live.push(binding(row)?);
            }
        }
        Ok(live)
    }

    /// One batch of SPEC S4's cleanup; returns how many rows went.
    pub async fn remove_expired_batch(
        &self,
        grace: Duration,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let sql = "DELETE FROM location WHERE id IN \
                   (SELECT id FROM location WHERE expires < ?1 LIMIT ?2)";
        let cutoff = to_secs(now()) - i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        Ok(sqlx::query(sql)
            .bind(cutoff)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

impl Batch for SqliteStore {
    async fn run(&self, jobs: &[Job]) -> Result<Vec<Applied<Outcome>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now();
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let rows = read_aor(&mut tx, &job.aor).await?;
            let mut snapshot = AorSnapshot::live(&rows, now);
            if job.reads == Reads::WithSubscriber {
                snapshot.subscriber = read_subscriber(&mut tx, &job.aor).await?;
            }
            let plan = (job.decide)(&snapshot);
            if job.gave_up() {
                done.push((plan, rows, Vec::new()));
                continue;
            }
            let mut delete = plan.delete.clone();
            delete.extend(expired_conflicts(&plan, &rows, now));
            for id in &delete {
                sqlx::query("DELETE FROM location WHERE id = ?1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            for b in &plan.update {
                bind_fields(sqlx::query(UPDATE_BINDING).bind(b.id), b)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut inserted = Vec::with_capacity(plan.insert.len());
            for b in &plan.insert {
                let query = sqlx::query(INSERT_BINDING)
                    .bind(&b.aor.username)
                    .bind(&b.aor.domain);
                let id: i64 = bind_fields(query, b)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("id")?;
                inserted.push(Binding { id, ..b.clone() });
            }
            done.push((plan, rows, inserted));
        }
        tx.commit().await?;
        Ok(done
            .into_iter()
            .map(|(plan, rows, inserted)| Applied::after(plan, rows, inserted, now))
            .collect())
    }
}

async fn read_aor(conn: &mut SqliteConnection, aor: &Aor) -> Result<Vec<Binding>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(READ_AOR.as_str()))
        .bind(&aor.username)
        .bind(&aor.domain)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(binding).collect::<Result<_, _>>()?)
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds every column but `id`, `username` and `domain`, in `UPDATE_BINDING` order.
fn bind_fields<'q>(query: SqliteQuery<'q>, b: &'q Binding) -> SqliteQuery<'q> {
    query
        .bind(&b.ruid)
        .bind(&b.contact)
        .bind(&b.received)
        .bind(&b.path)
        .bind(to_secs(b.expires))
        .bind(q_to_column(b.q))
        .bind(&b.callid)
        .bind(b.cseq)
        .bind(to_secs(b.last_modified))
        .bind(b.flags)
        .bind(b.cflags)
        .bind(&b.user_agent)
        .bind(&b.socket)
        .bind(b.methods)
        .bind(&b.instance)
        .bind(b.reg_id)
        .bind(b.server_id)
        .bind(b.connection_id)
        .bind(b.keepalive)
        .bind(b.partition)
}
