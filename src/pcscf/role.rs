//! The P-CSCF role as the server sees it (SPEC P): REGISTER from a UE is admitted against its
//! pcontact (P1), relayed to the S-CSCF (P2) and the answer recorded (P3); NOTIFY for the reg
//! event updates pcontacts (P6); responses feed the client transactions.

use super::decide::{Accepted, Admission, address_of, admit, after_final};
use super::relay::{Identity, RelayError, relayed_register, without_top_via};
use crate::sip::header::{NameAddr, split_list};
use crate::sip::methods::{Capabilities, triage};
use crate::sip::outbound::{Destination, Outbound};
use crate::sip::request::Request;
use crate::sip::response::Response;
use crate::sip::uri::Uri;
use crate::sip::wire::{Message, parse_u32};
use crate::sip::{Origin, Transport};
use crate::store::{
    ContactAddress, Pcontact, PcontactChange, PcontactPlan, RegState, Store, StoreError,
};
use crate::transaction::{Outcome, Transactions, new_branch};
use chrono::TimeDelta;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const CAPABILITIES: Capabilities = Capabilities {
    handles: &["REGISTER", "NOTIFY"],
    allow: "REGISTER, OPTIONS, NOTIFY",
    supported: &["path"],
};

/// `pcscf_register_refused_total{reason}`.
fn refused(reason: &'static str) {
    crate::metrics::METRICS
        .pcscf_refused
        .get_or_create(&crate::metrics::ReasonLabel { reason })
        .inc();
}

/// Kamailio's answer while a de-registration is in progress (SPEC P1).
pub const DEREGISTER_IN_PROGRESS: &str = "Deregister in progress - Please try again";

/// The P-CSCF's settings (SPEC P7), resolved.
#[derive(Clone, Debug)]
pub struct PcscfConfig {
    pub scscf: Destination,
    pub publish_to: Destination,
    pub identity: Identity,
    pub notify_window: Duration,
    pub audit_interval: Duration,
    pub audit_grace: Duration,
    pub pending_expires: Duration,
    pub t1: Duration,
    pub publish_backoff: Duration,
    pub publish_max_attempts: u32,
    /// SPEC E4: what our reg-event SUBSCRIBE asks for.
    pub reginfo_expires: u32,
    pub default_expires: u32,
    /// A NOTIFY's expires is clamped to this (0 = no maximum; H5).
    pub max_expires: u32,
    pub retry_after: u32,
    /// H5: who may NOTIFY besides the S-CSCF and PUBLISH target addresses.
    pub notify_from: Vec<crate::config::Cidr>,
}

impl PcscfConfig {
    /// How long a claim on a pcontact's PUBLISH work lasts before another instance may take it
    /// over: longer than one PUBLISH transaction (64·T1) plus the longest backoff pause.
    pub fn lease(&self) -> Duration {
        crate::lease::for_one_transaction(self.t1)
            + self.t1 * 64
            + self.publish_backoff * 2u32.saturating_pow(self.publish_max_attempts.min(16))
    }

    /// How long a claim on a SUBSCRIBE in flight lasts (SPEC E4): one transaction and slack.
    pub fn subscribe_lease(&self) -> Duration {
        crate::lease::for_one_transaction(self.t1)
    }

    /// SPEC H5: a NOTIFY's source IP (any port) must be the S-CSCF's or the PUBLISH target's
    /// resolved address, or within `--notify-from`.
    pub fn may_notify(&self, ip: std::net::IpAddr) -> bool {
        let same = |a: std::net::IpAddr| a.to_canonical() == ip.to_canonical();
        same(self.scscf.addr.ip())
            || same(self.publish_to.addr.ip())
            || self.notify_from.iter().any(|c| c.contains(ip))
    }

    /// Pcontacts expired this long are the expiry job's (SPEC P5).
    pub fn stale_after(&self) -> Duration {
        self.notify_window + self.audit_grace
    }
}

pub struct Pcscf {
    pub(crate) store: Store,
    pub(crate) outbound: Arc<dyn Outbound>,
    pub(crate) transactions: Transactions,
    pub(crate) config: PcscfConfig,
    /// This instance's name in `claimed_by`.
    pub(crate) owner: String,
    pub(crate) shutdown: CancellationToken,
}

