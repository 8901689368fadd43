//! A request checked for what every request must carry (SPEC R12): To, From, Call-ID, CSeq
//! (whose method matches the request's) and Via, and the SIP version. What fails here is
//! answered 400 (or 505) by the caller, naming the problem.

use super::header::{NameAddr, Via, parse_cseq, split_list};
use super::methods::is_known_method;
use super::uri::Uri;
use super::wire::{Message, StartLine};
use std::borrow::Cow;

/// Longest Call-ID stored (Kamailio's 255): the parser, not the database, enforces it.
pub const MAX_CALL_ID: usize = 255;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub call_id: String,
    pub cseq: u32,
    pub from: NameAddr,
    pub to: NameAddr,
    /// Every Via value, top first.
    pub vias: Vec<Via>,
    pub message: Message,
}

/// Why a request cannot be processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not even a Via to answer along (SPEC R11): dropped and counted.
    Drop(&'static str),
    /// Answer with this status line.
    Answer {
        code: u16,
        reason: Cow<'static, str>,
    },
}

impl Rejection {
    fn bad(reason: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection::Answer {
            code: 400,
            reason: reason.into(),
        }
    }
}

/// A message that is not a processable request, kept so that the answer can copy its headers.
#[derive(Debug)]
pub struct Invalid {
    pub message: Message,
    pub rejection: Rejection,
}

impl Request {
    pub fn from_message(message: Message) -> Result<Request, Box<Invalid>> {
        match check(&message) {
            Ok(parts) => {
                let (method, uri, call_id, cseq, from, to, vias) = parts;
                Ok(Request {
                    method,
                    uri,
                    call_id,
                    cseq,
                    from,
                    to,
                    vias,
                    message,
                })
            }
            Err(rejection) => Err(Box::new(Invalid { message, rejection })),
        }
    }

    pub fn top_via(&self) -> &Via {
        // `check` guarantees at least one.
        &self.vias[0]
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.message.header(name)
    }
}

type Parts = (String, String, String, u32, NameAddr, NameAddr, Vec<Via>);

fn check(message: &Message) -> Result<Parts, Rejection> {
    let StartLine::Request {
        method,
        uri,
        version,
    } = &message.start
    else {
        return Err(Rejection::bad("Not a request"));
    };
    // RFC 4475 guides the order: what makes a message unanswerable, then framing and
    // request-line syntax, then the version, then the mandatory headers.
    if message.header("Via").is_none() {
        return Err(Rejection::Drop("no Via header"));
    }
    if let Some(defect) = &message.defect {
        return Err(Rejection::bad(defect.clone()));
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(Rejection::Answer {
            code: 505,
            reason: "Version Not Supported".into(),
        });
    }
    match Uri::parse(uri) {
        Ok(u) if u.scheme.is_sip() && u.headers.is_some() => {
            return Err(Rejection::bad("Headers in Request-URI"));
        }
        Ok(_) => {}
        Err(_) => return Err(Rejection::bad("Malformed Request-URI")),
    }
    let one = |name: &'static str| -> Result<&str, Rejection> {
        let mut values = message.headers_named(name);
        let first = values
            .next()
            .ok_or_else(|| Rejection::bad(format!("Missing {name} header")))?;
        if values.next().is_some() {
            return Err(Rejection::bad(format!("Multiple {name} headers")));
        }
        Ok(first)
    };
    let call_id = one("Call-ID")?;
    if call_id.is_empty() || call_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Rejection::bad("Invalid Call-ID"));
    }
    if call_id.len() > MAX_CALL_ID {
        return Err(Rejection::bad("Callid too long"));
    }
    let (cseq, cseq_method) =
        parse_cseq(one("CSeq")?).ok_or_else(|| Rejection::bad("Invalid CSeq"))?;
    // An unknown method is answered 501 whatever its CSeq says (RFC 4475 mismatch02).
    if cseq_method != method && is_known_method(method) {
        return Err(Rejection::bad("CSeq method does not match"));
    }
    let from =
        NameAddr::parse(one("From")?).ok_or_else(|| Rejection::bad("Invalid From header"))?;
    let to = NameAddr::parse(one("To")?).ok_or_else(|| Rejection::bad("Invalid To header"))?;
    let mut vias = Vec::new();
    for value in message.headers_named("Via") {
        for item in split_list(value) {
            vias.push(Via::parse(item).ok_or_else(|| Rejection::bad("Invalid Via header"))?);
        }
    }
    if vias.is_empty() {
        return Err(Rejection::bad("Missing Via header"));
    }
    Ok((
        method.clone(),
        uri.clone(),
        call_id.to_string(),
        cseq,
        from,
        to,
        vias,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::wire::parse;

    fn request(text: &str) -> Result<Request, (u16, String)> {
        Request::from_message(parse(text.as_bytes()).unwrap()).map_err(|e| match e.rejection {
            Rejection::Answer { code, reason } => (code, reason.into_owned()),
            Rejection::Drop(why) => (0, why.to_string()),
        })
    }

    const OK: &str = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1, SIP/2.0/TCP p\r\n\
        To: sip:a@example.com\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: c\r\nCSeq: 7 REGISTER\r\n\r\n";

    #[test]
    fn r12_accepts_a_complete_request() {
        let r = request(OK).unwrap();
        assert_eq!((r.cseq, r.call_id.as_str(), r.vias.len()), (7, "c", 2));
        assert_eq!(r.to.uri, "sip:a@example.com");
    }

    #[test]
    fn r12_rejects_missing_or_bad_headers() {
        for (from, to, reason) in [
            ("Call-ID: c\r\n", "", "Missing Call-ID header"),
            (
                "CSeq: 7 REGISTER",
                "CSeq: 7 INVITE",
                "CSeq method does not match",
            ),
            (
                "CSeq: 7 REGISTER",
                "CSeq: 36893488147419103232 REGISTER",
                "Invalid CSeq",
            ),
            ("To: sip:a@example.com\r\n", "", "Missing To header"),
            (
                "REGISTER sip:example.com",
                "REGISTER <sip:example.com>",
                "Malformed Request-URI",
            ),
        ] {
            let r = request(&OK.replace(from, to)).unwrap_err();
            assert_eq!(r, (400, reason.to_string()));
        }
        let r = request(&OK.replace("SIP/2.0\r\n", "SIP/7.0\r\n")).unwrap_err();
        assert_eq!(r.0, 505);
        let no_via = OK.replace("Via: SIP/2.0/UDP h;branch=z9hG4bK1, SIP/2.0/TCP p\r\n", "");
        assert_eq!(
            request(&no_via).unwrap_err().0,
            0,
            "no Via: nothing to answer along"
        );
    }
}
