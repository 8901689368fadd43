//! What to NOTIFY for a change (SPEC E2), as pure functions: a change of an AoR's bindings
//! (the live bindings before, and the plan written over them) becomes a list of contact
//! events, and events become an RFC 3680 `<registration>`. No I/O; `now` is an argument.

use crate::aor::Aor;
use crate::sip::reginfo::{ContactDoc, ContactState, RegistrationDoc};
use crate::store::{Binding, Plan};
use chrono::{DateTime, Utc};

/// RFC 3680 §5.1's contact events that we produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactEvent {
    /// A UA registered a new contact.
    Registered,
    /// An administrator added one (`contacts add`, the API).
    Created,
    /// A binding was rewritten (a UA's refresh, whatever its new expires).
    Refreshed,
    /// It expired.
    Expired,
    /// It was removed by someone other than its UA: an administrator, the P-CSCF's PUBLISH,
    /// or the registrar replacing it (single-contact).
    Deactivated,
    /// Its UA removed it (expires 0, `Contact: *`).
    Unregistered,
}

impl ContactEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactEvent::Registered => "registered",
            ContactEvent::Created => "created",
            ContactEvent::Refreshed => "refreshed",
            ContactEvent::Expired => "expired",
            ContactEvent::Deactivated => "deactivated",
            ContactEvent::Unregistered => "unregistered",
        }
    }

    pub fn state(self) -> ContactState {
        match self {
            ContactEvent::Registered | ContactEvent::Created | ContactEvent::Refreshed => {
                ContactState::Active
            }
            ContactEvent::Expired | ContactEvent::Deactivated | ContactEvent::Unregistered => {
                ContactState::Terminated
            }
        }
    }
}

/// One contact's change: the binding as it is now (as it was, for a removal).
#[derive(Clone, Debug, PartialEq)]
pub struct ContactChange {
    pub binding: Binding,
    pub event: ContactEvent,
}

/// Who made a change, which decides the events of its removals and additions.
#[derive(Clone, Debug)]
pub enum Cause<'a> {
    /// A UA's REGISTER; `removed` are the contact URIs it sent with expires 0, `all` is
    /// `Contact: *`. Any other binding the REGISTER deletes was replaced by the registrar.
    Register { all: bool, removed: Vec<&'a str> },
    /// An administrator (CLI, API) or the P-CSCF's PUBLISH.
    Administrative,
}

/// The events of `plan` written over `before` (the AoR's live bindings it was decided on).
pub fn changes<T>(before: &[Binding], plan: &Plan<T>, cause: &Cause<'_>) -> Vec<ContactChange> {
    let mut out = Vec::with_capacity(plan.delete.len() + plan.update.len() + plan.insert.len());
    for b in before.iter().filter(|b| plan.delete.contains(&b.id)) {
        let event = match cause {
            Cause::Register { all: true, .. } => ContactEvent::Unregistered,
            Cause::Register { removed, .. } if removed.contains(&b.contact.as_str()) => {
                ContactEvent::Unregistered
            }
            _ => ContactEvent::Deactivated,
        };
        out.push(ContactChange {
            binding: b.clone(),
            event,
        });
    }
    for b in &plan.update {
        out.push(ContactChange {
            binding: b.clone(),
            event: ContactEvent::Refreshed,
        });
    }
    for b in &plan.insert {
        let event = match cause {
            Cause::Register { .. } => ContactEvent::Registered,
            Cause::Administrative => ContactEvent::Created,
        };
        out.push(ContactChange {
            binding: b.clone(),
            event,
        });
    }
    out
}

/// Removals as events (an administrative removal, a PUBLISH).
pub fn removals(removed: Vec<Binding>, event: ContactEvent) -> Vec<ContactChange> {
    removed
        .into_iter()
        .map(|binding| ContactChange { binding, event })
        .collect()
}

/// Several changes of one AoR folded into one: a binding's last event wins, in first-seen order.
pub fn merge(changes: impl IntoIterator<Item = ContactChange>) -> Vec<ContactChange> {
    let mut out: Vec<ContactChange> = Vec::new();
    for change in changes {
        match out
            .iter_mut()
            .find(|c| c.binding.ruid == change.binding.ruid)
        {
            Some(slot) => *slot = change,
            None => out.push(change),
        }
    }
    out
}

/// The registration's `id`: stable per AoR, the same from every instance.
pub fn registration_id(aor: &Aor) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in aor.username.bytes().chain([b'@']).chain(aor.domain.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("reg-{hash:016x}")
}

/// A partial `<registration>` of these changes; `live_after` bindings remain.
pub fn partial<'a>(
    aor_uri: &'a str,
    id: &'a str,
    changes: &'a [ContactChange],
    live_after: usize,
    now: DateTime<Utc>,
) -> RegistrationDoc<'a> {
    RegistrationDoc {
        aor: aor_uri,
        id,
        state: if live_after > 0 {
            "active"
        } else {
            "terminated"
        },
        contacts: changes
            .iter()
            .map(|c| contact(&c.binding, c.event, now))
            .collect(),
    }
}

