//! SPEC P5: the expiry job. Every `--audit-interval` it removes pcontacts stuck in
//! `REG_PENDING`, claims stale ones — atomically, with a lease, so that with several instances
//! on one database each is PUBLISHed by exactly one — and PUBLISHes their expiry.

use super::decide::publishable_ids;
use super::publish::publish_expiry;
use super::role::Pcscf;
use std::sync::Arc;

/// Pcontacts claimed per pass; the next pass takes the rest.
const CLAIM_BATCH: u32 = 200;

pub async fn run(pcscf: Arc<Pcscf>) {
    let interval = pcscf
        .config
        .audit_interval
        .max(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = pcscf.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        pass(&pcscf).await;
    }
}

/// One audit pass; public so that tests can drive it.
pub async fn pass(pcscf: &Arc<Pcscf>) {
    let stale_after = pcscf.config.stale_after();
    match pcscf.store.remove_stale_pending(stale_after).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "stale REG_PENDING pcontacts removed"),
        Err(e) => tracing::warn!(error = %e, "stale pending cleanup failed"),
    }
    let claimed = match pcscf
        .store
        .claim_stale_pcontacts(stale_after, &pcscf.owner, pcscf.config.lease(), CLAIM_BATCH)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "claiming stale pcontacts failed");
            return;
        }
    };
    for pcontact in claimed {
        if publishable_ids(&pcontact).is_empty() {
            // Nothing to tell the S-CSCF: just forget it.
            let _ = pcscf.store.finish_claim(pcontact.id, &pcscf.owner).await;
            continue;
        }
        tracing::info!(contact = %pcontact.aor, "stale pcontact claimed for its expiry PUBLISH");
        let pcscf = Arc::clone(pcscf);
        tokio::spawn(async move { publish_expiry(pcscf, pcontact).await });
    }
}
