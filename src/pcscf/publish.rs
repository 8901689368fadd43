//! SPEC P4: PUBLISH a pcontact's expiry to the S-CSCF, one PUBLISH per identity that is not a
//! `tel:` URI, each retried with a doubling backoff up to `--publish-max-attempts`, progress
//! written back under the claim so that an instance taking over continues where this one
//! stopped. When every identity has a 2xx or was given up, the pcontact is deleted
//! (deliberate: Kamailio keeps refusing the UE until a NOTIFY arrives).

use super::decide::publishable_ids;
use super::role::Pcscf;
use crate::lease::Held;
use crate::sip::outgoing::Outgoing;
use crate::sip::reginfo;
use crate::sip::wire::StartLine;
use crate::store::{Pcontact, PublishProgress, join_uri_list, split_uri_list};
use crate::transaction::{Outcome, new_branch};
use chrono::{TimeDelta, Utc};
use std::sync::Arc;
use std::time::Duration;

/// The publication's lifetime, as Kamailio's pua sends it; the expiry itself is the
/// `expires="0"` in the body.
const PUBLICATION_EXPIRES: u32 = 3601;

pub async fn publish_expiry(pcscf: Arc<Pcscf>, pcontact: Pcontact) {
    let config = &pcscf.config;
    let lease = config.lease();
    let mut done: Vec<String> = pcontact
        .published_ids
        .as_deref()
        .map(split_uri_list)
        .unwrap_or_default();
    let mut attempts = u32::try_from(pcontact.publish_attempts).unwrap_or(0);
    let call_id = format!(
        "publish-{}@{}",
        uuid::Uuid::new_v4().simple(),
        config.identity.sent_by
    );
    let mut cseq = 1u32;
    // The claim as this instance last saw it renewed, by its own clock (SPEC H5): the audit
    // claimed it with `lease` just now.
    let mut held = Held::since(tokio::time::Instant::now(), lease);
    for impu in publishable_ids(&pcontact) {
        if done.contains(&impu) {
            continue;
        }
        loop {
            let progress = PublishProgress {
                published_ids: Some(join_uri_list(&done)).filter(|s| !s.is_empty()),
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                next_publish_at: None,
            };
            if !still_ours(&pcscf, &pcontact, lease, &progress, &mut held).await {
                return;
            }
            let result = send(&pcscf, &impu, &pcontact.aor, &call_id, cseq).await;
            cseq += 1;
            if result.is_ok() {
                published("ok");
                tracing::info!(%impu, contact = %pcontact.aor, "expiry PUBLISHed");
                done.push(impu.clone());
                attempts = 0;
                break;
            }
            attempts += 1;
            if attempts >= config.publish_max_attempts {
                published("given_up");
                tracing::warn!(%impu, contact = %pcontact.aor, attempts, reason = %result.unwrap_err(), "giving up the expiry PUBLISH");
                done.push(impu.clone());
                attempts = 0;
                break;
            }
            published("retry");
            let pause = config.publish_backoff * 2u32.saturating_pow(attempts - 1);
            tracing::info!(%impu, attempts, ?pause, reason = %result.unwrap_err(), "expiry PUBLISH failed; retrying");
            let progress = PublishProgress {
                published_ids: Some(join_uri_list(&done)).filter(|s| !s.is_empty()),
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                next_publish_at: Some(Utc::now() + TimeDelta::from_std(pause).unwrap_or_default()),
            };
            if !still_ours(&pcscf, &pcontact, lease + pause, &progress, &mut held).await {
                return;
            }
            tokio::select! {
                _ = pcscf.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
    match pcscf.store.finish_claim(pcontact.id, &pcscf.owner).await {
        Ok(true) => {
            tracing::info!(contact = %pcontact.aor, "expired pcontact removed after PUBLISH")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not remove the published pcontact; its claim will lapse")
        }
    }
}

/// `pcscf_publish_total{result}`.
fn published(result: &'static str) {
    crate::metrics::METRICS
        .pcscf_publish
        .get_or_create(&crate::metrics::ResultLabel { result })
        .inc();
}

/// Renews the claim with the progress so far; `false` when the pcontact is gone or another
/// instance holds it (a NOTIFY deleted it, or our lease lapsed).
async fn still_ours(
    pcscf: &Pcscf,
    pcontact: &Pcontact,
    lease: Duration,
    progress: &PublishProgress,
    held: &mut Held,
) -> bool {
    let asked = tokio::time::Instant::now();
    match pcscf
        .store
        .renew_claim(pcontact.id, &pcscf.owner, lease, progress)
        .await
    {
        Ok(true) => {
            *held = Held::since(asked, lease);
            true
        }
        Ok(false) => {
            tracing::info!(contact = %pcontact.aor, "pcontact no longer ours to PUBLISH");
            false
        }
        Err(e) => {
            // SPEC H5: the PUBLISH matters more than the bookkeeping, so keep going while the
            // claim we last renewed still covers one more transaction by our own clock;
            // past that another instance may have taken the work over, so stop.
            let covered = held.covers(pcscf.config.t1 * 64);
            tracing::warn!(error = %e, continuing = covered, "could not renew the PUBLISH claim");
            covered
        }
    }
}

/// One PUBLISH transaction; `Ok` on a 2xx.
async fn send(
    pcscf: &Pcscf,
    impu: &str,
    contact: &str,
    call_id: &str,
    cseq: u32,
) -> Result<(), String> {
    let config = &pcscf.config;
    let branch = new_branch();
    let body = reginfo::terminated_contact(
        impu,
        contact,
        &call_id[..call_id.find('@').unwrap_or(call_id.len())],
    );
    let pai = format!("<{}>", config.identity.uri);
    let expires = PUBLICATION_EXPIRES.to_string();
    let request = Outgoing {
        method: "PUBLISH",
        target: impu,
        transport: config.publish_to.transport,
        sent_by: &config.identity.sent_by,
        branch: &branch,
        route_set: None,
        from: impu,
        from_tag: &branch[8..16],
        to: impu,
        to_tag: None,
        call_id,
        cseq: cseq.into(),
        headers: &[
            ("Event", "reg"),
            ("Expires", &expires),
            ("P-Asserted-Identity", &pai),
        ],
        body: Some((reginfo::CONTENT_TYPE, &body)),
    }
    .to_bytes();
    let outcome = pcscf
        .transactions
        .request(
            pcscf.outbound.as_ref(),
            config.publish_to,
            &branch,
            request,
            |_| {},
        )
        .await;
    match outcome {
        Outcome::Final(m) => match m.start {
            StartLine::Response { code, .. } if (200..300).contains(&code) => Ok(()),
            StartLine::Response { code, reason } => Err(format!("{code} {reason}")),
            StartLine::Request { .. } => Err("not a response".into()),
        },
        Outcome::Timeout => Err("no answer".into()),
        Outcome::Unreachable(e) => Err(e.to_string()),
    }
}
