//! The P-CSCF role's stored data: a `Pcontact` is one row of `pcscf_location` (SPEC S1, P).

use chrono::{DateTime, Utc};
use std::fmt;

/// Kamailio's `pcontact_reg_states` values, stored as integers in `reg_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegState {
    Registered,
    RegPending,
    Deregistered,
    DeregPendingPublish,
    /// A value we do not write ourselves (e.g. Kamailio's combined 14), kept as read.
    Other(i16),
}

impl RegState {
    pub fn to_column(self) -> i16 {
        match self {
            RegState::Registered => 2,
            RegState::RegPending => 4,
            RegState::Deregistered => 16,
            RegState::DeregPendingPublish => 32,
            RegState::Other(v) => v,
        }
    }

    pub fn from_column(v: i16) -> Self {
        match v {
            2 => RegState::Registered,
            4 => RegState::RegPending,
            16 => RegState::Deregistered,
            32 => RegState::DeregPendingPublish,
            other => RegState::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            RegState::Registered => "REGISTERED".into(),
            RegState::RegPending => "REG_PENDING".into(),
            RegState::Deregistered => "DEREGISTERED".into(),
            RegState::DeregPendingPublish => "DEREG_PENDING_PUBLISH".into(),
            RegState::Other(v) => format!("UNKNOWN({v})"),
        }
    }
}

impl fmt::Display for RegState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where a UE is reached: its Contact URI's host, port (default 5060) and transport (default
/// udp). Unique per pcontact.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContactAddress {
    pub host: String,
    pub port: u16,
    pub protocol: String,
}

impl fmt::Display for ContactAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{};transport={}", self.host, self.port, self.protocol)
    }
}

/// One row of `pcscf_location`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pcontact {
    pub id: i64,
    /// The UE's Contact URI (Kamailio's `aor` column).
    pub aor: String,
    pub address: ContactAddress,
    pub received: Option<String>,
    pub received_port: Option<i32>,
    pub received_proto: Option<String>,
    pub path: Option<String>,
    pub rinstance: Option<String>,
    pub reg_state: RegState,
    pub expires: DateTime<Utc>,
    /// `<uri><uri>` as Kamailio stores them.
    pub service_routes: Option<String>,
    pub socket: Option<String>,
    /// `<uri><uri>`, `tel:` identities included.
    pub public_ids: Option<String>,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub publish_attempts: i32,
    pub next_publish_at: Option<DateTime<Utc>>,
    pub published_ids: Option<String>,
    pub last_modified: DateTime<Utc>,
}

/// Splits Kamailio's `<a><b>` list form into its URIs.
pub fn split_uri_list(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = list;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start + 1..].find('>') else {
            break;
        };
        out.push(rest[start + 1..start + 1 + len].to_string());
        rest = &rest[start + 1 + len + 1..];
    }
    out
}

/// Joins URIs into Kamailio's `<a><b>` list form.
pub fn join_uri_list<S: AsRef<str>>(uris: &[S]) -> String {
    uris.iter().map(|u| format!("<{}>", u.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_list_round_trips_kamailio_form() {
        let stored = "<sip:u@ims.example.com><tel:+15551234>";
        let uris = split_uri_list(stored);
        assert_eq!(uris, vec!["sip:u@ims.example.com", "tel:+15551234"]);
        assert_eq!(join_uri_list(&uris), stored);
        assert!(split_uri_list("").is_empty());
    }

    #[test]
    fn reg_state_uses_kamailio_integers() {
        for (state, v) in [
            (RegState::Registered, 2),
            (RegState::RegPending, 4),
            (RegState::Deregistered, 16),
            (RegState::DeregPendingPublish, 32),
        ] {
            assert_eq!(state.to_column(), v);
            assert_eq!(RegState::from_column(v), state);
        }
        assert_eq!(RegState::from_column(14).name(), "UNKNOWN(14)");
    }
}

/// The pcontact of one UE contact address as read under its lock, with `now`.
#[derive(Clone, Debug)]
pub struct PcontactSnapshot {
    pub now: DateTime<Utc>,
    pub pcontact: Option<Pcontact>,
}

/// What the P-CSCF decided for one contact address.
#[derive(Clone, Debug, PartialEq)]
pub enum PcontactChange {
    Keep,
    /// Write a new row (any `id` is ignored).
    Insert(Pcontact),
    /// Rewrite the snapshot's row with these values.
    Update(Pcontact),
    /// Remove the snapshot's row.
    Delete,
    /// Remove the snapshot's row and write this one instead (a stale pcontact replaced).
    Replace(Pcontact),
}

#[derive(Clone, Debug)]
pub struct PcontactPlan<T> {
    pub change: PcontactChange,
    pub outcome: T,
}

impl<T> PcontactPlan<T> {
    pub fn keep(outcome: T) -> Self {
        PcontactPlan {
            change: PcontactChange::Keep,
            outcome,
        }
    }
}

/// The outcome of a `PcontactPlan` and the row as it is afterwards.
#[derive(Clone, Debug)]
pub struct PcontactApplied<T> {
    pub outcome: T,
    pub now: DateTime<Utc>,
    pub pcontact: Option<Pcontact>,
}

/// Progress of a claimed pcontact's expiry PUBLISH, written back so that an instance taking
/// over after a crash continues where the last one stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishProgress {
    /// Identities done (2xx or given up), `<uri><uri>`.
    pub published_ids: Option<String>,
    /// Failed attempts for the identity being published.
    pub attempts: i32,
    pub next_publish_at: Option<DateTime<Utc>>,
}

impl Pcontact {
    /// A new row for a UE contact (the fields the REGISTER tells).
    pub fn new(
        aor: String,
        address: ContactAddress,
        reg_state: RegState,
        expires: DateTime<Utc>,
    ) -> Pcontact {
        Pcontact {
            id: 0,
            aor,
            address,
            received: None,
            received_port: None,
            received_proto: None,
            path: None,
            rinstance: None,
            reg_state,
            expires,
            service_routes: None,
            socket: None,
            public_ids: None,
            claimed_by: None,
            claimed_until: None,
            publish_attempts: 0,
            next_publish_at: None,
            published_ids: None,
            last_modified: expires,
        }
    }
}
