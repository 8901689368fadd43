//! Runs a REGISTER against the store: the checks that need no bindings first, then the pure
//! decision inside the store's per-AoR transaction (SPEC S2), one transaction per REGISTER.
//! An authenticated REGISTER's credentials are verified first, in the same transaction, on the
//! subscriber row read beside the bindings (SPEC A4); the decision runs only if they hold.

use super::decide::{Outcome, decide, prepare};
use super::request::{Contacts, Policy, Register};
use crate::auth::{Denied, Verification};
use crate::store::{Binding, Plan, Reads, Store, StoreError, Written};
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

/// `credentials`: the gate's verification when the REGISTER must authenticate (`None` with
/// auth off, and for administrative bindings). `Err(Denied)`: they did not hold; nothing was
/// written.
pub async fn register(
    store: &Store,
    policy: &Policy,
    request: &Register,
    credentials: Option<&Verification>,
) -> Result<Result<Registration, Denied>, StoreError> {
    if let Err(refusal) = prepare(request, policy) {
        return Ok(Ok(Registration {
            outcome: Outcome::Refused(refusal),
            now: Utc::now(),
            written: Written::default(),
            bindings: Vec::new(),
        }));
    }
    let (outcome, now, written, mut bindings) =
        if matches!(request.contacts, Contacts::None) && credentials.is_none() {
            // A query writes nothing, so it needs no lock (R10).
            let snapshot = store.live_bindings(&request.aor).await?;
            (
                Outcome::Registered,
                snapshot.now,
                Written::default(),
                snapshot.bindings,
            )
        } else {
            let (owned, policy) = (request.clone(), policy.clone());
            let check = credentials.cloned();
            let reads = match check {
                Some(_) => Reads::WithSubscriber,
                None => Reads::Bindings,
            };
            let applied = store
                .update_aor(&request.aor, reads, move |snapshot| {
                    if let Some(check) = &check
                        && let Err(denied) = check.check(snapshot.subscriber.as_ref())
                    {
                        return Plan::unchanged(Err(denied));
                    }
                    decide(&owned, &policy, snapshot).map(Ok)
                })
                .await?;
            let outcome = match applied.outcome {
                Ok(outcome) => outcome,
                Err(denied) => return Ok(Err(denied)),
            };
            (outcome, applied.now, applied.written, applied.bindings)
        };
    reply_order(&mut bindings);
    Ok(Ok(Registration {
        outcome,
        now,
        written,
        bindings,
    }))
}

/// An administrative binding (SPEC C4, `contacts add`): nothing to authenticate.
pub async fn register_administratively(
    store: &Store,
    policy: &Policy,
    request: &Register,
) -> Result<Registration, StoreError> {
    match register(store, policy, request, None).await? {
        Ok(registration) => Ok(registration),
        Err(Denied) => unreachable!("no credentials were given to verify"),
    }
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
