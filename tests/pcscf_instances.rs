//! SPEC P5 across instances. Through the store (both backends): two connection pools claim one
//! set of stale pcontacts at once, in small batches, behind a barrier — each claims some, none
//! is claimed twice; a claim under another instance's live lease is skipped, a lapsed one is
//! taken over; a pcontact inside `notify_window + audit_grace` is not claimed. Across
//! processes (PostgreSQL): two `registrar serve --role pcscf` compete for more stale pcontacts
//! than one audit pass claims, and every public identity is PUBLISHed exactly once, by one of
//! them; an instance killed mid-PUBLISH leaves its pcontacts alone until its lease has run out
//! (aged with an UPDATE, never slept through), then the other finishes the work.

mod support;

use registrar::store::{Backend, Store};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::TestDb;
use support::scscf::{Mode, Scscf};

// ---------------------------------------------------------------------------------------------
// Through the store, both backends.

/// SQL inserting `n` stale REGISTERED pcontacts (expired 10 minutes ago), two sip: identities
/// and a tel: one each, on this backend.
fn stale_rows(db: &TestDb, n: usize, expired_seconds_ago: i64) -> String {
    let expires = db.in_seconds(-expired_seconds_ago);
    let values: Vec<String> = (0..n)
        .map(|i| {
            let host = format!("10.9.{}.{}", i / 250, i % 250);
            format!(
                "('sip:ue{i}@{host}', '{host}', 5060, 'udp', 2, {expires}, \
                 '<sip:ue{i}@ims.example.com><sip:alias{i}@ims.example.com><tel:+1555{i:04}>')"
            )
        })
        .collect();
    format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) VALUES {}",
        values.join(", ")
    )
}

const STALE_AFTER: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(120);

/// One "instance": claims batches of `batch` until a claim comes back empty (or it has claimed
/// more than `cap` rows, which only a broken claim can do), returning the ids in claim order.
async fn claim_all(
    store: Store,
    owner: &'static str,
    batch: u32,
    cap: usize,
    start: Arc<tokio::sync::Barrier>,
) -> Vec<i64> {
    start.wait().await;
    let mut ids = Vec::new();
    loop {
        let claimed = store
            .claim_stale_pcontacts(STALE_AFTER, owner, LEASE, batch)
            .await
            .expect("claim");
        if claimed.is_empty() || ids.len() > cap {
            return ids;
        }
        for p in claimed {
            assert_eq!(p.claimed_by.as_deref(), Some(owner));
            ids.push(p.id);
        }
        // An audit pass's pause, short: long enough that SQLite's busy handler lets the other
        // instance in, short enough that PostgreSQL claims overlap.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// P5: the claim is atomic. Two pools claim 400 stale pcontacts at once, ten at a time: each
// gets some, no pcontact goes to both (or twice to one), and together they get them all.
both_backends!(
    p5_two_instances_claim_concurrently_and_never_the_same,
    |db| {
        const ROWS: usize = 400;
        db.exec(&stale_rows(db, ROWS, 600)).await;
        let other = db.second_store().await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let a = tokio::spawn(claim_all(
            db.store.clone(),
            "instance-a",
            10,
            2 * ROWS,
            Arc::clone(&start),
        ));
        let b = tokio::spawn(claim_all(other, "instance-b", 10, 2 * ROWS, start));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (set_a, set_b): (HashSet<i64>, HashSet<i64>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        assert_eq!(set_a.len(), a.len(), "instance a claimed a pcontact twice");
        assert_eq!(set_b.len(), b.len(), "instance b claimed a pcontact twice");
        let both: Vec<_> = set_a.intersection(&set_b).collect();
        assert!(both.is_empty(), "claimed by both instances: {both:?}");
        assert!(
            !a.is_empty() && !b.is_empty(),
            "both instances competed: a {} b {}",
            a.len(),
            b.len()
        );
        assert_eq!(a.len() + b.len(), ROWS, "every stale pcontact claimed");
        // What the database holds agrees with what each was told.
        assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pcscf_location WHERE reg_state = 32 AND claimed_by = 'instance-a'"
        )
        .await,
        a.len() as i64
    );
        assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pcscf_location WHERE reg_state = 32 AND claimed_by = 'instance-b'"
        )
        .await,
        b.len() as i64
    );
    }
);

