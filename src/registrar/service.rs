//! Runs a REGISTER against the store: the checks that need no bindings first, then the pure
//! decision inside the store's per-AoR transaction (SPEC S2), one transaction per REGISTER.
//! An authenticated REGISTER's credentials are verified first, in the same transaction, on the
//! subscriber row read beside the bindings (SPEC A4); the decision runs only if they hold.

use super::decide::{Outcome, decide, prepare};
use super::request::{Contacts, Policy, Register};
use crate::auth::{Denied, Verification};
use crate::regevent::change::{self, Cause, ContactChange};
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
    /// What the subscribers of the AoR are to be told (SPEC E2); empty when nothing changed.
    pub changes: Vec<ContactChange>,
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
    run(store, policy, request, credentials, false).await
}

async fn run(
    store: &Store,
    policy: &Policy,
    request: &Register,
    credentials: Option<&Verification>,
    administrative: bool,
) -> Result<Result<Registration, Denied>, StoreError> {
    if let Err(refusal) = prepare(request, policy) {
        return Ok(Ok(Registration {
            outcome: Outcome::Refused(refusal),
            now: Utc::now(),
            written: Written::default(),
            bindings: Vec::new(),
            changes: Vec::new(),
        }));
    }
    let (outcome, now, written, mut bindings, changes) =
        if matches!(request.contacts, Contacts::None) && credentials.is_none() {
            // A query writes nothing, so it needs no lock (R10).
            let snapshot = store.live_bindings(&request.aor).await?;
            (
                Outcome::Registered,
                snapshot.now,
                Written::default(),
                snapshot.bindings,
                Vec::new(),
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
                    let plan = decide(&owned, &policy, snapshot);
                    // SPEC E2: what to NOTIFY is a function of the change, decided with it.
                    let cause = cause(&owned, &policy, administrative);
                    let changes = change::changes(&snapshot.bindings, &plan, &cause);
                    plan.map(|outcome| Ok((outcome, changes)))
                })
                .await?;
            let (outcome, changes) = match applied.outcome {
                Ok(decided) => decided,
                Err(denied) => return Ok(Err(denied)),
            };
            (
                outcome,
                applied.now,
                applied.written,
                applied.bindings,
                changes,
            )
        };
    reply_order(&mut bindings);
    Ok(Ok(Registration {
        outcome,
        now,
        written,
        bindings,
        changes,
    }))
}

/// Who a REGISTER's removals are credited to (SPEC E2): the contacts it sent with expires 0
/// were unregistered by their UA.
fn cause<'a>(request: &'a Register, policy: &Policy, administrative: bool) -> Cause<'a> {
    if administrative {
        return Cause::Administrative;
    }
    match &request.contacts {
        Contacts::Wildcard => Cause::Register {
            all: true,
            removed: Vec::new(),
        },
        Contacts::None => Cause::Register {
            all: false,
            removed: Vec::new(),
        },
        Contacts::List(list) => Cause::Register {
            all: false,
            removed: list
                .iter()
                .filter(|c| {
                    let asked = c.expires.or(request.expires_header);
                    asked.unwrap_or(policy.default_expires) == 0
                })
                .map(|c| c.uri.as_str())
                .collect(),
        },
    }
}

/// An administrative binding (SPEC C4, `contacts add`): nothing to authenticate.
pub async fn register_administratively(
    store: &Store,
    policy: &Policy,
    request: &Register,
) -> Result<Registration, StoreError> {
    match run(store, policy, request, None, true).await? {
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
