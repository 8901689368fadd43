//! RFC 3680 `application/reginfo+xml`: the documents a registrar NOTIFYs (SPEC E1, E2), the
//! partial document a P-CSCF PUBLISHes when a contact expired (SPEC P4), and the reading of
//! NOTIFY and PUBLISH bodies (SPEC P6, E3).

use super::response::Response;
use super::wire::Message;
use quick_xml::Reader;
use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use thiserror::Error;

pub const CONTENT_TYPE: &str = "application/reginfo+xml";

/// `None` when `message` is for the `reg` event package (RFC 3680); else the `489 Bad Event`
/// that answers it (SUBSCRIBE, NOTIFY, PUBLISH alike).
pub fn not_reg_event(message: &Message) -> Option<Response> {
    let package = message
        .header("Event")
        .and_then(|e| e.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    (!package.eq_ignore_ascii_case("reg"))
        .then(|| Response::to(message, 489, "Bad Event").header("Allow-Events", "reg"))
}

/// The PUBLISH body: `impu`'s registration with `contact` terminated, `expires="0"`.
pub fn terminated_contact(impu: &str, contact: &str, id: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n\
         <reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"0\" state=\"partial\">\n\
         \x20 <registration aor=\"{aor}\" id=\"{id}\">\n\
         \x20   <contact id=\"{id}-1\" state=\"terminated\" event=\"unregistered\" expires=\"0\">\n\
         \x20     <uri>{uri}</uri>\n\
         \x20   </contact>\n\
         \x20 </registration>\n\
         </reginfo>\n",
        aor = escape(impu),
        id = escape(id),
        uri = escape(contact),
    )
}

/// One `<registration>` of a document we write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationDoc<'a> {
    pub aor: &'a str,
    pub id: &'a str,
    /// `init`, `active` or `terminated`.
    pub state: &'a str,
    pub contacts: Vec<ContactDoc<'a>>,
}

/// One `<contact>` of a document we write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactDoc<'a> {
    pub id: &'a str,
    pub state: ContactState,
    /// RFC 3680 §5.1's event: `registered`, `refreshed`, `expired`, …
    pub event: &'a str,
    /// Seconds left (0 for a terminated contact).
    pub expires: u64,
    pub uri: &'a str,
    /// In thousandths.
    pub q: Option<u16>,
    pub call_id: &'a str,
    pub cseq: i64,
}

