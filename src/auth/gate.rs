//! The `Authenticator`: admits a REGISTER before the registrar decides on it (SPEC A3–A6).
//! Everything that needs no database is settled here, in this order: a banned source (403), no
//! usable credentials (401 challenge), malformed credentials (400), an identity that is not the
//! AoR's (403), a `uri` that is not the Request-URI (400), a forged nonce (401, a failure), an
//! expired one (401 `stale=true`), a replayed nc (401, a failure). What is left is a
//! `Verification` to run on the subscriber row inside the AoR's transaction.

use super::credentials::{self, CredentialsError, DigestResponse};
use super::digest::{Algorithm, expected_response, ha1, same_hex};
use super::nonce::{NonceError, Sealer, Secret};
use super::replay::{ReplayGuard, Use};
use super::{AuthMode, AuthSettings, ban::BanList};
use crate::aor::Aor;
use crate::metrics::METRICS;
use crate::sip::Origin;
use crate::sip::request::Request;
use crate::sip::response::Response;
use crate::store::Subscriber;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Nonces tracked for replay per instance (SPEC A4: bounded memory; ~3 MiB at most).
const REPLAY_CAPACITY: usize = 65_536;
/// Source addresses tracked for failures (SPEC A6: bounded).
const BAN_CAPACITY: usize = 65_536;

pub struct Authenticator {
    settings: AuthSettings,
    case_sensitive: bool,
    sealer: Sealer,
    opaque: String,
    replay: ReplayGuard,
    bans: BanList,
}

/// What the gate makes of a REGISTER.
#[derive(Debug)]
pub enum Admission {
    /// This domain does not authenticate (`auth = "off"`).
    Open,
    /// Settled without the database: send this answer.
    Answer(Response),
    /// Check these credentials against the AoR's subscriber row, then decide.
    Verify(Verification),
}

/// The check that needs the database: the response against the stored hashes. Pure.
#[derive(Clone, Debug)]
pub struct Verification {
    response: DigestResponse,
    method: String,
    /// The R2-keyed user and domain (the realm) the hashes are computed with (SPEC A5).
    aor: Aor,
    /// The client authenticated as `user@domain` (Kamailio's `ha1b`).
    with_domain: bool,
}

/// Wrong password, unknown user or no stored hash for the algorithm: answered alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied;

impl Verification {
    pub fn check(&self, subscriber: Option<&Subscriber>) -> Result<(), Denied> {
        let subscriber = subscriber.ok_or(Denied)?;
        let ha1 = self.ha1(subscriber).ok_or(Denied)?;
        let d = &self.response;
        let expected = expected_response(
            d.algorithm,
            &ha1,
            &d.nonce,
            &self.method,
            &d.uri,
            d.qop.as_ref(),
        );
        same_hex(&expected, &d.response).then_some(()).ok_or(Denied)
    }

    /// The stored hash for the response's algorithm, else one computed from a plaintext
    /// password (rows written the kamctl way, SPEC A2).
    fn ha1(&self, s: &Subscriber) -> Option<String> {
        let stored = |h: &str| (!h.is_empty()).then(|| h.to_ascii_lowercase());
        let realm = self.aor.domain.as_str();
        let user = if self.with_domain {
            format!("{}@{}", self.aor.username, self.aor.domain)
        } else {
            self.aor.username.clone()
        };
        let from_password =
            |a: Algorithm| (!s.password.is_empty()).then(|| ha1(a, &user, realm, &s.password));
        match (self.response.algorithm, self.with_domain) {
            (Algorithm::Md5, false) => stored(&s.ha1).or_else(|| from_password(Algorithm::Md5)),
            (Algorithm::Md5, true) => stored(&s.ha1b).or_else(|| from_password(Algorithm::Md5)),
            (Algorithm::Sha256, false) => s
                .ha1_sha256
                .as_deref()
                .and_then(stored)
                .or_else(|| from_password(Algorithm::Sha256)),
            (Algorithm::Sha256, true) => from_password(Algorithm::Sha256),
        }
    }
}

impl Authenticator {
    pub fn new(settings: AuthSettings, case_sensitive: bool) -> Authenticator {
        let secret = settings.secret.clone().unwrap_or_else(Secret::random);
        let sealer = Sealer::new(secret, settings.nonce_expires);
        let bans = BanList::new(settings.fail_limit, settings.ban, BAN_CAPACITY);
        Authenticator {
            opaque: sealer.opaque(),
            sealer,
            replay: ReplayGuard::new(REPLAY_CAPACITY),
            bans,
            settings,
            case_sensitive,
        }
    }

