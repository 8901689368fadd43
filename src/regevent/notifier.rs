//! Sending reg-event NOTIFYs (SPEC E1, E2): every NOTIFY goes in a subscription's dialog as a
//! non-INVITE client transaction; a 481, a 408, a timeout or an unreachable subscriber ends the
//! subscription (its row is deleted). Changes of bindings arrive on a bounded queue, off the
//! REGISTER's latency path: the worker folds those waiting into one statement that takes the
//! next NOTIFY numbers of every subscription of their AoRs, then NOTIFYs each.

use super::change::{self, ContactChange};
use crate::aor::Aor;
use crate::metrics::{METRICS, ResultLabel};
use crate::sip::Transport;
use crate::sip::aor::aor_uri;
use crate::sip::outbound::{Destination, Outbound};
use crate::sip::outgoing::Outgoing;
use crate::sip::reginfo::{self, RegistrationDoc};
use crate::sip::wire::StartLine;
use crate::store::{Store, Subscription};
use crate::transaction::{Outcome, Transactions, new_branch};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Changes waiting for the worker; beyond this a change is NOTIFYed by no one (counted as
/// `dropped`): the REGISTER is never slowed down for its subscribers.
const QUEUE: usize = 16_384;
/// Changes the worker takes at once (one statement for all their AoRs).
const BATCH: usize = 512;
/// How long the worker lets changes gather after the first one before it asks the database:
/// without it, at moderate rates every REGISTER cost a statement of its own, even with no
/// subscription anywhere (PostgreSQL CPU per refresh at 2,000/s went 281 → 402 µs,
/// BENCHMARKS.md). A NOTIFY leaves this much later; the REGISTER never waits for it.
const GATHER: Duration = Duration::from_millis(20);
/// NOTIFY transactions in flight at once per instance.
const IN_FLIGHT: usize = 1024;

/// The reg-event notifier's settings.
#[derive(Clone, Debug)]
pub struct RegEventConfig {
    pub t1: Duration,
    /// An expired binding's NOTIFY goes out within this of its expiry (SPEC E2).
    pub expiry_notify_delay: Duration,
    /// Our listening addresses: the Via sent-by and Contact of NOTIFYs per transport.
    pub listen: Vec<(Transport, SocketAddr)>,
}

impl RegEventConfig {
    /// The expiry job's lease: one NOTIFY transaction and some slack.
    pub fn lease(&self) -> Duration {
        crate::lease::for_one_transaction(self.t1)
    }

    fn sent_by(&self, transport: Transport) -> String {
        let addr = (self.listen.iter())
            .find(|(t, _)| *t == transport)
            .or(self.listen.first())
            .map(|(_, a)| *a);
        match addr {
            Some(a) if !a.ip().is_unspecified() => a.to_string(),
            Some(a) => format!("{}:{}", crate::lease::host_name(), a.port()),
            None => crate::lease::host_name(),
        }
    }
}

/// A committed change of one AoR's bindings, waiting to be NOTIFYed.
#[derive(Debug)]
struct Pending {
    aor: Aor,
    changes: Vec<ContactChange>,
    live_after: usize,
    now: DateTime<Utc>,
}

/// How a NOTIFY ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// A final answer other than 2xx that does not end the subscription.
    Refused(u16),
    /// 481, 408, timeout or unreachable: the subscription was removed.
    Ended,
}

/// The registrar's reg-event service: the subscriptions live in the database; this holds the
/// transactions of NOTIFYs in flight and the queue of changes.
pub struct RegEvents {
    pub(crate) store: Store,
    outbound: Arc<dyn Outbound>,
    transactions: Transactions,
    pub(crate) config: RegEventConfig,
    /// This instance's name in `claimed_by` (the expiry job).
    pub(crate) owner: String,
    queue: mpsc::Sender<Pending>,
    sending: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

impl RegEvents {
    /// The service and its worker (to spawn).
    pub fn new(
        store: Store,
        outbound: Arc<dyn Outbound>,
        config: RegEventConfig,
        shutdown: CancellationToken,
    ) -> (Arc<RegEvents>, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let events = Arc::new(RegEvents {
            store,
            outbound,
            transactions: Transactions::new(config.t1),
            config,
            owner: crate::lease::owner_name(),
            queue: tx,
            sending: Arc::new(Semaphore::new(IN_FLIGHT)),
            shutdown,
        });
        let worker = run(Arc::clone(&events), rx);
        (events, worker)
    }

