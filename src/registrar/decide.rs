//! The registrar's heart, a pure function: (REGISTER, live bindings, now, policy) → (changes,
//! outcome). RFC 3261 §10.3 with Kamailio `save()` semantics, as SPEC R3–R8 state them. No I/O:
//! the store calls it while holding the AoR's lock, between its read and its write.

use super::request::{Contacts, Policy, Refusal, Register, RequestedContact};
use crate::store::{AorSnapshot, Binding, Plan};
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashMap;

/// What the REGISTER comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 OK listing the live bindings (also for queries and retransmissions).
    Registered,
    Refused(Refusal),
}

/// The checks that need no bindings (R3, R4's syntax), so that a REGISTER that can only fail
/// never touches the database. Returns each contact's effective expires, clamped.
pub fn prepare(register: &Register, policy: &Policy) -> Result<Vec<u32>, Refusal> {
    match &register.contacts {
        Contacts::None => Ok(Vec::new()),
        Contacts::Wildcard => match register.expires_header {
            Some(0) => Ok(Vec::new()),
            _ => Err(Refusal::STAR_EXPIRES),
        },
        Contacts::List(list) => list
            .iter()
            .map(|c| effective_expires(c, register.expires_header, policy))
            .collect(),
    }
}

/// R3: the contact's `expires` param, else the `Expires` header, else the default; 0 stays 0
/// (removal); below `min_expires` is 423; above `max_expires` is clamped.
fn effective_expires(
    contact: &RequestedContact,
    header: Option<u32>,
    policy: &Policy,
) -> Result<u32, Refusal> {
    let asked = contact.expires.or(header).unwrap_or(policy.default_expires);
    if asked == 0 {
        return Ok(0);
    }
    if asked < policy.min_expires {
        return Err(Refusal::too_brief(policy.min_expires));
    }
    Ok(match policy.max_expires {
        0 => asked,
        max => asked.min(max),
    })
}

/// Decides one REGISTER against the AoR's live bindings.
pub fn decide(register: &Register, policy: &Policy, snapshot: &AorSnapshot) -> Plan<Outcome> {
    let expires = match prepare(register, policy) {
        Ok(e) => e,
        Err(refusal) => return Plan::unchanged(Outcome::Refused(refusal)),
    };
    match &register.contacts {
        Contacts::None => Plan::unchanged(Outcome::Registered),
        Contacts::Wildcard => remove_all(register, snapshot),
        Contacts::List(list) => {
            let wanted = list.iter().zip(expires);
            match bind(register, policy, snapshot, wanted) {
                Ok(plan) => plan,
                Err(refusal) => Plan::unchanged(Outcome::Refused(refusal)),
            }
        }
    }
}

/// R4: `Contact: *` removes every binding, unless one with the same Call-ID has a CSeq at least
/// as high as the request's (RFC 3261 §10.3 step 6): then nothing is removed.
fn remove_all(register: &Register, snapshot: &AorSnapshot) -> Plan<Outcome> {
    let stale = snapshot
        .bindings
        .iter()
        .any(|b| b.callid == register.call_id && b.cseq >= i64::from(register.cseq));
    if stale {
        return Plan::unchanged(Outcome::Refused(Refusal::INVALID_CSEQ));
    }
    let mut plan = Plan::unchanged(Outcome::Registered);
    plan.delete = snapshot.bindings.iter().map(|b| b.id).collect();
    plan
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Kept,
    Updated,
    Inserted,
    Deleted,
}

struct Slot {
    binding: Binding,
    fate: Fate,
}

#[derive(PartialEq, Eq)]
enum Matched {
    ByInstance,
    ByUri,
}

