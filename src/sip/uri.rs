//! SIP URIs (RFC 3261 §19.1), parsed by hand because rsip 0.4 splits IPv6 hosts at the first
//! colon and loses `sip:user;par=x@host` user parts (research/rust-deps.md §1).
//!
//! The parser keeps every part as sent (escapes included): contacts are stored and matched
//! byte-exact, as Kamailio does; only the AoR is normalized (see `aor.rs`).

use std::fmt;
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(String),
}

impl Scheme {
    pub fn is_sip(&self) -> bool {
        matches!(self, Scheme::Sip | Scheme::Sips)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Sip => f.write_str("sip"),
            Scheme::Sips => f.write_str("sips"),
            Scheme::Tel => f.write_str("tel"),
            Scheme::Other(s) => f.write_str(s),
        }
    }
}

/// A parsed URI. For `sip:`/`sips:` every part is filled; any other scheme keeps its text after
/// the colon in `opaque`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part as sent (escaped), without the password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// The host as sent; an IPv6 reference keeps its brackets.
    pub host: String,
    pub port: Option<u16>,
    /// URI parameters in order; names as sent.
    pub params: Vec<(String, Option<String>)>,
    /// Everything after `?`, as sent.
    pub headers: Option<String>,
    /// For non-SIP schemes: the text after `scheme:`.
    pub opaque: Option<String>,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum UriError {
    #[error("empty URI")]
    Empty,
    #[error("URI has no scheme")]
    NoScheme,
    #[error("URI has no host")]
    NoHost,
    #[error("URI has an invalid port")]
    BadPort,
    #[error("URI has an invalid host")]
    BadHost,
    #[error("URI contains whitespace, control characters, '<', '>' or '\"'")]
    BadCharacter,
}

impl Uri {
    pub fn parse(text: &str) -> Result<Uri, UriError> {
        if text.is_empty() {
            return Err(UriError::Empty);
        }
        // SPEC H7: none of these may appear unescaped in a URI (RFC 3261 §25.1), and each would
        // break out of the `<…>` or `"…"` we re-emit a stored URI in.
        if text
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || matches!(b, b'<' | b'>' | b'"'))
        {
            return Err(UriError::BadCharacter);
        }
        let (scheme_text, rest) = text.split_once(':').ok_or(UriError::NoScheme)?;
        let valid_scheme = scheme_text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme_text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            return Err(UriError::NoScheme);
        }
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            other => Scheme::Other(other.to_string()),
        };
        if !scheme.is_sip() {
            return Ok(Uri {
                scheme,
                user: None,
                password: None,
                host: String::new(),
                port: None,
                params: Vec::new(),
                headers: None,
                opaque: Some(rest.to_string()),
            });
        }
        // '@' may appear unescaped only in the userinfo (RFC 3261 §25.1: not in host, params
        // or headers), but the user part may hold ';' and '?' (RFC 4475 semiuri).
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (Some(user.to_string()), Some(pw.to_string())),
                None => (Some(u.to_string()), None),
            },
            None => (None, None),
        };
        let (hostport, headers) = match hostpart.split_once('?') {
            Some((hp, h)) => (hp, Some(h.to_string())),
            None => (hostpart, None),
        };
        let (hostport, params_text) = match hostport.split_once(';') {
            Some((hp, p)) => (hp, Some(p)),
            None => (hostport, None),
        };
        let (host, port) = split_host_port(hostport)?;
        let params = params_text.map(parse_params).unwrap_or_default();
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
            opaque: None,
        })
    }

    /// The value of a URI parameter (name compared case-insensitively); `Some(None)` for a
    /// parameter without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// `transport` param, lowercased; `udp` when absent (RFC 3261 §18).
    pub fn transport(&self) -> String {
        match self.param("transport") {
            Some(Some(t)) => t.to_ascii_lowercase(),
            _ if self.scheme == Scheme::Sips => "tls".into(),
            _ => "udp".into(),
        }
    }
}

/// Splits `host[:port]`, IPv6 references included.
pub fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), UriError> {
    let (host, port_text) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.find(']').ok_or(UriError::BadHost)?;
        let host = &hostport[..end + 2];
        let after = &v6[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UriError::BadHost)?),
        };
        let inner = &v6[..end];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(UriError::BadHost);
        }
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(UriError::NoHost);
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(UriError::BadHost);
    }
    let port = match port_text {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| UriError::BadPort)?)
        }
        Some(_) => return Err(UriError::BadPort),
    };
    Ok((host.to_string(), port))
}

fn parse_params(text: &str) -> Vec<(String, Option<String>)> {
    text.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (p.to_string(), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_sip_uri() {
        let u = Uri::parse("sip:alice@192.0.2.1:5060;transport=tcp").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.host, "192.0.2.1");
        assert_eq!(u.port, Some(5060));
        assert_eq!(u.transport(), "tcp");
    }

    #[test]
    fn keeps_ipv6_references_whole() {
        let u = Uri::parse("sip:bob@[2001:db8::1]:5070").unwrap();
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5070));
        let u = Uri::parse("sip:[2001:db8::1]").unwrap();
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, None);
        assert!(Uri::parse("sip:[2001:db8::1").is_err());
    }

    #[test]
    fn user_part_may_hold_semicolons_rfc4475_semiuri() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        assert!(u.params.is_empty());
    }

    #[test]
    fn params_and_headers() {
        let u = Uri::parse("sips:a:pw@Example.COM;lr;maddr=1.2.3.4?subject=x&b=c").unwrap();
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.param("LR"), Some(None));
        assert_eq!(u.param("maddr"), Some(Some("1.2.3.4")));
        assert_eq!(u.headers.as_deref(), Some("subject=x&b=c"));
        assert_eq!(u.transport(), "tls");
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse("tel:+1-555-0100").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.opaque.as_deref(), Some("+1-555-0100"));
        assert!(!u.scheme.is_sip());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "alice",
            "sip:",
            "sip:a@",
            "sip:a@h:99999",
            "sip:a@h:x",
            "sip:a b@h",
            "1sip:x",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
