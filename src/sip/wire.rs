//! From bytes to a SIP message (RFC 3261 §7): start line, header list, body.
//!
//! rsip 0.4 misparses what real clients send — compact header names, folded lines, whitespace
//! before the colon, truncated header blocks, extension methods (research/rust-deps.md §1) — so
//! inbound messages are split here, leniently where RFC 3261 allows it and with a recorded
//! `defect` where it does not, so the caller can still answer 400. Header *values* are parsed
//! by `header.rs`. Nothing here panics on any input (a property test feeds it random bytes).

use std::borrow::Cow;

/// Longest single (unfolded) header line accepted.
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: String,
        uri: String,
        version: String,
    },
    Response {
        code: u16,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Full, canonical name for the headers we know (compact forms expanded), else as sent.
    pub name: String,
    /// Unfolded and trimmed.
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// Why the message is malformed although it could be split far enough to answer (a 400
    /// reason phrase), if it is.
    pub defect: Option<Cow<'static, str>>,
}

/// Input that is not a message one could answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Only CRLFs: a keep-alive (RFC 5626), not an error.
    KeepAlive,
    /// Nothing recognizable as a SIP start line and headers: dropped and counted (SPEC R11).
    Unparseable(&'static str),
}

impl Message {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// First header of that name (case-insensitive; compact forms already expanded).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every header of that name, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Serializes the message with a Content-Length that matches its body (any Content-Length
    /// header it had is replaced).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request {
                method,
                uri,
                version,
            } => out.extend_from_slice(format!("{method} {uri} {version}\r\n").as_bytes()),
            StartLine::Response { code, reason } => {
                out.extend_from_slice(format!("SIP/2.0 {code} {reason}\r\n").as_bytes())
            }
        }
        for h in self.headers.iter().filter(|h| h.name != "Content-Length") {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn mark(&mut self, defect: &'static str) {
        if self.defect.is_none() {
            self.defect = Some(Cow::Borrowed(defect));
        }
    }
}

/// Splits one message. `data` is a whole datagram, or one framed TCP message.
pub fn parse(data: &[u8]) -> Result<Message, WireError> {
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(WireError::KeepAlive)?;
    let data = &data[start..];
    // A datagram that ends right after a header line lacks only the empty line: take its end
    // as the end of the headers (RFC 4475 baddn). One cut mid-line is malformed.
    let (head, body, terminated) = match find_header_end(data) {
        Some((head_len, body_start)) => (&data[..head_len], &data[body_start..], true),
        None => match data
            .strip_suffix(b"\r\n")
            .or_else(|| data.strip_suffix(b"\n"))
        {
            Some(head) => (head, &[][..], true),
            None => (data, &[][..], false),
        },
    };
    let (text, utf8) = match std::str::from_utf8(head) {
        Ok(t) => (Cow::Borrowed(t), true),
        Err(_) => (String::from_utf8_lossy(head), false),
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().ok_or(WireError::Unparseable("empty"))?;
    let (start, start_defect) = parse_start_line(first)?;
    let mut message = Message {
        start,
        headers: Vec::new(),
        body: Vec::new(),
        defect: start_defect.map(Cow::Borrowed),
    };
    if !utf8 {
        message.mark("Invalid UTF-8 in header section");
    }
    if !terminated {
        message.mark("Header section not terminated");
    }
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // A folded line continues the previous header (RFC 3261 §7.3.1).
            match message.headers.last_mut() {
                Some(h) if h.value.len() + line.len() <= MAX_HEADER_LINE => {
                    let more = line.trim();
                    if !more.is_empty() {
                        if !h.value.is_empty() {
                            h.value.push(' ');
                        }
                        h.value.push_str(more);
                    }
                }
                Some(_) => message.mark("Header line too long"),
                None => message.mark("Continuation line before any header"),
            }
            continue;
        }
        if line.len() > MAX_HEADER_LINE {
            message.mark("Header line too long");
            continue;
        }
        if message.headers.len() >= MAX_HEADERS {
            message.mark("Too many headers");
            break;
        }
        match line.split_once(':') {
            Some((name, value)) if is_token(name.trim_end()) => message.headers.push(Header {
                name: canonical_name(name.trim_end()),
                value: value.trim().to_string(),
            }),
            _ => message.mark("Malformed header line"),
        }
    }
    message.body = body.to_vec();
    apply_content_length(&mut message);
    Ok(message)
}

