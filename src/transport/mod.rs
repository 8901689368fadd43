//! Sockets: UDP and TCP listeners that turn bytes into `sip::wire::Message`s, hand them to a
//! `Handler` (the one seam between transport and roles) and send its response back where
//! RFC 3261 §18.2.2 says (SPEC R1). Nothing here knows about registrations.

pub mod connection;
pub mod framing;
pub mod outbound;
pub mod retrans;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod ws;

use crate::sip::response::Response;
use crate::sip::wire::Message;
use crate::sip::{Origin, via::stamp_top_via};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

/// What the server plugs into the listeners: a role, or several.
pub trait Handler: Send + Sync + 'static {
    /// A request or response and where it came from; returns the response to send, if any.
    fn handle(
        &self,
        message: Message,
        origin: Origin,
    ) -> impl Future<Output = Option<Response>> + Send;
}

/// Counters an operator (or a test) can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input that could not be parsed far enough to answer (SPEC R11).
    pub dropped: AtomicU64,
    /// UDP retransmissions answered from the response cache.
    pub retransmissions: AtomicU64,
}

impl Stats {
    /// Counts input dropped unanswered (`transport_dropped_total{reason}`).
    pub fn drop_input(&self, reason: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.dropped(reason);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn retransmissions(&self) -> u64 {
        self.retransmissions.load(Ordering::Relaxed)
    }
}

/// The whole request path for one message's bytes, without a socket: parse, hand to the role,
/// serialize the answer. What the listeners do, minus I/O (used by the fuzz test).
pub async fn respond<H: Handler>(handler: &H, bytes: &[u8], origin: Origin) -> Option<Vec<u8>> {
    let message = crate::sip::wire::parse(bytes).ok()?;
    dispatch(handler, message, origin)
        .await
        .map(|r| r.to_bytes())
}

/// Headers for a debug log line, credentials blanked (SPEC A7: no `Authorization` value is
/// ever logged).
struct Redacted<'a>(&'a [crate::sip::wire::Header]);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|h| {
                let secret = h.name.eq_ignore_ascii_case("Authorization")
                    || h.name.eq_ignore_ascii_case("Proxy-Authorization");
                (
                    h.name.as_str(),
                    if secret {
                        "<redacted>"
                    } else {
                        h.value.as_str()
                    },
                )
            }))
            .finish()
    }
}

/// Passes one parsed message to the handler inside a span naming the request (Call-ID,
/// method, and the AoR the role records), after stamping the top Via of a request (R1).
async fn dispatch<H: Handler>(
    handler: &H,
    mut message: Message,
    origin: Origin,
) -> Option<Response> {
    let span = tracing::info_span!(
        "sip",
        call_id = message.header("Call-ID").unwrap_or(""),
        method = message.method().unwrap_or("response"),
        peer = %origin.peer,
        aor = tracing::field::Empty,
    );
    if message.is_request() {
        stamp_top_via(&mut message, origin.peer);
    }
    // O2: one count per response sent, labelled from a fixed set of methods.
    let method = crate::metrics::method_label(message.method().unwrap_or(""));
    async move {
        tracing::debug!(headers = ?Redacted(&message.headers), "received");
        let response = handler.handle(message, origin).await;
        if let Some(r) = &response {
            tracing::debug!(code = r.code, "answered");
            crate::metrics::METRICS.response(method, r.code);
        }
        response
    }
    .instrument(span)
    .await
}
