//! The `Authorization: Digest …` header a client answers a challenge with (RFC 7616 §3.4,
//! RFC 3261 §25.1 `credentials`), parsed into what verification needs. Pure; every defect is
//! named, so that the caller can answer 400 with the reason (SPEC A4).

use super::digest::{Algorithm, QopAuth};
use thiserror::Error;

/// Longest parameter value accepted: a real nonce, cnonce or URI is far shorter, and the
/// message size bounds the header anyway.
const MAX_VALUE: usize = 1024;

/// A parsed digest response. `Debug` never shows the response hash.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestResponse {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub qop: Option<QopAuth>,
    pub opaque: Option<String>,
}

impl std::fmt::Debug for DigestResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestResponse")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CredentialsError {
    /// Another scheme (RFC 4475 `regaut01`): not ours to judge; the request is challenged.
    #[error("not Digest credentials")]
    NotDigest,
    /// An algorithm we do not offer: challenged again with the ones we do.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// `qop=auth-int`: challenged again with `qop="auth"`.
    #[error("unsupported qop")]
    UnsupportedQop,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
}

/// Parses one `Authorization` header value.
pub fn parse(value: &str) -> Result<DigestResponse, CredentialsError> {
    use CredentialsError::Malformed;
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(CredentialsError::NotDigest);
    }
    let params = auth_params(rest)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let required = |name: &'static str, why: &'static str| {
        get(name).filter(|v| !v.is_empty()).ok_or(Malformed(why))
    };
    let algorithm = match get("algorithm") {
        None => Algorithm::Md5,
        Some(a) => Algorithm::parse(a).ok_or(CredentialsError::UnsupportedAlgorithm)?,
    };
    let qop = match get("qop") {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let nc = required("nc", "qop without nc")?;
            if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Malformed("nc is not 8 hex digits"));
            }
            Some(QopAuth {
                nc: nc.to_string(),
                cnonce: required("cnonce", "qop without cnonce")?.to_string(),
            })
        }
        Some(q) if q.eq_ignore_ascii_case("auth-int") => {
            return Err(CredentialsError::UnsupportedQop);
        }
        Some(_) => return Err(Malformed("unknown qop")),
    };
    let response = required("response", "no response")?;
    if response.len() != algorithm.hex_len() || !response.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Malformed("response is not a hash of the algorithm"));
    }
    // `username` may be empty in principle, but never names one of our users.
    Ok(DigestResponse {
        username: required("username", "no username")?.to_string(),
        realm: get("realm").ok_or(Malformed("no realm"))?.to_string(),
        nonce: required("nonce", "no nonce")?.to_string(),
        uri: required("uri", "no uri")?.to_string(),
        response: response.to_ascii_lowercase(),
        algorithm,
        qop,
        opaque: get("opaque").map(str::to_string),
    })
}

/// `auth-param *(COMMA auth-param)`, each `name=token` or `name="quoted string"`; a name twice
/// is malformed (which of them would we believe?).
fn auth_params(text: &str) -> Result<Vec<(String, String)>, CredentialsError> {
    use CredentialsError::Malformed;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or(Malformed("parameter without a value"))?;
        let name = rest[..eq].trim();
        if name.is_empty() || !crate::sip::wire::is_token(name) {
            return Err(Malformed("bad parameter name"));
        }
        rest = rest[eq + 1..].trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let (value, after) = quoted_string(quoted)?;
            rest = after;
            value
        } else {
            let end = rest.find([',', ' ', '\t']).unwrap_or(rest.len());
            let token = &rest[..end];
            if token.is_empty() || !crate::sip::wire::is_token(token) {
                return Err(Malformed("bad parameter value"));
            }
            rest = &rest[end..];
            token.to_string()
        };
        if value.len() > MAX_VALUE {
            return Err(Malformed("parameter too long"));
        }
        if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(Malformed("duplicate parameter"));
        }
        params.push((name.to_string(), value));
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => {}
            None => return Err(Malformed("parameters not separated by commas")),
        }
    }
    Ok(params)
}

/// The body of a quoted string (after its opening quote) with quoted-pairs resolved, and the
/// text after its closing quote.
fn quoted_string(text: &str) -> Result<(String, &str), CredentialsError> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped)) if !escaped.is_control() => value.push(escaped),
                _ => return Err(CredentialsError::Malformed("bad escape in a quoted string")),
            },
            c if c.is_control() && c != '\t' => {
                return Err(CredentialsError::Malformed(
                    "control character in a quoted string",
                ));
            }
            c => value.push(c),
        }
    }
    Err(CredentialsError::Malformed("unterminated quoted string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP: &str = r#"Digest username="alice",realm="example.com",cnonce="6b8b4567",nc=00000001,qop=auth,uri="sip:127.0.0.1:5060",nonce="abc",response="0123456789abcdef0123456789ABCDEF",algorithm=MD5"#;

    #[test]
    fn a4_parses_what_clients_send() {
        let d = parse(SIPP).unwrap();
        assert_eq!(d.username, "alice");
        assert_eq!(d.realm, "example.com");
        assert_eq!(d.uri, "sip:127.0.0.1:5060");
        assert_eq!(d.algorithm, Algorithm::Md5);
        assert_eq!(d.qop.as_ref().unwrap().nc, "00000001");
        assert_eq!(d.response, "0123456789abcdef0123456789abcdef");
        // RFC 2069 style, spaces around separators, a quoted-pair.
        let d = parse(
            r#"digest username = "a\"b" , realm="r", nonce="n", uri="sip:r", response="0123456789abcdef0123456789abcdef""#,
        )
        .unwrap();
        assert_eq!(d.username, "a\"b");
        assert!(d.qop.is_none());
    }

    #[test]
    fn a4_defects_are_named() {
        use CredentialsError::*;
        assert_eq!(
            parse("NoOneKnowsThisScheme opaque-data=here"),
            Err(NotDigest)
        );
        assert_eq!(
            parse(&SIPP.replace("MD5", "MD5-sess")),
            Err(UnsupportedAlgorithm)
        );
        assert_eq!(
            parse(&SIPP.replace("qop=auth", "qop=auth-int")),
            Err(UnsupportedQop)
        );
        let malformed = [
            SIPP.replace("nc=00000001", "nc=1"),
            SIPP.replace(",cnonce=\"6b8b4567\"", ""),
            SIPP.replace("nonce=\"abc\"", "nonce=\"abc"),
            SIPP.replace(
                "response=\"0123456789abcdef0123456789ABCDEF\"",
                "response=\"xyz\"",
            ),
            format!("{SIPP},realm=\"other\""),
            SIPP.replace(",uri=", " uri="),
            SIPP.replace("username=\"alice\"", "username"),
            format!("{SIPP},cnonce=\"{}\"", "x".repeat(2000)),
            "Digest".to_string(),
            SIPP[..60].to_string(),
        ];
        for m in &malformed {
            assert!(matches!(parse(m), Err(Malformed(_))), "{m}: {:?}", parse(m));
        }
    }
}
