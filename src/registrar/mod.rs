//! The registrar role (SPEC R): REGISTER decided against the AoR's bindings in the database.
//! `decide` is pure; `service` runs it inside the store's per-AoR transaction.

pub mod decide;
pub mod extract;
pub mod request;
pub mod role;
pub mod service;

pub use decide::{Outcome, decide, prepare};
pub use request::{
    Contacts, DomainOverride, Policies, Policy, Refusal, Register, RequestedContact, Source,
};
pub use role::{Registrar, RegistrarConfig};
pub use service::{Registration, register, register_administratively, reply_order};
