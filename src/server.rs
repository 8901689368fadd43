//! `serve`'s wiring: bind the listeners, build the role and plug it into them, run the
//! background jobs, and stop cleanly on SIGINT/SIGTERM (stop reading, finish what is in
//! flight, exit 0).

use crate::config::{ListenAddr, PcscfSettings, Role, Settings};
use crate::pcscf::relay::Identity;
use crate::pcscf::role::transport_of;
use crate::pcscf::{Pcscf, PcscfConfig};
use crate::regevent::{RegEventConfig, RegEvents};
use crate::registrar::{Registrar, RegistrarConfig};
use crate::sip::outbound::{Destination, Outbound};
use crate::sip::request::{Invalid, Rejection, Request};
use crate::sip::response::Response;
use crate::sip::uri::Uri;
use crate::sip::wire::Message;
use crate::sip::{Origin, Transport};
use crate::store::Store;
use crate::transport::connection::{ConnectionSettings, Connections};
use crate::transport::outbound::Sender;
use crate::transport::retrans::ResponseCache;
use crate::transport::tcp::{Handshake, Slots, TcpListener};
use crate::transport::udp::UdpListener;
use crate::transport::{Handler, Stats};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// REGISTERs processed at once per instance; more are answered 503 at once (SPEC R13). At the
/// peak rates measured (BENCHMARKS.md) fewer than 400 are in flight.
const MAX_IN_FLIGHT: usize = 1024;
/// Rows deleted per cleanup statement (SPEC S4).
const CLEANUP_BATCH: u32 = 1000;
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// A running server: its bound addresses, counters, and the handle that stops it.
pub struct Running {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    /// `tls:` listeners (SPEC W1).
    pub tls: Vec<SocketAddr>,
    /// `ws:` and `wss:` listeners (SPEC W2).
    pub ws: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    pub stats: Arc<Stats>,
    /// The P-CSCF, when that is the role (tests drive its expiry job directly).
    pub pcscf: Option<Arc<Pcscf>>,
    /// Accepted stream connections holding a slot (H4).
    pub slots: Arc<Slots>,
    /// The operations listener's address (O1), when on.
    pub http: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    store: Store,
}

impl Running {
    /// Stops reading, lets requests in flight finish (up to a bound), closes the pool.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        self.store.close().await;
    }
}

