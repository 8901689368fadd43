//! SPEC E2's expiry job: a binding that expires has no request to hang its NOTIFY on, so every
//! instance looks, several times per `--expiry-notify-delay`, for subscriptions whose AoR has
//! bindings that expired since they were last told (their `notified_until` watermark), and for
//! subscriptions that ended. It claims them with a lease — the claim the P-CSCF's expiry job
//! uses (`crate::lease`), so that each expiry is NOTIFYed by exactly one instance — sends the
//! `expired` NOTIFY (or the final one), then moves the watermark and releases the claim. An
//! instance that dies mid-way leaves a lease that lapses; another then sends it.

use super::change::{self, ContactEvent};
use super::notifier::{Delivery, RegEvents};
use crate::sip::aor::aor_uri;
use crate::store::ExpiryWork;
use std::sync::Arc;
use std::time::Duration;

/// Subscriptions claimed per pass; the next pass takes the rest.
const CLAIM_BATCH: u32 = 200;

pub async fn run(events: Arc<RegEvents>) {
    // Five looks per delay: an expiry waits at most a fifth of it for the job, leaving the rest
    // for the NOTIFY's own transaction.
    let interval = (events.config.expiry_notify_delay / 5).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = events.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        pass(&events).await;
    }
}

/// One pass: claims the work and starts its NOTIFYs; returns how many subscriptions it took.
pub async fn pass(events: &Arc<RegEvents>) -> usize {
    let claimed = match (events.store)
        .claim_expiry_work(&events.owner, events.config.lease(), CLAIM_BATCH)
        .await
    {
        Ok(work) => work,
        Err(e) => {
            tracing::warn!(error = %e, "claiming reg-event expiry work failed");
            return 0;
        }
    };
    let taken = claimed.len();
    for work in claimed {
        let events = Arc::clone(events);
        tokio::spawn(async move { expire(&events, work).await });
    }
    taken
}

async fn expire(events: &RegEvents, work: ExpiryWork) {
    let s = &work.subscription;
    let (uri, id) = (aor_uri(&s.aor), change::registration_id(&s.aor));
    if s.expires <= work.now {
        // RFC 6665 §4.2.2: an ended subscription gets a final NOTIFY with the state.
        let doc = change::full(&uri, &id, &work.live, work.now);
        let delivery = events
            .notify(s, true, &doc, "terminated;reason=timeout")
            .await;
        if delivery != Delivery::Ended {
            let _ = events.store.remove_subscription(s.id).await;
        }
        tracing::info!(aor = %s.aor, "reg-event subscription expired");
        return;
    }
    let expired = change::removals(work.expired.clone(), ContactEvent::Expired);
    let doc = change::partial(&uri, &id, &expired, work.live.len(), work.now);
    let state = RegEvents::active_state(s, work.now);
    if events.notify(s, false, &doc, &state).await == Delivery::Ended {
        return;
    }
    tracing::info!(aor = %s.aor, contacts = expired.len(), "expired contacts NOTIFYed");
    match (events.store)
        .finish_expiry_work(s.id, &events.owner, work.now)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::info!(aor = %s.aor, "expiry claim lost before it was released"),
        Err(e) => tracing::warn!(error = %e, "could not release an expiry claim; it will lapse"),
    }
}
