//! SPEC S5: the operator queries in `sql/` run as shipped on their backend, and see what the
//! registrar wrote: the right rows, and the `reg_state` names.

mod support;

use registrar::store::{Backend, Store};
use sqlx::Row;

/// Runs `sql/<backend>/<file>` as shipped; returns, per row, the text of `column`.
async fn column_of(db: &support::TestDb, file: &str, column: &str) -> Vec<String> {
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
            .iter()
            .map(|r| r.try_get::<String, _>(column).expect(column))
            .collect(),
        Store::Sqlite(s) => sqlx::query(sql)
            .fetch_all(s.pool())
            .await
            .expect(&path)
            .iter()
            .map(|r| r.try_get::<String, _>(column).expect(column))
            .collect(),
    }
}

both_backends!(e1_subscription_query_runs_as_shipped, |db| {
    let (soon, past) = (db.in_seconds(300), db.in_seconds(-5));
    db.exec(&format!(
        "INSERT INTO reg_subscription (username, domain, call_id, from_tag, to_tag, local_uri, \
         remote_uri, remote_target, send_to, local_cseq, remote_cseq, version, expires, \
         notified_until, created) VALUES ('alice', 'example.com', 'c1', 'f', 't', \
         'sip:alice@example.com', 'sip:pcscf@example.net', 'sip:pcscf@192.0.2.9', \
         'udp:192.0.2.9:5060', 3, 1, 2, {soon}, {past}, {past})"
    ))
    .await;
    assert_eq!(
        column_of(db, "reg-subscriptions.sql", "aor").await,
        ["alice@example.com"]
    );
    assert_eq!(
        column_of(db, "reg-subscriptions.sql", "send_to").await,
        ["udp:192.0.2.9:5060"]
    );
});

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
         ('sip:ue@198.51.100.3', '198.51.100.3', 5060, 'udp', 32, {past}, '<sip:u3@ims.example.com>'), \
         ('sip:ue@198.51.100.4', '198.51.100.4', 5060, 'udp', 4, {soon}, NULL), \
         ('sip:ue@198.51.100.5', '198.51.100.5', 5060, 'udp', 16, {soon}, NULL), \
         ('sip:ue@198.51.100.6', '198.51.100.6', 5060, 'udp', 8, {soon}, NULL)"
    ))
    .await;
    assert_eq!(
        column_of(db, "live-bindings.sql", "contact").await,
        ["sip:a@192.0.2.1"]
    );
    assert_eq!(
        column_of(db, "live-bindings.sql", "aor").await,
        ["alice@example.com"]
    );
    assert_eq!(
        column_of(db, "expired-bindings.sql", "contact").await,
        ["sip:a@192.0.2.2"]
    );
    // S1's reg_state integers by Kamailio's names, ordered by state; an unknown value says so.
    let states = column_of(db, "pcontacts-by-state.sql", "state").await;
    let contacts = column_of(db, "pcontacts-by-state.sql", "contact").await;
    let by_state: Vec<(&str, &str)> = states
        .iter()
        .map(String::as_str)
        .zip(contacts.iter().map(String::as_str))
        .collect();
    assert_eq!(
        by_state,
        [
            ("REGISTERED", "sip:ue@198.51.100.2"),
            ("REGISTERED", "sip:ue@198.51.100.1"),
            ("REG_PENDING", "sip:ue@198.51.100.4"),
            ("UNKNOWN(8)", "sip:ue@198.51.100.6"),
            ("DEREGISTERED", "sip:ue@198.51.100.5"),
            ("DEREG_PENDING_PUBLISH", "sip:ue@198.51.100.3"),
        ]
    );
    // Stale: the one being published, and the one expired long enough to be claimed next.
    let stale = column_of(db, "stale-pcontacts.sql", "contact").await;
    let status = column_of(db, "stale-pcontacts.sql", "status").await;
    assert_eq!(
        stale.iter().zip(&status).collect::<Vec<_>>(),
        [
            (&"sip:ue@198.51.100.2".to_string(), &"due".to_string()),
            (
                &"sip:ue@198.51.100.3".to_string(),
                &"publishing".to_string()
            ),
        ]
    );
});
