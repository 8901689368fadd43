//! Storage semantics (SPEC S1–S4), the same bodies on SQLite and PostgreSQL.

mod support;

use chrono::{TimeDelta, Utc};
use registrar::store::{
    Aor, Backend, Binding, ContactAddress, Plan, Reads, RegState, Removal, StoreError,
};
use std::time::Duration;

fn aor() -> Aor {
    Aor::new("alice", "example.com")
}

/// A binding with every column set to something distinctive, so a round trip shows each one.
fn full_binding(contact: &str, now: chrono::DateTime<Utc>) -> Binding {
    Binding {
        id: 0,
        ruid: uuid::Uuid::new_v4().to_string(),
        aor: aor(),
        contact: contact.into(),
        received: Some("sip:203.0.113.9:40000;transport=udp".into()),
        path: Some("<sip:edge1.example.com;lr>,<sip:edge2.example.com;lr>".into()),
        expires: now + TimeDelta::seconds(600),
        q: Some(700),
        callid: "call-1@client".into(),
        cseq: 4_294_967_295,
        last_modified: now,
        flags: 0,
        cflags: 64,
        user_agent: Some("test-ua/1.0".into()),
        socket: Some("udp:127.0.0.1:5060".into()),
        methods: Some(269),
        instance: Some("<urn:uuid:00000000-0000-0000-0000-000000000001>".into()),
        reg_id: 1,
        server_id: 7,
        connection_id: -1,
        keepalive: 1,
        partition: 3,
    }
}

fn insert(b: Binding) -> Plan<()> {
    let mut plan = Plan::unchanged(());
    plan.insert.push(b);
    plan
}

// S1: every attribute round-trips; `now` comes back with the read.
both_backends!(s1_binding_round_trips_every_column, |db| {
    let applied = db
        .store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            insert(full_binding("sip:alice@192.0.2.1:5060", snap.now))
        })
        .await
        .unwrap();
    assert_eq!(applied.bindings.len(), 1);
    let written = applied.bindings[0].clone();
    assert!(written.id > 0, "the database assigns the id");
    let read = db.store.live_bindings(&aor()).await.unwrap();
    assert_eq!(read.bindings, vec![written.clone()]);
    let dumped = db.store.dump_bindings().await.unwrap();
    assert_eq!(dumped.bindings, vec![written]);
});

// S1: an unspecified q is stored as −1 (Kamailio's convention) and read back as None.
both_backends!(s1_unspecified_q_is_minus_one, |db| {
    db.store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            insert(Binding {
                q: None,
                instance: None,
                ..full_binding("sip:a@h", snap.now)
            })
        })
        .await
        .unwrap();
    assert_eq!(
        db.scalar("SELECT CAST(q AS BIGINT) FROM location").await,
        -1
    );
    assert_eq!(
        db.store.live_bindings(&aor()).await.unwrap().bindings[0].q,
        None
    );
});

// S1: expired rows are invisible to reads, and a new binding for the same contact (or
// instance) replaces the expired row as a new binding with a new ruid.
both_backends!(s1_expired_rows_are_invisible_and_overwritten, |db| {
    let first = db
        .store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            insert(full_binding("sip:alice@192.0.2.1", snap.now))
        })
        .await
        .unwrap()
        .bindings[0]
        .clone();
    let aged = format!("UPDATE location SET expires = {}", db.in_seconds(-5));
    assert_eq!(db.exec(&aged).await, 1);
    let snap = db.store.live_bindings(&aor()).await.unwrap();
    assert!(
        snap.bindings.is_empty(),
        "expired binding visible: {:?}",
        snap.bindings
    );
    assert!(db.store.dump_bindings().await.unwrap().bindings.is_empty());

    let second = db
        .store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            assert!(snap.bindings.is_empty());
            insert(full_binding("sip:alice@192.0.2.1", snap.now))
        })
        .await
        .unwrap()
        .bindings[0]
        .clone();
    assert_ne!(second.ruid, first.ruid);
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);

    // Same instance and reg-id at a different contact: the expired row yields too.
    db.exec(&aged).await;
    db.store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            insert(full_binding("sip:alice@198.51.100.1", snap.now))
        })
        .await
        .unwrap();
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
});

