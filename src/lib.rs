//! registrar: a SIP registrar and IMS P-CSCF whose every binding read and write goes to
//! PostgreSQL or SQLite (Kamailio's usrloc DB_ONLY mode, rebuilt). See ARCHITECTURE.md for the
//! map of the layers: cli → server → transport → roles (registrar, pcscf) → sip, store.

pub mod admin;
pub mod aor;
pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod pcscf;
pub mod regevent;
pub mod registrar;
pub mod server;
pub mod sip;
pub mod store;
pub mod telemetry;
pub mod transaction;
pub mod transport;
