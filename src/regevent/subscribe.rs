//! SPEC E1: `SUBSCRIBE` for the reg event. Who may watch an AoR: a subscriber authenticated
//! as it (SPEC A), a P-CSCF named in the `Path` of one of its live bindings (by source host
//! and port: a `P-Asserted-Identity` proves nothing), or anyone when the domain does not
//! authenticate. The dialog is stored (`reg_subscription`) before the 200 is sent; the NOTIFY
//! with the full state follows at once.

use super::change;
use super::notifier::RegEvents;
use crate::aor::Aor;
use crate::auth::{Admission, Authenticator};
use crate::sip::Origin;
use crate::sip::aor::{aor_of, aor_uri};
use crate::sip::header::{NameAddr, parse_cseq, split_list};
use crate::sip::reginfo;
use crate::sip::request::Request;
use crate::sip::response::{Response, local_tag};
use crate::sip::uri::Uri;
use crate::sip::wire::parse_u32;
use crate::store::{DialogId, NewSubscription, Renewal, Renewed, StoreError, Subscription};
use std::sync::Arc;

/// RFC 3680 §6's default subscription lifetime, and our maximum.
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Shorter subscriptions are refused (423) with this `Min-Expires`.
pub const MIN_EXPIRES: u32 = 60;

/// What the SUBSCRIBE handler needs from the registrar role.
pub struct Gate<'a> {
    pub auth: &'a Authenticator,
    pub case_sensitive: bool,
    /// Served domains; empty = all (R16).
    pub domains: &'a [String],
}

/// A SUBSCRIBE, read: everything is checked before the database is touched.
struct Wanted {
    aor: Aor,
    expires: u32,
    contact: String,
    remote_uri: String,
    remote_tag: String,
    local_uri: String,
    local_tag: Option<String>,
    cseq: u32,
    route_set: Option<String>,
}

pub async fn handle(
    events: &Arc<RegEvents>,
    gate: Gate<'_>,
    request: &Request,
    origin: &Origin,
) -> Response {
    let msg = &request.message;
    let wanted = match read(request, gate.case_sensitive) {
        Ok(w) => w,
        Err(answer) => return answer,
    };
    if !gate.domains.is_empty() && !gate.domains.contains(&wanted.aor.domain) {
        return Response::to(msg, 404, "Not Found");
    }
    let result = match &wanted.local_tag {
        Some(tag) => refresh(events, request, origin, &wanted, tag).await,
        None => subscribe(events, &gate, request, origin, &wanted).await,
    };
    match result {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, aor = %wanted.aor, "SUBSCRIBE failed in the database");
            Response::to(msg, 500, "Server Internal Error")
        }
    }
}

/// The request's Event, Expires, Contact and dialog, or the 4xx that says what is wrong.
fn read(request: &Request, case_sensitive: bool) -> Result<Wanted, Response> {
    let msg = &request.message;
    if let Some(bad_event) = reginfo::not_reg_event(msg) {
        return Err(bad_event);
    }
    let asked = match msg.header("Expires") {
        None => DEFAULT_EXPIRES,
        Some(v) => parse_u32(v.trim()).ok_or_else(|| bad(request, "Invalid Expires"))?,
    };
    if asked != 0 && asked < MIN_EXPIRES {
        return Err(Response::to(msg, 423, "Interval Too Brief")
            .header("Min-Expires", MIN_EXPIRES.to_string()));
    }
    let contacts: Vec<&str> = msg.headers_named("Contact").flat_map(split_list).collect();
    let contact = match contacts.as_slice() {
        [one] => NameAddr::parse(one)
            .filter(|n| Uri::parse(&n.uri).is_ok_and(|u| u.scheme.is_sip()))
            .ok_or_else(|| bad(request, "Invalid Contact"))?,
        [] => return Err(bad(request, "Missing Contact")),
        _ => return Err(bad(request, "More than one Contact")),
    };
    let (from, to) = (name_addr(request, "From")?, name_addr(request, "To")?);
    let tag = |n: &NameAddr| n.param("tag").flatten().map(str::to_string);
    // A new subscription names the AoR in its Request-URI; a refresh is sent to our Contact
    // (RFC 3261 §12.2.1.1), so there the AoR is the dialog's, its To.
    let watched = match tag(&to) {
        None => request.uri.as_str(),
        Some(_) => to.uri.as_str(),
    };
    let uri = Uri::parse(watched).map_err(|_| bad(request, "Invalid Request-URI"))?;
    let aor = aor_of(&uri, case_sensitive).map_err(|_| bad(request, "Invalid Request-URI"))?;
    let remote_tag = tag(&from).ok_or_else(|| bad(request, "From without tag"))?;
    let cseq = msg
        .header("CSeq")
        .and_then(parse_cseq)
        .map(|(n, _)| n)
        .ok_or_else(|| bad(request, "Invalid CSeq"))?;
    let routes: Vec<&str> = msg
        .headers_named("Record-Route")
        .flat_map(split_list)
        .collect();
    Ok(Wanted {
        aor,
        expires: asked.min(DEFAULT_EXPIRES),
        contact: contact.uri,
        remote_uri: from.uri.clone(),
        remote_tag,
        local_tag: tag(&to),
        local_uri: to.uri.clone(),
        cseq,
        route_set: (!routes.is_empty()).then(|| routes.join(", ")),
    })
}