impl Pcscf {
    pub fn new(
        store: Store,
        outbound: Arc<dyn Outbound>,
        config: PcscfConfig,
        shutdown: CancellationToken,
    ) -> Arc<Pcscf> {
        let owner = crate::lease::owner_name();
        Arc::new(Pcscf {
            store,
            outbound,
            transactions: Transactions::new(config.t1),
            config,
            owner,
            shutdown,
        })
    }

    /// A response from upstream: the transaction waiting for it takes it; `false` if none.
    pub fn on_response(&self, message: Message) -> bool {
        self.transactions.on_response(message)
    }

    pub async fn handle(self: &Arc<Self>, request: &Request, origin: &Origin) -> Option<Response> {
        if let Some(answer) = triage(request, &CAPABILITIES) {
            return answer;
        }
        match request.method.as_str() {
            "NOTIFY" => Some(super::notify::handle(self, request, origin).await),
            _ => Some(self.register(request, origin).await),
        }
    }

    async fn register(self: &Arc<Self>, request: &Request, origin: &Origin) -> Response {
        let msg = &request.message;
        let contacts: Vec<&str> = msg.headers_named("Contact").flat_map(split_list).collect();
        let Some(first) = contacts.first().filter(|c| **c != "*") else {
            return Response::to(msg, 400, "Bad Request")
                .header("P-Registrar-Error", "No usable Contact");
        };
        let parsed = NameAddr::parse(first).and_then(|c| Uri::parse(&c.uri).ok().map(|u| (c, u)));
        let Some((contact, uri)) = parsed.filter(|(_, u)| u.scheme.is_sip()) else {
            return Response::to(msg, 400, "Bad Request")
                .header("P-Registrar-Error", "Contact parse error");
        };
        tracing::Span::current().record("aor", tracing::field::display(&request.to.uri));
        let address = address_of(&uri);
        // SPEC P1 (deliberate): no expires anywhere means default_expires, not "unstored".
        let asked = contact
            .param("expires")
            .flatten()
            .and_then(parse_u32)
            .or_else(|| msg.header("Expires").and_then(parse_u32))
            .unwrap_or(self.config.default_expires);
        let branch = new_branch();
        let relayed = match relayed_register(
            request,
            &self.config.identity,
            self.config.scscf.transport,
            &branch,
        ) {
            Ok(bytes) => bytes,
            Err(RelayError::TooManyHops) => return Response::to(msg, 483, "Too Many Hops"),
        };
        let fresh = self.fresh_pending(&contact.uri, &address, origin, &uri);
        let (window, owner, lease) = (
            self.config.notify_window,
            self.owner.clone(),
            self.config.lease(),
        );
        let admitted = self
            .store
            .update_pcontact(&address, |snap| {
                let admission = admit(snap.pcontact.as_ref(), snap.now, window, asked);
                let pending = Pcontact {
                    expires: snap.now
                        + TimeDelta::from_std(self.config.pending_expires).unwrap_or_default(),
                    ..fresh.clone()
                };
                let change = match (&admission, &snap.pcontact) {
                    (Admission::NewPending, _) => PcontactChange::Insert(pending),
                    (Admission::Replace, _) => PcontactChange::Replace(pending),
                    (Admission::RefuseAndPublish, Some(p)) => PcontactChange::Update(Pcontact {
                        reg_state: RegState::DeregPendingPublish,
                        claimed_by: Some(owner.clone()),
                        claimed_until: Some(
                            snap.now + TimeDelta::from_std(lease).unwrap_or_default(),
                        ),
                        publish_attempts: 0,
                        next_publish_at: None,
                        published_ids: None,
                        ..p.clone()
                    }),
                    _ => PcontactChange::Keep,
                };
                PcontactPlan {
                    change,
                    outcome: admission,
                }
            })
            .await;
        let applied = match admitted {
            Ok(a) => a,
            Err(e) => return self.store_failure(msg, e),
        };
        match applied.outcome {
            Admission::Refuse => {
                refused("window");
                return Response::to(msg, 500, DEREGISTER_IN_PROGRESS);
            }
            Admission::RefuseAndPublish => {
                refused("publish");
                if let Some(p) = applied.pcontact {
                    tracing::info!(contact = %p.aor, "pcontact expired past the notify window; publishing its expiry");
                    let this = Arc::clone(self);
                    tokio::spawn(async move { super::publish::publish_expiry(this, p).await });
                }
                return Response::to(msg, 500, DEREGISTER_IN_PROGRESS);
            }
            Admission::NewPending
            | Admission::Replace
            | Admission::Relay
            | Admission::RelayUnstored => {}
        }
        self.relay(request, origin, &address, fresh, &branch, relayed)
            .await
    }

