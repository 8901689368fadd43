//! The registrar's reg-event subscriptions (SPEC E1): one row of `reg_subscription` per
//! SUBSCRIBE dialog, holding all the dialog state a NOTIFY needs, so that any instance can send
//! one. Plain data: the store never interprets SIP.

use super::Binding;
pub use crate::aor::Aor;
use chrono::{DateTime, Utc};

/// A subscription as stored, with the numbers of the NOTIFY it was last read for: every read
/// that leads to a NOTIFY takes the next `local_cseq` and `version` in the same statement, so
/// that instances sending at once never reuse one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub id: i64,
    pub aor: Aor,
    pub dialog: DialogId,
    /// NOTIFY's From URI (the SUBSCRIBE's To).
    pub local_uri: String,
    /// NOTIFY's To URI (the SUBSCRIBE's From).
    pub remote_uri: String,
    /// NOTIFY's Request-URI (the SUBSCRIBE's Contact).
    pub remote_target: String,
    /// NOTIFY's Route values (the SUBSCRIBE's Record-Route, in order), joined by `, `.
    pub route_set: Option<String>,
    /// `proto:ip:port` the NOTIFYs go to: where the SUBSCRIBE came from.
    pub send_to: String,
    pub local_cseq: i64,
    pub remote_cseq: i64,
    pub version: i64,
    pub expires: DateTime<Utc>,
    /// Binding expiries up to here have been NOTIFYed.
    pub notified_until: DateTime<Utc>,
    /// When it was made: it hears of changes made after (SPEC E2).
    pub created: DateTime<Utc>,
}

/// Call-ID and the two tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogId {
    pub call_id: String,
    /// The subscriber's (its From tag).
    pub remote_tag: String,
    /// Ours (the To tag of our 200).
    pub local_tag: String,
}

/// A subscription to create: its first NOTIFY is CSeq 1, `version` 0.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    pub aor: Aor,
    pub dialog: DialogId,
    pub local_uri: String,
    pub remote_uri: String,
    pub remote_target: String,
    pub route_set: Option<String>,
    pub send_to: String,
    pub remote_cseq: i64,
    pub expires_secs: u32,
}

/// A refresh (or end, with `expires_secs` 0) of an existing dialog.
#[derive(Clone, Debug)]
pub struct Renewal {
    pub remote_cseq: i64,
    pub expires_secs: u32,
    /// The subscriber's Contact may change with a refresh (RFC 6665 §4.1.2.1).
    pub remote_target: String,
}

/// What a refresh found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewed {
    /// The dialog's row, with the numbers of the NOTIFY to send now.
    Done(Box<Subscription>),
    /// No such dialog (481).
    Unknown,
    /// A CSeq not above the last one (a retransmission or a reordering: 500, RFC 3261 §12.2.2).
    Stale,
}

/// One subscription the expiry job claimed (SPEC E2): either it ended (`expires <= now`) and
/// gets its final NOTIFY, or bindings of its AoR expired since `notified_until` and get an
/// `expired` NOTIFY. Its numbers are already taken for that NOTIFY.
#[derive(Clone, Debug)]
pub struct ExpiryWork {
    pub subscription: Subscription,
    /// The database's `now` of the claim: the new watermark once the NOTIFY is done.
    pub now: DateTime<Utc>,
    /// Bindings that expired in `(notified_until, now]`.
    pub expired: Vec<Binding>,
    /// The live bindings now (a final NOTIFY carries the full state).
    pub live: Vec<Binding>,
}
