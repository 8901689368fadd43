//! Requests we originate (NOTIFY, SUBSCRIBE, PUBLISH): one writer for the headers every such
//! request carries (RFC 3261 §8.1.1), so that the roles only say what differs. The values are
//! ours or were parsed from a message already; nothing here escapes or checks them.

use super::Transport;
use std::fmt::Write;

/// One request outside or inside a dialog. `to_tag` is `None` outside a dialog.
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// The Request-URI: the dialog's remote target, or the AoR outside a dialog.
    pub target: &'a str,
    pub transport: Transport,
    /// Our Via `sent-by` (host:port).
    pub sent_by: &'a str,
    pub branch: &'a str,
    /// The dialog's route set, already joined with commas.
    pub route_set: Option<&'a str>,
    pub from: &'a str,
    pub from_tag: &'a str,
    pub to: &'a str,
    pub to_tag: Option<&'a str>,
    pub call_id: &'a str,
    /// As the tables store it (RFC 3261 keeps it below 2^31).
    pub cseq: i64,
    /// The method's own headers, in order (Contact, Event, Expires, ...).
    pub headers: &'a [(&'a str, &'a str)],
    /// `(Content-Type, body)`.
    pub body: Option<(&'a str, &'a str)>,
}

impl Outgoing<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = String::with_capacity(512 + self.body.map_or(0, |(_, b)| b.len()));
        // Writing to a String cannot fail.
        let _ = write!(
            m,
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {sent_by};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n",
            method = self.method,
            target = self.target,
            via = self.transport.as_str().to_ascii_uppercase(),
            sent_by = self.sent_by,
            branch = self.branch,
        );
        if let Some(set) = self.route_set.filter(|r| !r.is_empty()) {
            let _ = write!(m, "Route: {set}\r\n");
        }
        let _ = write!(
            m,
            "From: <{}>;tag={}\r\nTo: <{}>",
            self.from, self.from_tag, self.to
        );
        if let Some(tag) = self.to_tag {
            let _ = write!(m, ";tag={tag}");
        }
        let _ = write!(
            m,
            "\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.call_id, self.cseq, self.method
        );
        for (name, value) in self.headers {
            let _ = write!(m, "{name}: {value}\r\n");
        }
        let _ = write!(m, "User-Agent: {}\r\n", super::response::SERVER);
        let body = match self.body {
            Some((content_type, body)) => {
                let _ = write!(m, "Content-Type: {content_type}\r\n");
                body
            }
            None => "",
        };
        let _ = write!(m, "Content-Length: {}\r\n\r\n{body}", body.len());
        m.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::wire::{StartLine, parse};

    fn sample<'a>(
        headers: &'a [(&'a str, &'a str)],
        body: Option<(&'a str, &'a str)>,
    ) -> Outgoing<'a> {
        Outgoing {
            method: "NOTIFY",
            target: "sip:ue@192.0.2.1:5060",
            transport: Transport::Tcp,
            sent_by: "198.51.100.1:5060",
            branch: "z9hG4bK-1",
            route_set: Some("<sip:p.example.com;lr>"),
            from: "sip:u@example.com",
            from_tag: "a",
            to: "sip:p@example.com",
            to_tag: Some("b"),
            call_id: "c@h",
            cseq: 7,
            headers,
            body,
        }
    }

    #[test]
    fn writes_a_request_our_parser_reads_back() {
        let bytes = sample(
            &[("Event", "reg")],
            Some(("application/reginfo+xml", "<x/>")),
        )
        .to_bytes();
        let m = parse(&bytes).unwrap();
        assert!(
            matches!(m.start, StartLine::Request { ref method, ref uri, .. }
            if method == "NOTIFY" && uri == "sip:ue@192.0.2.1:5060")
        );
        assert_eq!(
            m.header("Via"),
            Some("SIP/2.0/TCP 198.51.100.1:5060;branch=z9hG4bK-1;rport")
        );
        assert_eq!(m.header("Route"), Some("<sip:p.example.com;lr>"));
        assert_eq!(m.header("From"), Some("<sip:u@example.com>;tag=a"));
        assert_eq!(m.header("To"), Some("<sip:p@example.com>;tag=b"));
        assert_eq!(m.header("CSeq"), Some("7 NOTIFY"));
        assert_eq!(m.header("Event"), Some("reg"));
        assert_eq!(m.header("Content-Type"), Some("application/reginfo+xml"));
        assert_eq!(m.body, b"<x/>");
    }

    #[test]
    fn outside_a_dialog_no_to_tag_route_or_body() {
        let mut o = sample(&[], None);
        o.to_tag = None;
        o.route_set = Some("");
        let bytes = o.to_bytes();
        let m = parse(&bytes).unwrap();
        assert_eq!(m.header("To"), Some("<sip:p@example.com>"));
        assert_eq!(m.header("Route"), None);
        assert_eq!(m.header("Content-Type"), None);
        assert_eq!(m.header("Content-Length"), Some("0"));
    }
}
