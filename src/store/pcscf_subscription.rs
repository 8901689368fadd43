//! The P-CSCF's own reg-event subscriptions (SPEC E4): one row of `pcscf_subscription` per
//! pcontact, holding the SUBSCRIBE dialog so that any instance can refresh or end it and
//! recognise the NOTIFYs sent in it (SPEC H5). Plain data.

use super::ContactAddress;
use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcscfSubscription {
    pub id: i64,
    /// The pcontact's address.
    pub address: ContactAddress,
    pub impu: String,
    pub call_id: String,
    /// Ours.
    pub from_tag: String,
    /// The S-CSCF's, once its 2xx came.
    pub to_tag: Option<String>,
    /// The S-CSCF's Contact, once its 2xx came.
    pub remote_target: Option<String>,
    pub route_set: Option<String>,
    /// The CSeq of the SUBSCRIBE to send now (taken by the claim or the insert).
    pub cseq: i64,
    pub expires: DateTime<Utc>,
    pub refresh_at: DateTime<Utc>,
}

/// A subscription about to be SUBSCRIBEd for the first time (CSeq 1), claimed by its creator
/// until the S-CSCF answers.
#[derive(Clone, Debug)]
pub struct NewPcscfSubscription {
    pub address: ContactAddress,
    pub impu: String,
    pub call_id: String,
    pub from_tag: String,
}

/// What the S-CSCF's 2xx granted.
#[derive(Clone, Debug)]
pub struct Granted {
    pub to_tag: Option<String>,
    pub remote_target: Option<String>,
    pub route_set: Option<String>,
    pub expires_secs: u32,
    pub refresh_after_secs: u32,
}