/// R5–R8 for a list of contacts, applied in order to a working copy of the bindings.
fn bind<'a>(
    register: &Register,
    policy: &Policy,
    snapshot: &AorSnapshot,
    wanted: impl Iterator<Item = (&'a RequestedContact, u32)>,
) -> Result<Plan<Outcome>, Refusal> {
    let now = snapshot.now;
    let mut slots: Vec<Slot> = snapshot
        .bindings
        .iter()
        .map(|b| Slot {
            binding: b.clone(),
            fate: Fate::Kept,
        })
        .collect();
    let before = slots.len();
    let mut index = Index::of(&slots);

    for (contact, expires) in wanted {
        let found = index.find(&slots, contact);
        if let Some((i, Matched::ByUri)) = &found {
            let slot = &slots[*i];
            // A binding this REGISTER already wrote carries its own Call-ID/CSeq: no check.
            if slot.fate == Fate::Kept && slot.binding.callid == register.call_id {
                let stored = slot.binding.cseq;
                let asked = i64::from(register.cseq);
                if asked < stored {
                    return Err(Refusal::INVALID_CSEQ);
                }
                if asked == stored {
                    let age = now - slot.binding.last_modified;
                    if age < TimeDelta::from_std(policy.retransmission_window).unwrap_or_default() {
                        // A retransmission: this contact changes nothing (R5).
                        if policy.single_contact && expires > 0 {
                            break;
                        }
                        continue;
                    }
                    return Err(Refusal::INVALID_CSEQ);
                }
            }
        }
        let kept = match (found, expires) {
            (Some((i, _)), 0) => {
                slots[i].fate = Fate::Deleted;
                None
            }
            (None, 0) => None,
            (Some((i, how)), _) => {
                let old = &slots[i].binding;
                if how == Matched::ByInstance
                    && old.callid != register.call_id
                    && let Some(instance) = old.instance.clone()
                {
                    // The device restarted (new Call-ID): its other flows are gone (Kamailio).
                    let same = index.with_instance(&instance);
                    delete_where(&mut slots, i, same, |b| {
                        b.instance.as_ref() == Some(&instance)
                    });
                }
                // The URI now belongs to this binding, whoever held it before.
                let holders = index.with_uri(&contact.uri);
                delete_where(&mut slots, i, holders, |b| b.contact == contact.uri);
                let updated = fill(
                    register,
                    policy,
                    contact,
                    expires,
                    now,
                    slots[i].binding.clone(),
                );
                slots[i].binding = updated;
                index.note(i, &slots[i].binding);
                if slots[i].fate == Fate::Kept {
                    slots[i].fate = Fate::Updated;
                }
                Some(i)
            }
            (None, _) => {
                let fresh = fill(
                    register,
                    policy,
                    contact,
                    expires,
                    now,
                    blank(register, now),
                );
                index.note(slots.len(), &fresh);
                slots.push(Slot {
                    binding: fresh,
                    fate: Fate::Inserted,
                });
                Some(slots.len() - 1)
            }
        };
        if let (Some(i), true) = (kept, policy.single_contact) {
            // R8: the first registered contact wins; every other binding goes.
            let all: Vec<usize> = (0..slots.len()).collect();
            delete_where(&mut slots, i, &all, |_| true);
            break;
        }
    }

    let after = slots.iter().filter(|s| s.fate != Fate::Deleted).count();
    // R7. Only growth past the limit is refused, so an AoR already over a lowered limit can
    // still refresh and shed bindings.
    if policy.max_contacts > 0 && after > policy.max_contacts as usize && after > before {
        return Err(Refusal::TOO_MANY);
    }

    let mut plan = Plan::unchanged(Outcome::Registered);
    for slot in slots {
        match slot.fate {
            Fate::Kept => {}
            Fate::Updated => plan.update.push(slot.binding),
            Fate::Inserted => plan.insert.push(slot.binding),
            Fate::Deleted if slot.binding.id != 0 => plan.delete.push(slot.binding.id),
            Fate::Deleted => {}
        }
    }
    Ok(plan)
}

/// Where each contact URI and instance sits among the slots, so that matching a REGISTER's
/// contacts is linear in their number, not a scan of the AoR's bindings per contact (SPEC H3).
/// Lists only grow: an entry whose slot has since changed or been deleted is skipped by the
/// check on the slot itself.
struct Index {
    by_uri: HashMap<String, Vec<usize>>,
    by_instance: HashMap<String, Vec<usize>>,
}

impl Index {
    fn of(slots: &[Slot]) -> Index {
        let mut index = Index {
            by_uri: HashMap::with_capacity(slots.len()),
            by_instance: HashMap::new(),
        };
        for (i, slot) in slots.iter().enumerate() {
            index.note(i, &slot.binding);
        }
        index
    }

    fn note(&mut self, i: usize, binding: &Binding) {
        let at = self.by_uri.entry(binding.contact.clone()).or_default();
        if at.last() != Some(&i) {
            at.push(i);
        }
        if let Some(instance) = &binding.instance {
            let at = self.by_instance.entry(instance.clone()).or_default();
            if at.last() != Some(&i) {
                at.push(i);
            }
        }
    }

