//! The transport side of `sip::outbound::Outbound`: UDP from the server's first UDP socket (so
//! that answers come back to a listener), TCP over the open connection to that peer or a new
//! one, which is then served like an accepted connection (its responses and requests reach the
//! handler).

use super::Handler;
use super::connection::ConnectionSettings;
use super::tcp::start_connection;
use crate::sip::Transport;
use crate::sip::outbound::{Destination, Outbound, SendFuture};
use std::io;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Sender<H> {
    udp: Option<Arc<UdpSocket>>,
    tcp: ConnectionSettings,
    /// Set once the role that uses this sender exists (the role needs the sender first).
    handler: OnceLock<Weak<H>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl<H: Handler> Sender<H> {
    pub fn new(
        udp: Option<Arc<UdpSocket>>,
        tcp: ConnectionSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Sender<H> {
        Sender {
            udp,
            tcp,
            handler: OnceLock::new(),
            shutdown,
            tasks,
        }
    }

    pub fn set_handler(&self, handler: &Arc<H>) {
        let _ = self.handler.set(Arc::downgrade(handler));
    }

    async fn send_tcp(&self, to: Destination, bytes: Vec<u8>) -> io::Result<()> {
        let writer = match self.tcp.connections.writer(to.addr) {
            Some(w) => w,
            None => {
                let handler = self
                    .handler
                    .get()
                    .and_then(Weak::upgrade)
                    .ok_or_else(|| io::Error::other("server is shutting down"))?;
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to.addr))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out")
                    })??;
                let local = stream.local_addr()?;
                start_connection(
                    stream,
                    to.addr,
                    local,
                    handler,
                    &self.tcp,
                    self.shutdown.clone(),
                    &self.tasks,
                )
                .0
            }
        };
        writer
            .send(bytes)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "TCP connection closed"))
    }
}

impl<H: Handler> Outbound for Sender<H> {
    fn send(&self, to: Destination, bytes: Vec<u8>) -> SendFuture<'_> {
        Box::pin(async move {
            match to.transport {
                Transport::Udp => {
                    let socket = self
                        .udp
                        .as_ref()
                        .ok_or_else(|| io::Error::other("no UDP listener to send from"))?;
                    socket.send_to(&bytes, to.addr).await.map(|_| ())
                }
                Transport::Tcp => self.send_tcp(to, bytes).await,
                // Only over a connection the peer opened: we are no TLS or WebSocket client.
                Transport::Tls | Transport::Ws | Transport::Wss => {
                    match self.tcp.connections.writer(to.addr) {
                        Some(writer) => writer.send(bytes).await.map_err(|_| {
                            io::Error::new(io::ErrorKind::BrokenPipe, "connection closed")
                        }),
                        None => Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            format!("no {} connection from that peer", to.transport),
                        )),
                    }
                }
            }
        })
    }
}
