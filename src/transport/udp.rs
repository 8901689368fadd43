//! The UDP listener: one datagram is one message; responses go back to its source address and
//! port, retransmissions are answered from the response cache (SPEC R1).

use super::retrans::{Key, Lookup, ResponseCache};
use super::{Handler, Stats, dispatch};
use crate::sip::wire::{self, WireError};
use crate::sip::{Origin, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest datagram read; anything longer is truncated by the kernel and dropped here.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams being handled at once. Beyond, new ones are dropped as a full socket buffer would
/// drop them: memory stays bounded under overload (the role answers 503 well before this).
const MAX_TASKS: usize = 4096;

pub struct UdpListener<H> {
    pub socket: Arc<UdpSocket>,
    pub handler: Arc<H>,
    pub cache: Arc<ResponseCache>,
    pub stats: Arc<Stats>,
    pub max_message_size: usize,
}

impl<H: Handler> UdpListener<H> {
    pub async fn run(self, shutdown: CancellationToken, tasks: TaskTracker) {
        let local = match self.socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "UDP socket has no address");
                return;
            }
        };
        let this = Arc::new(self);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TASKS));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = this.socket.recv_from(&mut buf) => r,
            };
            let (len, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems: not fatal.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            if len >= MAX_DATAGRAM || len > this.max_message_size {
                this.stats.drop_input("too_large");
                tracing::debug!(%peer, len, "datagram too large; dropped");
                continue;
            }
            if buf[..len].starts_with(b"SIP/2.0 ") {
                // Responses (to the P-CSCF's own requests) are handled right here, in arrival
                // order: a 183 and its 200 sent back to back must not swap places.
                this.datagram(buf[..len].to_vec(), peer, local).await;
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                this.stats.drop_input("overload");
                continue;
            };
            let data = buf[..len].to_vec();
            let this = Arc::clone(&this);
            tasks.spawn(async move {
                this.datagram(data, peer, local).await;
                drop(permit);
            });
        }
    }

    async fn datagram(&self, data: Vec<u8>, peer: SocketAddr, local: SocketAddr) {
        let message = match wire::parse(&data) {
            Ok(m) => m,
            Err(WireError::KeepAlive) => return,
            Err(WireError::Unparseable(why)) => {
                self.stats.drop_input("unparseable");
                tracing::debug!(%peer, why, "unparseable datagram dropped");
                return;
            }
        };
        let origin = Origin {
            transport: Transport::Udp,
            peer,
            local,
            connection_id: -1,
        };
        let key = if message.is_request() {
            Key::of(&message, peer)
        } else {
            None
        };
        if let Some(key) = &key {
            match self.cache.begin(key) {
                Lookup::New => {}
                Lookup::InFlight => return,
                Lookup::Answered(bytes, to) => {
                    self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::METRICS.retrans_cache_hits.inc();
                    if let (Some(method), Some(code)) = (message.method(), status_of(&bytes)) {
                        crate::metrics::METRICS.response(method, code);
                    }
                    self.send(&bytes, to).await;
                    return;
                }
            }
        }
        // Symmetric response routing (SPEC R1): back to the source address and port.
        let to = peer;
        // Boxed: the handling future is ~5 KiB and exists only once the task runs. Inline, every
        // spawned task carried it from the moment it was queued, and an overload's backlog of
        // queued tasks (up to MAX_TASKS) held 22 MiB of it (heaptrack, issue 16).
        match Box::pin(dispatch(self.handler.as_ref(), message, origin)).await {
            Some(response) => {
                let bytes = response.to_bytes();
                // Cache first: a retransmission sent the moment our answer arrives must find it.
                if let Some(key) = key {
                    self.cache.finish(key, bytes.clone(), to);
                }
                self.send(&bytes, to).await;
            }
            None => {
                if let Some(key) = key {
                    self.cache.abandon(&key);
                }
            }
        }
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, to).await {
            tracing::debug!(%to, error = %e, "UDP send failed");
        }
    }
}

/// Asks the kernel for a `bytes` receive buffer on `socket`. The default (about 200 KiB, some
/// ninety small datagrams) overflows when a burst arrives while both cores are busy: the
/// answers to a fan-out of NOTIFYs, or every phone re-registering after an outage. A dropped
/// REGISTER comes back only with the phone's retransmission, 500 ms later. The kernel caps the
/// request at `net.core.rmem_max`; the size granted is logged.
pub fn grow_recv_buffer(socket: &UdpSocket, bytes: usize) {
    let socket = socket2::SockRef::from(socket);
    if let Err(e) = socket.set_recv_buffer_size(bytes) {
        tracing::warn!(error = %e, bytes, "cannot set the UDP receive buffer");
        return;
    }
    // Linux reports twice the size asked (half is for its own bookkeeping).
    let granted = socket.recv_buffer_size().map(|b| b / 2).unwrap_or(0);
    if granted < bytes {
        tracing::info!(
            asked = bytes,
            granted,
            "UDP receive buffer capped by net.core.rmem_max; raise it with sysctl for bursts"
        );
    }
}

/// The status code of serialized response bytes (`SIP/2.0 200 OK…`).
fn status_of(bytes: &[u8]) -> Option<u16> {
    std::str::from_utf8(bytes.get(8..11)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_receive_buffer_is_what_was_asked_or_the_kernels_cap() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let asked = 1 << 20;
        grow_recv_buffer(&socket, asked);
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(asked);
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap() / 2;
        assert!(
            granted >= asked.min(cap),
            "granted {granted}, asked {asked}, cap {cap}"
        );
    }
}

#[cfg(test)]
mod task_size {
    use super::*;
    use crate::server::Roles;
    use std::future::Future;

    /// The size of the future `make` would return, without calling it.
    fn size_of_future<Fut: Future, F: FnOnce() -> Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Issue 16: up to MAX_TASKS of these futures live at once under overload, each one heap
    /// allocation of this size from the moment it is queued. It was 20 KiB while the store
    /// awaited sqlx's query futures inline (83 MiB at an overload's peak), 5 KiB with those
    /// boxed (22 MiB of tasks at the peak); with the handling boxed too, a queued datagram
    /// costs little more than its bytes, and only the requests being handled cost ~5 KiB.
    #[test]
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    fn a_queued_datagram_task_stays_small() {
        let size = size_of_future(|| {
            let listener: &UdpListener<Roles> = unreachable!();
            listener.datagram(unreachable!(), unreachable!(), unreachable!())
        });
        assert!(
            size <= 2 * 1024,
            "a UDP request's task future is {size} bytes"
        );
    }
}
