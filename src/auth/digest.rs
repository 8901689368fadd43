//! Digest arithmetic (RFC 7616 §3.4.1, RFC 2069, RFC 8760): the hash algorithms, HA1 as
//! Kamailio's `subscriber` stores it, and the response a client must send. Pure functions.

use crate::store::Credentials;
use md5::Md5;
use sha2::{Digest, Sha256};

/// The digest algorithms we offer and verify (`--auth-algorithms`). The `-sess` variants are
/// not offered: no SIP client in use needs them and Kamailio stores no hash for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// RFC 8760 names, case-insensitive.
    pub fn parse(name: &str) -> Option<Algorithm> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Length of the hash in lowercase hex.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// `H(data)` in lowercase hex.
    pub fn hash(self, parts: &[&str]) -> String {
        match self {
            Algorithm::Md5 => hex(&digest_of::<Md5>(parts)),
            Algorithm::Sha256 => hex(&digest_of::<Sha256>(parts)),
        }
    }
}

/// The hash of `parts` joined with `:`, without building the joined string.
fn digest_of<D: Digest>(parts: &[&str]) -> Vec<u8> {
    let mut hasher = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_vec()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// `H(user:realm:password)`.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&[user, realm, password])
}

/// The hashes `users add|passwd` store (SPEC A2): `ha1` and `ha1b` as Kamailio's kamctl
/// computes them (the realm is the domain), and our `ha1_sha256`.
pub fn credentials_for(user: &str, domain: &str, password: &str) -> Credentials {
    Credentials {
        ha1: ha1(Algorithm::Md5, user, domain, password),
        ha1b: ha1(
            Algorithm::Md5,
            &format!("{user}@{domain}"),
            domain,
            password,
        ),
        ha1_sha256: ha1(Algorithm::Sha256, user, domain, password),
    }
}

/// `qop=auth` parameters of a response (absent in RFC 2069 responses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QopAuth {
    /// `nc` exactly as sent (8 hex digits): it is hashed as text.
    pub nc: String,
    pub cnonce: String,
}

/// The response a client knowing `ha1` must send: RFC 7616 §3.4.1 with qop=auth, RFC 2069
/// without.
pub fn expected_response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<&QopAuth>,
) -> String {
    let ha2 = algorithm.hash(&[method, uri]);
    match qop {
        Some(q) => algorithm.hash(&[ha1, nonce, &q.nc, &q.cnonce, "auth", &ha2]),
        None => algorithm.hash(&[ha1, nonce, &ha2]),
    }
}

/// Compares two hex strings in time independent of where they differ (case-insensitive).
pub fn same_hex(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes().zip(b.bytes()).fold(0u8, |diff, (x, y)| {
        diff | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
    }) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1's worked example (Mufasa), both algorithms.
    #[test]
    fn a4_rfc7616_example_responses() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let qop = QopAuth {
            nc: "00000001".into(),
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
        };
        let uri = "/dir/index.html";
        let md5 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert_eq!(
            expected_response(Algorithm::Md5, &md5, nonce, "GET", uri, Some(&qop)),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        let sha = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert_eq!(
            expected_response(Algorithm::Sha256, &sha, nonce, "GET", uri, Some(&qop)),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    /// RFC 2069 §2.4's example: no qop.
    #[test]
    fn a4_rfc2069_response_without_qop() {
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "CircleOfLife",
        );
        assert_eq!(
            expected_response(
                Algorithm::Md5,
                &h,
                "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                "GET",
                "/dir/index.html",
                None
            ),
            "1949323746fe6a43ef61f9606e7febea"
        );
    }

    #[test]
    fn a2_kamctl_hashes() {
        let c = credentials_for("alice", "example.com", "secret");
        // echo -n 'alice:example.com:secret' | md5sum
        assert_eq!(c.ha1, "b1726872c344b6dc8365b774f8fd6412");
        assert_eq!(
            c.ha1b,
            ha1(Algorithm::Md5, "alice@example.com", "example.com", "secret")
        );
        assert_eq!(c.ha1.len(), 32);
        assert_eq!(c.ha1_sha256.len(), 64);
        assert_ne!(c.ha1, c.ha1b);
    }

    #[test]
    fn hex_comparison() {
        assert!(same_hex("abcDEF", "ABCdef"));
        assert!(!same_hex("abc", "abd"));
        assert!(!same_hex("abc", "abcd"));
    }
}
