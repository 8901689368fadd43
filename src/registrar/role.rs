//! The registrar role as the server sees it: a checked SIP request in, a response out.
//! REGISTER goes through the checks that need no database (R16, R10's option tags, R2–R6
//! syntax), then the authentication gate (SPEC A, `auth::Authenticator`), then
//! `service::register`, whose committed changes go to the reg-event service (SPEC E2) without
//! waiting for it; SUBSCRIBE goes to `regevent::subscribe` (SPEC E1); every other method gets
//! R11's answer.

use super::decide::Outcome;
use super::extract::{ParseRules, register_of};
use super::request::{Contacts, Policies, Refusal, Register};
use super::service::{Registration, register};
use crate::auth::{Admission, AuthSettings, Authenticator};
use crate::metrics::METRICS;
use crate::regevent::RegEvents;
use crate::regevent::publish::{self, PublishGate};
use crate::regevent::subscribe::{self, Gate};
use crate::sip::header::option_tags;
use crate::sip::methods::{Capabilities, triage};
use crate::sip::request::Request;
use crate::sip::response::{Response, http_date};
use crate::sip::{Origin, Transport};
use crate::store::{Binding, Store, StoreError};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub const CAPABILITIES: Capabilities = Capabilities {
    handles: &["REGISTER", "SUBSCRIBE", "PUBLISH"],
    allow: "REGISTER, OPTIONS, SUBSCRIBE, PUBLISH",
    supported: &["path"],
};

/// What the registrar role needs besides the store.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    pub policies: Policies,
    pub case_sensitive: bool,
    /// Served domains, lowercased; empty = all (R16).
    pub domains: Vec<String>,
    /// Retry-After on 500/503 when the database is unavailable or busy (R13).
    pub retry_after: u32,
    /// REGISTERs processed at once; more are answered 503 at once rather than queued (R13).
    pub max_in_flight: usize,
    /// Contacts one REGISTER may carry (H3).
    pub max_contacts_per_register: usize,
    /// A REGISTER still waiting for the database this long after it arrived is answered 500
    /// (H6).
    pub request_deadline: std::time::Duration,
    pub auth: AuthSettings,
    /// `Flow-Timer` of a 200 OK to an outbound REGISTER over a stream (SPEC W3): seconds
    /// between the UA's CRLF keep-alives, half the idle timeout that would close the flow.
    pub flow_timer: u32,
    /// SPEC E3: networks whose reg-event PUBLISHes need no Path match.
    pub trusted_publishers: Vec<crate::config::Cidr>,
}

pub struct Registrar {
    store: Store,
    config: RegistrarConfig,
    auth: Authenticator,
    events: Arc<RegEvents>,
    in_flight: Arc<Semaphore>,
    overload: Overload,
}

/// `registrar_inflight_registers` for as long as it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        METRICS.inflight_registers.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.inflight_registers.dec();
    }
}

/// Overload refusals, logged once per second with their count instead of one line each.
#[derive(Default)]
struct Overload {
    refused: std::sync::atomic::AtomicU64,
    last_log: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Overload {
    fn note(&self) {
        use std::sync::atomic::Ordering;
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            *last = Some(std::time::Instant::now());
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::warn!(refused, "too many REGISTERs in flight; answering 503");
        }
    }
}

impl Registrar {
    pub fn new(store: Store, config: RegistrarConfig, events: Arc<RegEvents>) -> Registrar {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let auth = Authenticator::new(config.auth.clone(), config.case_sensitive);
        Registrar {
            store,
            config,
            auth,
            events,
            in_flight,
            overload: Overload::default(),
        }
    }

    /// The reg-event service (its expiry job is started beside the role).
    pub fn events(&self) -> &Arc<RegEvents> {
        &self.events
    }