/// The full `<registration>`: every live binding, `registered` (RFC 3680 §5.2: `init` when
/// there is none).
pub fn full<'a>(
    aor_uri: &'a str,
    id: &'a str,
    live: &'a [Binding],
    now: DateTime<Utc>,
) -> RegistrationDoc<'a> {
    RegistrationDoc {
        aor: aor_uri,
        id,
        state: if live.is_empty() { "init" } else { "active" },
        contacts: live
            .iter()
            .filter(|b| b.is_live(now))
            .map(|b| contact(b, ContactEvent::Registered, now))
            .collect(),
    }
}

fn contact(b: &Binding, event: ContactEvent, now: DateTime<Utc>) -> ContactDoc<'_> {
    let state = event.state();
    let expires = match state {
        ContactState::Active => {
            let millis = (b.expires - now).num_milliseconds().max(0);
            u64::try_from((millis + 999) / 1000).unwrap_or(0)
        }
        ContactState::Terminated => 0,
    };
    ContactDoc {
        id: &b.ruid,
        state,
        event: event.as_str(),
        expires,
        uri: &b.contact,
        q: b.q,
        call_id: &b.callid,
        cseq: b.cseq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn binding(id: i64, contact: &str, now: DateTime<Utc>) -> Binding {
        Binding {
            id,
            ruid: format!("ruid-{id}"),
            aor: Aor::new("alice", "example.com"),
            contact: contact.into(),
            received: None,
            path: None,
            expires: now + TimeDelta::seconds(60),
            q: None,
            callid: "c".into(),
            cseq: 1,
            last_modified: now,
            flags: 0,
            cflags: 0,
            user_agent: None,
            socket: None,
            methods: None,
            instance: None,
            reg_id: 0,
            server_id: 0,
            connection_id: -1,
            keepalive: 0,
            partition: 0,
        }
    }

    #[test]
    fn e2_register_events_follow_rfc3680() {
        let now = Utc::now();
        let before = vec![
            binding(1, "sip:a@h", now),
            binding(2, "sip:b@h", now),
            binding(3, "sip:c@h", now),
        ];
        let mut plan = Plan::unchanged(());
        plan.delete = vec![1, 2];
        plan.update = vec![binding(3, "sip:c@h", now)];
        plan.insert = vec![binding(0, "sip:d@h", now)];
        let cause = Cause::Register {
            all: false,
            removed: vec!["sip:a@h"],
        };
        let events: Vec<_> = changes(&before, &plan, &cause)
            .iter()
            .map(|c| (c.binding.contact.clone(), c.event))
            .collect();
        assert_eq!(
            events,
            vec![
                ("sip:a@h".into(), ContactEvent::Unregistered),
                // Not asked for by the UA: the registrar replaced it.
                ("sip:b@h".into(), ContactEvent::Deactivated),
                ("sip:c@h".into(), ContactEvent::Refreshed),
                ("sip:d@h".into(), ContactEvent::Registered),
            ]
        );
        let star = Cause::Register {
            all: true,
            removed: Vec::new(),
        };
        assert!(
            changes(&before, &plan, &star)[..2]
                .iter()
                .all(|c| c.event == ContactEvent::Unregistered)
        );
        let admin = changes(&before, &plan, &Cause::Administrative);
        assert_eq!(admin[0].event, ContactEvent::Deactivated);
        assert_eq!(admin[3].event, ContactEvent::Created);
    }

    #[test]
    fn e2_an_unchanged_plan_notifies_nothing() {
        let now = Utc::now();
        let before = vec![binding(1, "sip:a@h", now)];
        let cause = Cause::Register {
            all: false,
            removed: Vec::new(),
        };
        assert!(changes(&before, &Plan::unchanged(()), &cause).is_empty());
    }

    #[test]
    fn e2_merge_keeps_the_last_event_of_a_binding() {
        let now = Utc::now();
        let a = binding(1, "sip:a@h", now);
        let b = binding(2, "sip:b@h", now);
        let merged = merge([
            ContactChange {
                binding: a.clone(),
                event: ContactEvent::Registered,
            },
            ContactChange {
                binding: b,
                event: ContactEvent::Registered,
            },
            ContactChange {
                binding: a,
                event: ContactEvent::Unregistered,
            },
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].event, ContactEvent::Unregistered);
    }

    #[test]
    fn e2_documents_carry_state_and_remaining_seconds() {
        let now = Utc::now();
        let live = vec![binding(1, "sip:a@h", now)];
        let doc = full("sip:alice@example.com", "r", &live, now);
        assert_eq!(doc.state, "active");
        assert_eq!(doc.contacts[0].expires, 60);
        assert_eq!(full("sip:alice@example.com", "r", &[], now).state, "init");
        let gone = removals(live.clone(), ContactEvent::Expired);
        let doc = partial("sip:alice@example.com", "r", &gone, 0, now);
        assert_eq!(doc.state, "terminated");
        assert_eq!(
            (
                doc.contacts[0].state.clone(),
                doc.contacts[0].expires,
                doc.contacts[0].event
            ),
            (ContactState::Terminated, 0, "expired")
        );
    }
}