    /// A pcontact for this UE as the REGISTER describes it, before the S-CSCF answered.
    fn fresh_pending(
        &self,
        contact: &str,
        address: &ContactAddress,
        origin: &Origin,
        uri: &Uri,
    ) -> Pcontact {
        let mut p = Pcontact::new(
            contact.to_string(),
            address.clone(),
            RegState::RegPending,
            chrono::Utc::now(),
        );
        p.received = Some(origin.peer_host());
        p.received_port = Some(i32::from(origin.peer.port()));
        p.received_proto = Some(origin.transport.as_str().to_string());
        p.socket = Some(origin.socket());
        p.path = Some(self.config.identity.path.clone());
        p.rinstance = uri.param("rinstance").flatten().map(str::to_string);
        p
    }

    /// SPEC P2/P3: relay, wait for the final answer, record it, pass it back.
    async fn relay(
        self: &Arc<Self>,
        request: &Request,
        origin: &Origin,
        address: &ContactAddress,
        fresh: Pcontact,
        branch: &str,
        relayed: Vec<u8>,
    ) -> Response {
        let msg = &request.message;
        let ue = Destination {
            transport: origin.transport,
            addr: origin.peer,
        };
        // Provisional answers go to the UE in order, all before the final one.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let outbound = Arc::clone(&self.outbound);
        let forwarding = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let _ = outbound.send(ue, without_top_via(m).to_bytes()).await;
            }
        });
        let outcome = self
            .transactions
            .request(
                self.outbound.as_ref(),
                self.config.scscf,
                branch,
                relayed,
                |m| {
                    let _ = tx.send(m);
                },
            )
            .await;
        drop(tx);
        let _ = forwarding.await;
        let (reply, accepted) = match outcome {
            Outcome::Final(m) => {
                let accepted = accepted_by(&m, address, &request.to.uri);
                let reply = Response::relayed(&without_top_via(m));
                (reply, accepted)
            }
            Outcome::Timeout => {
                tracing::warn!(scscf = %self.config.scscf.addr, "S-CSCF did not answer the REGISTER");
                (Some(Response::to(msg, 408, "Request Timeout")), None)
            }
            Outcome::Unreachable(e) => {
                tracing::warn!(scscf = %self.config.scscf.addr, error = %e, "cannot reach the S-CSCF");
                (Some(Response::to(msg, 503, "Service Unavailable")), None)
            }
        };
        let recorded = self
            .store
            .update_pcontact(address, |snap| {
                let after = after_final(
                    snap.pcontact.as_ref(),
                    fresh.clone(),
                    accepted.as_ref(),
                    snap.now,
                );
                let change = match (after, &snap.pcontact) {
                    (None, Some(_)) => PcontactChange::Delete,
                    (None, None) => PcontactChange::Keep,
                    (Some(p), _) if Some(&p) == snap.pcontact.as_ref() => PcontactChange::Keep,
                    (Some(p), _) => PcontactChange::Update(p),
                };
                PcontactPlan {
                    change,
                    outcome: (),
                }
            })
            .await;
        match recorded {
            Ok(a) => match a.pcontact {
                Some(p) => {
                    tracing::info!(contact = %p.aor, state = %p.reg_state, expires = %p.expires, "pcontact recorded");
                    if p.reg_state == RegState::Registered {
                        // SPEC E4: off the UE's answer path.
                        let this = Arc::clone(self);
                        tokio::spawn(super::subscribe::after_registration(this, p));
                    }
                }
                None => tracing::info!(contact = %address, "pcontact removed"),
            },
            // The S-CSCF has answered; the UE gets its answer even if we could not record it.
            Err(e) => {
                tracing::error!(call_id = %request.call_id, error = %e, "could not record the S-CSCF's answer")
            }
        }
        reply.unwrap_or_else(|| Response::to(msg, 500, "Server Internal Error"))
    }

    pub(crate) fn store_failure(&self, msg: &Message, error: StoreError) -> Response {
        if error.is_transient() {
            tracing::warn!(%error, "database unavailable");
            Response::to(msg, 500, "Server Internal Error")
                .header("Retry-After", self.config.retry_after.to_string())
        } else {
            tracing::error!(%error, "database rejected the change");
            Response::to(msg, 500, "Server Internal Error")
        }
    }
}

