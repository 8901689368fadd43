//! The P-CSCF role (SPEC P): Kamailio's `ims_registrar_pcscf` + `ims_usrloc_pcscf` in DB_ONLY.
//! `decide` is pure (P1, P3); `role` wires it to the store and the relay; `relay` (with the
//! shared `crate::transaction`) carries REGISTERs to the S-CSCF; `publish`, `audit` and
//! `notify` handle the expiry side of the registration race; `subscribe` keeps the P-CSCF's
//! own reg-event subscription per pcontact (SPEC E4).

pub mod audit;
pub mod decide;
pub mod notify;
pub mod publish;
pub mod relay;
pub mod role;
pub mod subscribe;

pub use role::{Pcscf, PcscfConfig};