    pub async fn handle(&self, request: &Request, origin: &Origin) -> Option<Response> {
        if let Some(answer) = triage(request, &CAPABILITIES) {
            return answer;
        }
        if request.method == "SUBSCRIBE" {
            let gate = Gate {
                auth: &self.auth,
                case_sensitive: self.config.case_sensitive,
                domains: &self.config.domains,
            };
            return Some(subscribe::handle(&self.events, gate, request, origin).await);
        }
        if request.method == "PUBLISH" {
            let gate = PublishGate {
                auth: &self.config.auth,
                trusted: &self.config.trusted_publishers,
                case_sensitive: self.config.case_sensitive,
                domains: &self.config.domains,
            };
            return Some(publish::handle(&self.events, gate, request, origin).await);
        }
        let started = std::time::Instant::now();
        let response = self.handle_register(request, origin, started).await;
        METRICS
            .register_duration
            .observe(started.elapsed().as_secs_f64());
        Some(response)
    }

    async fn handle_register(
        &self,
        request: &Request,
        origin: &Origin,
        started: std::time::Instant,
    ) -> Response {
        let rules = ParseRules {
            case_sensitive: self.config.case_sensitive,
            max_contacts_per_register: self.config.max_contacts_per_register,
        };
        let wanted = match register_of(request, origin, rules) {
            Ok(r) => r,
            Err(refusal) => return refused(request, &refusal),
        };
        tracing::Span::current().record("aor", tracing::field::display(&wanted.aor));
        if !self.config.domains.is_empty() && !self.config.domains.contains(&wanted.aor.domain) {
            return Response::to(&request.message, 404, "Not Found");
        }
        let supports_path = option_tags(request.message.headers_named("Supported"))
            .iter()
            .any(|t| t == "path");
        if wanted.path.is_some() && !supports_path {
            // Deliberate (SPEC R10): refuse before writing; Kamailio writes, then answers 420.
            return Response::to(&request.message, 420, "Bad Extension")
                .header("Unsupported", "path")
                .header("P-Registrar-Error", "No support for found Path indicated");
        }
        let credentials = match self.auth.admit(request, origin, &wanted.aor) {
            Admission::Open => None,
            Admission::Answer(response) => return response,
            Admission::Verify(verification) => Some(verification),
        };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            METRICS.dropped("overload");
            self.overload.note();
            return self.unavailable(request, 503, "Service Unavailable");
        };
        let policy = self.config.policies.for_domain(&wanted.aor.domain);
        let authenticated = credentials.is_some();
        let _inflight = InFlight::enter();
        let work = register(&self.store, &policy, &wanted, credentials.as_ref());
        // H6 is the UA's clock: counted from the request's arrival, and fired a little early
        // (1/20 of it, at most 50 ms) so the 500 is on the wire before the deadline, not just
        // after it (bench/faults measured 5.000–5.012 s at the client without the margin).
        let deadline = self.config.request_deadline;
        let until = started + deadline - (deadline / 20).min(std::time::Duration::from_millis(50));
        let Ok(result) = tokio::time::timeout_at(until.into(), work).await else {
            // H6: the UA hears within the deadline. The work may still commit (its outcome is
            // unknown to us): 500, never 200, and the UA's retry finds what happened.
            tracing::warn!("REGISTER not done within the request deadline; answering 500");
            return self.unavailable(request, 500, "Server Internal Error");
        };
        match result {
            Ok(Err(_denied)) => self.auth.denied(request, origin, &wanted.aor),
            Ok(Ok(mut registration)) => {
                if authenticated {
                    METRICS.auth("ok");
                }
                log_change(&registration);
                (self.events).changed(
                    &wanted.aor,
                    std::mem::take(&mut registration.changes),
                    registration.bindings.len(),
                    registration.now,
                );
                match &registration.outcome {
                    Outcome::Registered => {
                        let response = registered(request, &registration);
                        self.outbound_flow(response, &wanted, origin)
                    }
                    Outcome::Refused(refusal) => refused(request, refusal),
                }
            }
            Err(error) => self.store_failure(request, error),
        }
    }

    /// R13: a database that is down or busy is worth retrying; a rejected row is not.
    fn store_failure(&self, request: &Request, error: StoreError) -> Response {
        METRICS
            .db_errors
            .get_or_create(&crate::metrics::KindLabel {
                kind: match &error {
                    StoreError::Unavailable(_) | StoreError::ReadOnly(_) => "unavailable",
                    StoreError::Busy => "busy",
                    StoreError::Rejected(_) => "rejected",
                    _ => "other",
                },
            })
            .inc();
        match error {
            StoreError::Busy => {
                tracing::warn!(%error, "database busy");
                self.unavailable(request, 503, "Service Unavailable")
            }
            e if e.is_transient() => {
                tracing::warn!(error = %e, "database unavailable");
                self.unavailable(request, 500, "Server Internal Error")
            }
            e => {
                tracing::error!(call_id = %request.call_id, error = %e, "database rejected the REGISTER");
                Response::to(&request.message, 500, "Server Internal Error")
            }
        }
    }

    /// W3 (RFC 5626 §6): a 200 OK to a REGISTER that creates an outbound flow (a contact with
    /// `+sip.instance` and `reg-id`) says `Require: outbound` and how often to ping. Only over
    /// a stream: there the double-CRLF ping is answered (framing.rs); UDP flows are kept alive
    /// with STUN, which this server does not answer, and a UA told to would see its flow fail.
    fn outbound_flow(&self, response: Response, wanted: &Register, origin: &Origin) -> Response {
        let outbound = match &wanted.contacts {
            Contacts::List(contacts) => contacts.iter().any(|c| c.reg_id.is_some()),
            Contacts::None | Contacts::Wildcard => false,
        };
        if !outbound || origin.transport == Transport::Udp {
            return response;
        }
        response
            .header("Require", "outbound")
            .header("Flow-Timer", self.config.flow_timer.to_string())
    }

    fn unavailable(&self, request: &Request, code: u16, reason: &'static str) -> Response {
        Response::to(&request.message, code, reason)
            .header("Retry-After", self.config.retry_after.to_string())
    }
}

