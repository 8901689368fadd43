//! SPEC S5: the operator queries in `sql/` run as shipped on their backend, and see what the
//! registrar wrote.

mod support;

use registrar::store::{Backend, Store};

async fn rows_of(db: &support::TestDb, file: &str) -> usize {
    let folder = match db.backend() {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let path = format!("{}/sql/{folder}/{file}", env!("CARGO_MANIFEST_DIR"));
    let sql = std::fs::read_to_string(&path).expect(&path);
    let sql = sqlx::AssertSqlSafe(sql);
    match &db.store {
        Store::Postgres(s) => sqlx::query(sql)
            .fetch_all(s.pool())
            .await
            .expect(&path)
            .len(),
        Store::Sqlite(s) => sqlx::query(sql)
            .fetch_all(s.pool())
            .await
            .expect(&path)
            .len(),
    }
}

both_backends!(s5_operator_queries_run_as_shipped, |db| {
    let (soon, past, long_past) = (db.in_seconds(300), db.in_seconds(-5), db.in_seconds(-600));
    db.exec(&format!(
        "INSERT INTO location (ruid, username, domain, contact, expires, callid, cseq, last_modified) VALUES \
         ('r1', 'alice', 'example.com', 'sip:a@192.0.2.1', {soon}, 'c1', 1, {past}), \
         ('r2', 'alice', 'example.com', 'sip:a@192.0.2.2', {past}, 'c2', 1, {long_past})"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) VALUES \
         ('sip:ue@198.51.100.1', '198.51.100.1', 5060, 'udp', 2, {soon}, '<sip:u1@ims.example.com>'), \
         ('sip:ue@198.51.100.2', '198.51.100.2', 5060, 'udp', 2, {long_past}, '<sip:u2@ims.example.com>'), \
         ('sip:ue@198.51.100.3', '198.51.100.3', 5060, 'udp', 32, {past}, '<sip:u3@ims.example.com>')"
    ))
    .await;
    assert_eq!(rows_of(db, "live-bindings.sql").await, 1);
    assert_eq!(rows_of(db, "expired-bindings.sql").await, 1);
    assert_eq!(rows_of(db, "pcontacts-by-state.sql").await, 3);
    assert_eq!(rows_of(db, "stale-pcontacts.sql").await, 2);
});