/// SPEC P3: what a final response says about the UE at `address`; `None` for a non-2xx.
fn accepted_by(response: &Message, address: &ContactAddress, to_uri: &str) -> Option<Accepted> {
    let crate::sip::wire::StartLine::Response { code, .. } = response.start else {
        return None;
    };
    if !(200..300).contains(&code) {
        return None;
    }
    let header_expires = response.header("Expires").and_then(parse_u32);
    let expires = response
        .headers_named("Contact")
        .flat_map(split_list)
        .filter_map(NameAddr::parse)
        .find(|c| Uri::parse(&c.uri).is_ok_and(|u| u.scheme.is_sip() && &address_of(&u) == address))
        .map(|c| {
            c.param("expires")
                .flatten()
                .and_then(parse_u32)
                .or(header_expires)
                .unwrap_or(0)
        });
    let uris = |name: &str| -> Vec<String> {
        response
            .headers_named(name)
            .flat_map(split_list)
            .filter_map(NameAddr::parse)
            .map(|n| n.uri)
            .collect()
    };
    let mut public_ids = uris("P-Associated-URI");
    if public_ids.is_empty() {
        public_ids.push(to_uri.to_string());
    }
    Some(Accepted {
        expires,
        service_routes: uris("Service-Route"),
        public_ids,
    })
}

/// How the transport a URI asks for maps to ours (`transport=tcp` or UDP).
pub fn transport_of(uri: &Uri) -> Transport {
    if uri.transport() == "tcp" {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p3_matching_contact_gives_expires() {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP ue;branch=z9hG4bK1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\
            Contact: <sip:other@10.0.0.9>;expires=100, <sip:u@198.51.100.7:5060>;expires=600\r\n\
            Service-Route: <sip:orig@scscf.example.com;lr>\r\n\
            P-Associated-URI: <sip:u@ims.example.com>, <tel:+15550100>\r\nContent-Length: 0\r\n\r\n";
        let m = crate::sip::wire::parse(text.as_bytes()).unwrap();
        let address = ContactAddress {
            host: "198.51.100.7".into(),
            port: 5060,
            protocol: "udp".into(),
        };
        let a = accepted_by(&m, &address, "sip:u@ims.example.com").unwrap();
        assert_eq!(a.expires, Some(600));
        assert_eq!(a.service_routes, ["sip:orig@scscf.example.com;lr"]);
        assert_eq!(a.public_ids, ["sip:u@ims.example.com", "tel:+15550100"]);
        let other = ContactAddress {
            host: "203.0.113.1".into(),
            port: 5060,
            protocol: "udp".into(),
        };
        assert_eq!(accepted_by(&m, &other, "sip:u@ims").unwrap().expires, None);
    }

    #[test]
    fn lease_outlasts_a_publish_attempt() {
        let config = PcscfConfig {
            scscf: Destination {
                transport: Transport::Udp,
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            publish_to: Destination {
                transport: Transport::Udp,
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            identity: Identity::from_uri("sip:127.0.0.1:5080").unwrap(),
            notify_window: Duration::from_secs(20),
            audit_interval: Duration::from_secs(60),
            audit_grace: Duration::from_secs(40),
            pending_expires: Duration::from_secs(30),
            t1: Duration::from_millis(500),
            publish_backoff: Duration::from_secs(1),
            publish_max_attempts: 5,
            reginfo_expires: 3600,
            default_expires: 3600,
            max_expires: 3600,
            retry_after: 5,
            notify_from: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(config.lease() > Duration::from_secs(64));
        // H5: the S-CSCF's address (any port), --notify-from, nobody else.
        for (ip, may) in [
            ("127.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("10.1.2.3", true),
            ("127.0.0.2", false),
            ("11.0.0.1", false),
        ] {
            assert_eq!(config.may_notify(ip.parse().unwrap()), may, "{ip}");
        }
        assert_eq!(config.stale_after(), Duration::from_secs(60));
        assert!(
            super::super::decide::publishable_ids(&Pcontact::new(
                "x".into(),
                ContactAddress {
                    host: "h".into(),
                    port: 1,
                    protocol: "udp".into()
                },
                RegState::Registered,
                chrono::Utc::now()
            ))
            .is_empty()
        );
    }
}