/// Where the header section ends: (its length, where the body starts). Accepts CRLFCRLF and,
/// leniently, LFLF.
fn find_header_end(data: &[u8]) -> Option<(usize, usize)> {
    for (i, &b) in data.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        // The header section ends before this line's own CR, if it has one.
        let head_len = if i > 0 && data[i - 1] == b'\r' {
            i - 1
        } else {
            i
        };
        match (data.get(i + 1), data.get(i + 2)) {
            (Some(b'\n'), _) => return Some((head_len, i + 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((head_len, i + 3)),
            _ => {}
        }
    }
    None
}

fn parse_start_line(line: &str) -> Result<(StartLine, Option<&'static str>), WireError> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        let _version = parts.next();
        let code = parts
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..=699).contains(c))
            .ok_or(WireError::Unparseable("bad status line"))?;
        let reason = parts.next().unwrap_or("").to_string();
        return Ok((StartLine::Response { code, reason }, None));
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let method = parts.first().copied().unwrap_or("");
    if !is_token(method) {
        return Err(WireError::Unparseable("bad request line"));
    }
    // Exactly METHOD SP URI SP SIP-Version (RFC 3261 §7.1); anything else is answerable but
    // malformed (RFC 4475 lwsruri, lwsstart).
    let (uri, version, defect) = match parts.as_slice() {
        [_, uri, version] if !uri.is_empty() && version.starts_with("SIP/") => {
            (uri.to_string(), version.to_string(), None)
        }
        [_, .., last] if last.starts_with("SIP/") => {
            let uri = parts[1..parts.len() - 1].join(" ");
            (uri, last.to_string(), Some("Malformed Request-Line"))
        }
        _ => (
            parts.get(1).copied().unwrap_or("").to_string(),
            String::new(),
            Some("Malformed Request-Line"),
        ),
    };
    Ok((
        StartLine::Request {
            method: method.to_string(),
            uri,
            version,
        },
        defect,
    ))
}

/// RFC 3261 §18.3: the body is exactly Content-Length bytes; extra bytes of a datagram are
/// discarded, missing ones make the message malformed.
fn apply_content_length(message: &mut Message) {
    let values: Vec<&str> = message.headers_named("Content-Length").collect();
    let Some(first) = values.first() else { return };
    if values.iter().any(|v| v != first) {
        message.mark("Conflicting Content-Length");
        return;
    }
    match parse_u32(first) {
        Some(len) if (len as usize) <= message.body.len() => message.body.truncate(len as usize),
        Some(_) => message.mark("Content-Length exceeds message"),
        None => message.mark("Invalid Content-Length"),
    }
}

/// A decimal number fitting in 32 bits, digits only.
pub fn parse_u32(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<u64>().ok().and_then(|v| u32::try_from(v).ok())
}

/// RFC 3261 `token`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
                )
        })
}

