//! Sending SIP messages that are not answers to the request in hand — a P-CSCF relaying a
//! REGISTER, PUBLISHing, or passing on a provisional response. Roles see only this trait;
//! the transport implements it with its sockets.

use super::Transport;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// Where to send: a transport and an address (for TCP, an open connection to that address is
/// reused, else one is made).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub transport: Transport,
    pub addr: SocketAddr,
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>>;

pub trait Outbound: Send + Sync + 'static {
    fn send(&self, to: Destination, bytes: Vec<u8>) -> SendFuture<'_>;
}
