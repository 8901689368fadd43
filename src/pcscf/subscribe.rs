//! SPEC E4: the P-CSCF's own reg-event subscription (TS 24.229 §5.2.3; Kamailio
//! `subscribe_to_reginfo`). After a UE's 2xx registration the P-CSCF SUBSCRIBEs to the reg
//! event of the pcontact's first public identity that is not a `tel:` URI, at the S-CSCF, for
//! `--reginfo-expires`. The dialog lives in `pcscf_subscription`, so that any instance can
//! refresh it and accept the NOTIFYs sent in it (SPEC H5). A job refreshes each at two thirds
//! of its lifetime (± 10 %), claiming it with the expiry PUBLISH's lease so that exactly one
//! instance does; it ends the subscription (`Expires: 0`) once its pcontact is gone, whatever
//! removed it.

use super::decide::publishable_ids;
use super::role::Pcscf;
use crate::sip::header::{NameAddr, split_list};
use crate::sip::outgoing::Outgoing;
use crate::sip::wire::{Message, StartLine, parse_u32};
use crate::store::{Granted, NewPcscfSubscription, Pcontact, PcscfSubscription};
use crate::transaction::{Outcome, new_branch};
use std::sync::Arc;
use std::time::Duration;

/// Subscriptions claimed per pass; the next pass takes the rest.
const CLAIM_BATCH: u32 = 200;
/// A failed refresh is tried again this soon (while the subscription lasts).
const RETRY: Duration = Duration::from_secs(10);

/// P3's 2xx left `pcontact` registered: SUBSCRIBE for it unless it has a subscription.
pub async fn after_registration(pcscf: Arc<Pcscf>, pcontact: Pcontact) {
    let Some(impu) = publishable_ids(&pcontact).into_iter().next() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let new = NewPcscfSubscription {
        address: pcontact.address.clone(),
        impu,
        call_id: format!("reginfo-{unique}@{}", pcscf.config.identity.sent_by),
        from_tag: unique[..16].to_string(),
    };
    let lease = pcscf.config.subscribe_lease();
    match (pcscf.store)
        .add_pcscf_subscription(&new, &pcscf.owner, lease)
        .await
    {
        Ok(Some(s)) => {
            let expires = pcscf.config.reginfo_expires;
            send(&pcscf, s, expires).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot record the reg-event subscription"),
    }
}

pub async fn run(pcscf: Arc<Pcscf>) {
    // Twenty looks per lifetime: a refresh is at most 5 % of it late.
    let every = Duration::from_secs(u64::from(pcscf.config.reginfo_expires) / 20)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = pcscf.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        pass(&pcscf).await;
    }
}

/// One pass: refreshes the subscriptions due, ends those whose pcontact is gone.
pub async fn pass(pcscf: &Arc<Pcscf>) {
    let lease = pcscf.config.subscribe_lease();
    let claimed = match (pcscf.store)
        .claim_pcscf_subscriptions(&pcscf.owner, lease, CLAIM_BATCH)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "claiming reg-event subscriptions failed");
            return;
        }
    };
    for s in claimed {
        let pcscf = Arc::clone(pcscf);
        tokio::spawn(async move {
            let gone = match pcscf.store.pcontact(&s.address).await {
                Ok(p) => p.is_none(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a subscription's pcontact");
                    return;
                }
            };
            let expires = if gone {
                0
            } else {
                pcscf.config.reginfo_expires
            };
            send(&pcscf, s, expires).await;
        });
    }
}

