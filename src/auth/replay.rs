//! Replay refusal (SPEC A4): a (nonce, nc) pair is accepted once per instance while the nonce is
//! valid. Per nonce we keep the highest nc accepted; a later use must count higher (a
//! retransmission over UDP is answered from the response cache before it gets here).
//!
//! Memory is bounded: past `capacity` nonces the oldest entry is dropped, and the table then
//! no longer knows how that nonce was used. So it remembers the newest issue time it dropped
//! (`floor_ms`): an unknown nonce issued no later than that may have been used, and is answered
//! as stale (a fresh challenge the client answers without asking its user), never accepted.

use super::nonce::Nonce;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// First use of this nc: go on.
    Fresh,
    /// This nc (or a higher one) was used before.
    Replayed,
    /// The table forgot this nonce to stay bounded: challenge with `stale=true`.
    Forgotten,
}

pub struct ReplayGuard {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Highest nc accepted per nonce id (0 for an RFC 2069 response, which has none).
    highest: HashMap<u128, u32>,
    /// Nonce ids with their issue time, in the order they were first used.
    order: VecDeque<(u128, u64)>,
    floor_ms: u64,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records the use of `nc` (`None`: a response without qop) with `nonce`, if it is new.
    /// `oldest_valid_ms` is the issue time below which nonces have expired: their entries can
    /// go.
    pub fn claim(&self, nonce: &Nonce, nc: Option<u32>, oldest_valid_ms: u64) -> Use {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(id, issued)) = inner.order.front() {
            if issued >= oldest_valid_ms {
                break;
            }
            inner.order.pop_front();
            inner.highest.remove(&id);
        }
        // An nc of 0 is no count at all: treat it like the no-qop case, used once.
        let nc = nc.unwrap_or(0);
        let floor_ms = inner.floor_ms;
        match inner.highest.get_mut(&nonce.id) {
            Some(highest) if nc <= *highest => Use::Replayed,
            Some(highest) => {
                *highest = nc;
                Use::Fresh
            }
            None if nonce.issued_ms <= floor_ms => Use::Forgotten,
            None => {
                if inner.highest.len() >= self.capacity
                    && let Some((id, issued)) = inner.order.pop_front()
                {
                    inner.highest.remove(&id);
                    inner.floor_ms = inner.floor_ms.max(issued);
                }
                inner.highest.insert(nonce.id, nc);
                inner.order.push_back((nonce.id, nonce.issued_ms));
                // nc 0 leaves the entry at 0: any later use of this nonce without qop (or
                // with nc 0) is a replay, while qop responses still count up from 1.
                Use::Fresh
            }
        }
    }

    /// Nonces tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .highest
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(id: u128, issued_ms: u64) -> Nonce {
        Nonce { issued_ms, id }
    }

    #[test]
    fn a4_each_nc_once_and_counting_up() {
        let g = ReplayGuard::new(10);
        let n = nonce(1, 1000);
        assert_eq!(g.claim(&n, Some(1), 0), Use::Fresh);
        assert_eq!(g.claim(&n, Some(1), 0), Use::Replayed);
        assert_eq!(g.claim(&n, Some(2), 0), Use::Fresh);
        assert_eq!(g.claim(&n, Some(1), 0), Use::Replayed, "nc going backwards");
        let plain = nonce(2, 1000);
        assert_eq!(g.claim(&plain, None, 0), Use::Fresh);
        assert_eq!(g.claim(&plain, None, 0), Use::Replayed, "RFC 2069: once");
    }

    #[test]
    fn a4_bounded_and_never_reaccepts_what_it_forgot() {
        let g = ReplayGuard::new(3);
        for id in 0..3 {
            assert_eq!(g.claim(&nonce(id, 100 + id as u64), Some(1), 0), Use::Fresh);
        }
        // A fourth nonce pushes out the oldest (issued at 100).
        assert_eq!(g.claim(&nonce(3, 200), Some(1), 0), Use::Fresh);
        assert_eq!(g.len(), 3);
        assert_eq!(g.claim(&nonce(0, 100), Some(1), 0), Use::Forgotten);
        // Nonces still tracked keep being judged.
        assert_eq!(g.claim(&nonce(1, 101), Some(1), 0), Use::Replayed);
        // Expired nonces leave the table.
        assert_eq!(g.claim(&nonce(9, 300), Some(1), 150), Use::Fresh);
        assert!(g.len() <= 3);
    }
}
