//! What the registrar decides on: a REGISTER reduced to the facts the rules need, the
//! per-domain policy, and the refusals it can answer with.

use crate::store::Aor;
use std::collections::HashMap;
use std::time::Duration;

/// A REGISTER (or an administrative `contacts add`), already parsed and validated by the SIP
/// layer.
#[derive(Clone, Debug)]
pub struct Register {
    pub aor: Aor,
    pub call_id: String,
    pub cseq: u32,
    pub contacts: Contacts,
    /// The request's `Expires` header, when present and valid (R3).
    pub expires_header: Option<u32>,
    /// The Path header values joined with `,` (S1), when the request carried Path.
    pub path: Option<String>,
    /// Where the request came from, for `received` (R9).
    pub source: Option<Source>,
    pub user_agent: Option<String>,
    /// `proto:ip:port` of the listener that received the request.
    pub socket: Option<String>,
    /// Kamailio's `connection_id`: −1 for UDP.
    pub connection_id: i32,
}

/// Where the request came from, for the `received` column (R9).
#[derive(Clone, Debug)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub transport: String,
    /// The source IP or port differs from the top Via's sent-by (port 5060 when absent):
    /// Kamailio's `nat_uac_test` flags 2 and 16.
    pub differs_from_via: bool,
}

#[derive(Clone, Debug)]
pub enum Contacts {
    /// No Contact header: a query (R10).
    None,
    /// `Contact: *` (R4).
    Wildcard,
    List(Vec<RequestedContact>),
}

/// One Contact of the request.
#[derive(Clone, Debug)]
pub struct RequestedContact {
    /// The URI exactly as sent (inside `<>` if it had them).
    pub uri: String,
    /// Host, port and transport of the URI, to compare with the source (R9).
    pub host: String,
    pub port: Option<u16>,
    pub transport: String,
    /// The `expires` param when valid (R3).
    pub expires: Option<u32>,
    /// q in thousandths (R6); `None` = not given.
    pub q: Option<u16>,
    /// `+sip.instance`, unquoted, angle brackets kept.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub methods: Option<i32>,
}

/// The rules of one served domain (R3, R7, R8).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_expires: u32,
    /// 0 = no maximum.
    pub max_expires: u32,
    pub default_expires: u32,
    /// 0 = unlimited.
    pub max_contacts: u32,
    pub single_contact: bool,
    pub server_id: i32,
    /// An equal CSeq this close to `last_modified` is a retransmission (R5; Kamailio
    /// `cseq_delay`).
    pub retransmission_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 0,
            single_contact: false,
            server_id: 0,
            retransmission_window: Duration::from_secs(20),
        }
    }
}

/// Per-domain overrides of `max_contacts` / `single_contact` (config `[domain."…"]`, R8).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainOverride {
    pub max_contacts: Option<u32>,
    pub single_contact: Option<bool>,
}

/// The instance-wide policy plus its per-domain overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    pub base: Policy,
    pub domains: HashMap<String, DomainOverride>,
}

impl Policies {
    pub fn for_domain(&self, domain: &str) -> Policy {
        let mut policy = self.base.clone();
        if let Some(o) = self.domains.get(domain) {
            if let Some(m) = o.max_contacts {
                policy.max_contacts = m;
            }
            if let Some(s) = o.single_contact {
                policy.single_contact = s;
            }
        }
        policy
    }
}

/// A REGISTER the registrar refuses: the status line and the headers that explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    /// `P-Registrar-Error`, Kamailio's explanation header.
    pub registrar_error: Option<&'static str>,
    /// `Min-Expires` for 423.
    pub min_expires: Option<u32>,
}

impl Refusal {
    pub const fn bad_request(why: &'static str) -> Refusal {
        Refusal {
            code: 400,
            reason: "Bad Request",
            registrar_error: Some(why),
            min_expires: None,
        }
    }

    pub const INVALID_CSEQ: Refusal = Refusal::bad_request("Invalid CSeq number");
    pub const STAR_EXPIRES: Refusal =
        Refusal::bad_request("* used in contact and expires is not zero");
    pub const STAR_CONTACTS: Refusal =
        Refusal::bad_request("* used in contact and more than 1 contact");
    pub const TOO_MANY: Refusal = Refusal {
        code: 503,
        reason: "Service Unavailable",
        registrar_error: Some("Too many registered contacts"),
        min_expires: None,
    };

    pub fn too_brief(min_expires: u32) -> Refusal {
        Refusal {
            code: 423,
            reason: "Interval Too Brief",
            registrar_error: Some("Interval too brief"),
            min_expires: Some(min_expires),
        }
    }
}