// S1: a refresh rewrites the row in place: same id, and the ruid minted at insertion is kept.
both_backends!(s1_refresh_keeps_id_and_ruid, |db| {
    let first = db
        .store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            insert(full_binding("sip:a@h", snap.now))
        })
        .await
        .unwrap()
        .bindings[0]
        .clone();
    let applied = db
        .store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            let mut b = snap.bindings[0].clone();
            b.expires = snap.now + TimeDelta::seconds(3600);
            b.cseq = 5;
            let mut plan = Plan::unchanged("refreshed");
            plan.update.push(b);
            plan
        })
        .await
        .unwrap();
    assert_eq!(applied.outcome, "refreshed");
    let b = &applied.bindings[0];
    assert_eq!((b.id, &b.ruid, b.cseq), (first.id, &first.ruid, 5));
    assert_eq!(
        db.store.live_bindings(&aor()).await.unwrap().bindings,
        applied.bindings
    );
});

/// The S2 probe: a read-modify-write that only a serialized AoR survives. It inserts a binding
/// named after how many live bindings it saw; two changes deciding on the same snapshot insert
/// the same contact, and the unique (username, domain, contact) index refuses the second.
fn next_slot(snap: &registrar::store::AorSnapshot) -> Plan<usize> {
    let seen = snap.bindings.len();
    insert(Binding {
        instance: None,
        ..full_binding(&format!("sip:slot{seen}@192.0.2.1"), snap.now)
    })
    .map(|()| seen)
}

// S2: many changes of one AoR at once, through two pools (two instances), serialize: each one
// decides on what the one before it wrote, so none fails and none is lost; the slots each
// decision saw are exactly 0..N, as in some serial order.
both_backends!(s2_concurrent_changes_of_one_aor_serialize, |db| {
    const CHANGES: usize = 24;
    let other = db.second_store().await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CHANGES));
    let mut tasks = Vec::new();
    for i in 0..CHANGES {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let start = std::sync::Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.update_aor(&aor(), Reads::Bindings, next_slot).await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(applied) => seen.push(applied.outcome),
            Err(e) => panic!("a change of a serialized AoR failed: {e:?}"),
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..CHANGES).collect::<Vec<_>>(),
        "each change saw every change before it"
    );
    assert_eq!(
        db.store.live_bindings(&aor()).await.unwrap().bindings.len(),
        CHANGES
    );
});

// S2: a plan that fails in the database leaves nothing half-written.
both_backends!(s2_failed_plan_writes_nothing, |db| {
    let result = db
        .store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            let mut plan = insert(full_binding("sip:a@h", snap.now));
            // The same ruid twice violates the unique ruid index on the second row.
            let mut dup = full_binding("sip:b@h", snap.now);
            dup.ruid = plan.insert[0].ruid.clone();
            dup.instance = None;
            plan.insert.push(dup);
            plan
        })
        .await;
    assert!(matches!(result, Err(StoreError::Rejected(_))), "{result:?}");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
});

