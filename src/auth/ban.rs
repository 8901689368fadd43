//! Brute-force protection (SPEC A6): more than `limit` failed authentications from one source IP
//! within a minute ban that IP for `ban`; a banned IP is answered 403 before any database work.
//! The table is bounded: past `capacity` addresses the oldest is forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures are counted per IP in windows of this length.
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct BanList {
    limit: u32,
    ban: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_ip: HashMap<IpAddr, Record>,
    /// Each tracked IP once, oldest first.
    order: VecDeque<IpAddr>,
}

struct Record {
    window_start: Instant,
    failures: u32,
    banned_until: Option<Instant>,
}

impl Record {
    fn is_spent(&self, now: Instant) -> bool {
        now.duration_since(self.window_start) >= WINDOW
            && self.banned_until.is_none_or(|until| now >= until)
    }
}

impl BanList {
    pub fn new(limit: u32, ban: Duration, capacity: usize) -> BanList {
        BanList {
            limit,
            ban,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        let inner = self.lock();
        inner
            .by_ip
            .get(&ip)
            .and_then(|r| r.banned_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failure; returns `true` when this failure starts a ban.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let mut inner = self.lock();
        if !inner.by_ip.contains_key(&ip) {
            inner.make_room(self.capacity, now);
            inner.order.push_back(ip);
        }
        let record = inner.by_ip.entry(ip).or_insert(Record {
            window_start: now,
            failures: 0,
            banned_until: None,
        });
        if record.is_spent(now) {
            *record = Record {
                window_start: now,
                failures: 0,
                banned_until: None,
            };
        }
        record.failures = record.failures.saturating_add(1);
        let banned = record.banned_until.is_some_and(|until| now < until);
        if record.failures > self.limit && !banned {
            record.banned_until = Some(now + self.ban);
            return true;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.lock().by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Drops spent records from the front, and the oldest one when still full.
    fn make_room(&mut self, capacity: usize, now: Instant) {
        while let Some(ip) = self.order.front().copied() {
            let spent = self.by_ip.get(&ip).is_none_or(|r| r.is_spent(now));
            if !spent && self.by_ip.len() < capacity {
                break;
            }
            self.order.pop_front();
            self.by_ip.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a6_the_failure_past_the_limit_bans_for_the_ban_time() {
        let bans = BanList::new(3, Duration::from_secs(300), 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(!bans.failed(ip, t));
        }
        assert!(!bans.is_banned(ip, t));
        assert!(
            bans.failed(ip, t),
            "the fourth failure exceeds a limit of 3"
        );
        assert!(bans.is_banned(ip, t));
        assert!(!bans.is_banned(other, t));
        assert!(!bans.failed(ip, t), "one ban, one start");
        assert!(bans.is_banned(ip, t + Duration::from_secs(299)));
        assert!(!bans.is_banned(ip, t + Duration::from_secs(300)));
    }

    #[test]
    fn a6_failures_count_within_a_minute() {
        let bans = BanList::new(2, Duration::from_secs(300), 100);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let t = Instant::now();
        assert!(!bans.failed(ip, t));
        assert!(!bans.failed(ip, t));
        // A new window starts after 60 s: the count starts over.
        assert!(!bans.failed(ip, t + WINDOW));
        assert!(!bans.failed(ip, t + WINDOW));
        assert!(bans.failed(ip, t + WINDOW));
    }

    #[test]
    fn a6_the_table_is_bounded() {
        let bans = BanList::new(0, Duration::from_secs(300), 4);
        let t = Instant::now();
        for i in 0..100u8 {
            bans.failed(IpAddr::from([10, 0, 0, i]), t);
            assert!(bans.len() <= 4);
        }
        // The newest bans are kept.
        assert!(bans.is_banned(IpAddr::from([10, 0, 0, 99]), t));
        assert!(!bans.is_banned(IpAddr::from([10, 0, 0, 0]), t));
    }
}
