//! What a user agent server checks before a role sees a request (RFC 3261 §8.2, SPEC R11),
//! in the order RFC 4475's torture tests expect: ACK is never answered, an unknown method is
//! 501, a known one the role does not handle 405, then the Request-URI scheme (416) and
//! `Require` (420); OPTIONS is a keep-alive probe (200).

use super::header::option_tags;
use super::request::Request;
use super::response::Response;
use super::uri::Uri;

const KNOWN: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "MESSAGE",
    "INFO",
    "PRACK",
    "UPDATE",
    "REFER",
];

pub fn is_known_method(method: &str) -> bool {
    KNOWN.contains(&method)
}

/// What a role advertises and handles.
pub struct Capabilities {
    /// Methods the role handles itself (besides OPTIONS, answered here).
    pub handles: &'static [&'static str],
    /// The `Allow` header value.
    pub allow: &'static str,
    /// Option tags accepted in `Require`.
    pub supported: &'static [&'static str],
}

/// `None`: the role handles the request. `Some(answer)`: the answer (possibly no answer).
pub fn triage(request: &Request, caps: &Capabilities) -> Option<Option<Response>> {
    let method = request.method.as_str();
    let msg = &request.message;
    if method == "ACK" {
        return Some(None);
    }
    if !is_known_method(method) {
        return Some(Some(
            Response::to(msg, 501, "Not Implemented").header("Allow", caps.allow),
        ));
    }
    if method != "OPTIONS" && !caps.handles.contains(&method) {
        return Some(Some(
            Response::to(msg, 405, "Method Not Allowed").header("Allow", caps.allow),
        ));
    }
    if !Uri::parse(&request.uri).is_ok_and(|u| u.scheme.is_sip()) {
        return Some(Some(Response::to(msg, 416, "Unsupported URI Scheme")));
    }
    let unsupported: Vec<String> = option_tags(msg.headers_named("Require"))
        .into_iter()
        .filter(|t| !caps.supported.contains(&t.as_str()))
        .collect();
    if !unsupported.is_empty() {
        return Some(Some(
            Response::to(msg, 420, "Bad Extension").header("Unsupported", unsupported.join(", ")),
        ));
    }
    if method == "OPTIONS" && !caps.handles.contains(&"OPTIONS") {
        return Some(Some(
            Response::to(msg, 200, "OK")
                .header("Allow", caps.allow)
                .header("Accept", "application/sdp")
                .header("Supported", caps.supported.join(", ")),
        ));
    }
    None
}
