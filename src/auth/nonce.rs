//! Stateless, unforgeable nonces (SPEC A3): the issue time and a random part, sealed with
//! HMAC-SHA256 under a secret that every instance shares (`--auth-secret-file`), so that any
//! instance accepts any instance's nonce without a database write or a shared cache.
//!
//! Layout (hex, 64 characters): 8 bytes issue time in Unix milliseconds, big-endian; 8 random
//! bytes; the first 16 bytes of HMAC-SHA256(secret, the 16 bytes before).

use super::digest::hex;
use hmac::{KeyInit, Mac};
use std::fmt;
use std::time::Duration;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Shortest secret accepted from a file (SPEC A3).
pub const MIN_SECRET: usize = 32;

const PAYLOAD: usize = 16;
const TAG: usize = 16;

/// The key nonces are sealed with. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from a file's bytes (one trailing newline is not part of it).
    pub fn from_file_bytes(mut bytes: Vec<u8>) -> Result<Secret, String> {
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.len() < MIN_SECRET {
            return Err(format!(
                "holds {} bytes; at least {MIN_SECRET} are needed",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    /// A random secret for this process alone: nonces it issues are accepted by no other
    /// instance (README: share a secret file between instances).
    pub fn random() -> Secret {
        let mut bytes = vec![0u8; 32];
        fill_random(&mut bytes);
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The operating system's randomness. Without it no nonce can be unpredictable, so its
/// absence is fatal rather than something to work around.
pub(crate) fn fill_random(bytes: &mut [u8]) {
    if let Err(e) = getrandom::fill(bytes) {
        panic!("the operating system's random source failed: {e}");
    }
}

/// A nonce whose seal held: when it was issued and its identity (for replay tracking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonce {
    pub issued_ms: u64,
    pub id: u128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Not ours: bad layout or a seal that does not hold (another secret, an altered byte).
    Forged,
    /// Ours, but older than `--nonce-expires`: answered with `stale=true`.
    Expired,
}

#[derive(Clone, Debug)]
pub struct Sealer {
    secret: Secret,
    lifetime: Duration,
}

impl Sealer {
    pub fn new(secret: Secret, lifetime: Duration) -> Sealer {
        Sealer { secret, lifetime }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A fresh nonce issued at `now_ms` (Unix milliseconds).
    pub fn issue(&self, now_ms: u64) -> String {
        let mut payload = [0u8; PAYLOAD];
        payload[..8].copy_from_slice(&now_ms.to_be_bytes());
        fill_random(&mut payload[8..]);
        let mut nonce = hex(&payload);
        nonce.push_str(&hex(&self.tag(&payload)[..TAG]));
        nonce
    }

    /// Checks a nonce a client sent back at `now_ms`.
    pub fn open(&self, text: &str, now_ms: u64) -> Result<Nonce, NonceError> {
        let bytes = unhex(text).ok_or(NonceError::Forged)?;
        if bytes.len() != PAYLOAD + TAG {
            return Err(NonceError::Forged);
        }
        let (payload, tag) = bytes.split_at(PAYLOAD);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_truncated_left(tag)
            .map_err(|_| NonceError::Forged)?;
        let issued_ms =
            u64::from_be_bytes(payload[..8].try_into().map_err(|_| NonceError::Forged)?);
        let lifetime_ms = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(issued_ms) > lifetime_ms {
            return Err(NonceError::Expired);
        }
        let id = u128::from_be_bytes(payload.try_into().map_err(|_| NonceError::Forged)?);
        Ok(Nonce { issued_ms, id })
    }

    /// The `opaque` of our challenges: the same for every instance sharing the secret.
    pub fn opaque(&self) -> String {
        hex(&self.tag(b"registrar opaque")[..8])
    }

    fn tag(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        HmacSha256::new_from_slice(&self.secret.0).unwrap_or_else(|_| unreachable!())
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secret: &[u8]) -> Sealer {
        Sealer::new(
            Secret::from_file_bytes(secret.to_vec()).unwrap(),
            Duration::from_secs(300),
        )
    }

    #[test]
    fn a3_nonces_open_under_the_same_secret_only() {
        let a = sealer(&[1; 32]);
        let b = sealer(&[1; 32]);
        let other = sealer(&[2; 32]);
        let nonce = a.issue(1_000_000);
        assert_eq!(nonce.len(), 64);
        let opened = b
            .open(&nonce, 1_000_500)
            .expect("another instance opens it");
        assert_eq!(opened.issued_ms, 1_000_000);
        assert_eq!(other.open(&nonce, 1_000_500), Err(NonceError::Forged));
        assert_ne!(a.issue(1_000_000), nonce, "random part");
        assert_eq!(a.opaque(), b.opaque());
    }

    #[test]
    fn a3_a_nonce_altered_by_one_character_is_forged() {
        let a = sealer(&[7; 40]);
        let nonce = a.issue(5_000);
        for i in 0..nonce.len() {
            let mut bytes = nonce.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let altered = String::from_utf8(bytes).unwrap();
            assert_eq!(a.open(&altered, 5_000), Err(NonceError::Forged), "{i}");
        }
        for bad in ["", "zz", &nonce[..62], &format!("{nonce}00")] {
            assert_eq!(a.open(bad, 5_000), Err(NonceError::Forged), "{bad}");
        }
    }

    #[test]
    fn a3_nonces_expire() {
        let a = sealer(&[3; 32]);
        let nonce = a.issue(10_000);
        assert!(a.open(&nonce, 10_000 + 300_000).is_ok());
        assert_eq!(a.open(&nonce, 10_000 + 300_001), Err(NonceError::Expired));
    }

    #[test]
    fn a3_secret_file_rules() {
        assert!(Secret::from_file_bytes(vec![b'x'; 31]).is_err());
        let mut bytes = vec![b'x'; 32];
        bytes.push(b'\n');
        assert!(Secret::from_file_bytes(bytes).is_ok());
        let mut short = vec![b'x'; 31];
        short.extend_from_slice(b"\r\n");
        assert!(Secret::from_file_bytes(short).is_err());
        assert_eq!(format!("{:?}", Secret::random()), "Secret(<redacted>)");
    }
}
