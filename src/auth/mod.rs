//! Digest authentication of REGISTER (SPEC A1–A8), against Kamailio's `subscriber` table.
//!
//! Authentication is a decision taken *before* the registrar's, not a branch inside it. The
//! registrar role asks the `Authenticator` to admit a REGISTER; everything that needs no
//! database is settled there (ban, challenge, malformed or forged credentials, stale nonce,
//! replay, identity). What remains is a `Verification`, a pure check of the response against
//! the AoR's subscriber row, which runs inside the store's per-AoR transaction on the row read
//! beside the bindings (one more read per coalesced batch, not a round trip per REGISTER), and
//! only when it holds does the registrar's own decision run.
//!
//! - `digest`: hash arithmetic; `credentials`: the `Authorization` header parser;
//! - `nonce`: HMAC-sealed stateless nonces; `replay`: (nonce, nc) once per instance;
//! - `ban`: failures per source IP; `gate`: the `Authenticator` that puts them together.

pub mod ban;
pub mod credentials;
pub mod digest;
pub mod gate;
pub mod nonce;
pub mod replay;

pub use digest::{Algorithm, credentials_for};
pub use gate::{Admission, Authenticator, Denied, Verification};
pub use nonce::Secret;

use std::collections::HashMap;
use std::time::Duration;

/// `--auth`: whether a domain's REGISTERs must authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Digest,
    Off,
}

/// Everything authentication is configured with (SPEC A1, A3, A6).
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Per-domain `auth` from the config file (keys lowercased).
    pub domains: HashMap<String, AuthMode>,
    /// Offered in this order, one `WWW-Authenticate` each.
    pub algorithms: Vec<Algorithm>,
    /// `None`: a random secret for this process alone.
    pub secret: Option<Secret>,
    pub nonce_expires: Duration,
    pub fail_limit: u32,
    pub ban: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::Digest,
            domains: HashMap::new(),
            algorithms: vec![Algorithm::Md5],
            secret: None,
            nonce_expires: Duration::from_secs(300),
            fail_limit: 10,
            ban: Duration::from_secs(300),
        }
    }
}

impl AuthSettings {
    pub fn mode_for(&self, domain: &str) -> AuthMode {
        self.domains.get(domain).copied().unwrap_or(self.mode)
    }

    /// The domains (or "every domain") served without authentication, for the start-up WARN.
    pub fn off_description(&self) -> Option<String> {
        if self.mode == AuthMode::Off {
            return Some("every domain".into());
        }
        let mut off: Vec<&str> = self
            .domains
            .iter()
            .filter(|(_, m)| **m == AuthMode::Off)
            .map(|(d, _)| d.as_str())
            .collect();
        off.sort_unstable();
        (!off.is_empty()).then(|| off.join(", "))
    }

    /// `--auth-algorithms`: a comma-separated list of `md5` and `sha-256`.
    pub fn parse_algorithms(text: &str) -> Result<Vec<Algorithm>, String> {
        let mut list = Vec::new();
        for name in text.split(',').map(str::trim) {
            let a = Algorithm::parse(name)
                .ok_or_else(|| format!("unknown digest algorithm '{name}' (md5, sha-256)"))?;
            if list.contains(&a) {
                return Err(format!("digest algorithm '{name}' given twice"));
            }
            list.push(a);
        }
        Ok(list)
    }
}