/// One SUBSCRIBE in `s`'s dialog asking for `expires` (0 ends it), and its outcome recorded.
async fn send(pcscf: &Pcscf, s: PcscfSubscription, expires: u32) {
    let branch = new_branch();
    let request = subscribe(pcscf, &s, &branch, expires);
    let outcome = (pcscf.transactions)
        .request(
            pcscf.outbound.as_ref(),
            pcscf.config.scscf,
            &branch,
            request,
            |_| {},
        )
        .await;
    let code = match &outcome {
        Outcome::Final(m) => match m.start {
            StartLine::Response { code, .. } => code,
            StartLine::Request { .. } => 500,
        },
        Outcome::Timeout | Outcome::Unreachable(_) => 408,
    };
    let store = &pcscf.store;
    let result = match (code, &outcome) {
        (_, _) if expires == 0 => {
            tracing::info!(impu = %s.impu, code, "reg-event subscription ended");
            store.remove_pcscf_subscription(s.id).await
        }
        (200..=299, Outcome::Final(answer)) => {
            let granted = granted(answer, expires);
            tracing::info!(impu = %s.impu, expires = granted.expires_secs, "reg-event subscription active");
            store
                .grant_pcscf_subscription(s.id, &pcscf.owner, &granted)
                .await
        }
        _ if s.to_tag.is_none() || code == 481 || s.expires <= chrono::Utc::now() => {
            // No dialog was made, the S-CSCF forgot it, or it lapsed: the next 2xx
            // registration subscribes afresh.
            tracing::warn!(impu = %s.impu, code, "reg-event SUBSCRIBE failed; subscription dropped");
            store.remove_pcscf_subscription(s.id).await
        }
        _ => {
            tracing::info!(impu = %s.impu, code, "reg-event refresh failed; retrying");
            store
                .retry_pcscf_subscription(s.id, &pcscf.owner, RETRY)
                .await
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record a SUBSCRIBE's outcome; its claim will lapse");
    }
}

/// What a 2xx to our SUBSCRIBE granted: the dialog's remote tag, target and route set, and
/// the lifetime (the answer's Expires, at most what we asked), refreshed at two thirds of it
/// ± 10 % so that instances do not refresh in step.
fn granted(answer: &Message, asked: u32) -> Granted {
    let expires_secs = answer
        .header("Expires")
        .and_then(|e| parse_u32(e.trim()))
        .unwrap_or(asked)
        .min(asked);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 201) as f64 / 1000.0 - 0.1;
    let refresh = f64::from(expires_secs) * 2.0 / 3.0 * (1.0 + jitter);
    let mut routes: Vec<&str> = answer
        .headers_named("Record-Route")
        .flat_map(split_list)
        .collect();
    // RFC 3261 §12.1.2: the UAC's route set is the Record-Route in reverse.
    routes.reverse();
    Granted {
        to_tag: answer
            .header("To")
            .and_then(NameAddr::parse)
            .and_then(|n| n.param("tag").flatten().map(str::to_string)),
        remote_target: answer
            .header("Contact")
            .and_then(|c| split_list(c).first().and_then(|c| NameAddr::parse(c)))
            .map(|n| n.uri),
        route_set: (!routes.is_empty()).then(|| routes.join(", ")),
        expires_secs,
        refresh_after_secs: (refresh as u32).max(1),
    }
}

fn subscribe(pcscf: &Pcscf, s: &PcscfSubscription, branch: &str, expires: u32) -> Vec<u8> {
    let config = &pcscf.config;
    let me = format!("<{}>", config.identity.uri);
    let expires = expires.to_string();
    Outgoing {
        method: "SUBSCRIBE",
        target: s.remote_target.as_deref().unwrap_or(&s.impu),
        transport: config.scscf.transport,
        sent_by: &config.identity.sent_by,
        branch,
        route_set: s.route_set.as_deref(),
        from: &config.identity.uri,
        from_tag: &s.from_tag,
        to: &s.impu,
        to_tag: s.to_tag.as_deref(),
        call_id: &s.call_id,
        cseq: s.cseq,
        headers: &[
            ("Contact", &me),
            ("Event", "reg"),
            ("Accept", crate::sip::reginfo::CONTENT_TYPE),
            ("Expires", &expires),
            ("P-Asserted-Identity", &me),
        ],
        body: None,
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4_refresh_at_two_thirds_within_ten_percent() {
        let answer = crate::sip::wire::parse(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\r\n\
              To: <sip:u@ims.example.com>;tag=srv\r\nFrom: <sip:p@h>;tag=me\r\n\
              Call-ID: c\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:scscf@192.0.2.5:6060>\r\n\
              Record-Route: <sip:a;lr>, <sip:b;lr>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        for _ in 0..200 {
            let g = granted(&answer, 3600);
            assert_eq!(g.expires_secs, 600, "the S-CSCF's shorter grant");
            assert!(
                (360..=440).contains(&g.refresh_after_secs),
                "{}",
                g.refresh_after_secs
            );
        }
        let g = granted(&answer, 300);
        assert_eq!(g.expires_secs, 300, "never longer than asked");
        assert_eq!(g.to_tag.as_deref(), Some("srv"));
        assert_eq!(g.remote_target.as_deref(), Some("sip:scscf@192.0.2.5:6060"));
        assert_eq!(g.route_set.as_deref(), Some("<sip:b;lr>, <sip:a;lr>"));
    }
}
