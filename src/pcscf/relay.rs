//! The REGISTER relay (SPEC P2): what this P-CSCF adds to a UE's REGISTER on its way to the
//! S-CSCF — its Via, its Path, `Require: path`/`Supported: path`, one hop less in
//! Max-Forwards — and what it takes off the answer on the way back (its Via).

use crate::sip::Transport;
use crate::sip::header::{NameAddr, option_tags, split_list};
use crate::sip::request::Request;
use crate::sip::uri::Uri;
use crate::sip::wire::{Header, Message};

/// How this P-CSCF names itself: the URI of `--pcscf-uri`, used in `Path` and in
/// `P-Asserted-Identity` so that both always name the same node (SPEC P2, P4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `--pcscf-uri` as given, e.g. `sip:pcscf.example.com:5060`.
    pub uri: String,
    /// `host[:port]` of that URI: our Via sent-by.
    pub sent_by: String,
    /// The Path value we insert: the URI with a user part and `;lr`.
    pub path: String,
}

impl Identity {
    pub fn from_uri(text: &str) -> Result<Identity, String> {
        let uri = Uri::parse(text).map_err(|e| format!("--pcscf-uri '{text}': {e}"))?;
        if !uri.scheme.is_sip() {
            return Err(format!("--pcscf-uri '{text}' is not a SIP URI"));
        }
        let sent_by = match uri.port {
            Some(p) => format!("{}:{p}", uri.host),
            None => uri.host.clone(),
        };
        // A Kamailio S-CSCF authorizes our PUBLISH if the P-Asserted-Identity, minus `sip:`,
        // occurs in the Path stored at registration: keep the host:port exactly as given.
        let user = uri.user.clone().unwrap_or_else(|| "term".into());
        Ok(Identity {
            uri: text.to_string(),
            sent_by: sent_by.clone(),
            path: format!("<sip:{user}@{sent_by};lr>"),
        })
    }
}

/// Why a REGISTER cannot be relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayError {
    TooManyHops,
}

/// The UE's REGISTER as it leaves for the S-CSCF.
pub fn relayed_register(
    request: &Request,
    me: &Identity,
    transport: Transport,
    branch: &str,
) -> Result<Vec<u8>, RelayError> {
    let mut message = request.message.clone();
    let hops = match message.header("Max-Forwards").map(str::trim) {
        Some(v) => v.parse::<u32>().unwrap_or(70).min(255),
        None => 71,
    };
    if hops == 0 {
        return Err(RelayError::TooManyHops);
    }
    set(&mut message, "Max-Forwards", (hops - 1).to_string());
    drop_routes_to(&mut message, me);
    add_option_tag(&mut message, "Require");
    add_option_tag(&mut message, "Supported");
    let via = Header {
        name: "Via".into(),
        value: format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport.as_str().to_ascii_uppercase(),
            me.sent_by
        ),
    };
    let path = Header {
        name: "Path".into(),
        value: me.path.clone(),
    };
    message.headers.insert(0, via);
    let first_path = message
        .headers
        .iter()
        .position(|h| h.name == "Path")
        .unwrap_or(1);
    message.headers.insert(first_path, path);
    Ok(message.to_bytes())
}

/// The S-CSCF's response without our Via, for the UE.
pub fn without_top_via(mut response: Message) -> Message {
    if let Some(i) = response.headers.iter().position(|h| h.name == "Via") {
        let rest: Vec<String> = split_list(&response.headers[i].value)
            .into_iter()
            .skip(1)
            .map(str::to_string)
            .collect();
        if rest.is_empty() {
            response.headers.remove(i);
        } else {
            response.headers[i].value = rest.join(", ");
        }
    }
    response
}

fn set(message: &mut Message, name: &str, value: String) {
    match message
        .headers
        .iter_mut()
        .find(|h| h.name.eq_ignore_ascii_case(name))
    {
        Some(h) => h.value = value,
        None => message.headers.push(Header {
            name: name.to_string(),
            value,
        }),
    }
}

/// Adds the `path` option tag to `Require` or `Supported` unless it is there.
fn add_option_tag(message: &mut Message, name: &str) {
    if option_tags(message.headers_named(name))
        .iter()
        .any(|t| t == "path")
    {
        return;
    }
    match message
        .headers
        .iter_mut()
        .find(|h| h.name.eq_ignore_ascii_case(name))
    {
        Some(h) if !h.value.trim().is_empty() => h.value.push_str(", path"),
        Some(h) => h.value = "path".into(),
        None => message.headers.push(Header {
            name: name.to_string(),
            value: "path".into(),
        }),
    }
}

/// Loose routing: Route entries naming this P-CSCF have done their job.
fn drop_routes_to(message: &mut Message, me: &Identity) {
    let ours = |item: &str| {
        NameAddr::parse(item)
            .and_then(|n| Uri::parse(&n.uri).ok())
            .is_some_and(|u| {
                let hp = match u.port {
                    Some(p) => format!("{}:{p}", u.host),
                    None => u.host.clone(),
                };
                hp.eq_ignore_ascii_case(&me.sent_by)
            })
    };
    for h in message.headers.iter_mut().filter(|h| h.name == "Route") {
        let kept: Vec<&str> = split_list(&h.value)
            .into_iter()
            .filter(|i| !ours(i))
            .collect();
        h.value = kept.join(", ");
    }
    message
        .headers
        .retain(|h| h.name != "Route" || !h.value.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::wire::parse;

    fn register() -> Request {
        let text = "REGISTER sip:ims.example.com SIP/2.0\r\n\
            Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-ue;rport=5060;received=198.51.100.7\r\n\
            Max-Forwards: 70\r\n\
            Route: <sip:pcscf.example.com:5080;lr>\r\n\
            To: <sip:u@ims.example.com>\r\nFrom: <sip:u@ims.example.com>;tag=1\r\n\
            Call-ID: c1\r\nCSeq: 1 REGISTER\r\nSupported: gruu\r\n\
            Contact: <sip:u@198.51.100.7:5060>;expires=600\r\nContent-Length: 0\r\n\r\n";
        Request::from_message(parse(text.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn p2_relayed_register_carries_via_path_and_option_tags() {
        let me = Identity::from_uri("sip:pcscf.example.com:5080").unwrap();
        assert_eq!(me.path, "<sip:term@pcscf.example.com:5080;lr>");
        let bytes = relayed_register(&register(), &me, Transport::Udp, "z9hG4bK-p1").unwrap();
        let m = parse(&bytes).unwrap();
        let vias: Vec<&str> = m.headers_named("Via").collect();
        assert_eq!(
            vias[0],
            "SIP/2.0/UDP pcscf.example.com:5080;branch=z9hG4bK-p1;rport"
        );
        assert!(vias[1].contains("z9hG4bK-ue"));
        assert_eq!(
            m.header("Path"),
            Some("<sip:term@pcscf.example.com:5080;lr>")
        );
        assert_eq!(m.header("Require"), Some("path"));
        assert_eq!(m.header("Supported"), Some("gruu, path"));
        assert_eq!(m.header("Max-Forwards"), Some("69"));
        assert_eq!(m.header("Route"), None, "the Route naming us is consumed");
        assert_eq!(m.method(), Some("REGISTER"));
    }

    #[test]
    fn p2_response_loses_our_via() {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP p:5080;branch=z9hG4bK-p1, SIP/2.0/UDP ue;branch=z9hG4bK-ue\r\n\
            Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        let m = without_top_via(parse(text.as_bytes()).unwrap());
        assert_eq!(m.header("Via"), Some("SIP/2.0/UDP ue;branch=z9hG4bK-ue"));
    }
}