/// Expands compact forms (RFC 3261 §7.3.3 and extensions) and spells known headers the usual
/// way; unknown names are kept as sent.
fn canonical_name(name: &str) -> String {
    const KNOWN: &[(&str, &str)] = &[
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("e", "Content-Encoding"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("f", "From"),
        ("s", "Subject"),
        ("k", "Supported"),
        ("t", "To"),
        ("v", "Via"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("j", "Reject-Contact"),
        ("a", "Accept-Contact"),
        ("d", "Request-Disposition"),
        ("y", "Identity"),
        ("n", "Identity-Info"),
        ("call-id", "Call-ID"),
        ("contact", "Contact"),
        ("content-length", "Content-Length"),
        ("content-type", "Content-Type"),
        ("from", "From"),
        ("to", "To"),
        ("via", "Via"),
        ("cseq", "CSeq"),
        ("expires", "Expires"),
        ("supported", "Supported"),
        ("require", "Require"),
        ("path", "Path"),
        ("event", "Event"),
        ("max-forwards", "Max-Forwards"),
        ("user-agent", "User-Agent"),
        ("service-route", "Service-Route"),
        ("p-associated-uri", "P-Associated-URI"),
        ("route", "Route"),
        ("record-route", "Record-Route"),
    ];
    KNOWN
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or_else(|| name.to_string(), |(_, v)| (*v).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
        To: <sip:alice@example.com>\r\n\
        From: <sip:alice@example.com>;tag=1\r\n\
        Call-ID: abc\r\n\
        CSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@192.0.2.1>\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn splits_a_request() {
        let m = parse(REGISTER.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("REGISTER"));
        assert_eq!(m.header("call-id"), Some("abc"));
        assert_eq!(m.headers.len(), 7);
        assert!(m.defect.is_none());
    }

    #[test]
    fn r15_compact_names_folding_and_space_before_colon() {
        let text = "REGISTER sip:example.com SIP/2.0\r\n\
            v: SIP/2.0/UDP h;branch=z9hG4bK2\r\n\
            i: xyz\r\n\
            m: <sip:a@h>\r\n  ;expires=60\r\n\
            Subject : hi\r\n\
            l: 0\r\n\r\n";
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(m.header("Call-ID"), Some("xyz"));
        assert_eq!(m.header("Contact"), Some("<sip:a@h> ;expires=60"));
        assert_eq!(m.header("Subject"), Some("hi"));
        assert_eq!(m.header("Via"), Some("SIP/2.0/UDP h;branch=z9hG4bK2"));
    }

    #[test]
    fn body_is_cut_to_content_length_and_short_bodies_are_defects() {
        let mut text = REGISTER.replace("Content-Length: 0", "Content-Length: 4");
        text.push_str("bodyEXTRA");
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(m.body, b"body");
        let short = REGISTER.replace("Content-Length: 0", "Content-Length: 40");
        assert!(parse(short.as_bytes()).unwrap().defect.is_some());
        let negative = REGISTER.replace("Content-Length: 0", "Content-Length: -1");
        assert!(parse(negative.as_bytes()).unwrap().defect.is_some());
    }

    #[test]
    fn keepalives_responses_and_garbage() {
        assert_eq!(parse(b"\r\n\r\n"), Err(WireError::KeepAlive));
        let r = parse(b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n").unwrap();
        assert!(!r.is_request());
        assert!(parse(b"\x00\x01\x02").is_err());
        assert!(parse(b"<html>").is_err());
    }

    #[test]
    fn malformed_request_lines_are_answerable_defects() {
        let m = parse(b"INVITE sip:a@b; lr SIP/2.0\r\nCall-ID: x\r\n\r\n").unwrap();
        assert_eq!(m.defect.as_deref(), Some("Malformed Request-Line"));
        let m = parse(b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n").unwrap();
        assert_eq!(m.defect.as_deref(), Some("Malformed header line"));
    }

    #[test]
    fn serializes_back_with_a_fresh_content_length() {
        let mut m = parse(REGISTER.as_bytes()).unwrap();
        m.body = b"xyz".to_vec();
        let again = parse(&m.to_bytes()).unwrap();
        assert_eq!(again.body, b"xyz");
        assert_eq!(again.header("Content-Length"), Some("3"));
        assert_eq!(again.headers.len(), m.headers.len());
    }

    #[test]
    fn u32_parsing_rejects_out_of_range() {
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        assert_eq!(parse_u32("36893488147419103232"), None);
        assert_eq!(parse_u32("-1"), None);
        assert_eq!(parse_u32(""), None);
    }
}
