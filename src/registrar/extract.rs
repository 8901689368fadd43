//! From a checked SIP request to the `Register` the decision works on: the AoR (R2), the
//! contacts with their parameters (R3, R5, R6, R9), Path (R10) — or the 400 that says what was
//! wrong with them.

use super::request::{Contacts, Refusal, Register, RequestedContact, Source};
use crate::sip::Origin;
use crate::sip::aor::{AorError, aor_of};
use crate::sip::header::{NameAddr, Via, split_list};
use crate::sip::request::Request;
use crate::sip::uri::{Scheme, Uri};
use crate::sip::wire::parse_u32;

/// Longest contact URI stored (Kamailio's `contact_max_size`, SPEC H3).
pub const MAX_CONTACT: usize = 512;
/// Longest `+sip.instance` stored: angle brackets counted, quotes not (SPEC H3).
pub const MAX_INSTANCE: usize = 256;
/// Longest Path and User-Agent stored.
const MAX_PATH: usize = 2048;
const MAX_USER_AGENT: usize = 255;

const CONTACT_PARSE: Refusal = Refusal::bad_request("Contact parse error");

/// What parsing a REGISTER is bounded by (SPEC R2, H3).
#[derive(Clone, Copy, Debug)]
pub struct ParseRules {
    pub case_sensitive: bool,
    /// Contacts one REGISTER may carry (`--max-contacts-per-register`).
    pub max_contacts_per_register: usize,
}

pub fn register_of(
    request: &Request,
    origin: &Origin,
    rules: ParseRules,
) -> Result<Register, Refusal> {
    let case_sensitive = rules.case_sensitive;
    let to =
        Uri::parse(&request.to.uri).map_err(|_| Refusal::bad_request("Error while parsing AOR"))?;
    let aor = aor_of(&to, case_sensitive).map_err(|e| match e {
        AorError::NotSip => Refusal::bad_request("To URI not SIP or SIPS"),
        AorError::NoUser => Refusal::bad_request("No username in To URI"),
        AorError::TooLong => Refusal::bad_request("Address Of Record too long"),
        AorError::Uri(_) => Refusal::bad_request("Error while parsing AOR"),
    })?;
    let contacts = contacts_of(request, rules.max_contacts_per_register)?;
    let expires_header = request.header("Expires").and_then(parse_u32);
    let path = path_of(request)?;
    let user_agent = request
        .header("User-Agent")
        .map(|ua| truncate(ua, MAX_USER_AGENT));
    Ok(Register {
        aor,
        call_id: request.call_id.clone(),
        cseq: request.cseq,
        contacts,
        expires_header,
        path,
        source: Some(Source {
            host: origin.peer_host(),
            port: origin.peer.port(),
            transport: origin.transport.uri_param().to_string(),
            differs_from_via: differs_from_via(request, origin),
        }),
        user_agent,
        socket: Some(origin.socket()),
        connection_id: if origin.transport.is_stream() {
            origin.connection_id
        } else {
            -1
        },
    })
}

fn contacts_of(request: &Request, max: usize) -> Result<Contacts, Refusal> {
    let values: Vec<&str> = request
        .message
        .headers_named("Contact")
        .flat_map(split_list)
        .collect();
    // H3: before anything else looks at them, so the work a REGISTER can cause is bounded.
    if values.len() > max {
        return Err(Refusal::bad_request("Too many contacts in REGISTER"));
    }
    if values.is_empty() {
        return Ok(Contacts::None);
    }
    if values.contains(&"*") {
        // R4: `*` must be the only contact.
        return if values.len() == 1 {
            Ok(Contacts::Wildcard)
        } else {
            Err(Refusal::STAR_CONTACTS)
        };
    }
    values
        .into_iter()
        .map(requested_contact)
        .collect::<Result<Vec<_>, _>>()
        .map(Contacts::List)
}

fn requested_contact(text: &str) -> Result<RequestedContact, Refusal> {
    let contact = NameAddr::parse(text).ok_or(CONTACT_PARSE)?;
    if contact.uri.len() > MAX_CONTACT {
        return Err(Refusal::bad_request("Contact/received too long"));
    }
    let uri = Uri::parse(&contact.uri).map_err(|_| CONTACT_PARSE)?;
    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
        return Err(CONTACT_PARSE);
    }
    // R3: an unusable expires is treated as absent.
    let expires = contact.param("expires").flatten().and_then(parse_u32);
    let q = match contact.param("q") {
        None => None,
        Some(value) => Some(
            parse_q(value.unwrap_or(""))
                .ok_or(Refusal::bad_request("Invalid q param in contact"))?,
        ),
    };
    let instance = match contact.param("+sip.instance") {
        // H3: the limit is on the value as stored (unquoted).
        Some(Some(v)) if v.len() > MAX_INSTANCE => {
            return Err(Refusal::bad_request("+sip.instance too long"));
        }
        // H7: we re-emit it inside quotes in every 200 OK for the AoR; a `"` or `\` in it
        // would inject parameters there, so it is refused rather than stored.
        Some(Some(v))
            if !v.is_empty() && !v.contains(|c: char| c.is_control() || c == '"' || c == '\\') =>
        {
            Some(v.to_string())
        }
        Some(_) => return Err(CONTACT_PARSE),
        None => None,
    };
    let reg_id = match (contact.param("reg-id"), &instance) {
        (Some(v), Some(_)) => Some(
            v.and_then(parse_u32)
                .filter(|&r| r > 0 && r <= i32::MAX as u32)
                .ok_or(Refusal::bad_request("Invalid Reg-Id number"))?,
        ),
        // reg-id only means something beside +sip.instance (RFC 5626 §4.2).
        _ => None,
    };
    let methods = contact.param("methods").flatten().map(methods_mask);
    Ok(RequestedContact {
        host: uri.host.to_ascii_lowercase(),
        port: uri.port,
        transport: uri.transport(),
        uri: contact.uri,
        expires,
        q,
        instance,
        reg_id,
        methods,
    })
}

