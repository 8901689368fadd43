//! The authentication data: one row of Kamailio's `subscriber` table (SPEC A2). Plain data, as
//! every stored type: the digest arithmetic lives in `auth`, which hands the store finished
//! hashes and reads them back.

use super::Aor;
use std::fmt;

/// A user's stored credentials. Kamailio's columns are `NOT NULL DEFAULT ''`: an empty string
/// means "not stored" (a row written the kamctl way may hold only `password`, or only `ha1`).
#[derive(Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub id: i64,
    pub aor: Aor,
    /// Plaintext, as kamctl writes it by default; empty in rows we write.
    pub password: String,
    /// `MD5(user:realm:password)`, lowercase hex.
    pub ha1: String,
    /// `MD5(user@domain:realm:password)`: for clients that send `user@domain` as username.
    pub ha1b: String,
    /// `SHA-256(user:realm:password)` (ours; RFC 8760).
    pub ha1_sha256: Option<String>,
}

/// Never prints a secret (SPEC A7): only which credentials the row holds.
impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("aor", &self.aor)
            .field("has_password", &!self.password.is_empty())
            .field("has_ha1", &!self.ha1.is_empty())
            .field("has_ha1b", &!self.ha1b.is_empty())
            .field(
                "has_ha1_sha256",
                &self.ha1_sha256.as_ref().is_some_and(|h| !h.is_empty()),
            )
            .finish()
    }
}

/// The hashes `users add|passwd` store for a password (the password itself is not stored).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ha1: String,
    pub ha1b: String,
    pub ha1_sha256: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}
