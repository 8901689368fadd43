//! SPEC P6: the S-CSCF's NOTIFY for the reg event. Every contact of the reginfo body names a
//! pcontact: `terminated` deletes it, `active` renews it as `REGISTERED`. The body is read
//! whole before anything changes, so a malformed one changes nothing.

use super::decide::address_of;
use super::role::Pcscf;
use crate::sip::Origin;
use crate::sip::reginfo::{self, ContactState};
use crate::sip::request::Request;
use crate::sip::response::Response;
use crate::sip::uri::Uri;
use crate::store::{Pcontact, PcontactChange, PcontactPlan, RegState};
use chrono::TimeDelta;

pub async fn handle(pcscf: &Pcscf, request: &Request, origin: &Origin) -> Response {
    let response = apply(pcscf, request, origin).await;
    let result = match response.code {
        200..=299 => "applied",
        403 => "forbidden",
        400 | 489 => "malformed",
        _ => "failed",
    };
    crate::metrics::METRICS
        .regevent_notify
        .get_or_create(&crate::metrics::ResultLabel { result })
        .inc();
    response
}

async fn apply(pcscf: &Pcscf, request: &Request, origin: &Origin) -> Response {
    let msg = &request.message;
    // SPEC H5: only the S-CSCF (or a network the operator names), or a NOTIFY in a dialog of
    // our own reg-event subscription (E4), may change pcontacts; a Via naming the S-CSCF
    // proves nothing. Before the body is even read.
    let dialog = match our_dialog(pcscf, msg).await {
        Ok(d) => d,
        Err(e) => return pcscf.store_failure(msg, e),
    };
    if dialog.is_none() && !pcscf.config.may_notify(origin.peer.ip()) {
        tracing::warn!(peer = %origin.peer, "NOTIFY from an address that is not the S-CSCF; refused");
        return Response::to(msg, 403, "Forbidden");
    }
    if let Some(bad_event) = reginfo::not_reg_event(msg) {
        return bad_event;
    }
    let Ok(body) = std::str::from_utf8(&msg.body) else {
        return Response::to(msg, 400, "Malformed reginfo body");
    };
    let registrations = match reginfo::parse(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "malformed reginfo NOTIFY");
            return Response::to(msg, 400, "Malformed reginfo body");
        }
    };
    let mut changes = Vec::new();
    for registration in &registrations {
        for contact in &registration.contacts {
            let Some(uri) = Uri::parse(&contact.uri).ok().filter(|u| u.scheme.is_sip()) else {
                return Response::to(msg, 400, "Malformed reginfo body");
            };
            // H5: a NOTIFY cannot pin a pcontact longer than a REGISTER could.
            let expires = contact.expires.map(|e| match pcscf.config.max_expires {
                0 => e,
                max => e.min(max),
            });
            changes.push((address_of(&uri), contact.state.clone(), expires));
        }
    }
    for (address, state, expires) in changes {
        let result = pcscf
            .store
            .update_pcontact(&address, |snap| {
                let change = match (&snap.pcontact, state, expires) {
                    (None, _, _) => PcontactChange::Keep,
                    (Some(_), ContactState::Terminated, _) => PcontactChange::Delete,
                    (Some(p), ContactState::Active, Some(e)) => PcontactChange::Update(Pcontact {
                        reg_state: RegState::Registered,
                        expires: snap.now + TimeDelta::seconds(i64::from(e)),
                        claimed_by: None,
                        claimed_until: None,
                        // H5: live again, so an expiry later starts its PUBLISHes afresh.
                        publish_attempts: 0,
                        next_publish_at: None,
                        published_ids: None,
                        ..p.clone()
                    }),
                    (Some(_), ContactState::Active, None) => PcontactChange::Keep,
                };
                PcontactPlan {
                    change,
                    outcome: (),
                }
            })
            .await;
        match result {
            Ok(a) => {
                tracing::info!(contact = %address, present = a.pcontact.is_some(), "NOTIFY applied")
            }
            Err(e) => return pcscf.store_failure(msg, e),
        }
    }
    // The notifier ended our subscription: forget its dialog (the next 2xx registration
    // subscribes afresh).
    let terminated = msg.header("Subscription-State").is_some_and(|s| {
        s.trim_start()
            .to_ascii_lowercase()
            .starts_with("terminated")
    });
    if let (Some(s), true) = (dialog, terminated) {
        let _ = pcscf.store.remove_pcscf_subscription(s.id).await;
    }
    Response::to(msg, 200, "OK")
}

/// The P-CSCF subscription (SPEC E4) this NOTIFY belongs to: its Call-ID, and our tag as its
/// To tag.
async fn our_dialog(
    pcscf: &Pcscf,
    msg: &crate::sip::wire::Message,
) -> Result<Option<crate::store::PcscfSubscription>, crate::store::StoreError> {
    let Some(call_id) = msg.header("Call-ID").map(str::trim) else {
        return Ok(None);
    };
    let Some(s) = pcscf.store.pcscf_subscription_of_call(call_id).await? else {
        return Ok(None);
    };
    let to_tag = msg
        .header("To")
        .and_then(crate::sip::header::NameAddr::parse)
        .and_then(|n| n.param("tag").flatten().map(str::to_string));
    Ok((to_tag.as_deref() == Some(s.from_tag.as_str())).then_some(s))
}
