//! Responses to a request (RFC 3261 §8.2.6): the request's Via, From, To (with a tag), Call-ID
//! and CSeq, the role's headers, and a correct Content-Length. Serialized by rsip, with every
//! reason phrase set explicitly (rsip would print `IntervalTooBrief`).

use super::wire::Message;
use std::borrow::Cow;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: Cow<'static, str>,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: Vec<u8>,
}

/// The `Server` header every response carries.
pub const SERVER: &str = concat!("registrar/", env!("CARGO_PKG_VERSION"));

impl Response {
    /// A response to `request` carrying its dialog-identifying headers.
    pub fn to(request: &Message, code: u16, reason: impl Into<Cow<'static, str>>) -> Response {
        let mut headers: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(12);
        for h in &request.headers {
            let name = match h.name.as_str() {
                "Via" => "Via",
                "From" => "From",
                "Call-ID" => "Call-ID",
                "CSeq" => "CSeq",
                "To" => "To",
                _ => continue,
            };
            let value = if name == "To" && code > 100 {
                with_to_tag(&h.value, request)
            } else {
                h.value.clone()
            };
            headers.push((Cow::Borrowed(name), value));
        }
        headers.push((Cow::Borrowed("Server"), SERVER.to_string()));
        Response {
            code,
            reason: reason.into(),
            headers,
            body: Vec::new(),
        }
    }

    /// A response received from elsewhere, to be passed on as it is (a proxy's relay).
    pub fn relayed(message: &Message) -> Option<Response> {
        let super::wire::StartLine::Response { code, reason } = &message.start else {
            return None;
        };
        Some(Response {
            code: *code,
            reason: Cow::Owned(reason.clone()),
            headers: message
                .headers
                .iter()
                .filter(|h| h.name != "Content-Length")
                .map(|h| (Cow::Owned(h.name.clone()), h.value.clone()))
                .collect(),
            body: message.body.clone(),
        })
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((Cow::Borrowed(name), value.into()));
        self
    }

    pub fn with_body(mut self, content_type: &'static str, body: Vec<u8>) -> Response {
        self.headers
            .push((Cow::Borrowed("Content-Type"), content_type.to_string()));
        self.body = body;
        self
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut headers = rsip::Headers::default();
        for (name, value) in &self.headers {
            headers.push(rsip::Header::Other(name.to_string(), value.clone()));
        }
        headers.push(rsip::Header::Other(
            "Content-Length".into(),
            self.body.len().to_string(),
        ));
        let response = rsip::Response {
            status_code: rsip::StatusCode::Other(self.code, self.reason.to_string()),
            version: rsip::Version::V2,
            headers,
            body: self.body.clone(),
        };
        response.to_string().into_bytes()
    }
}

/// Adds a To tag unless the request's To has one. The tag is derived from the request so that
/// every instance answers a retransmission with the same tag.
fn with_to_tag(to: &str, request: &Message) -> String {
    if super::header::NameAddr::parse(to).is_some_and(|n| n.param("tag").is_some()) {
        return to.to_string();
    }
    format!("{to};tag={}", local_tag(request))
}

/// The To tag our responses to `request` carry when it had none: a hash of its Call-ID, CSeq
/// and From, so that a retransmission gets the same tag (and a SUBSCRIBE's dialog, SPEC E1,
/// the same local tag).
pub fn local_tag(request: &Message) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for h in request
        .headers
        .iter()
        .filter(|h| matches!(h.name.as_str(), "Call-ID" | "CSeq" | "From"))
    {
        for b in h.value.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// RFC 1123 date for the `Date` header (RFC 3261 §20.17).
pub fn http_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::wire::parse;

    #[test]
    fn copies_dialog_headers_adds_tag_and_length() {
        let req = parse(
            b"REGISTER sip:example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
              Via: SIP/2.0/UDP p;branch=z9hG4bK0\r\nt: <sip:a@example.com>\r\nf: <sip:a@example.com>;tag=x\r\n\
              i: cid\r\nCSeq: 2 REGISTER\r\nl: 0\r\n\r\n",
        )
        .unwrap();
        let bytes = Response::to(&req, 423, "Interval Too Brief")
            .header("Min-Expires", "60")
            .to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
            "{text}"
        );
        assert!(text.contains(
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK0\r\n"
        ));
        assert!(text.contains("To: <sip:a@example.com>;tag="));
        assert!(text.contains("Call-ID: cid\r\n"));
        assert!(text.contains("Min-Expires: 60\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        let again = Response::to(&req, 200, "OK")
            .header_value("To")
            .map(str::to_string);
        assert_eq!(
            again,
            Response::to(&req, 200, "OK")
                .header_value("To")
                .map(str::to_string)
        );
    }

    #[test]
    fn date_is_rfc1123() {
        use chrono::TimeZone;
        let t = chrono::Utc
            .with_ymd_and_hms(2010, 11, 13, 23, 29, 0)
            .unwrap();
        assert_eq!(http_date(t), "Sat, 13 Nov 2010 23:29:00 GMT");
    }
}
