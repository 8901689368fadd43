//! SPEC E3: the P-CSCF's `PUBLISH` for the reg event (its P4): every contact the body reports
//! `terminated` is a binding of the AoR to remove (by contact URI), and the AoR's subscribers
//! hear of it (`deactivated`, E2). Accepted from a P-CSCF named in the `Path` of one of the
//! AoR's bindings (by source host and port; a binding that just expired counts, since that is
//! when a P-CSCF PUBLISHes), from a `--trusted-publisher` network, or when the domain does not
//! authenticate; anyone else gets 403 before the body is read. The whole body is read before
//! anything changes. Nothing of the publication is kept: the bindings are the state; the 200
//! carries a fresh `SIP-ETag` and the `Expires` granted.

use super::change::{self, ContactEvent};
use super::notifier::RegEvents;
use super::subscribe::{DEFAULT_EXPIRES, names_source};
use crate::aor::Aor;
use crate::auth::{AuthMode, AuthSettings};
use crate::config::Cidr;
use crate::sip::Origin;
use crate::sip::aor::aor_of;
use crate::sip::reginfo::{self, ContactState};
use crate::sip::request::Request;
use crate::sip::response::Response;
use crate::sip::uri::Uri;
use crate::sip::wire::parse_u32;
use crate::store::{Removal, StoreError};

/// What the PUBLISH handler needs from the registrar role.
pub struct PublishGate<'a> {
    /// A domain that does not authenticate (SPEC A1) accepts any publisher.
    pub auth: &'a AuthSettings,
    pub trusted: &'a [Cidr],
    pub case_sensitive: bool,
    /// Served domains; empty = all (R16).
    pub domains: &'a [String],
}

pub async fn handle(
    events: &RegEvents,
    gate: PublishGate<'_>,
    request: &Request,
    origin: &Origin,
) -> Response {
    let msg = &request.message;
    if let Some(bad_event) = reginfo::not_reg_event(msg) {
        return bad_event;
    }
    let content_type = msg.header("Content-Type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(reginfo::CONTENT_TYPE) {
        return Response::to(msg, 415, "Unsupported Media Type")
            .header("Accept", reginfo::CONTENT_TYPE);
    }
    let expires = match msg.header("Expires") {
        None => DEFAULT_EXPIRES,
        Some(v) => match parse_u32(v.trim()) {
            Some(e) => e.min(DEFAULT_EXPIRES),
            None => return Response::to(msg, 400, "Invalid Expires"),
        },
    };
    let Some(aor) = Uri::parse(&request.uri)
        .ok()
        .and_then(|u| aor_of(&u, gate.case_sensitive).ok())
    else {
        return Response::to(msg, 400, "Invalid Request-URI");
    };
    if !gate.domains.is_empty() && !gate.domains.contains(&aor.domain) {
        return Response::to(msg, 404, "Not Found");
    }
    match apply(events, &gate, request, origin, &aor, expires).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, %aor, "PUBLISH failed in the database");
            Response::to(msg, 500, "Server Internal Error")
        }
    }
}

async fn apply(
    events: &RegEvents,
    gate: &PublishGate<'_>,
    request: &Request,
    origin: &Origin,
    aor: &Aor,
    expires: u32,
) -> Result<Response, StoreError> {
    let msg = &request.message;
    if !authorized(events, gate, origin, aor).await? {
        tracing::warn!(peer = %origin.peer, %aor, "reg-event PUBLISH from a source that is no P-CSCF of the AoR; refused");
        return Ok(Response::to(msg, 403, "Forbidden"));
    }
    let Some(terminated) = terminated_contacts(&msg.body, aor, gate.case_sensitive) else {
        return Ok(Response::to(msg, 400, "Malformed reginfo body"));
    };
    let mut removed = Vec::new();
    for contact in &terminated {
        removed.extend(
            (events.store)
                .remove_bindings(aor, &Removal::Contact(contact.clone()))
                .await?,
        );
    }
    tracing::info!(%aor, contacts = terminated.len(), removed = removed.len(), "reg-event PUBLISH applied");
    if !removed.is_empty() {
        let after = events.store.live_bindings(aor).await?;
        let changes = change::removals(removed, ContactEvent::Deactivated);
        events.changed(aor, changes, after.bindings.len(), after.now);
    }
    Ok(Response::to(msg, 200, "OK")
        .header(
            "SIP-ETag",
            uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        )
        .header("Expires", expires.to_string()))
}

/// SPEC E3's authorization: auth off, a trusted network, or a Path of one of the AoR's
/// bindings, live or just expired.
async fn authorized(
    events: &RegEvents,
    gate: &PublishGate<'_>,
    origin: &Origin,
    aor: &Aor,
) -> Result<bool, StoreError> {
    let open = gate.auth.mode_for(&aor.domain) == AuthMode::Off;
    if open || gate.trusted.iter().any(|c| c.contains(origin.peer.ip())) {
        return Ok(true);
    }
    let rows = events.store.all_bindings(aor).await?;
    Ok(rows
        .bindings
        .iter()
        .filter_map(|b| b.path.as_deref())
        .any(|path| names_source(path, origin)))
}

/// The contact URIs a reginfo body reports terminated for `aor`; `None` when the body is not a
/// reginfo document, names another AoR, or holds a URI that is not SIP.
fn terminated_contacts(body: &[u8], aor: &Aor, case_sensitive: bool) -> Option<Vec<String>> {
    let text = std::str::from_utf8(body).ok()?;
    let registrations = reginfo::parse(text).ok()?;
    let mut uris = Vec::new();
    for registration in &registrations {
        let named = aor_of(&Uri::parse(&registration.aor).ok()?, case_sensitive).ok()?;
        if &named != aor {
            return None;
        }
        for contact in &registration.contacts {
            Uri::parse(&contact.uri)
                .ok()
                .filter(|u| u.scheme.is_sip())?;
            if contact.state == ContactState::Terminated {
                uris.push(contact.uri.clone());
            }
        }
    }
    Some(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(aor: &str, state: &str, uri: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" \
             version=\"0\" state=\"partial\"><registration aor=\"{aor}\" id=\"a\">\
             <contact id=\"c\" state=\"{state}\" event=\"unregistered\" expires=\"0\">\
             <uri>{uri}</uri></contact></registration></reginfo>"
        )
        .into_bytes()
    }

    #[test]
    fn e3_terminated_contacts_of_the_aor_only() {
        let alice = Aor::new("alice", "example.com");
        let t = |b: &[u8]| terminated_contacts(b, &alice, false);
        assert_eq!(
            t(&body(
                "sip:alice@example.com",
                "terminated",
                "sip:a@192.0.2.1"
            )),
            Some(vec!["sip:a@192.0.2.1".to_string()])
        );
        assert_eq!(
            t(&body("sip:Alice@EXAMPLE.com", "active", "sip:a@192.0.2.1")),
            Some(vec![])
        );
        assert_eq!(
            t(&body("sip:bob@example.com", "terminated", "sip:a@h")),
            None
        );
        assert_eq!(
            t(&body("sip:alice@example.com", "terminated", "mailto:a@h")),
            None
        );
        assert_eq!(t(b"<not-xml"), None);
        assert_eq!(t(b"\xff\xfe"), None);
    }
}
