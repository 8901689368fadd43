//! UDP retransmission absorption (SPEC R1): a request already answered — same top-Via branch,
//! Call-ID and CSeq — gets the same response bytes again for 32 s (64·T1) without touching the
//! database; one still being processed is dropped. Bounded in bytes, oldest evicted first.
//! Only an optimization: after eviction (or on another instance) R5's equal-CSeq rule answers
//! a retransmission correctly anyway.

use crate::sip::header::{Via, split_list};
use crate::sip::wire::Message;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LIFETIME: Duration = Duration::from_secs(32);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// `None` when the request lacks what identifies it (it will be answered 400 anyway).
    pub fn of(message: &Message) -> Option<Key> {
        let via = message.header("Via")?;
        let branch = split_list(via)
            .first()
            .and_then(|v| Via::parse(v))
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let call_id = message.header("Call-ID")?;
        let cseq = message.header("CSeq")?;
        Some(Key(format!("{branch}\u{0}{call_id}\u{0}{cseq}")))
    }
}

pub enum Lookup {
    /// First sight: process it, then `finish` or `abandon`.
    New,
    /// Being processed: drop the duplicate.
    InFlight,
    /// Answered: send these bytes to that address again.
    Answered(Vec<u8>, SocketAddr),
}

enum Entry {
    Pending,
    Done(Vec<u8>, SocketAddr),
}

struct Inner {
    entries: HashMap<Key, (Entry, Instant)>,
    /// Insertion order of answered entries, with their size, for eviction.
    order: VecDeque<(Key, Instant, usize)>,
    bytes: usize,
}

pub struct ResponseCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl ResponseCache {
    pub fn new(capacity_bytes: usize) -> ResponseCache {
        ResponseCache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            capacity: capacity_bytes,
        }
    }

    pub fn begin(&self, key: &Key) -> Lookup {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        match inner.entries.get(key) {
            Some((_, at)) if now.duration_since(*at) >= LIFETIME => {}
            Some((Entry::Pending, _)) => return Lookup::InFlight,
            Some((Entry::Done(bytes, to), _)) => return Lookup::Answered(bytes.clone(), *to),
            None => {}
        }
        inner.entries.insert(key.clone(), (Entry::Pending, now));
        Lookup::New
    }

    pub fn finish(&self, key: Key, response: Vec<u8>, to: SocketAddr) {
        if self.capacity == 0 {
            self.abandon(&key);
            return;
        }
        let now = Instant::now();
        let size = response.len() + key.0.len();
        let mut inner = self.lock();
        inner
            .entries
            .insert(key.clone(), (Entry::Done(response, to), now));
        inner.order.push_back((key, now, size));
        inner.bytes += size;
        while inner.bytes > self.capacity {
            let Some((old, at, size)) = inner.order.pop_front() else {
                break;
            };
            inner.bytes -= size;
            inner.remove_if_same(&old, at);
        }
    }

    /// The request got no response (e.g. it was dropped): forget it.
    pub fn abandon(&self, key: &Key) {
        let mut inner = self.lock();
        if matches!(inner.entries.get(key), Some((Entry::Pending, _))) {
            inner.entries.remove(key);
        }
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters more than losing the cache: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((_, at, _)) = self.order.front() {
            if now.duration_since(*at) < LIFETIME {
                break;
            }
            if let Some((key, at, size)) = self.order.pop_front() {
                self.bytes -= size;
                self.remove_if_same(&key, at);
            }
        }
        // Pending entries whose processing never finished (a task that died) age out too.
        if self.entries.len() > 2 * self.order.len() + 1024 {
            self.entries
                .retain(|_, (_, at)| now.duration_since(*at) < LIFETIME);
        }
    }

    fn remove_if_same(&mut self, key: &Key, at: Instant) {
        if matches!(self.entries.get(key), Some((_, t)) if *t == at) {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        Key(format!("k{n}"))
    }

    #[test]
    fn r1_answers_duplicates_from_the_cache() {
        let cache = ResponseCache::new(1 << 20);
        let to: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        assert!(matches!(cache.begin(&key(1)), Lookup::New));
        assert!(matches!(cache.begin(&key(1)), Lookup::InFlight));
        cache.finish(key(1), b"SIP/2.0 200 OK".to_vec(), to);
        match cache.begin(&key(1)) {
            Lookup::Answered(bytes, dest) => {
                assert_eq!((bytes.as_slice(), dest), (&b"SIP/2.0 200 OK"[..], to))
            }
            _ => panic!("expected the cached answer"),
        }
    }

    #[test]
    fn r1_is_bounded_in_bytes_oldest_first() {
        let cache = ResponseCache::new(100);
        let to: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        for n in 0..10 {
            assert!(matches!(cache.begin(&key(n)), Lookup::New));
            cache.finish(key(n), vec![b'x'; 30], to);
        }
        assert!(cache.bytes() <= 100);
        assert!(matches!(cache.begin(&key(9)), Lookup::Answered(..)));
        assert!(
            matches!(cache.begin(&key(0)), Lookup::New),
            "the oldest was evicted"
        );
    }
}