// P5: a pcontact under another instance's live lease is skipped; once that lease has lapsed
// (an instance that died: aged with an UPDATE) it is taken over, and the first instance can
// neither renew nor finish it any more.
both_backends!(p5_live_lease_is_skipped_and_a_lapsed_one_taken_over, |db| {
    db.exec(&stale_rows(db, 5, 600)).await;
    let other = db.second_store().await;
    let first = db
        .store
        .claim_stale_pcontacts(STALE_AFTER, "instance-a", LEASE, 100)
        .await
        .unwrap();
    assert_eq!(first.len(), 5);
    let skipped = other
        .claim_stale_pcontacts(STALE_AFTER, "instance-b", LEASE, 100)
        .await
        .unwrap();
    assert!(
        skipped.is_empty(),
        "claimed under a live lease: {skipped:?}"
    );
    // Leases with a second left are still live.
    db.exec(&format!(
        "UPDATE pcscf_location SET claimed_until = {}",
        db.in_seconds(2)
    ))
    .await;
    assert!(
        other
            .claim_stale_pcontacts(STALE_AFTER, "instance-b", LEASE, 100)
            .await
            .unwrap()
            .is_empty(),
        "a lease two seconds from its end is still held"
    );
    // Instance a died; its leases ran out.
    db.exec(&format!(
        "UPDATE pcscf_location SET claimed_until = {}",
        db.in_seconds(-1)
    ))
    .await;
    let taken = other
        .claim_stale_pcontacts(STALE_AFTER, "instance-b", LEASE, 100)
        .await
        .unwrap();
    let mut ids: Vec<i64> = taken.iter().map(|p| p.id).collect();
    ids.sort();
    let mut before: Vec<i64> = first.iter().map(|p| p.id).collect();
    before.sort();
    assert_eq!(ids, before, "every lapsed claim taken over");
    assert!(
        taken
            .iter()
            .all(|p| p.claimed_by.as_deref() == Some("instance-b"))
    );
    let progress = registrar::store::PublishProgress {
        published_ids: None,
        attempts: 0,
        next_publish_at: None,
    };
    assert!(
        !db.store
            .renew_claim(first[0].id, "instance-a", LEASE, &progress)
            .await
            .unwrap(),
        "the old owner cannot renew a claim taken over"
    );
    assert!(
        !db.store
            .finish_claim(first[0].id, "instance-a")
            .await
            .unwrap(),
        "nor delete it"
    );
    assert!(other.finish_claim(first[0].id, "instance-b").await.unwrap());
    assert_eq!(db.scalar("SELECT count(*) FROM pcscf_location").await, 4);
});

// P5: only pcontacts expired for notify_window + audit_grace or longer are claimed; one inside
// that margin is left to the P1 window and the S-CSCF's NOTIFY.
both_backends!(p5_inside_window_and_grace_is_not_claimed, |db| {
    // STALE_AFTER is 60 s: one row expired 30 s ago (inside), one 120 s ago (outside).
    db.exec(&stale_rows(db, 1, 30)).await;
    db.exec(
        &stale_rows(db, 1, 120)
            .replace("10.9.0.0", "10.8.0.0")
            .replace("ue0@", "late@"),
    )
    .await;
    let claimed = db
        .store
        .claim_stale_pcontacts(STALE_AFTER, "instance-a", LEASE, 100)
        .await
        .unwrap();
    let hosts: Vec<&str> = claimed.iter().map(|p| p.address.host.as_str()).collect();
    assert_eq!(hosts, ["10.8.0.0"], "only the pcontact past window + grace");
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pcscf_location WHERE host = '10.9.0.0' \
             AND reg_state = 2 AND claimed_by IS NULL"
        )
        .await,
        1,
        "the one inside the margin is untouched"
    );
});

// ---------------------------------------------------------------------------------------------
// Across processes, PostgreSQL.

struct Instance {
    child: Child,
    port: u16,
}

impl Instance {
    /// SIGKILL: the instance dies mid-work, its claims left to lapse.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn start(url: &str, scscf: &str) -> Instance {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args([
            "serve",
            "--role",
            "pcscf",
            "--scscf",
            scscf,
            "--http-listen",
            "off",
        ])
        .args(["--listen", &format!("udp:127.0.0.1:{port}")])
        .args([
            "--audit-interval",
            "0.2",
            "--notify-window",
            "1",
            "--audit-grace",
            "1",
            "--t1-ms",
            "100",
        ])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn registrar serve --role pcscf");
    let instance = Instance { child, port };
    // Serving once it answers OPTIONS.
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..100 {
        let options = support::sip::request("OPTIONS", "sip:pcscf.example.com");
        probe
            .send_to(options.as_bytes(), ("127.0.0.1", port))
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut buf)).await
        {
            return instance;
        }
    }
    panic!("the P-CSCF on port {port} never answered OPTIONS");
}

/// The port in the top Via's sent-by of a PUBLISH: which instance sent it.
fn sender_port(publish: &registrar::sip::wire::Message) -> u16 {
    let via = publish.header("Via").unwrap();
    let sent_by = via.split_whitespace().nth(1).unwrap();
    let host_port = sent_by.split(';').next().unwrap();
    host_port.rsplit(':').next().unwrap().parse().unwrap()
}

/// PUBLISH transactions per identity (the To header), and per sending instance.
fn tally(scscf: &Scscf) -> (HashMap<String, usize>, HashMap<u16, usize>) {
    let (mut per_identity, mut per_instance) = (HashMap::new(), HashMap::new());
    for publish in scscf.publish_transactions() {
        *per_identity
            .entry(publish.header("To").unwrap().to_string())
            .or_default() += 1;
        *per_instance.entry(sender_port(&publish)).or_default() += 1;
    }
    (per_identity, per_instance)
}

