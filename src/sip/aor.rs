//! Address-of-record normalization (SPEC R2): the key a binding is stored under, made the way a
//! Kamailio proxy sharing the table computes it, so that its `lookup()` finds our rows (S6).

use super::uri::{Scheme, Uri, UriError};
use crate::aor::Aor;
use thiserror::Error;

/// Longest user or host part accepted, as Kamailio's `extract_aor` (248 each): keeps the unique
/// index entry far below PostgreSQL's b-tree limit.
const MAX_PART: usize = 248;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AorError {
    #[error("not a URI: {0}")]
    Uri(#[from] UriError),
    #[error("To URI not SIP or SIPS")]
    NotSip,
    #[error("No username in To URI")]
    NoUser,
    #[error("Address Of Record too long")]
    TooLong,
}

/// Normalizes a To (or administrative) URI into the AoR key: user %-decoded and, unless
/// `case_sensitive`, ASCII-lowercased; host lowercased; URI params, password and port dropped.
pub fn aor_of(uri: &Uri, case_sensitive: bool) -> Result<Aor, AorError> {
    if !uri.scheme.is_sip() {
        return Err(AorError::NotSip);
    }
    let user = uri
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or(AorError::NoUser)?;
    if user.len() > MAX_PART || uri.host.len() > MAX_PART {
        return Err(AorError::TooLong);
    }
    let username = unescape_user(user, case_sensitive);
    Ok(Aor::new(username, uri.host.to_ascii_lowercase()))
}

/// Parses text as a SIP URI and normalizes it (for the command line).
pub fn parse_aor(text: &str, case_sensitive: bool) -> Result<Aor, AorError> {
    aor_of(&Uri::parse(text.trim())?, case_sensitive)
}

/// The AoR as a URI, for display (`sip:user@domain`).
pub fn aor_uri(aor: &Aor) -> String {
    format!("{}:{}", Scheme::Sip, aor)
}

/// %-decodes a user part. An escape that would decode to a control character, to `%`, or to
/// bytes that are not UTF-8 stays escaped (uppercase hex), so that no NUL byte or invalid text
/// reaches the database and RFC 4475 `escnull` keeps its full username.
fn unescape_user(user: &str, case_sensitive: bool) -> String {
    let bytes = user.as_bytes();
    let mut out = String::with_capacity(user.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Collect a run of escapes so multi-byte UTF-8 sequences decode together.
            let mut decoded = Vec::new();
            let mut j = i;
            while j + 2 < bytes.len() && bytes[j] == b'%' {
                match hex_byte(bytes[j + 1], bytes[j + 2]) {
                    Some(b) => decoded.push(b),
                    None => break,
                }
                j += 3;
            }
            if decoded.is_empty() {
                out.push('%');
                i += 1;
                continue;
            }
            push_decoded(&mut out, &decoded, case_sensitive);
            i = j;
        } else {
            let c = user[i..].chars().next().unwrap_or('\u{FFFD}');
            push_char(&mut out, c, case_sensitive);
            i += c.len_utf8();
        }
    }
    out
}

fn push_decoded(out: &mut String, decoded: &[u8], case_sensitive: bool) {
    let mut rest = decoded;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                // `valid_up_to` marks a valid UTF-8 prefix, so the fallback never applies.
                let (v, b) = rest.split_at(e.valid_up_to());
                (std::str::from_utf8(v).unwrap_or(""), b)
            }
        };
        for c in valid.chars() {
            if c.is_control() || c == '%' {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            } else {
                push_char(out, c, case_sensitive);
            }
        }
        match bad.split_first() {
            Some((b, tail)) => {
                out.push_str(&format!("%{b:02X}"));
                rest = tail;
            }
            None => break,
        }
    }
}

fn push_char(out: &mut String, c: char, case_sensitive: bool) {
    out.push(if case_sensitive {
        c
    } else {
        c.to_ascii_lowercase()
    });
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let h = (hi as char).to_digit(16)?;
    let l = (lo as char).to_digit(16)?;
    Some((h * 16 + l) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(text: &str) -> Result<Aor, AorError> {
        parse_aor(text, false)
    }

    #[test]
    fn r2_lowercases_and_decodes_like_kamailio() {
        let a = aor("sip:Bob%41x@Example.COM:5070;transport=tcp").unwrap();
        assert_eq!(
            (a.username.as_str(), a.domain.as_str()),
            ("bobax", "example.com")
        );
        let a = parse_aor("sip:Bob%41x@Example.COM", true).unwrap();
        assert_eq!(a.username, "BobAx");
    }

    #[test]
    fn r2_escnull_keeps_control_escapes() {
        let a = aor("sip:null-%00-null@example.com").unwrap();
        assert_eq!(a.username, "null-%00-null");
        let a = aor("sip:a%1fb%7F%25c@example.com").unwrap();
        assert_eq!(a.username, "a%1Fb%7F%25c");
        assert!(!a.username.contains('\0'));
    }

    #[test]
    fn r2_decodes_utf8_and_keeps_invalid_bytes_escaped() {
        assert_eq!(aor("sip:caf%C3%A9@h").unwrap().username, "café");
        assert_eq!(aor("sip:x%FFy@h").unwrap().username, "x%FFy");
        assert_eq!(aor("sip:50%@h").unwrap().username, "50%");
    }

    #[test]
    fn r2_refuses_non_sip_and_userless_uris() {
        assert_eq!(aor("tel:+15550100"), Err(AorError::NotSip));
        assert_eq!(aor("sip:example.com"), Err(AorError::NoUser));
        assert!(matches!(aor("alice@example.com"), Err(AorError::Uri(_))));
        let long = format!("sip:{}@h", "a".repeat(300));
        assert_eq!(aor(&long), Err(AorError::TooLong));
    }

    #[test]
    fn semiuri_user_keeps_its_params() {
        let a = aor("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(a.username, "user;par=u@example.net");
        assert_eq!(aor_uri(&a), "sip:user;par=u@example.net@example.com");
    }
}
