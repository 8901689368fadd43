//! Claims with a lease: how several instances on one database share background work so that
//! each piece is done by exactly one of them (SPEC P5's pcontact expiry PUBLISH, E2's expiry
//! NOTIFY). The row carries `claimed_by` and `claimed_until`; an instance claims rows that
//! nobody holds or whose lease lapsed (`FOR UPDATE SKIP LOCKED`, or SQLite's single writer),
//! writes its progress only while `claimed_by` is still its name, and releases or deletes the
//! row when done. An instance that dies leaves a lease that lapses; the work is then claimed
//! again. The store holds the statements (one per table); this module holds the parts every
//! user of a claim shares: the instance's name, and the clock that says how long a claim it
//! holds can still be trusted when the database cannot confirm it.

use std::time::Duration;
use tokio::time::Instant;

/// A claim that covers one client transaction: 64·T1 (Timer F/B, RFC 3261 §17.1) and ten
/// seconds of slack for the statements around it. A claim must outlast the work it guards, or a
/// second instance takes the row while the first is still waiting for its answer.
pub fn for_one_transaction(t1: Duration) -> Duration {
    t1 * 64 + Duration::from_secs(10)
}

/// This process's name in `claimed_by`: host, pid and a random suffix, so that a restarted
/// process never mistakes its predecessor's claims for its own.
pub fn owner_name() -> String {
    let host = host_name();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..8])
}

/// This machine's name (`registrar` when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "registrar".into())
}

/// A claim as this instance last saw it granted or renewed, by its own clock (SPEC H5): when a
/// renewal fails for want of the database, the work may go on only while the last known lease
/// still covers what it is about to do; past that, another instance may hold the row.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    until: Instant,
}

impl Held {
    /// A claim granted (or renewed) for `lease` by a statement sent at `asked`: counted from
    /// the asking, since the database's clock started it no earlier.
    pub fn since(asked: Instant, lease: Duration) -> Held {
        Held {
            until: asked + lease,
        }
    }

    /// Whether the claim still covers `work` started now.
    pub fn covers(&self, work: Duration) -> bool {
        Instant::now() + work < self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_covers_work_only_within_its_lease() {
        let held = Held::since(Instant::now(), Duration::from_secs(10));
        assert!(held.covers(Duration::from_secs(9)));
        assert!(!held.covers(Duration::from_secs(10)));
        // Granted 5 s ago: 5 s left.
        let earlier = Instant::now() - Duration::from_secs(5);
        let held = Held::since(earlier, Duration::from_secs(10));
        assert!(held.covers(Duration::from_secs(4)));
        assert!(!held.covers(Duration::from_secs(5)));
    }

    #[test]
    fn owner_names_differ_per_process_start() {
        assert_ne!(owner_name(), owner_name());
    }
}