    fn with_uri(&self, uri: &str) -> &[usize] {
        self.by_uri.get(uri).map_or(&[], Vec::as_slice)
    }

    fn with_instance(&self, instance: &str) -> &[usize] {
        self.by_instance.get(instance).map_or(&[], Vec::as_slice)
    }

    /// R5: a contact with `+sip.instance` matches by instance and reg-id; otherwise (or
    /// failing that) by the contact URI, byte-exact. The first such slot, in slot order.
    fn find(&self, slots: &[Slot], contact: &RequestedContact) -> Option<(usize, Matched)> {
        let alive = |i: usize| slots[i].fate != Fate::Deleted;
        if let Some(instance) = &contact.instance {
            let reg_id = contact.reg_id.map_or(0, |r| r as i32);
            let hit = self
                .with_instance(instance)
                .iter()
                .copied()
                .filter(|&i| {
                    let b = &slots[i].binding;
                    alive(i) && b.instance.as_ref() == Some(instance) && b.reg_id == reg_id
                })
                .min();
            if let Some(i) = hit {
                return Some((i, Matched::ByInstance));
            }
        }
        self.with_uri(&contact.uri)
            .iter()
            .copied()
            .filter(|&i| alive(i) && slots[i].binding.contact == contact.uri)
            .min()
            .map(|i| (i, Matched::ByUri))
    }
}

fn delete_where(
    slots: &mut [Slot],
    keep: usize,
    candidates: &[usize],
    doomed: impl Fn(&Binding) -> bool,
) {
    for &j in candidates {
        let slot = &mut slots[j];
        if j != keep && slot.fate != Fate::Deleted && doomed(&slot.binding) {
            slot.fate = Fate::Deleted;
        }
    }
}

/// A new binding's identity: a fresh ruid, kept for as long as the binding lives (S1).
fn blank(register: &Register, now: DateTime<Utc>) -> Binding {
    Binding {
        id: 0,
        ruid: uuid::Uuid::new_v4().to_string(),
        aor: register.aor.clone(),
        contact: String::new(),
        received: None,
        path: None,
        expires: now,
        q: None,
        callid: String::new(),
        cseq: 0,
        last_modified: now,
        flags: 0,
        cflags: 0,
        user_agent: None,
        socket: None,
        methods: None,
        instance: None,
        reg_id: 0,
        server_id: 0,
        connection_id: 0,
        keepalive: 0,
        partition: 0,
    }
}

/// Writes what this REGISTER says about one contact over `binding` (R9): everything but its
/// identity (`id`, `ruid`).
fn fill(
    register: &Register,
    policy: &Policy,
    contact: &RequestedContact,
    expires: u32,
    now: DateTime<Utc>,
    binding: Binding,
) -> Binding {
    Binding {
        contact: contact.uri.clone(),
        received: received(register, contact),
        path: register.path.clone(),
        expires: now + TimeDelta::seconds(i64::from(expires)),
        q: contact.q,
        callid: register.call_id.clone(),
        cseq: i64::from(register.cseq),
        last_modified: now,
        user_agent: register.user_agent.clone(),
        socket: register.socket.clone(),
        methods: contact.methods,
        instance: contact.instance.clone(),
        reg_id: contact.reg_id.map_or(0, |r| r as i32),
        server_id: policy.server_id,
        connection_id: register.connection_id,
        ..binding
    }
}

/// R9: the source address, only when NAT is detected the way Kamailio's default configuration
/// detects it before `fix_nated_register()` (`nat_uac_test("19")`: the source differs from the
/// top Via, or the Contact host is an RFC 1918 address), and no Path was given (with Path, the
/// first hop reaches the UA, not us). A Kamailio proxy sharing the table sends to `received`
/// whenever it is set, so one stored for a UA that merely listens on another port than it sends
/// from would misroute every request to it.
fn received(register: &Register, contact: &RequestedContact) -> Option<String> {
    let source = register.source.as_ref()?;
    if register.path.is_some() {
        return None;
    }
    if !source.differs_from_via && !is_rfc1918(&contact.host) {
        return None;
    }
    let same_host = source.host.eq_ignore_ascii_case(&contact.host);
    let same_port = contact.port.unwrap_or(5060) == source.port;
    if same_host && same_port {
        return None;
    }
    Some(format!(
        "sip:{}:{};transport={}",
        source.host, source.port, source.transport
    ))
}

/// 10/8, 172.16/12, 192.168/16 (`nat_uac_test` flag 1).
fn is_rfc1918(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_private())
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