fn name_addr(request: &Request, header: &'static str) -> Result<NameAddr, Response> {
    request
        .message
        .header(header)
        .and_then(NameAddr::parse)
        .filter(|n| Uri::parse(&n.uri).is_ok())
        .ok_or_else(|| bad(request, "Invalid From or To"))
}

fn bad(request: &Request, why: &'static str) -> Response {
    Response::to(&request.message, 400, why)
}

/// A new subscription: authorized, stored, answered 200, then NOTIFYed the full state.
async fn subscribe(
    events: &Arc<RegEvents>,
    gate: &Gate<'_>,
    request: &Request,
    origin: &Origin,
    wanted: &Wanted,
) -> Result<Response, StoreError> {
    if let Some(refusal) = authorize(events, gate, request, origin, &wanted.aor).await? {
        return Ok(refusal);
    }
    let new = NewSubscription {
        aor: wanted.aor.clone(),
        dialog: DialogId {
            call_id: request.call_id.clone(),
            remote_tag: wanted.remote_tag.clone(),
            local_tag: local_tag(&request.message),
        },
        local_uri: wanted.local_uri.clone(),
        remote_uri: wanted.remote_uri.clone(),
        remote_target: wanted.contact.clone(),
        route_set: wanted.route_set.clone(),
        send_to: format!("{}:{}", origin.transport, origin.peer),
        remote_cseq: i64::from(wanted.cseq),
        expires_secs: wanted.expires,
    };
    let subscription = if wanted.expires == 0 {
        // A fetch (RFC 6665 §4.4.3): one NOTIFY with the state, no subscription kept.
        fetched(&new)
    } else {
        events.store.add_subscription(&new).await?
    };
    tracing::info!(aor = %wanted.aor, expires = wanted.expires, "reg-event subscription");
    notify_full(events, subscription, wanted.expires == 0);
    Ok(accepted(request, wanted.expires, events))
}

/// An in-dialog SUBSCRIBE: a refresh, or the end with `Expires: 0`. The dialog itself is the
/// authorization (its tags are ours and the subscriber's).
async fn refresh(
    events: &Arc<RegEvents>,
    request: &Request,
    _origin: &Origin,
    wanted: &Wanted,
    local: &str,
) -> Result<Response, StoreError> {
    let dialog = DialogId {
        call_id: request.call_id.clone(),
        remote_tag: wanted.remote_tag.clone(),
        local_tag: local.to_string(),
    };
    let renewal = Renewal {
        remote_cseq: i64::from(wanted.cseq),
        expires_secs: wanted.expires,
        remote_target: wanted.contact.clone(),
    };
    match events.store.renew_subscription(&dialog, &renewal).await? {
        Renewed::Unknown => Ok(Response::to(
            &request.message,
            481,
            "Subscription does not exist",
        )),
        Renewed::Stale => Ok(Response::to(&request.message, 500, "Stale CSeq")),
        Renewed::Done(subscription) => {
            notify_full(events, *subscription, wanted.expires == 0);
            Ok(accepted(request, wanted.expires, events))
        }
    }
}