fn log_change(registration: &Registration) {
    let w = registration.written;
    if !w.is_empty() {
        tracing::info!(
            inserted = w.inserted,
            updated = w.updated,
            removed = w.deleted,
            bindings = registration.bindings.len(),
            "registration changed"
        );
    }
}

/// R10: 200 OK with every live binding and the Date; Path echoed when it was stored.
fn registered(request: &Request, registration: &Registration) -> Response {
    let mut response = Response::to(&request.message, 200, "OK");
    for binding in &registration.bindings {
        response = response.header("Contact", contact_value(binding, registration.now));
    }
    for path in request.message.headers_named("Path") {
        response = response.header("Path", path);
    }
    response.header("Date", http_date(registration.now))
}

fn refused(request: &Request, refusal: &Refusal) -> Response {
    let mut response = Response::to(&request.message, refusal.code, refusal.reason);
    if let Some(min) = refusal.min_expires {
        response = response.header("Min-Expires", min.to_string());
    }
    if let Some(why) = refusal.registrar_error {
        response = response.header("P-Registrar-Error", why);
    }
    response
}

/// `<uri>;expires=N[;q=…][;+sip.instance="…"][;reg-id=N]`, N the remaining seconds rounded up.
pub fn contact_value(binding: &Binding, now: DateTime<Utc>) -> String {
    let millis = (binding.expires - now).num_milliseconds().max(0);
    let mut value = format!("<{}>;expires={}", binding.contact, (millis + 999) / 1000);
    if let Some(q) = binding.q {
        value.push_str(";q=");
        value.push_str(&q_text(q));
    }
    if let Some(instance) = &binding.instance {
        // H7: we refuse `"` and `\` in instances we store, but a row another writer stored
        // (Kamailio, SQL) may hold them: quoted-pair escapes, never raw.
        let escaped = instance.replace('\\', "\\\\").replace('"', "\\\"");
        value.push_str(&format!(";+sip.instance=\"{escaped}\""));
        if binding.reg_id > 0 {
            value.push_str(&format!(";reg-id={}", binding.reg_id));
        }
    }
    value
}

/// Kamailio's `q2str`: `1`, `0`, or `0.d`–`0.ddd` without trailing zeros.
fn q_text(milli: u16) -> String {
    match milli {
        1000.. => "1".into(),
        0 => "0".into(),
        m => format!("0.{m:03}").trim_end_matches('0').to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r6_q_is_printed_like_kamailio() {
        assert_eq!(q_text(1000), "1");
        assert_eq!(q_text(0), "0");
        assert_eq!(q_text(500), "0.5");
        assert_eq!(q_text(125), "0.125");
        assert_eq!(q_text(70), "0.07");
    }
}
