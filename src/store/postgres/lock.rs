//! Per-AoR advisory locks (SPEC S2) with their keys computed here rather than by the server, so
//! that a batch can send `BEGIN` and all its locks as one simple query: one round trip instead
//! of two (issue 16). Only integers we computed go into that query's text, never request data.
//!
//! The key is PostgreSQL's own `hashtext(aor)` (the Jenkins lookup3 hash of `hash_bytes()`, as
//! the server computes it for text on a little-endian machine), so instances running an older
//! version, which let the server compute it, take the same locks during a rolling upgrade.

use super::AOR_LOCK_NAMESPACE;
use crate::store::Aor;
use std::fmt::Write;

/// The second key of `aor`'s advisory lock: `hashtext(aor)`.
pub(crate) fn aor_key(aor: &Aor) -> i32 {
    hashtext(aor.to_string().as_bytes())
}

/// `BEGIN`, then every key's transaction-scoped lock, taken in ascending order so that two
/// batches locking overlapping sets cannot deadlock: one simple query.
pub(crate) fn begin_and_lock(keys: &mut Vec<i32>) -> String {
    keys.sort_unstable();
    keys.dedup();
    let mut sql = String::with_capacity(96 + keys.len() * 12);
    // unnest() yields the (sorted) array in order, and the aggregate locks them as they come.
    let _ = write!(
        sql,
        "BEGIN; SELECT count(pg_advisory_xact_lock({AOR_LOCK_NAMESPACE}, k)) FROM unnest('{{"
    );
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        let _ = write!(sql, "{key}");
    }
    sql.push_str("}'::int4[]) AS keys(k)");
    sql
}

/// PostgreSQL's `hashtext()` for a deterministic collation: `hash_bytes()` over the text's
/// bytes, its `uint32` result read as `int4`.
pub(crate) fn hashtext(bytes: &[u8]) -> i32 {
    let mut a: u32 = 0x9e37_79b9_u32
        .wrapping_add(bytes.len() as u32)
        .wrapping_add(3_923_095);
    let (mut b, mut c) = (a, a);
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    let mut rest = bytes;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0..=11 bytes, little-endian, the lowest byte of `c` left for the length (which
    // is already in the initial state).
    let byte = |i: usize, shift: u32| rest.get(i).map_or(0, |&v| u32::from(v) << shift);
    a = a.wrapping_add(byte(0, 0) | byte(1, 8) | byte(2, 16) | byte(3, 24));
    b = b.wrapping_add(byte(4, 0) | byte(5, 8) | byte(6, 16) | byte(7, 24));
    c = c.wrapping_add(byte(8, 8) | byte(9, 16) | byte(10, 24));
    finish(&mut a, &mut b, &mut c);
    c as i32
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL 15 answered to `SELECT hashtext(s)` here: lengths 0 to 24 (every tail
    /// length, one and two 12-byte blocks), multi-byte UTF-8.
    #[test]
    fn hashtext_is_postgresqls() {
        for (text, expected) in [
            ("", -1477818771),
            ("a", 1075015857),
            ("ab", 1718550461),
            ("abc", -785388649),
            ("abcd", -393934804),
            ("a@b", 447140082),
            ("twelve bytes", 652846557),
            ("thirteen byte", -1367827268),
            ("bob@example.com", 1094174117),
            ("u123@example.com", 388452537),
            ("alice@example.com", 1982552512),
            ("r9999@example.com", -1698869594),
            ("exactly twenty-four byte", 91118986),
            ("ünïcödé@exämple.com", -1525414552),
        ] {
            assert_eq!(hashtext(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn the_statement_locks_each_key_once_in_ascending_order() {
        let mut keys = vec![7, -3, 7, 0];
        assert_eq!(
            begin_and_lock(&mut keys),
            format!(
                "BEGIN; SELECT count(pg_advisory_xact_lock({AOR_LOCK_NAMESPACE}, k)) \
                 FROM unnest('{{-3,0,7}}'::int4[]) AS keys(k)"
            )
        );
    }
}
