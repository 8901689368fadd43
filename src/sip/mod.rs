//! SIP syntax: the wire parser (`wire`), header values (`header`), URIs (`uri`), AoR
//! normalization (`aor`), request checks (`request`), the response builder (`response`), the writer of requests we
//! originate (`outgoing`) and
//! RFC 3680 bodies (`reginfo`). Knows nothing of sockets or databases beyond the plain
//! `crate::aor::Aor` key it produces.

pub mod aor;
pub mod header;
pub mod methods;
pub mod origin;
pub mod outbound;
pub mod outgoing;
pub mod reginfo;
pub mod request;
pub mod response;
pub mod uri;
pub mod via;
pub mod wire;

pub use origin::{Origin, Transport};
