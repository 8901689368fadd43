//! UDP retransmission absorption (SPEC R1): a request already answered — same top-Via branch,
//! Call-ID and CSeq, from the same source address and port (H1) — gets the same response bytes again for 32 s (64·T1) without touching the
//! database; one still being processed is dropped. Only an optimization: after eviction (or on
//! another instance) R5's equal-CSeq rule answers a retransmission correctly anyway.
//!
//! The answered requests live in one ring buffer of `--retrans-cache-bytes`: each record holds
//! the key, the destination, the time and the response bytes, written at the tail; the oldest
//! are overwritten first. A map of one offset per key finds them. Measured: one heap allocation
//! per cached response made a 16 MiB cache cost ~50 MiB of RSS at 16,000 REGISTER/s (long-lived
//! small blocks pin the allocator's pages); the ring costs its size and no more.

use crate::sip::header::{Via, split_list};
use crate::sip::wire::Message;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LIFETIME: Duration = Duration::from_secs(32);

/// Identifies a request: top-Via branch, Call-ID and CSeq, and the source it came from.
///
/// The source is part of the key (SPEC H1): a cached answer goes only to whoever asked. Keyed
/// without it, one spoofed query made the cache a reflector — the same request replayed from
/// anywhere sent the cached 200 OK (57 KB for a large AoR) to the spoofed address again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// `None` when the request lacks what identifies it (it will be answered 400 anyway).
    pub fn of(message: &Message, source: SocketAddr) -> Option<Key> {
        let via = message.header("Via")?;
        let branch = split_list(via)
            .first()
            .and_then(|v| Via::parse(v))
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let call_id = message.header("Call-ID")?;
        let cseq = message.header("CSeq")?;
        Some(Key(format!(
            "{branch}\u{0}{call_id}\u{0}{cseq}\u{0}{source}"
        )))
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

/// Record header: total length (u32), age in ms since the cache's epoch (u64), destination
/// (family u8, address 16, port u16), key length (u16); then the key and the response.
const HEADER: usize = 4 + 8 + 1 + 16 + 2 + 2;

pub struct ResponseCache {
    inner: Mutex<Ring>,
}

struct Ring {
    buf: Vec<u8>,
    /// Absolute positions (never wrap): live records are in `head..tail`.
    head: u64,
    tail: u64,
    /// Key hash → absolute position of its record.
    index: HashMap<u64, u64>,
    pending: HashMap<u64, Instant>,
    hasher: RandomState,
    epoch: Instant,
}

impl ResponseCache {
    pub fn new(capacity_bytes: usize) -> ResponseCache {
        ResponseCache {
            inner: Mutex::new(Ring {
                // calloc'ed: pages are only backed as the ring first fills them.
                buf: vec![0; capacity_bytes],
                head: 0,
                tail: 0,
                index: HashMap::new(),
                pending: HashMap::new(),
                hasher: RandomState::new(),
                epoch: Instant::now(),
            }),
        }
    }

    pub fn begin(&self, key: &Key) -> Lookup {
        let now = Instant::now();
        let mut ring = self.lock();
        ring.expire(now);
        let hash = ring.hash(key);
        if let Some((bytes, to)) = ring.get(hash, key) {
            return Lookup::Answered(bytes, to);
        }
        match ring.pending.get(&hash) {
            Some(at) if now.duration_since(*at) < LIFETIME => Lookup::InFlight,
            _ => {
                ring.pending.insert(hash, now);
                Lookup::New
            }
        }
    }

    pub fn finish(&self, key: Key, response: Vec<u8>, to: SocketAddr) {
        let mut ring = self.lock();
        let hash = ring.hash(&key);
        ring.pending.remove(&hash);
        ring.push(hash, &key, &response, to);
    }

    /// The request got no response (e.g. it was dropped): forget it.
    pub fn abandon(&self, key: &Key) {
        let mut ring = self.lock();
        let hash = ring.hash(key);
        ring.pending.remove(&hash);
    }

    /// Bytes held by answered requests.
    pub fn bytes(&self) -> usize {
        let ring = self.lock();
        (ring.tail - ring.head) as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves at worst a stale record: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ring {
    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(&key.0)
    }

    fn cap(&self) -> u64 {
        self.buf.len() as u64
    }

    fn millis(&self, t: Instant) -> u64 {
        t.duration_since(self.epoch).as_millis() as u64
    }

    fn get(&self, hash: u64, key: &Key) -> Option<(Vec<u8>, SocketAddr)> {
        let at = *self.index.get(&hash)?;
        let pos = (at % self.cap()) as usize;
        let record = &self.buf[pos..];
        let len = u32::from_le_bytes(record[0..4].try_into().ok()?) as usize;
        let key_len = u16::from_le_bytes(record[HEADER - 2..HEADER].try_into().ok()?) as usize;
        let stored_key = &record[HEADER..HEADER + key_len];
        if stored_key != key.0.as_bytes() {
            return None;
        }
        Some((
            record[HEADER + key_len..len].to_vec(),
            decode_addr(&record[12..31]),
        ))
    }

    fn push(&mut self, hash: u64, key: &Key, response: &[u8], to: SocketAddr) {
        let len = HEADER + key.0.len() + response.len();
        if len as u64 > self.cap() / 2 || key.0.len() > u16::MAX as usize {
            return;
        }
        let mut pos = (self.tail % self.cap()) as usize;
        if pos + len > self.buf.len() {
            // Does not fit before the end: skip the rest of the buffer and start over at 0.
            let skip = self.buf.len() - pos;
            self.make_room(skip as u64);
            if skip >= 4 {
                self.buf[pos..pos + 4].copy_from_slice(&0u32.to_le_bytes());
            }
            self.tail += skip as u64;
            pos = 0;
        }
        self.make_room(len as u64);
        let now = self.millis(Instant::now());
        let record = &mut self.buf[pos..pos + len];
        record[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        record[4..12].copy_from_slice(&now.to_le_bytes());
        record[12..31].copy_from_slice(&encode_addr(to));
        record[31..33].copy_from_slice(&(key.0.len() as u16).to_le_bytes());
        record[HEADER..HEADER + key.0.len()].copy_from_slice(key.0.as_bytes());
        record[HEADER + key.0.len()..].copy_from_slice(response);
        self.index.insert(hash, self.tail);
        self.tail += len as u64;
    }

    /// Evicts the oldest records until `need` more bytes fit.
    fn make_room(&mut self, need: u64) {
        while self.tail + need - self.head > self.cap() {
            self.evict_head();
        }
    }

    fn evict_head(&mut self) {
        let pos = (self.head % self.cap()) as usize;
        let to_end = self.buf.len() - pos;
        let len = if to_end < 4 {
            to_end
        } else {
            match u32::from_le_bytes(self.buf[pos..pos + 4].try_into().unwrap_or([0; 4])) as usize {
                // A skip marker: the rest of the buffer is padding.
                0 => to_end,
                n => {
                    let key_len = u16::from_le_bytes(
                        self.buf[pos + 31..pos + 33].try_into().unwrap_or([0; 2]),
                    ) as usize;
                    let key = &self.buf[pos + HEADER..pos + HEADER + key_len];
                    let hash = self.hasher.hash_one(std::str::from_utf8(key).unwrap_or(""));
                    if self.index.get(&hash) == Some(&self.head) {
                        self.index.remove(&hash);
                    }
                    n
                }
            }
        };
        self.head += len as u64;
    }

    /// Drops records older than the retransmission lifetime, and stale in-flight marks.
    fn expire(&mut self, now: Instant) {
        let limit = self.millis(now).saturating_sub(LIFETIME.as_millis() as u64);
        while self.head < self.tail {
            let pos = (self.head % self.cap()) as usize;
            if self.buf.len() - pos >= 12 {
                let len = u32::from_le_bytes(self.buf[pos..pos + 4].try_into().unwrap_or([0; 4]));
                let at =
                    u64::from_le_bytes(self.buf[pos + 4..pos + 12].try_into().unwrap_or([0; 8]));
                if len != 0 && at >= limit {
                    break;
                }
            }
            self.evict_head();
        }
        if self.pending.len() > 4096 {
            self.pending
                .retain(|_, at| now.duration_since(*at) < LIFETIME);
        }
    }
}

fn encode_addr(addr: SocketAddr) -> [u8; 19] {
    let mut out = [0u8; 19];
    let (family, ip) = match addr.ip() {
        IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => (6u8, v6),
    };
    out[0] = family;
    out[1..17].copy_from_slice(&ip.octets());
    out[17..19].copy_from_slice(&addr.port().to_le_bytes());
    out
}

fn decode_addr(bytes: &[u8]) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[1..17]);
    let v6 = Ipv6Addr::from(octets);
    let ip = match (bytes[0], v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_le_bytes([bytes[17], bytes[18]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        Key(format!("z9hG4bK{n}\u{0}call-{n}\u{0}1 REGISTER"))
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
        assert!(matches!(cache.begin(&key(2)), Lookup::New));
        cache.abandon(&key(2));
        assert!(
            matches!(cache.begin(&key(2)), Lookup::New),
            "abandoned: processed again"
        );
    }

    #[test]
    fn h1_a_replay_from_another_source_is_new() {
        let message = crate::sip::wire::parse(
            b"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\r\n",
        )
        .unwrap();
        let asker: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let victim: SocketAddr = "127.0.0.2:5070".parse().unwrap();
        let cache = ResponseCache::new(1 << 20);
        let key = Key::of(&message, asker).unwrap();
        assert!(matches!(cache.begin(&key), Lookup::New));
        cache.finish(key.clone(), b"SIP/2.0 200 OK".to_vec(), asker);
        assert!(matches!(cache.begin(&key), Lookup::Answered(_, to) if to == asker));
        let replayed = Key::of(&message, victim).unwrap();
        assert!(matches!(cache.begin(&replayed), Lookup::New));
    }

    #[test]
    fn r1_is_bounded_in_bytes_oldest_first_across_wraps() {
        let cache = ResponseCache::new(1000);
        let to: SocketAddr = "[2001:db8::1]:5070".parse().unwrap();
        for n in 0..100 {
            assert!(matches!(cache.begin(&key(n)), Lookup::New));
            cache.finish(key(n), vec![b'x'; 30 + (n as usize % 7)], to);
            assert!(cache.bytes() <= 1000);
        }
        match cache.begin(&key(99)) {
            Lookup::Answered(bytes, dest) => assert_eq!((bytes.len(), dest), (30 + 99 % 7, to)),
            _ => panic!("the newest is kept"),
        }
        assert!(
            matches!(cache.begin(&key(0)), Lookup::New),
            "the oldest was overwritten"
        );
    }

    #[test]
    fn whatever_is_answered_is_exactly_what_was_cached() {
        let cache = ResponseCache::new(4096);
        let to: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let body =
            |n: u32, len: usize| -> Vec<u8> { (0..len).map(|i| (n as usize + i) as u8).collect() };
        let mut lengths = HashMap::new();
        for n in 0..5000u32 {
            let len = (next() % 1500) as usize;
            lengths.insert(n, len);
            assert!(matches!(cache.begin(&key(n)), Lookup::New));
            cache.finish(key(n), body(n, len), to);
            assert!(cache.bytes() <= 4096);
            let probe = (next() % (n as u64 + 1)) as u32;
            if let Lookup::Answered(bytes, _) = cache.begin(&key(probe)) {
                assert_eq!(
                    bytes,
                    body(probe, lengths[&probe]),
                    "record {probe} corrupted"
                );
            } else {
                cache.abandon(&key(probe));
            }
        }
    }

    #[test]
    fn a_zero_sized_cache_caches_nothing_and_does_not_panic() {
        let cache = ResponseCache::new(0);
        let to: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        assert!(matches!(cache.begin(&key(1)), Lookup::New));
        cache.finish(key(1), b"x".to_vec(), to);
        assert!(matches!(cache.begin(&key(1)), Lookup::New));
    }
}
