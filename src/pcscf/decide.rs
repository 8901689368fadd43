//! The P-CSCF's pure decisions: what a UE's REGISTER does to its pcontact (SPEC P1, Kamailio
//! `pcscf_save_pending` in DB_ONLY, with the race window), and what the S-CSCF's final answer
//! does to it (SPEC P3, `pcscf_save`). No I/O; `now` is an argument.

use crate::store::{ContactAddress, Pcontact, RegState, join_uri_list, split_uri_list};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

/// SPEC P1's outcomes for a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// No pcontact: store one in `REG_PENDING`, then relay.
    NewPending,
    /// De-registering a contact we do not know: relay, store nothing.
    RelayUnstored,
    /// Pending or live: relay, change nothing.
    Relay,
    /// Deregistration in progress: `500 Deregister in progress`, nothing relayed or changed.
    Refuse,
    /// Expired for `notify_window` or longer: claim it for the expiry PUBLISH, then refuse.
    RefuseAndPublish,
    /// Stale, but with no identity to PUBLISH for: delete it and treat the REGISTER as new.
    Replace,
}

/// SPEC P1. `asked_expires` is what the REGISTER asks for (0 = de-registration).
pub fn admit(
    existing: Option<&Pcontact>,
    now: DateTime<Utc>,
    notify_window: Duration,
    asked_expires: u32,
) -> Admission {
    let Some(p) = existing else {
        return if asked_expires == 0 {
            Admission::RelayUnstored
        } else {
            Admission::NewPending
        };
    };
    let window = TimeDelta::from_std(notify_window).unwrap_or(TimeDelta::MAX);
    match p.reg_state {
        RegState::DeregPendingPublish => Admission::Refuse,
        RegState::RegPending => Admission::Relay,
        // Kamailio compares whole seconds and relays in the second of expiry: live at == too.
        _ if now <= p.expires => Admission::Relay,
        _ if now < p.expires + window => Admission::Refuse,
        _ if publishable_ids(p).is_empty() => Admission::Replace,
        _ => Admission::RefuseAndPublish,
    }
}

/// The identities an expiry PUBLISH goes to: every public id but `tel:` ones (SPEC P4).
pub fn publishable_ids(p: &Pcontact) -> Vec<String> {
    p.public_ids
        .as_deref()
        .map(split_uri_list)
        .unwrap_or_default()
        .into_iter()
        .filter(|id| !id.to_ascii_lowercase().starts_with("tel:"))
        .collect()
}

/// What the S-CSCF's 2xx says about our UE (SPEC P3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Expires of the reply Contact matching the UE; `None` when none matches.
    pub expires: Option<u32>,
    pub service_routes: Vec<String>,
    pub public_ids: Vec<String>,
}

/// The pcontact after the S-CSCF's final answer: `None` = delete it (de-registration, or a
/// refused registration of a pending pcontact), `Some` = write it.
pub fn after_final(
    current: Option<&Pcontact>,
    fresh: Pcontact,
    accepted: Option<&Accepted>,
    now: DateTime<Utc>,
) -> Option<Pcontact> {
    match accepted {
        Some(Accepted {
            expires: Some(e), ..
        }) if *e > 0 => {
            let accepted = accepted?;
            let base = current.cloned().unwrap_or(fresh);
            Some(Pcontact {
                reg_state: RegState::Registered,
                expires: now + TimeDelta::seconds(i64::from(*e)),
                service_routes: Some(join_uri_list(&accepted.service_routes))
                    .filter(|s| !s.is_empty()),
                public_ids: Some(join_uri_list(&accepted.public_ids)).filter(|s| !s.is_empty()),
                claimed_by: None,
                claimed_until: None,
                publish_attempts: 0,
                next_publish_at: None,
                published_ids: None,
                ..base
            })
        }
        // A 2xx without a live matching contact: the UE is de-registered.
        Some(_) => None,
        // A refusal removes only a pcontact still waiting for this answer (deliberate:
        // Kamailio keeps it and may lock the UE out later).
        None => match current {
            Some(p) if p.reg_state == RegState::RegPending => None,
            other => other.cloned(),
        },
    }
}

