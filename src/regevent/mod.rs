//! The registrar's reg-event service (SPEC E1–E3): RFC 3680 subscriptions to an AoR's
//! registration state, kept in `reg_subscription`, and the NOTIFYs that follow every change of
//! its bindings. A role-level service beside the registrar: the registrar hands it committed
//! changes (never waiting for a NOTIFY); `subscribe` answers SUBSCRIBE; `publish` applies the
//! P-CSCF's PUBLISH (SPEC E3); `expiry` is the job
//! that NOTIFYs expired bindings, claiming work with the lease the P-CSCF's job uses
//! (`crate::lease`). `change` is pure: what to NOTIFY for a change.

pub mod change;
pub mod expiry;
pub mod notifier;
pub mod publish;
pub mod subscribe;

pub use notifier::{Delivery, RegEventConfig, RegEvents};