/// A reginfo document: `full` state or a `partial` one, at `version` (SPEC E1, E2).
pub fn document(version: i64, full: bool, registration: &RegistrationDoc<'_>) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "<?xml version=\"1.0\"?>\n\
         <reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"{version}\" state=\"{}\">\n\
         \x20 <registration aor=\"{}\" id=\"{}\" state=\"{}\">\n",
        if full { "full" } else { "partial" },
        escape(registration.aor),
        escape(registration.id),
        escape(registration.state),
    );
    for c in &registration.contacts {
        let state = match c.state {
            ContactState::Active => "active",
            ContactState::Terminated => "terminated",
        };
        let _ = write!(
            out,
            "\x20   <contact id=\"{}\" state=\"{state}\" event=\"{}\" expires=\"{}\"",
            escape(c.id),
            escape(c.event),
            c.expires,
        );
        if let Some(q) = c.q {
            let _ = write!(out, " q=\"{}.{:03}\"", q / 1000, q % 1000);
        }
        let _ = write!(
            out,
            " callid=\"{}\" cseq=\"{}\">\n\x20     <uri>{}</uri>\n\x20   </contact>\n",
            escape(c.call_id),
            c.cseq,
            escape(c.uri),
        );
    }
    out.push_str("  </registration>\n</reginfo>\n");
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactState {
    Active,
    Terminated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactInfo {
    pub state: ContactState,
    pub event: Option<String>,
    pub expires: Option<u32>,
    pub uri: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub aor: String,
    pub state: Option<String>,
    pub contacts: Vec<ContactInfo>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReginfoError {
    #[error("not XML: {0}")]
    Xml(String),
    #[error("not a reginfo document")]
    NotReginfo,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads a reginfo document; any syntax or structure error fails the whole document, so that
/// a malformed NOTIFY changes nothing.
pub fn parse(body: &str) -> Result<Vec<Registration>, ReginfoError> {
    let mut reader = Reader::from_str(body);
    let mut registrations: Vec<Registration> = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut seen_root = false;
    let mut contact: Option<(ContactState, Option<String>, Option<u32>)> = None;
    let mut uri: Option<String> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ReginfoError::Xml(e.to_string()))?;
        match event {
            Event::Start(e) | Event::Empty(e) if stack.is_empty() && seen_root => {
                let _ = e;
                return Err(ReginfoError::Invalid("more than one root element"));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = local_name(e);
                let empty = matches!(event, Event::Empty(_));
                match (stack.last().map(String::as_str), name.as_str()) {
                    (None, "reginfo") => seen_root = true,
                    (None, _) => return Err(ReginfoError::NotReginfo),
                    (Some("reginfo"), "registration") => registrations.push(Registration {
                        aor: attribute(e, "aor")?
                            .ok_or(ReginfoError::Invalid("registration without aor"))?,
                        state: attribute(e, "state")?,
                        contacts: Vec::new(),
                    }),
                    (Some("registration"), "contact") => {
                        let state = match attribute(e, "state")?.as_deref() {
                            Some("active") => ContactState::Active,
                            Some("terminated") => ContactState::Terminated,
                            _ => {
                                return Err(ReginfoError::Invalid(
                                    "contact state must be active or terminated",
                                ));
                            }
                        };
                        let expires = match attribute(e, "expires")? {
                            None => None,
                            Some(v) => Some(
                                v.trim()
                                    .parse::<u32>()
                                    .map_err(|_| ReginfoError::Invalid("bad contact expires"))?,
                            ),
                        };
                        contact = Some((state, attribute(e, "event")?, expires));
                        uri = None;
                        if empty {
                            return Err(ReginfoError::Invalid("contact without uri"));
                        }
                    }
                    (Some("contact"), "uri") => uri = Some(String::new()),
                    _ => {}
                }
                if !empty {
                    stack.push(name);
                }
            }
            Event::Text(t) => {
                if stack.last().map(String::as_str) == Some("uri")
                    && let Some(u) = uri.as_mut()
                {
                    u.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if stack.last().map(String::as_str) == Some("uri")
                    && let Some(u) = uri.as_mut()
                {
                    u.push(resolve_reference(&r)?);
                }
            }
            Event::CData(c) => {
                if stack.last().map(String::as_str) == Some("uri")
                    && let Some(u) = uri.as_mut()
                {
                    u.push_str(&c.xml10_content());
                }
            }
            Event::End(_) => {
                let closed = stack
                    .pop()
                    .ok_or(ReginfoError::Invalid("unbalanced end tag"))?;
                if closed == "contact" {
                    let (state, event, expires) =
                        contact.take().ok_or(ReginfoError::Invalid("contact"))?;
                    let uri = uri
                        .take()
                        .map(|u| u.trim().to_string())
                        .filter(|u| !u.is_empty());
                    let uri = uri.ok_or(ReginfoError::Invalid("contact without uri"))?;
                    let registration = registrations
                        .last_mut()
                        .ok_or(ReginfoError::Invalid("contact outside registration"))?;
                    registration.contacts.push(ContactInfo {
                        state,
                        event,
                        expires,
                        uri,
                    });
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_root {
        return Err(ReginfoError::NotReginfo);
    }
    if !stack.is_empty() {
        return Err(ReginfoError::Invalid("document ends inside an element"));
    }
    Ok(registrations)
}

fn local_name(e: &BytesStart<'_>) -> String {
    e.local_name().as_ref().to_string()
}

fn attribute(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, ReginfoError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|err| ReginfoError::Xml(err.to_string()))?;
        if attr.key.local_name().as_ref() == name {
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| ReginfoError::Xml(err.to_string()))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, ReginfoError> {
    if r.is_char_ref() {
        return r
            .resolve_char_ref()
            .ok()
            .flatten()
            .ok_or(ReginfoError::Invalid("bad character reference"));
    }
    match &**r {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        _ => Err(ReginfoError::Invalid("unknown entity")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2_documents_parse_back_with_every_contact() {
        let doc = document(
            3,
            false,
            &RegistrationDoc {
                aor: "sip:alice@example.com",
                id: "a1",
                state: "active",
                contacts: vec![
                    ContactDoc {
                        id: "r1",
                        state: ContactState::Active,
                        event: "refreshed",
                        expires: 3600,
                        uri: "sip:alice@192.0.2.1:5060;a=<b>&c",
                        q: Some(500),
                        call_id: "c\"1",
                        cseq: 7,
                    },
                    ContactDoc {
                        id: "r2",
                        state: ContactState::Terminated,
                        event: "expired",
                        expires: 0,
                        uri: "sip:alice@192.0.2.2",
                        q: None,
                        call_id: "c2",
                        cseq: 1,
                    },
                ],
            },
        );
        assert!(doc.contains("version=\"3\" state=\"partial\""), "{doc}");
        assert!(doc.contains("q=\"0.500\""), "{doc}");
        let regs = parse(&doc).unwrap();
        assert_eq!(regs[0].aor, "sip:alice@example.com");
        assert_eq!(regs[0].state.as_deref(), Some("active"));
        let c = &regs[0].contacts;
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].uri, "sip:alice@192.0.2.1:5060;a=<b>&c");
        assert_eq!(
            (c[0].state.clone(), c[0].expires),
            (ContactState::Active, Some(3600))
        );
        assert_eq!(c[1].event.as_deref(), Some("expired"));
        assert_eq!(c[1].state, ContactState::Terminated);
    }

    #[test]
    fn p4_publish_body_parses_back() {
        let body = terminated_contact(
            "sip:u@ims.example.com",
            "sip:u@198.51.100.7:5060;a=<b>&c",
            "r1",
        );
        let regs = parse(&body).unwrap();
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0].aor, "sip:u@ims.example.com");
        assert_eq!(
            regs[0].contacts,
            vec![ContactInfo {
                state: ContactState::Terminated,
                event: Some("unregistered".into()),
                expires: Some(0),
                uri: "sip:u@198.51.100.7:5060;a=<b>&c".into(),
            }]
        );
    }

    #[test]
    fn p6_notify_bodies() {
        let body = r#"<?xml version="1.0"?>
            <reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="1" state="full">
              <registration aor="sip:u@ims" id="a" state="active">
                <contact id="c1" state="active" event="registered" expires="600"><uri>sip:u@10.0.0.1:5060</uri></contact>
                <contact id="c2" state="terminated" event="expired"><uri>sip:u@10.0.0.2</uri></contact>
              </registration>
            </reginfo>"#;
        let regs = parse(body).unwrap();
        assert_eq!(regs[0].contacts.len(), 2);
        assert_eq!(regs[0].contacts[0].expires, Some(600));
        assert_eq!(regs[0].contacts[1].state, ContactState::Terminated);
    }

    #[test]
    fn p6_malformed_bodies_are_errors() {
        for bad in [
            "",
            "not xml at all",
            "<reginfo><registration aor=\"x\"><contact state=\"active\"><uri>u</uri></registration></reginfo>",
            "<other/>",
            "<reginfo><registration aor=\"x\"><contact state=\"weird\"><uri>u</uri></contact></registration></reginfo>",
            "<reginfo><registration aor=\"x\"><contact state=\"active\"></contact></registration></reginfo>",
            "<reginfo><registration aor=\"x\">",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