    /// A response to one of our NOTIFYs; `false` if no transaction waits for it.
    pub fn on_response(&self, message: crate::sip::wire::Message) -> bool {
        self.transactions.on_response(message)
    }

    /// SPEC E2: a committed change of `aor`'s bindings, `live_after` of them live now. Never
    /// waits: a full queue drops the change (counted).
    pub fn changed(
        &self,
        aor: &Aor,
        changes: Vec<ContactChange>,
        live_after: usize,
        now: DateTime<Utc>,
    ) {
        if changes.is_empty() {
            return;
        }
        // Which subscriptions existed at the change: on PostgreSQL by the database's clock (the
        // batch's `now`, as `created`); SQLite's clock is this process's but its `now` is whole
        // seconds, so the moment the committed change is handed over stands for it.
        let now = match self.store.backend() {
            crate::store::Backend::Postgres => now,
            crate::store::Backend::Sqlite => Utc::now(),
        };
        let pending = Pending {
            aor: aor.clone(),
            changes,
            live_after,
            now,
        };
        if self.queue.try_send(pending).is_err() {
            sent("dropped");
            tracing::warn!(%aor, "reg-event queue full; a change goes un-NOTIFYed");
        }
    }

    /// One NOTIFY in `s`'s dialog carrying `registration` at `s.version`, with
    /// `Subscription-State: state`. Ends the subscription on 481, 408, timeout or no route.
    pub async fn notify(
        &self,
        s: &Subscription,
        full: bool,
        registration: &RegistrationDoc<'_>,
        state: &str,
    ) -> Delivery {
        let Some(to) = destination(&s.send_to) else {
            tracing::warn!(send_to = %s.send_to, "subscription with no usable address; ended");
            return self.end(s, "ended").await;
        };
        let _permit = self.sending.acquire().await;
        let body = reginfo::document(s.version, full, registration);
        let branch = new_branch();
        let request = self.request(s, to.transport, &branch, state, &body);
        let outcome = (self.transactions)
            .request(self.outbound.as_ref(), to, &branch, request, |_| {})
            .await;
        let code = match &outcome {
            Outcome::Final(m) => match m.start {
                StartLine::Response { code, .. } => code,
                StartLine::Request { .. } => 500,
            },
            Outcome::Timeout => 408,
            Outcome::Unreachable(e) => {
                tracing::info!(error = %e, aor = %s.aor, "subscriber unreachable");
                408
            }
        };
        match code {
            200..=299 => {
                sent("ok");
                Delivery::Accepted
            }
            481 | 408 => {
                tracing::info!(code, aor = %s.aor, "NOTIFY ended the subscription");
                self.end(s, "ended").await
            }
            code => {
                sent("refused");
                tracing::info!(code, aor = %s.aor, "NOTIFY refused");
                Delivery::Refused(code)
            }
        }
    }

    async fn end(&self, s: &Subscription, result: &'static str) -> Delivery {
        sent(result);
        if let Err(e) = self.store.remove_subscription(s.id).await {
            tracing::warn!(error = %e, "could not remove an ended subscription; its expiry will");
        }
        Delivery::Ended
    }