fn accepted(request: &Request, expires: u32, events: &RegEvents) -> Response {
    Response::to(&request.message, 200, "OK")
        .header("Expires", expires.to_string())
        .header("Contact", events.contact_uri())
}

/// `None` when the subscriber may watch `aor`, else the answer (SPEC E1).
async fn authorize(
    events: &RegEvents,
    gate: &Gate<'_>,
    request: &Request,
    origin: &Origin,
    aor: &Aor,
) -> Result<Option<Response>, StoreError> {
    let refusal = match gate.auth.admit(request, origin, aor) {
        Admission::Open => return Ok(None),
        Admission::Verify(verification) => {
            let subscriber = events.store.subscriber(aor).await?;
            if verification.check(subscriber.as_ref()).is_ok() {
                return Ok(None);
            }
            gate.auth.denied(request, origin, aor)
        }
        Admission::Answer(answer) => answer,
    };
    // A P-CSCF cannot answer a challenge: its source must be in a live binding's Path.
    let live = events.store.live_bindings(aor).await?;
    let from_path = live
        .bindings
        .iter()
        .filter_map(|b| b.path.as_deref())
        .any(|path| names_source(path, origin));
    Ok((!from_path).then_some(refusal))
}

/// Whether a Path value names the request's source host and port (5060 when absent).
pub fn names_source(path: &str, origin: &Origin) -> bool {
    split_list(path).iter().any(|hop| {
        let Some(uri) = NameAddr::parse(hop).and_then(|n| Uri::parse(&n.uri).ok()) else {
            return false;
        };
        let host = uri.host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == origin.peer.ip().to_canonical())
            && uri.port.unwrap_or(5060) == origin.peer.port()
    })
}

/// The subscription of a fetch: never stored, numbered as a first NOTIFY.
fn fetched(new: &NewSubscription) -> Subscription {
    let now = chrono::Utc::now();
    Subscription {
        id: 0,
        aor: new.aor.clone(),
        dialog: new.dialog.clone(),
        local_uri: new.local_uri.clone(),
        remote_uri: new.remote_uri.clone(),
        remote_target: new.remote_target.clone(),
        route_set: new.route_set.clone(),
        send_to: new.send_to.clone(),
        local_cseq: 1,
        remote_cseq: new.remote_cseq,
        version: 0,
        expires: now,
        notified_until: now,
        created: now,
    }
}

/// The full state, NOTIFYed after the 200 is on its way; a subscription that `ending` with it
/// (`Expires: 0`) is removed once it is sent.
fn notify_full(events: &Arc<RegEvents>, s: Subscription, ending: bool) {
    let events = Arc::clone(events);
    tokio::spawn(async move {
        let snapshot = match events.store.live_bindings(&s.aor).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(error = %e, aor = %s.aor, "cannot read bindings for a full NOTIFY");
                return;
            }
        };
        let state = if ending {
            "terminated;reason=timeout".to_string()
        } else {
            RegEvents::active_state(&s, snapshot.now)
        };
        let (uri, id) = (aor_uri(&s.aor), change::registration_id(&s.aor));
        let doc = change::full(&uri, &id, &snapshot.bindings, snapshot.now);
        let delivery = events.notify(&s, true, &doc, &state).await;
        if ending && s.id != 0 && delivery != super::notifier::Delivery::Ended {
            let _ = events.store.remove_subscription(s.id).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport;

    fn origin(peer: &str) -> Origin {
        Origin {
            transport: Transport::Udp,
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            connection_id: -1,
        }
    }

    #[test]
    fn e1_path_authorizes_its_host_and_port_only() {
        let path = "<sip:term@192.0.2.9:5070;lr>, <sip:198.51.100.1;lr>";
        assert!(names_source(path, &origin("192.0.2.9:5070")));
        assert!(!names_source(path, &origin("192.0.2.9:5071")));
        assert!(!names_source(path, &origin("192.0.2.8:5070")));
        // No port in the Path URI: 5060.
        assert!(names_source(path, &origin("198.51.100.1:5060")));
        assert!(!names_source("garbage", &origin("192.0.2.9:5070")));
    }
}