/// Binds every listener and starts serving; returns once all are listening.
pub async fn start(settings: &Settings, store: Store) -> Result<Running, ServerError> {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let stats = Arc::new(Stats::default());
    let (mut udp_sockets, mut stream_listeners) = (Vec::new(), Vec::new());
    // Read the certificate before binding anything: a bad file stops the start (W1).
    let acceptor = match &settings.tls {
        Some(files) => Some(crate::transport::tls::acceptor(files).map_err(ServerError::Config)?),
        None => None,
    };
    for listen in &settings.listen {
        let bind_error = |source| ServerError::Bind {
            what: describe(listen),
            source,
        };
        match listen.transport {
            Transport::Udp => {
                let socket = tokio::net::UdpSocket::bind(listen.addr)
                    .await
                    .map_err(bind_error)?;
                crate::transport::udp::grow_recv_buffer(&socket, settings.udp_recv_buffer);
                udp_sockets.push(Arc::new(socket));
            }
            stream => {
                let socket = tokio::net::TcpListener::bind(listen.addr)
                    .await
                    .map_err(bind_error)?;
                stream_listeners.push((socket, stream));
            }
        }
    }
    let udp: Vec<SocketAddr> = udp_sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .collect();
    let bound = |transport: Transport| -> Vec<SocketAddr> {
        (stream_listeners.iter())
            .filter(|(_, t)| *t == transport)
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    };
    let (tcp, tls) = (bound(Transport::Tcp), bound(Transport::Tls));
    let (ws, wss) = (bound(Transport::Ws), bound(Transport::Wss));
    let connection_settings = ConnectionSettings {
        stats: Arc::clone(&stats),
        connections: Arc::new(Connections::default()),
        max_message_size: settings.max_message_size,
        limits: settings.tcp,
    };
    // One budget for every listener (H4).
    let slots = Arc::new(Slots::new(
        settings.tcp.max_connections,
        settings.tcp.max_per_ip,
    ));
    let sender = Arc::new(Sender::<Roles>::new(
        udp_sockets.first().cloned(),
        connection_settings.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    let mut listening: Vec<(Transport, SocketAddr)> =
        udp.iter().map(|a| (Transport::Udp, *a)).collect();
    for (transport, addrs) in [
        (Transport::Tcp, &tcp),
        (Transport::Tls, &tls),
        (Transport::Ws, &ws),
        (Transport::Wss, &wss),
    ] {
        listening.extend(addrs.iter().map(|a| (transport, *a)));
    }
    let handler = Arc::new(
        roles(
            settings,
            store.clone(),
            Arc::clone(&stats),
            Arc::clone(&sender) as Arc<dyn Outbound>,
            &listening,
            shutdown.clone(),
        )
        .await?,
    );
    sender.set_handler(&handler);
    let cache = Arc::new(ResponseCache::new(settings.retrans_cache_bytes));
    for socket in udp_sockets {
        let listener = UdpListener {
            socket,
            handler: Arc::clone(&handler),
            cache: Arc::clone(&cache),
            stats: Arc::clone(&stats),
            max_message_size: settings.max_message_size,
        };
        tasks.spawn(listener.run(shutdown.clone(), tasks.clone()));
    }
    // TLS and WebSocket listeners are TCP listeners with handshakes first; one connection
    // budget for all of them.
    for (socket, transport) in stream_listeners {
        let handshake = match (transport, &acceptor) {
            (Transport::Tcp, _) => Handshake::None,
            (Transport::Ws, _) => Handshake::Ws,
            (Transport::Tls, Some(tls)) => Handshake::Tls(tls.clone()),
            (Transport::Wss, Some(tls)) => Handshake::Wss(tls.clone()),
            (other, _) => {
                return Err(ServerError::Config(format!(
                    "a {other}: listener needs --tls-cert and --tls-key"
                )));
            }
        };
        let listener = TcpListener {
            listener: socket,
            handler: Arc::clone(&handler),
            settings: connection_settings.clone(),
            slots: Arc::clone(&slots),
            handshake,
        };
        tasks.spawn(listener.run(shutdown.clone(), tasks.clone()));
    }
    let pcscf = match &handler.role {
        Active::Registrar(registrar) => {
            tasks.spawn(crate::regevent::expiry::run(Arc::clone(registrar.events())));
            tasks.spawn(cleanup(
                store.clone(),
                settings.cleanup_interval,
                settings.cleanup_grace,
                shutdown.clone(),
            ));
            None
        }
        Active::Pcscf(p) => {
            tasks.spawn(crate::pcscf::audit::run(Arc::clone(p)));
            tasks.spawn(crate::pcscf::subscribe::run(Arc::clone(p)));
            Some(Arc::clone(p))
        }
    };
    let http = match settings.http_listen {
        Some(addr) => Some(
            crate::http::start(
                addr,
                crate::http::api::Api {
                    store: store.clone(),
                    case_sensitive: settings.case_sensitive,
                    token: settings.http_token.clone(),
                    events: match &handler.role {
                        Active::Registrar(r) => Some(Arc::clone(r.events())),
                        Active::Pcscf(_) => None,
                    },
                },
                settings.role == Role::Pcscf,
                shutdown.clone(),
                &tasks,
            )
            .await
            .map_err(|source| ServerError::Bind {
                what: format!("http {addr}"),
                source,
            })?,
        ),
        None => None,
    };
    tracing::info!(?udp, ?tcp, ?tls, ?ws, ?wss, ?http, role = ?settings.role, "listening");
    Ok(Running {
        udp,
        tcp,
        tls,
        ws,
        wss,
        stats,
        pcscf,
        slots,
        http,
        shutdown,
        tasks,
        store,
    })
}

/// The role `settings` asks for, behind the common request checks. `listening` are the bound
/// listeners: the first (UDP first) is the address the P-CSCF names itself by when
/// `--pcscf-uri` is not given; the registrar's NOTIFYs carry them in Via and Contact. A
/// registrar's reg-event worker is spawned here and stops with `shutdown`.
pub async fn roles(
    settings: &Settings,
    store: Store,
    stats: Arc<Stats>,
    outbound: Arc<dyn Outbound>,
    listening: &[(Transport, SocketAddr)],
    shutdown: CancellationToken,
) -> Result<Roles, ServerError> {
    let first_listen = (listening.iter())
        .find(|(t, _)| *t == Transport::Udp)
        .or(listening.iter().find(|(t, _)| *t == Transport::Tcp))
        .map(|(_, a)| *a);
    let role = match settings.role {
        Role::Registrar => {
            if let Some(domains) = settings.auth.off_description() {
                tracing::warn!(
                    domains,
                    "authentication is off: anyone who can reach the listeners can register, \
                     change or remove the bindings of these domains"
                );
            }
            if settings.auth.secret.is_none() {
                tracing::info!(
                    "nonces sealed with a secret of this process: other instances will not \
                     accept them (--auth-secret-file shares one)"
                );
            }
            let (events, worker) = RegEvents::new(
                store.clone(),
                outbound,
                RegEventConfig {
                    t1: settings.pcscf.t1,
                    expiry_notify_delay: settings.expiry_notify_delay,
                    listen: listening.to_vec(),
                },
                shutdown,
            );
            tokio::spawn(worker);
            Active::Registrar(Box::new(Registrar::new(
                store,
                RegistrarConfig {
                    policies: settings.policies.clone(),
                    case_sensitive: settings.case_sensitive,
                    domains: settings.domains.clone(),
                    retry_after: settings.retry_after,
                    max_in_flight: MAX_IN_FLIGHT,
                    max_contacts_per_register: settings.max_contacts_per_register,
                    request_deadline: settings.request_deadline,
                    auth: settings.auth.clone(),
                    flow_timer: (settings.tcp.idle_timeout.as_secs() / 2).clamp(1, u32::MAX.into())
                        as u32,
                    trusted_publishers: settings.trusted_publishers.clone(),
                },
                events,
            )))
        }
        Role::Pcscf => {
            let config = pcscf_config(settings, first_listen).await?;
            tracing::info!(scscf = %config.scscf.addr, identity = %config.identity.uri, "P-CSCF");
            Active::Pcscf(Pcscf::new(store, outbound, config, shutdown))
        }
    };
    Ok(Roles { role, stats })
}

/// SPEC P2/P7: resolves the S-CSCF and PUBLISH targets and our own URI.
async fn pcscf_config(
    settings: &Settings,
    first_listen: Option<SocketAddr>,
) -> Result<PcscfConfig, ServerError> {
    let p: &PcscfSettings = &settings.pcscf;
    let scscf_uri = p
        .scscf
        .clone()
        .ok_or_else(|| ServerError::Config("--role pcscf needs --scscf".into()))?;
    let scscf = destination(&scscf_uri, "--scscf").await?;
    let publish_to = match &p.publish_to {
        Some(uri) => destination(uri, "--publish-to").await?,
        None => scscf,
    };
    let pcscf_uri = match (&p.pcscf_uri, first_listen) {
        (Some(uri), _) => uri.clone(),
        (None, Some(addr)) if !addr.ip().is_unspecified() => match addr {
            SocketAddr::V4(a) => format!("sip:{a}"),
            SocketAddr::V6(a) => format!("sip:[{}]:{}", a.ip(), a.port()),
        },
        _ => {
            return Err(ServerError::Config(
                "--pcscf-uri is needed when the first --listen address is 0.0.0.0 or ::".into(),
            ));
        }
    };
    let identity = Identity::from_uri(&pcscf_uri).map_err(ServerError::Config)?;
    Ok(PcscfConfig {
        scscf,
        publish_to,
        identity,
        notify_window: p.notify_window,
        audit_interval: p.audit_interval,
        audit_grace: p.audit_grace,
        pending_expires: p.pending_expires,
        t1: p.t1,
        publish_backoff: p.publish_backoff,
        publish_max_attempts: p.publish_max_attempts,
        reginfo_expires: p.reginfo_expires,
        default_expires: settings.policies.base.default_expires,
        max_expires: settings.policies.base.max_expires,
        retry_after: settings.retry_after,
        notify_from: p.notify_from.clone(),
    })
}

async fn destination(uri_text: &str, flag: &str) -> Result<Destination, ServerError> {
    let uri = Uri::parse(uri_text)
        .ok()
        .filter(|u| u.scheme.is_sip())
        .ok_or_else(|| ServerError::Config(format!("{flag} '{uri_text}' is not a SIP URI")))?;
    let host = uri
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port.unwrap_or(5060);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            ServerError::Config(format!("{flag} '{uri_text}': cannot resolve {host}"))
        })?;
    Ok(Destination {
        transport: transport_of(&uri),
        addr,
    })
}

