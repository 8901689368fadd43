//! Header values the roles read: name-addr lists (Contact, Path, To, From, Service-Route,
//! P-Associated-URI), Via, CSeq and option-tag lists. Parsed by hand: rsip splits neither
//! comma-separated lists nor quoted parameter values (research/rust-deps.md §1).

use super::wire::{is_token, parse_u32};

/// Splits a header value at commas that are outside `<>` and quoted strings.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0u32, false, false, 0);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 => {
                items.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(value[start..].trim());
    items.retain(|i| !i.is_empty());
    items
}

/// `[display-name] <uri> *(;param)` or `addr-spec *(;param)` (RFC 3261 §20.10, §25.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    /// The URI as sent, without the angle brackets.
    pub uri: String,
    /// Whether the URI was in angle brackets.
    pub bracketed: bool,
    /// Header parameters (after `>`, or after the addr-spec), quoted values unquoted.
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(text: &str) -> Option<NameAddr> {
        let text = text.trim();
        let (display, rest) = if let Some(after) = text.strip_prefix('"') {
            let end = closing_quote(after)?;
            let display = unescape_quoted(&after[..end]);
            (Some(display), after[end + 1..].trim_start())
        } else if let Some(lt) = text.find('<') {
            let display = text[..lt].trim();
            if !display.is_empty() && !display.split_whitespace().all(is_token) {
                return None;
            }
            (
                (!display.is_empty()).then(|| display.to_string()),
                &text[lt..],
            )
        } else {
            (None, text)
        };
        let (uri, bracketed, params_text) = if let Some(inner) = rest.strip_prefix('<') {
            let end = inner.find('>')?;
            (&inner[..end], true, &inner[end + 1..])
        } else {
            if display.is_some() {
                return None;
            }
            // In the addr-spec form the first ';' starts header parameters, and ',' or '?'
            // may not appear in the URI (RFC 3261 §20.10; RFC 4475 cparam01, regbadct).
            let end = rest.find(';').unwrap_or(rest.len());
            let uri = rest[..end].trim_end();
            if uri.contains('?') || uri.contains(',') {
                return None;
            }
            (uri, false, &rest[end..])
        };
        // No trimming: whitespace inside `<>` is malformed (RFC 4475 badaspec).
        if uri.is_empty() || uri.chars().any(char::is_whitespace) {
            return None;
        }
        Some(NameAddr {
            display,
            uri: uri.to_string(),
            bracketed,
            params: parse_params(params_text)?,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

fn unescape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `*( SWS ";" SWS name [ SWS "=" SWS value ] )`, values a token, host or quoted string.
/// `None` when the text is not a parameter list.
pub fn parse_params(text: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut params = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        rest = rest.strip_prefix(';')?.trim_start();
        let name_end = rest
            .find(|c: char| c == '=' || c == ';' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if !is_token(name) {
            return None;
        }
        rest = rest[name_end..].trim_start();
        let value = if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            if let Some(q) = after.strip_prefix('"') {
                let end = closing_quote(q)?;
                rest = q[end + 1..].trim_start();
                Some(unescape_quoted(&q[..end]))
            } else {
                let end = after.find([';', ' ', '\t']).unwrap_or(after.len());
                let v = &after[..end];
                if v.is_empty() {
                    return None;
                }
                rest = after[end..].trim_start();
                Some(v.to_string())
            }
        } else {
            None
        };
        params.push((name.to_string(), value));
    }
    Some(params)
}

/// One Via value: `SIP/2.0/UDP host[:port];params`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    pub fn parse(text: &str) -> Option<Via> {
        let text = text.trim();
        let slash2 = text.match_indices('/').nth(1)?.0;
        let protocol = &text[..slash2];
        let (name, version) = protocol.split_once('/')?;
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return None;
        }
        let rest = text[slash2 + 1..].trim_start();
        let transport_end = rest.find(char::is_whitespace)?;
        let transport = rest[..transport_end].to_ascii_uppercase();
        if !is_token(&transport) {
            return None;
        }
        let rest = rest[transport_end..].trim_start();
        let sent_by_end = rest.find(';').unwrap_or(rest.len());
        let sent_by = rest[..sent_by_end].trim();
        let (host, port) = super::uri::split_host_port(sent_by).ok()?;
        Some(Via {
            transport,
            host,
            port,
            params: parse_params(&rest[sent_by_end..])?,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }
}

/// `CSeq: number method`, the number within 32 bits (RFC 3261 §8.1.1.5; RFC 4475 scalar02).
pub fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let mut parts = value.split_whitespace();
    let number = parse_u32(parts.next()?)?;
    let method = parts.next()?;
    if parts.next().is_some() || !is_token(method) {
        return None;
    }
    Some((number, method))
}

/// Option tags of every `Supported`/`Require` header given, lowercased.
pub fn option_tags<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r15_list_splitting_respects_brackets_and_quotes() {
        let v = r#""Bob, Jr." <sip:bob@h;a=1,2>;q=0.5, <sip:c@h>, sip:d@h;expires=60"#;
        assert_eq!(
            split_list(v),
            vec![
                r#""Bob, Jr." <sip:bob@h;a=1,2>;q=0.5"#,
                "<sip:c@h>",
                "sip:d@h;expires=60"
            ]
        );
    }

    #[test]
    fn r15_uri_params_vs_header_params_rfc4475_cparam() {
        let bare = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert_eq!(bare.uri, "sip:+19725552222@gw1.example.net");
        assert_eq!(bare.param("unknownparam"), Some(None));
        let inside = NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
        assert_eq!(inside.uri, "sip:+19725552222@gw1.example.net;unknownparam");
        assert!(inside.params.is_empty());
    }

    #[test]
    fn r15_quoted_params_and_display_names() {
        let c = NameAddr::parse(
            r#""Bob <the> Builder" <sip:bob@[2001:db8::1]:5060> ; +sip.instance="<urn:uuid:1>" ;reg-id=1;ob"#,
        )
        .unwrap();
        assert_eq!(c.display.as_deref(), Some("Bob <the> Builder"));
        assert_eq!(c.uri, "sip:bob@[2001:db8::1]:5060");
        assert_eq!(c.param("+sip.instance"), Some(Some("<urn:uuid:1>")));
        assert_eq!(c.param("reg-id"), Some(Some("1")));
        assert_eq!(c.param("ob"), Some(None));
    }

    #[test]
    fn addr_spec_with_headers_is_rejected_rfc4475_regbadct() {
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_none());
        let ok = NameAddr::parse("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>").unwrap();
        assert_eq!(
            ok.uri,
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
        );
    }

    #[test]
    fn via_parsing() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK77;rport").unwrap();
        assert_eq!(
            (v.transport.as_str(), v.host.as_str(), v.port),
            ("UDP", "[2001:db8::9]", Some(5070))
        );
        assert_eq!(v.branch(), Some("z9hG4bK77"));
        assert_eq!(v.param("rport"), Some(None));
        let v = Via::parse("SIP / 2.0 / TCP host.example.com ;branch=x").unwrap();
        assert_eq!((v.transport.as_str(), v.port), ("TCP", None));
        assert!(Via::parse("SIP/3.0/UDP h").is_none());
        assert!(Via::parse("garbage").is_none());
    }

    #[test]
    fn cseq_parsing() {
        assert_eq!(parse_cseq("8 REGISTER"), Some((8, "REGISTER")));
        assert_eq!(parse_cseq("36893488147419103232 REGISTER"), None);
        assert_eq!(parse_cseq("REGISTER"), None);
    }
}