    pub fn admit(&self, request: &Request, origin: &Origin, aor: &Aor) -> Admission {
        if self.settings.mode_for(&aor.domain) == AuthMode::Off {
            return Admission::Open;
        }
        let ip = origin.peer.ip();
        if self.bans.is_banned(ip, Instant::now()) {
            METRICS.auth("banned");
            return Admission::Answer(Response::to(&request.message, 403, "Forbidden"));
        }
        let d = match self.credentials_for_realm(request, &aor.domain) {
            Ok(Some(d)) => d,
            Ok(None) => return Admission::Answer(self.challenge(request, aor, false)),
            Err(why) => return Admission::Answer(bad_request(request, why)),
        };
        let Some(with_domain) = self.identity(&d.username, aor) else {
            return Admission::Answer(
                Response::to(&request.message, 403, "Forbidden")
                    .header("P-Registrar-Error", "Auth ID mismatch"),
            );
        };
        if !self.settings.algorithms.contains(&d.algorithm) {
            return Admission::Answer(self.challenge(request, aor, false));
        }
        if d.uri != request.uri {
            return Admission::Answer(bad_request(
                request,
                "Digest uri does not match the Request-URI".into(),
            ));
        }
        let now_ms = unix_ms();
        let nonce = match self.sealer.open(&d.nonce, now_ms) {
            Ok(n) => n,
            Err(NonceError::Expired) => {
                return Admission::Answer(self.challenge(request, aor, true));
            }
            Err(NonceError::Forged) => return Admission::Answer(self.denied(request, origin, aor)),
        };
        let nc = d
            .qop
            .as_ref()
            .and_then(|q| u32::from_str_radix(&q.nc, 16).ok());
        let lifetime_ms = u64::try_from(self.sealer.lifetime().as_millis()).unwrap_or(u64::MAX);
        match self
            .replay
            .claim(&nonce, nc, now_ms.saturating_sub(lifetime_ms))
        {
            Use::Fresh => {}
            Use::Forgotten => return Admission::Answer(self.challenge(request, aor, true)),
            Use::Replayed => return Admission::Answer(self.denied(request, origin, aor)),
        }
        Admission::Verify(Verification {
            response: d,
            method: request.method.clone(),
            aor: aor.clone(),
            with_domain,
        })
    }

    /// A failed authentication (SPEC A6): counted against the source IP, answered with a
    /// fresh challenge whatever the cause, so that the answer never tells whether the user
    /// exists.
    pub fn denied(&self, request: &Request, origin: &Origin, aor: &Aor) -> Response {
        METRICS.auth("failed");
        let ip = origin.peer.ip();
        if self.bans.failed(ip, Instant::now()) {
            tracing::warn!(
                %ip,
                limit = self.settings.fail_limit,
                ban_seconds = self.settings.ban.as_secs(),
                "too many failed authentications; source banned"
            );
        }
        self.fresh_challenge(request, aor, false)
    }

    /// A challenge to a REGISTER without (valid, current) credentials, counted as such.
    fn challenge(&self, request: &Request, aor: &Aor, stale: bool) -> Response {
        METRICS.auth(if stale { "stale" } else { "challenged" });
        self.fresh_challenge(request, aor, stale)
    }

    /// 401 with one `WWW-Authenticate` per offered algorithm, in order (SPEC A3).
    fn fresh_challenge(&self, request: &Request, aor: &Aor, stale: bool) -> Response {
        let nonce = self.sealer.issue(unix_ms());
        let realm = quote(&aor.domain);
        let stale = if stale { ", stale=true" } else { "" };
        let mut response = Response::to(&request.message, 401, "Unauthorized");
        for algorithm in &self.settings.algorithms {
            response = response.header(
                "WWW-Authenticate",
                format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", opaque=\"{}\", algorithm={}, \
                     qop=\"auth\"{stale}",
                    self.opaque,
                    algorithm.name()
                ),
            );
        }
        response
    }

    /// The Digest credentials for `realm`; `None` when there are none we can use (another
    /// scheme or realm, an algorithm or qop we do not offer): the client is challenged.
    fn credentials_for_realm(
        &self,
        request: &Request,
        realm: &str,
    ) -> Result<Option<DigestResponse>, String> {
        let mut found: Option<DigestResponse> = None;
        for value in request.message.headers_named("Authorization") {
            match credentials::parse(value) {
                Ok(d) if d.realm == realm => {
                    if found.is_some() {
                        return Err("more than one Authorization for the realm".into());
                    }
                    found = Some(d);
                }
                Ok(_)
                | Err(CredentialsError::NotDigest)
                | Err(CredentialsError::UnsupportedAlgorithm)
                | Err(CredentialsError::UnsupportedQop) => {}
                Err(e @ CredentialsError::Malformed(_)) => return Err(e.to_string()),
            }
        }
        Ok(found)
    }

    /// SPEC A5: the digest username must be the AoR's user (R2-keyed), alone or as
    /// `user@domain`. Returns whether it came with the domain.
    fn identity(&self, username: &str, aor: &Aor) -> Option<bool> {
        let key = |u: &str| {
            if self.case_sensitive {
                u.to_string()
            } else {
                u.to_ascii_lowercase()
            }
        };
        if key(username) == aor.username {
            return Some(false);
        }
        let (user, domain) = username.rsplit_once('@')?;
        (key(user) == aor.username && domain.eq_ignore_ascii_case(&aor.domain)).then_some(true)
    }

    /// Sources banned or counting failures now (tests, metrics).
    pub fn tracked_sources(&self) -> usize {
        self.bans.len()
    }
}

fn bad_request(request: &Request, why: String) -> Response {
    Response::to(&request.message, 400, "Bad Request").header("P-Registrar-Error", why)
}

/// A quoted-string body: `"` and `\` escaped (a realm is a host name, but be exact).
fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Wall-clock Unix milliseconds: nonces carry their issue time between instances, which agree
/// on the wall clock, not on each other's monotonic clocks.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