/// The pcontact key of a contact URI: host, port (default 5060), transport (default udp).
pub fn address_of(uri: &crate::sip::uri::Uri) -> ContactAddress {
    ContactAddress {
        host: uri.host.to_ascii_lowercase(),
        port: uri.port.unwrap_or(5060),
        protocol: uri.transport(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    fn pcontact(state: RegState, ids: &str) -> Pcontact {
        let mut p = Pcontact::new(
            "sip:ue@198.51.100.7".into(),
            ContactAddress {
                host: "198.51.100.7".into(),
                port: 5060,
                protocol: "udp".into(),
            },
            state,
            t0(),
        );
        p.public_ids = Some(ids.into());
        p
    }

    const WINDOW: Duration = Duration::from_secs(20);

    #[test]
    fn p1_window_edges() {
        let p = pcontact(RegState::Registered, "<sip:u@ims><tel:+1555>");
        let at = |ms: i64| admit(Some(&p), t0() + TimeDelta::milliseconds(ms), WINDOW, 3600);
        assert_eq!(at(-1000), Admission::Relay, "live");
        assert_eq!(at(0), Admission::Relay, "exactly at expiry: still live");
        assert_eq!(at(1), Admission::Refuse, "just expired");
        assert_eq!(at(19_999), Admission::Refuse, "19.999 s after expiry");
        assert_eq!(at(20_000), Admission::RefuseAndPublish, "20 s after expiry");
        assert_eq!(at(21_000), Admission::RefuseAndPublish, "21 s after expiry");
    }

    #[test]
    fn p1_states() {
        let later = t0() + TimeDelta::seconds(3600);
        assert_eq!(admit(None, t0(), WINDOW, 600), Admission::NewPending);
        assert_eq!(admit(None, t0(), WINDOW, 0), Admission::RelayUnstored);
        let pending = pcontact(RegState::RegPending, "");
        assert_eq!(admit(Some(&pending), later, WINDOW, 600), Admission::Relay);
        let publishing = pcontact(RegState::DeregPendingPublish, "<sip:u@ims>");
        assert_eq!(
            admit(
                Some(&publishing),
                t0() - TimeDelta::seconds(60),
                WINDOW,
                600
            ),
            Admission::Refuse
        );
        let only_tel = pcontact(RegState::Registered, "<tel:+1555>");
        assert_eq!(
            admit(Some(&only_tel), later, WINDOW, 600),
            Admission::Replace
        );
        assert_eq!(
            publishable_ids(&pcontact(
                RegState::Registered,
                "<sip:a@x><tel:+1><sips:b@y>"
            )),
            ["sip:a@x", "sips:b@y"]
        );
    }

    #[test]
    fn p3_final_answers() {
        let pending = pcontact(RegState::RegPending, "");
        let fresh = pending.clone();
        let ok = Accepted {
            expires: Some(600),
            service_routes: vec!["sip:orig@scscf;lr".into()],
            public_ids: vec!["sip:u@ims".into(), "tel:+1555".into()],
        };
        let now = t0();
        let registered = after_final(Some(&pending), fresh.clone(), Some(&ok), now).unwrap();
        assert_eq!(registered.reg_state, RegState::Registered);
        assert_eq!(registered.expires, now + TimeDelta::seconds(600));
        assert_eq!(
            registered.service_routes.as_deref(),
            Some("<sip:orig@scscf;lr>")
        );
        assert_eq!(
            registered.public_ids.as_deref(),
            Some("<sip:u@ims><tel:+1555>")
        );
        let dereg = Accepted {
            expires: Some(0),
            ..ok.clone()
        };
        assert_eq!(
            after_final(Some(&registered), fresh.clone(), Some(&dereg), now),
            None
        );
        let unmatched = Accepted {
            expires: None,
            ..ok
        };
        assert_eq!(
            after_final(Some(&registered), fresh.clone(), Some(&unmatched), now),
            None
        );
        assert_eq!(
            after_final(Some(&pending), fresh.clone(), None, now),
            None,
            "refused: pending removed"
        );
        assert_eq!(
            after_final(Some(&registered), fresh, None, now),
            Some(registered.clone()),
            "refused re-REGISTER keeps the live one"
        );
    }
}