/// R9 (Kamailio `nat_uac_test` 2 and 16): the source IP differs from the top Via's host (a
/// host name always does), or the source port from its port, 5060 when absent.
fn differs_from_via(request: &Request, origin: &Origin) -> bool {
    let Some(via) = request
        .message
        .header("Via")
        .and_then(|v| split_list(v).first().and_then(|top| Via::parse(top)))
    else {
        return true;
    };
    let host = via.host.trim_start_matches('[').trim_end_matches(']');
    let same_ip = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical() == origin.peer.ip().to_canonical());
    !same_ip || via.port.unwrap_or(5060) != origin.peer.port()
}

/// R10: every Path value, in order, joined with `,` as Kamailio stores them.
fn path_of(request: &Request) -> Result<Option<String>, Refusal> {
    let parse_error = Refusal::bad_request("Path parse error");
    let mut hops = Vec::new();
    for value in request.message.headers_named("Path") {
        for hop in split_list(value) {
            if hop.contains(|c: char| c.is_control()) {
                return Err(parse_error);
            }
            let addr = NameAddr::parse(hop).ok_or(parse_error.clone())?;
            Uri::parse(&addr.uri).map_err(|_| parse_error.clone())?;
            hops.push(hop);
        }
    }
    if hops.is_empty() {
        return Ok(None);
    }
    let path = hops.join(",");
    if path.len() > MAX_PATH {
        return Err(parse_error);
    }
    Ok(Some(path))
}

/// RFC 3261 qvalue: `0[.ddd]` or `1[.000]`, in thousandths.
pub fn parse_q(text: &str) -> Option<u16> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let milli = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(milli),
        "1" if milli == 0 => Some(1000),
        _ => None,
    }
}

/// Kamailio's method bitmask (`msg_parser.h`) of a `methods` param; unknown names are ignored.
fn methods_mask(list: &str) -> i32 {
    const BITS: &[(&str, i32)] = &[
        ("INVITE", 1),
        ("CANCEL", 2),
        ("ACK", 4),
        ("BYE", 8),
        ("INFO", 16),
        ("REGISTER", 32),
        ("SUBSCRIBE", 64),
        ("NOTIFY", 128),
        ("MESSAGE", 256),
        ("OPTIONS", 512),
        ("PRACK", 1024),
        ("UPDATE", 2048),
        ("REFER", 4096),
        ("PUBLISH", 8192),
    ];
    list.split(',')
        .filter_map(|m| BITS.iter().find(|(n, _)| n.eq_ignore_ascii_case(m.trim())))
        .fold(0, |mask, (_, bit)| mask | bit)
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r6_q_values() {
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        for bad in ["1.5", "2", "0.1234", "abc", "", "-0.5", ".5"] {
            assert_eq!(parse_q(bad), None, "{bad}");
        }
    }

    #[test]
    fn methods_param_maps_to_kamailio_bits() {
        assert_eq!(methods_mask("INVITE,ACK,BYE,MESSAGE"), 1 | 4 | 8 | 256);
        assert_eq!(methods_mask("invite, FOO"), 1);
    }

    #[test]
    fn contact_params() {
        let c = requested_contact(r#"<sip:a@[2001:db8::1]:5070;transport=tcp>;expires=99999999999;q=0.7;+sip.instance="<urn:uuid:1>";reg-id=2"#).unwrap();
        assert_eq!(c.uri, "sip:a@[2001:db8::1]:5070;transport=tcp");
        assert_eq!(
            (c.host.as_str(), c.port, c.transport.as_str()),
            ("[2001:db8::1]", Some(5070), "tcp")
        );
        assert_eq!(c.expires, None, "out of range expires is treated as absent");
        assert_eq!(c.q, Some(700));
        assert_eq!(
            (c.instance.as_deref(), c.reg_id),
            (Some("<urn:uuid:1>"), Some(2))
        );
        assert!(requested_contact("<sip:a@h>;q=2").is_err());
        assert!(requested_contact("<name:John_Smith>").is_err());
        assert!(requested_contact(&format!("<sip:{}@h>", "a".repeat(600))).is_err());
    }

    #[test]
    fn h3_h7_instance_is_bounded_and_never_carries_a_quote() {
        let with =
            |instance: &str| requested_contact(&format!("<sip:a@h>;+sip.instance=\"{instance}\""));
        let longest = format!("<urn:{}>", "a".repeat(MAX_INSTANCE - 6));
        assert_eq!(
            with(&longest).unwrap().instance.unwrap().len(),
            MAX_INSTANCE
        );
        let refusal = with(&format!("<urn:{}>", "a".repeat(MAX_INSTANCE - 5))).unwrap_err();
        assert_eq!(refusal.registrar_error, Some("+sip.instance too long"));
        assert!(with(r#"<urn:a\"b>"#).is_err(), "an escaped quote");
        assert!(with(r#"<urn:a\\b>"#).is_err(), "an escaped backslash");
        assert!(
            requested_contact("<sip:a@h\"x>").is_err(),
            "a quote in the URI"
        );
    }
}