// C3: removal of all bindings, or one by contact or ruid, counts live bindings only.
both_backends!(c3_remove_by_aor_contact_or_ruid, |db| {
    for c in ["sip:a@h", "sip:b@h", "sip:c@h"] {
        db.store
            .update_aor(&aor(), Reads::Bindings, |snap| {
                insert(Binding {
                    instance: None,
                    ..full_binding(c, snap.now)
                })
            })
            .await
            .unwrap();
    }
    let b = db.store.live_bindings(&aor()).await.unwrap().bindings;
    let ruid_of_b = b
        .iter()
        .find(|x| x.contact == "sip:b@h")
        .unwrap()
        .ruid
        .clone();
    let removed = db
        .store
        .remove_bindings(&aor(), &Removal::Contact("sip:a@h".into()))
        .await
        .unwrap();
    assert_eq!(removed.len(), 1);
    let removed = db
        .store
        .remove_bindings(&aor(), &Removal::Ruid(ruid_of_b))
        .await
        .unwrap();
    assert_eq!(removed.len(), 1);
    let removed = db
        .store
        .remove_bindings(&aor(), &Removal::Contact("sip:zz@h".into()))
        .await
        .unwrap();
    assert_eq!(removed.len(), 0);
    let other = Aor::new("bob", "example.com");
    assert_eq!(
        db.store
            .remove_bindings(&other, &Removal::All)
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        db.store
            .remove_bindings(&aor(), &Removal::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
});

// S4: cleanup deletes only rows expired longer than the grace, in batches.
both_backends!(s4_cleanup_respects_grace_and_batches, |db| {
    for i in 0..7 {
        let contact = format!("sip:u@10.0.0.{i}");
        db.store
            .update_aor(&aor(), Reads::Bindings, move |snap| {
                insert(Binding {
                    instance: None,
                    ..full_binding(&contact, snap.now)
                })
            })
            .await
            .unwrap();
    }
    db.exec(&format!(
        "UPDATE location SET expires = {} WHERE contact < 'sip:u@10.0.0.5'",
        db.in_seconds(-120)
    ))
    .await;
    db.exec(&format!(
        "UPDATE location SET expires = {} WHERE contact = 'sip:u@10.0.0.5'",
        db.in_seconds(-10)
    ))
    .await;
    let removed = db
        .store
        .remove_expired_bindings(Duration::from_secs(60), 2)
        .await
        .unwrap();
    assert_eq!(removed, 5, "five rows expired 120 s ago, batches of 2");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 2);
    let removed = db
        .store
        .remove_expired_bindings(Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(removed, 1);
});

// S3: re-running migrations is a no-op; a schema newer than the binary is refused.
both_backends!(s3_migrations_are_idempotent_and_guard_newer_schemas, |db| {
    let again = db.store.migrate().await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.version, support::schema_version());
    db.exec(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
    )
    .await;
    match db.store.migrate().await {
        Err(StoreError::SchemaTooNew {
            database: 99,
            binary,
        }) if binary == support::schema_version() => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
});

// S1 / C4: pcontacts are read back with their state names and Kamailio list forms.
both_backends!(s1_pcontacts_read_back, |db| {
    let expires = db.in_seconds(300);
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids, service_routes) \
         VALUES ('sip:ue@198.51.100.7:5060', '198.51.100.7', 5060, 'udp', 2, {expires}, \
         '<sip:ue@ims.example.com><tel:+15550100>', '<sip:orig@scscf.example.com;lr>')"
    ))
    .await;
    let address = ContactAddress {
        host: "198.51.100.7".into(),
        port: 5060,
        protocol: "udp".into(),
    };
    let p = db
        .store
        .pcontact(&address)
        .await
        .unwrap()
        .expect("pcontact");
    assert_eq!(p.reg_state, RegState::Registered);
    assert_eq!(p.aor, "sip:ue@198.51.100.7:5060");
    assert!(p.expires > Utc::now());
    let by_impu = db.store.pcontacts_by_impu("tel:+15550100").await.unwrap();
    assert_eq!(by_impu.len(), 1);
    assert!(
        db.store
            .pcontacts_by_impu("sip:ue@ims")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.store.dump_pcontacts().await.unwrap(), vec![p]);
});

// S6 (PostgreSQL only: SQLite stores Unix seconds, see the S1 test below): a row written by
// another session in another time zone is judged by its instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_time_zone_of_other_writers_does_not_matter() {
    let Some(db) = support::TestDb::postgres().await else {
        return support::pg::skip("s6_time_zone_of_other_writers_does_not_matter");
    };
    assert_eq!(db.backend(), Backend::Postgres);
    db.exec(
        "SET TIME ZONE 'Asia/Tokyo'; INSERT INTO location (ruid, username, domain, contact, expires, callid, cseq, last_modified) \
         VALUES ('uloc-1-2-3', 'alice', 'example.com', 'sip:alice@192.0.2.50', now() + interval '10 minutes', 'kam-1', 1, now()); \
         SET TIME ZONE 'UTC'",
    )
    .await;
    let snap = db.store.live_bindings(&aor()).await.unwrap();
    assert_eq!(snap.bindings.len(), 1);
    let left = snap.bindings[0].expires - snap.now;
    assert!(
        left > TimeDelta::seconds(590) && left <= TimeDelta::seconds(600),
        "{left}"
    );
    assert_eq!(snap.bindings[0].ruid, "uloc-1-2-3");
}