    fn request(
        &self,
        s: &Subscription,
        transport: Transport,
        branch: &str,
        state: &str,
        body: &str,
    ) -> Vec<u8> {
        let sent_by = self.config.sent_by(transport);
        let contact = match transport {
            Transport::Udp => format!("<sip:{sent_by}>"),
            t => format!("<sip:{sent_by};transport={}>", t.uri_param()),
        };
        Outgoing {
            method: "NOTIFY",
            target: &s.remote_target,
            transport,
            sent_by: &sent_by,
            branch,
            route_set: s.route_set.as_deref(),
            from: &s.local_uri,
            from_tag: &s.dialog.local_tag,
            to: &s.remote_uri,
            to_tag: Some(&s.dialog.remote_tag),
            call_id: &s.dialog.call_id,
            cseq: s.local_cseq,
            headers: &[
                ("Contact", &contact),
                ("Event", "reg"),
                ("Subscription-State", state),
            ],
            body: Some((reginfo::CONTENT_TYPE, body)),
        }
        .to_bytes()
    }

    /// Our Contact in SUBSCRIBE answers: the UDP listener's address, else the first one.
    pub fn contact_uri(&self) -> String {
        format!("<sip:{}>", self.config.sent_by(Transport::Udp))
    }

    /// `active;expires=N` for a subscription live at `now`.
    pub fn active_state(s: &Subscription, now: DateTime<Utc>) -> String {
        let left = (s.expires - now).num_seconds().max(0);
        format!("active;expires={left}")
    }
}

/// `registrar_regevent_sent_total{result}`.
pub(crate) fn sent(result: &'static str) {
    METRICS
        .regevent_sent
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// `proto:ip:port` (Kamailio's socket form) as a destination.
fn destination(send_to: &str) -> Option<Destination> {
    let (transport, addr) = Transport::parse_socket(send_to)?;
    Some(Destination { transport, addr })
}

/// The queue's worker: takes the changes that gathered (up to `BATCH`), folds them per AoR,
/// takes the next NOTIFY numbers of all their subscriptions in one statement, and NOTIFYs each.
async fn run(events: Arc<RegEvents>, mut rx: mpsc::Receiver<Pending>) {
    let mut waiting = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = events.shutdown.cancelled() => return,
            n = rx.recv_many(&mut waiting, BATCH) => if n == 0 { return },
        }
        if waiting.len() < BATCH {
            tokio::time::sleep(GATHER).await;
            while waiting.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => waiting.push(p),
                    Err(_) => break,
                }
            }
        }
        // In arrival order per AoR: a subscription hears only of the changes made after it
        // existed (its full NOTIFY told it the state before).
        let mut by_aor: HashMap<Aor, Vec<Pending>> = HashMap::new();
        for p in waiting.drain(..) {
            by_aor.entry(p.aor.clone()).or_default().push(p);
        }
        let changed: Vec<(Aor, DateTime<Utc>)> = (by_aor.iter())
            .filter_map(|(aor, ps)| ps.iter().map(|p| p.now).max().map(|t| (aor.clone(), t)))
            .collect();
        let subscriptions = match events.store.next_notifies(&changed).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, changes = changed.len(), "cannot read subscriptions; changes go un-NOTIFYed");
                continue;
            }
        };
        let by_aor = Arc::new(by_aor);
        for s in subscriptions {
            let (events, by_aor) = (Arc::clone(&events), Arc::clone(&by_aor));
            tokio::spawn(async move {
                let Some(pendings) = by_aor.get(&s.aor) else {
                    return;
                };
                let news: Vec<&Pending> = pendings.iter().filter(|p| p.now >= s.created).collect();
                let Some(last) = news.last() else { return };
                let changes = change::merge(news.iter().flat_map(|p| p.changes.iter().cloned()));
                let (uri, id) = (aor_uri(&s.aor), change::registration_id(&s.aor));
                let doc = change::partial(&uri, &id, &changes, last.live_after, last.now);
                let state = RegEvents::active_state(&s, last.now);
                events.notify(&s, false, &doc, &state).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_to_reads_the_socket_form() {
        let d = destination("udp:192.0.2.1:5060").unwrap();
        assert_eq!((d.transport, d.addr.port()), (Transport::Udp, 5060));
        let d = destination("wss:[::1]:443").unwrap();
        assert_eq!(d.transport, Transport::Wss);
        assert!(destination("sctp:192.0.2.1:5060").is_none());
        assert!(destination("udp:nowhere").is_none());
    }
}