async fn wait_until_empty(db: &TestDb, seconds: u64) -> i64 {
    let mut left = i64::MAX;
    for _ in 0..seconds * 10 {
        left = db.scalar("SELECT count(*) FROM pcscf_location").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    left
}

// P5: 1,000 stale pcontacts appear while two instances run; one audit pass claims at most 200
// and (slowed by a trigger) takes longer than an audit interval, so the instances claim at the
// same time. Each PUBLISHes some, and every sip: identity is PUBLISHed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_two_processes_compete_and_publish_each_identity_exactly_once() {
    let Some(db) = TestDb::postgres().await else {
        return support::pg::skip(
            "p5_two_processes_compete_and_publish_each_identity_exactly_once",
        );
    };
    assert_eq!(db.backend(), Backend::Postgres);
    let scscf = Scscf::start().await;
    let a = start(&db.url, &scscf.uri()).await;
    let b = start(&db.url, &scscf.uri()).await;
    // Each claimed row costs a millisecond more, so one pass's claim of 200 outlasts the
    // other instance's audit interval (0.2 s): the two instances' claims overlap in time.
    db.exec(
        "CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$; \
         CREATE TRIGGER slow_claim BEFORE UPDATE ON pcscf_location FOR EACH ROW \
         WHEN (OLD.claimed_by IS DISTINCT FROM NEW.claimed_by) EXECUTE FUNCTION slow_claim()",
    )
    .await;
    const ROWS: usize = 1000;
    db.exec(&stale_rows(&db, ROWS, 600)).await;
    let left = wait_until_empty(&db, 60).await;
    assert_eq!(left, 0, "every stale pcontact published and removed");
    let (per_identity, per_instance) = tally(&scscf);
    assert_eq!(
        per_identity.len(),
        2 * ROWS,
        "two sip: identities per pcontact, no tel:"
    );
    let twice: Vec<_> = per_identity.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} identities published more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let (by_a, by_b) = (
        per_instance.get(&a.port).copied().unwrap_or(0),
        per_instance.get(&b.port).copied().unwrap_or(0),
    );
    assert!(
        by_a > 0 && by_b > 0,
        "both instances did some of the work: a {by_a}, b {by_b}"
    );
    assert_eq!(by_a + by_b, 2 * ROWS);
}

// P5: an instance killed in the middle of its PUBLISHes keeps its pcontacts until its lease
// runs out: the other instance skips them meanwhile, then takes them over and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_killed_instance_work_is_taken_over_after_its_lease() {
    let Some(db) = TestDb::postgres().await else {
        return support::pg::skip("p5_killed_instance_work_is_taken_over_after_its_lease");
    };
    const ROWS: usize = 20;
    let scscf = Scscf::start().await;
    // The S-CSCF does not answer: instance a's PUBLISH transactions stay open.
    scscf.on_publish(Mode::Silent);
    db.exec(&stale_rows(&db, ROWS, 600)).await;
    let mut a = start(&db.url, &scscf.uri()).await;
    let mut claimed = 0;
    for _ in 0..100 {
        claimed = db
            .scalar("SELECT count(*) FROM pcscf_location WHERE reg_state = 32 AND claimed_by IS NOT NULL")
            .await;
        if claimed == ROWS as i64 && !scscf.publishes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(claimed, ROWS as i64, "instance a claimed every pcontact");
    let owner_a: Vec<String> = {
        let dump = db.store.dump_pcontacts().await.unwrap();
        let mut owners: Vec<String> = dump.into_iter().filter_map(|p| p.claimed_by).collect();
        owners.sort();
        owners.dedup();
        owners
    };
    assert_eq!(owner_a.len(), 1, "one owner: {owner_a:?}");
    assert!(
        scscf.publishes().iter().all(|m| sender_port(m) == a.port),
        "only a has PUBLISHed"
    );
    a.kill();

    scscf.on_publish(Mode::Ok);
    let b = start(&db.url, &scscf.uri()).await;
    // Five audit passes of b under a's live lease: nothing taken, nothing published by b.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM pcscf_location WHERE claimed_by = '{}'",
            owner_a[0]
        ))
        .await,
        ROWS as i64,
        "pcontacts under a live lease are skipped"
    );
    assert!(
        scscf.publishes().iter().all(|m| sender_port(m) != b.port),
        "b PUBLISHed under a's live lease"
    );
    // a's lease runs out.
    db.exec("UPDATE pcscf_location SET claimed_until = now() - interval '1 second'")
        .await;
    let left = wait_until_empty(&db, 30).await;
    assert_eq!(left, 0, "b took over and finished every pcontact");
    let mut per_identity: HashMap<String, usize> = HashMap::new();
    for publish in scscf.publish_transactions() {
        if sender_port(&publish) == b.port {
            *per_identity
                .entry(publish.header("To").unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(per_identity.len(), 2 * ROWS, "b PUBLISHed every identity");
    assert!(
        per_identity.values().all(|n| *n == 1),
        "b PUBLISHed an identity twice: {per_identity:?}"
    );
}
