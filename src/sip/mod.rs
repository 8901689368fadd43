//! SIP syntax: URIs, AoR normalization and (in later files) the wire parser and response
//! builder. Knows nothing of sockets or databases beyond the plain `store::Aor` key it produces.

pub mod aor;
pub mod uri;