// S1 (SQLite): times are Unix seconds; a row another writer (sqlite3) stored that way is
// judged by its instant, and a Kamailio-style ruid reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_sqlite_unix_seconds_written_by_another_writer() {
    let db = support::TestDb::sqlite().await;
    db.exec(
        "INSERT INTO location (ruid, username, domain, contact, expires, callid, cseq, last_modified) \
         VALUES ('uloc-1-2-3', 'alice', 'example.com', 'sip:alice@192.0.2.50', unixepoch() + 600, 'kam-1', 1, unixepoch())",
    )
    .await;
    let snap = db.store.live_bindings(&aor()).await.unwrap();
    assert_eq!(snap.bindings.len(), 1);
    let left = snap.bindings[0].expires - snap.now;
    assert!(
        left > TimeDelta::seconds(590) && left <= TimeDelta::seconds(600),
        "{left}"
    );
    assert_eq!(snap.bindings[0].ruid, "uloc-1-2-3");
    db.exec("UPDATE location SET expires = unixepoch() - 1")
        .await;
    assert!(
        db.store
            .live_bindings(&aor())
            .await
            .unwrap()
            .bindings
            .is_empty(),
        "expired by its instant"
    );
}

// S3: instances starting together against one fresh database all migrate without a race.
both_backends!(s3_concurrent_migrations_do_not_race, |db| {
    db.drop_schema().await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        let store = db.second_store().await;
        runs.push(tokio::spawn(async move { store.migrate().await }));
    }
    let mut applied = 0;
    for run in runs {
        let report = run.await.unwrap().expect("every instance migrates");
        applied += report.applied.len();
    }
    let version = support::schema_version();
    assert_eq!(
        applied as i64, version,
        "each migration applied exactly once"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM refinery_schema_history")
            .await,
        version
    );
});

// H6: a REGISTER whose caller stopped waiting (answered 500 at its deadline) writes nothing
// when its batch finally runs: answered work must not compete with fresh REGISTERs (a
// failover's backlog). Here the AoR is held by another transaction past the caller's patience.
both_backends!(h6_a_change_whose_caller_gave_up_writes_nothing, |db| {
    let blocker = db.second_store().await;
    let hold = match blocker.backend() {
        Backend::Postgres => {
            "BEGIN; SELECT pg_advisory_xact_lock(1380271921, hashtext('alice@example.com'))"
        }
        Backend::Sqlite => "BEGIN IMMEDIATE",
    };
    let mut held = match &blocker {
        registrar::store::Store::Postgres(s) => Held::Pg(s.pool().acquire().await.unwrap()),
        registrar::store::Store::Sqlite(s) => Held::Lite(s.pool().acquire().await.unwrap()),
    };
    held.run(hold).await;
    let store = db.second_store().await;
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        store.update_aor(&aor(), Reads::Bindings, |snap| {
            insert(full_binding("sip:alice@192.0.2.1:5060", snap.now))
        }),
    )
    .await;
    assert!(
        waiting.is_err(),
        "the caller gave up while the AoR was held"
    );
    held.run("ROLLBACK").await;
    // The abandoned change runs once the AoR is free; give it time to (not) write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
    // And the next change of that AoR goes through as usual.
    store
        .update_aor(&aor(), Reads::Bindings, |snap| {
            insert(full_binding("sip:alice@192.0.2.1:5060", snap.now))
        })
        .await
        .unwrap();
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
});

enum Held {
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Lite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl Held {
    async fn run(&mut self, sql: &'static str) {
        match self {
            Held::Pg(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
            Held::Lite(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
        }
        .unwrap();
    }
}
