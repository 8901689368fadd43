//! Runs a REGISTER against the store: the checks that need no bindings first, then the pure
//! decision inside the store's per-AoR transaction (SPEC S2), one transaction per REGISTER.

use super::decide::{Outcome, decide, prepare};
use super::request::{Contacts, Policy, Register};
use crate::store::{Binding, Store, StoreError, Written};
use chrono::{DateTime, Utc};

/// The outcome of a REGISTER and the AoR's live bindings after it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub outcome: Outcome,
    pub now: DateTime<Utc>,
    pub written: Written,
    /// In reply order (R10).
    pub bindings: Vec<Binding>,
}

pub async fn register(
    store: &Store,
    policy: &Policy,
    request: &Register,
) -> Result<Registration, StoreError> {
    if let Err(refusal) = prepare(request, policy) {
        return Ok(Registration {
            outcome: Outcome::Refused(refusal),
            now: Utc::now(),
            written: Written::default(),
            bindings: Vec::new(),
        });
    }
    let (outcome, now, written, mut bindings) = if matches!(request.contacts, Contacts::None) {
        // A query writes nothing, so it needs no lock (R10).
        let snapshot = store.live_bindings(&request.aor).await?;
        let written = Written::default();
        (
            Outcome::Registered,
            snapshot.now,
            written,
            snapshot.bindings,
        )
    } else {
        let (owned, policy) = (request.clone(), policy.clone());
        let applied = store
            .update_aor(&request.aor, move |snapshot| {
                decide(&owned, &policy, snapshot)
            })
            .await?;
        (
            applied.outcome,
            applied.now,
            applied.written,
            applied.bindings,
        )
    };
    reply_order(&mut bindings);
    Ok(Registration {
        outcome,
        now,
        written,
        bindings,
    })
}

/// R10: highest q first, an unspecified q counting as 1.0 (deliberate: Kamailio sorts it
/// last); ties newest `last_modified` first.
pub fn reply_order(bindings: &mut [Binding]) {
    bindings.sort_by(|a, b| {
        let q = |x: &Binding| x.q.unwrap_or(1000);
        q(b).cmp(&q(a))
            .then_with(|| b.last_modified.cmp(&a.last_modified))
            .then_with(|| b.id.cmp(&a.id))
    });
}