/// `serve`: start, wait for SIGINT or SIGTERM, stop.
pub async fn run(settings: Settings, store: Store) -> Result<(), ServerError> {
    let running = start(&settings, store).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(ServerError::Signal),
        _ = term.recv() => Ok(()),
    }
}

/// SPEC S4: delete bindings expired longer than `grace`, every `interval`, in batches. Safe in
/// every instance at once.
async fn cleanup(store: Store, interval: Duration, grace: Duration, shutdown: CancellationToken) {
    let interval = interval.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match store.remove_expired_bindings(grace, CLEANUP_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired bindings removed"),
            Err(e) => tracing::warn!(error = %e, "expired-binding cleanup failed"),
        }
    }
}

fn describe(listen: &ListenAddr) -> String {
    format!("{}:{}", listen.transport, listen.addr)
}

/// The role behind the listeners, with the checks every request passes first (SPEC R12).
pub struct Roles {
    role: Active,
    stats: Arc<Stats>,
}

enum Active {
    Registrar(Box<Registrar>),
    Pcscf(Arc<Pcscf>),
}

impl Roles {
    /// SPEC R11: a request without a Via cannot be answered (dropped and counted); any other
    /// malformed request is answered with the status naming what was wrong.
    fn invalid(&self, invalid: Invalid) -> Option<Response> {
        match invalid.rejection {
            Rejection::Drop(why) => {
                self.stats.drop_input("unparseable");
                tracing::debug!(why, "request dropped");
                None
            }
            Rejection::Answer { code, reason } => {
                tracing::debug!(code, %reason, "malformed request");
                Some(Response::to(&invalid.message, code, reason))
            }
        }
    }
}

impl Handler for Roles {
    async fn handle(&self, message: Message, origin: Origin) -> Option<Response> {
        if !message.is_request() {
            // Responses to our own requests: the P-CSCF's relays and PUBLISHes, the
            // registrar's NOTIFYs.
            let taken = match &self.role {
                Active::Pcscf(pcscf) => pcscf.on_response(message),
                Active::Registrar(registrar) => registrar.events().on_response(message),
            };
            if !taken {
                tracing::debug!("response for no pending transaction dropped");
            }
            return None;
        }
        let request = match Request::from_message(message) {
            Ok(r) => r,
            Err(invalid) => return self.invalid(*invalid),
        };
        match &self.role {
            Active::Registrar(registrar) => registrar.handle(&request, &origin).await,
            Active::Pcscf(pcscf) => pcscf.handle(&request, &origin).await,
        }
    }
}
