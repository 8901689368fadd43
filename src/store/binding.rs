//! The registrar role's stored data: a `Binding` is one row of `location` (SPEC S1), and a
//! `Plan` is what a role decided to change for one AoR while the store held that AoR's lock.
//!
//! These are plain data: the store never interprets SIP, it only keeps what the roles hand it.

use super::Subscriber;
pub use crate::aor::Aor;
use chrono::{DateTime, Utc};

/// One binding of an AoR to a contact: every column of `location`.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// Database identity; assigned by the database on insert (ignored in `Plan::insert`).
    pub id: i64,
    pub ruid: String,
    pub aor: Aor,
    /// The contact URI exactly as the client sent it.
    pub contact: String,
    pub received: Option<String>,
    pub path: Option<String>,
    pub expires: DateTime<Utc>,
    /// In thousandths (0..=1000, Kamailio's `qvalue_t`); `None` = unspecified, stored as −1.
    pub q: Option<u16>,
    pub callid: String,
    pub cseq: i64,
    pub last_modified: DateTime<Utc>,
    pub flags: i32,
    pub cflags: i32,
    pub user_agent: Option<String>,
    pub socket: Option<String>,
    /// Kamailio's method bitmask; `None` = all methods.
    pub methods: Option<i32>,
    /// `+sip.instance`, with its angle brackets.
    pub instance: Option<String>,
    pub reg_id: i32,
    pub server_id: i32,
    pub connection_id: i32,
    pub keepalive: i32,
    pub partition: i32,
}

impl Binding {
    /// A binding is live while `expires > now` (SPEC S1).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires > now
    }

    /// Same identity under the unique `(username, domain, instance, reg_id)` index.
    pub(crate) fn same_instance_key(&self, other: &Binding) -> bool {
        self.instance.is_some() && self.instance == other.instance && self.reg_id == other.reg_id
    }
}

/// How q is stored: a real in 0..=1, −1 standing for "unspecified".
pub(crate) fn q_to_column(q: Option<u16>) -> f64 {
    q.map_or(-1.0, |milli| f64::from(milli) / 1000.0)
}

pub(crate) fn q_from_column(q: f64) -> Option<u16> {
    // Rows written by others may hold any real: clamp, and round away float noise (0.7 as f32).
    (q >= 0.0).then(|| (q.min(1.0) * 1000.0).round() as u16)
}

/// The live bindings of one AoR as read under its lock, with the `now` of that read, and the
/// AoR's subscriber row when the change asked for it (`Reads::WithSubscriber`).
#[derive(Clone, Debug)]
pub struct AorSnapshot {
    pub now: DateTime<Utc>,
    pub bindings: Vec<Binding>,
    pub subscriber: Option<Subscriber>,
}

/// What a change reads under the AoR's lock besides its bindings: an authenticated REGISTER
/// also needs the AoR's credentials (SPEC A4), read in the same transaction (in a batch, one
/// statement for all its REGISTERs) instead of a round trip of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reads {
    #[default]
    Bindings,
    WithSubscriber,
}

/// What a role decided for one AoR: the rows to delete, rewrite and insert, and the outcome it
/// reports back to its caller. An empty change set writes nothing.
#[derive(Clone, Debug)]
pub struct Plan<T> {
    pub delete: Vec<i64>,
    pub update: Vec<Binding>,
    pub insert: Vec<Binding>,
    pub outcome: T,
}

impl<T> Plan<T> {
    /// A decision that changes nothing (a query, a retransmission, a refusal).
    pub fn unchanged(outcome: T) -> Self {
        Plan {
            delete: Vec::new(),
            update: Vec::new(),
            insert: Vec::new(),
            outcome,
        }
    }

    /// The same changes with the outcome turned into another.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Plan<U> {
        Plan {
            delete: self.delete,
            update: self.update,
            insert: self.insert,
            outcome: f(self.outcome),
        }
    }

    pub fn is_unchanged(&self) -> bool {
        self.delete.is_empty() && self.update.is_empty() && self.insert.is_empty()
    }
}

/// The result of applying a `Plan`: the role's outcome, the `now` it was decided at, what was
/// written, and the AoR's live bindings after the change.
#[derive(Clone, Debug)]
pub struct Applied<T> {
    pub outcome: T,
    pub now: DateTime<Utc>,
    pub written: Written,
    pub bindings: Vec<Binding>,
}

/// How many bindings a change inserted, updated and deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
}

impl Written {
    pub fn of<T>(plan: &Plan<T>) -> Written {
        Written {
            inserted: plan.insert.len(),
            updated: plan.update.len(),
            deleted: plan.delete.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Written::default()
    }
}

/// Which bindings an administrative removal targets (Kamailio `unregister()`, SPEC C3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    All,
    Contact(String),
    Ruid(String),
}

/// Rows of the AoR (live or expired) that must go before `plan` can be written: an expired row
/// still holds its unique keys, and a REGISTER for such a contact is a new binding (SPEC S1).
pub(crate) fn expired_conflicts<T>(
    plan: &Plan<T>,
    rows: &[Binding],
    now: DateTime<Utc>,
) -> Vec<i64> {
    let written = plan.update.iter().chain(plan.insert.iter());
    let mut ids: Vec<i64> = Vec::new();
    for new in written {
        for old in rows.iter().filter(|r| !r.is_live(now) && r.id != new.id) {
            if (old.contact == new.contact || old.same_instance_key(new)) && !ids.contains(&old.id)
            {
                ids.push(old.id);
            }
        }
    }
    ids.retain(|id| !plan.delete.contains(id));
    ids
}

impl AorSnapshot {
    /// The live ones of `rows` (every row of the AoR, read under its lock) at `now`.
    pub(crate) fn live(rows: &[Binding], now: DateTime<Utc>) -> AorSnapshot {
        AorSnapshot {
            now,
            bindings: rows.iter().filter(|b| b.is_live(now)).cloned().collect(),
            subscriber: None,
        }
    }

    /// These bindings as they are at `now`, nothing else read (tests, dumps).
    pub fn of(now: DateTime<Utc>, bindings: Vec<Binding>) -> AorSnapshot {
        AorSnapshot {
            now,
            bindings,
            subscriber: None,
        }
    }
}

impl<T> Applied<T> {
    /// The result of `plan` written over `before` (all rows read under the lock), `inserted`
    /// being its inserts with the ids the database gave them.
    pub(crate) fn after(
        plan: Plan<T>,
        before: Vec<Binding>,
        inserted: Vec<Binding>,
        now: DateTime<Utc>,
    ) -> Applied<T> {
        let written = Written::of(&plan);
        let mut bindings: Vec<Binding> = before
            .into_iter()
            .filter(|b| !plan.delete.contains(&b.id))
            .map(|b| match plan.update.iter().find(|u| u.id == b.id) {
                Some(u) => u.clone(),
                None => b,
            })
            .chain(inserted)
            .filter(|b| b.is_live(now))
            .collect();
        bindings.sort_by_key(|b| b.id);
        Applied {
            outcome: plan.outcome,
            now,
            written,
            bindings,
        }
    }
}
