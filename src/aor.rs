//! The address-of-record key: what a binding, a subscriber and a lock are keyed by. It lives
//! outside both `sip` (which computes it from a URI, SPEC R2) and `store` (which keys rows by
//! it), so that neither layer imports the other.

use std::fmt;

/// An address-of-record key, already normalized by the SIP layer (SPEC R2): `username` %-decoded
/// (and lowercased unless case-sensitive), `domain` lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aor {
    pub username: String,
    pub domain: String,
}

impl Aor {
    pub fn new(username: impl Into<String>, domain: impl Into<String>) -> Self {
        Aor {
            username: username.into(),
            domain: domain.into(),
        }
    }
}

impl fmt::Display for Aor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.username, self.domain)
    }
}
