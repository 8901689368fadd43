//! Configuration: a TOML file and command-line flags (`--database-url` falling back to the
//! `DATABASE_URL` environment variable), merged once into one validated `Settings` (SPEC C1).
//! Flags override the file, which overrides the defaults. File keys are the flag names in
//! snake_case.

use crate::auth::{AuthMode, AuthSettings, Secret};
use crate::registrar::{DomainOverride, Policies, Policy};
use crate::sip::Transport;
use crate::store::DEFAULT_DATABASE_URL;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid --listen '{0}': expected udp:, tcp:, tls:, ws: or wss: then IP:PORT")]
    Listen(String),
    #[error("{0}")]
    Invalid(String),
}

/// Which role `serve` plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Registrar,
    Pcscf,
}

/// One `--listen` socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let (transport, addr) =
            Transport::parse_socket(s).ok_or_else(|| ConfigError::Listen(s.to_string()))?;
        Ok(ListenAddr { transport, addr })
    }
}

/// Settings that may come from flags; each is also a config-file key (snake_case).
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Listen socket, repeatable: udp:, tcp:, tls:, ws: or wss: then IP:PORT [default: udp and tcp on 0.0.0.0:5060]
    #[arg(long = "listen", value_name = "PROTO:IP:PORT")]
    #[serde(default)]
    pub listen: Vec<String>,
    /// Role to play
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// P-CSCF: the S-CSCF (or I-CSCF) REGISTERs are relayed to, e.g. sip:scscf.example.com:6060
    #[arg(long, value_name = "URI")]
    pub scscf: Option<String>,
    /// P-CSCF: the URI put in Path and P-Asserted-Identity [default: sip:<first listen address>]
    #[arg(long, value_name = "URI")]
    pub pcscf_uri: Option<String>,
    /// P-CSCF: where expiry PUBLISHes go [default: the --scscf URI]
    #[arg(long, value_name = "URI")]
    pub publish_to: Option<String>,
    /// Served domain, repeatable; unset = every domain
    #[arg(long = "domain", value_name = "DOMAIN")]
    #[serde(default)]
    pub domains: Vec<String>,
    /// Shortest non-zero expires accepted, 0..=31536000; shorter is answered 423 [default: 60]
    /// (a global flag: see `cli::PolicyFlags`)
    #[arg(skip)]
    pub min_expires: Option<u32>,
    /// Longest expires granted, 0..=31536000; longer is clamped; 0 = no maximum [default: 3600]
    /// (a global flag: see `cli::PolicyFlags`)
    #[arg(skip)]
    pub max_expires: Option<u32>,
    /// Expires when the REGISTER gives none, 1..=31536000 [default: 3600]
    /// (a global flag: see `cli::PolicyFlags`)
    #[arg(skip)]
    pub default_expires: Option<u32>,
    /// Most live bindings per AoR, 0..=10000; 0 = unlimited [default: 10]
    /// (a global flag: see `cli::PolicyFlags`)
    #[arg(skip)]
    pub max_contacts: Option<u32>,
    /// Most contacts in one REGISTER, 1..=1000; more is answered 400 [default: 10]
    #[arg(long, value_name = "N")]
    pub max_contacts_per_register: Option<u32>,
    /// One binding per AoR: a new registration replaces the others (Kamailio save() flag 0x04)
    /// (a global flag: see `cli::PolicyFlags`)
    #[arg(skip)]
    pub single_contact: Option<bool>,
    /// Keep the AoR user part's case (Kamailio case_sensitive=1)
    /// (a global flag: see `cli::PolicyFlags`)
    #[arg(skip)]
    pub case_sensitive: Option<bool>,
    /// This instance's id, stored in server_id, 0..=2147483647 [default: 0]
    #[arg(long, value_name = "N")]
    pub server_id: Option<i32>,
    /// Do not apply migrations at start
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub no_migrate: Option<bool>,
    /// Seconds between expired-binding cleanups, 0.1..=86400 [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub cleanup_interval: Option<f64>,
    /// Seconds a binding stays in the table after expiring, 0..=2592000 [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub cleanup_grace: Option<f64>,
    /// Largest SIP message accepted, in bytes, 1024..=65535 [default: 65535]
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Seconds before an idle TCP connection is closed, 0.1..=86400 [default: 120]
    #[arg(long, value_name = "SECONDS")]
    pub tcp_idle_timeout: Option<f64>,
    /// Retry-After seconds on 500/503 when the database is unavailable or overloaded, 0..=3600 [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub retry_after: Option<u32>,
    /// Bytes of responses kept to answer UDP retransmissions, 0..=1073741824 [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub retrans_cache_bytes: Option<usize>,
    /// Receive buffer asked of the kernel for each UDP socket, 65536..=268435456; the kernel
    /// grants at most net.core.rmem_max [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub udp_recv_buffer: Option<usize>,
    /// Database connections in the pool, 1..=1000 [default: 16]
    #[arg(long, value_name = "N")]
    pub db_pool_size: Option<u32>,
    /// Seconds to wait for an unreachable database at start, 0..=3600 [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub db_connect_timeout: Option<f64>,
    /// P-CSCF: seconds after expiry during which a REGISTER is refused without PUBLISH, 0..=3600 [default: 20]
    #[arg(long, value_name = "SECONDS")]
    pub notify_window: Option<f64>,
    /// P-CSCF: seconds between scans for stale pcontacts, 0.1..=86400 [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub audit_interval: Option<f64>,
    /// P-CSCF: extra seconds past the notify window before the scan PUBLISHes, 0..=86400 [default: 40]
    #[arg(long, value_name = "SECONDS")]
    pub audit_grace: Option<f64>,
    /// P-CSCF: seconds a new pcontact stays REG_PENDING, 0.1..=3600 [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub pending_expires: Option<f64>,
    /// Registrar: seconds after a binding's expiry within which its `expired` NOTIFY goes out, 0.5..=60 [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub expiry_notify_delay: Option<f64>,
    /// RFC 3261 T1 in milliseconds (P-CSCF relay and PUBLISH, registrar NOTIFY), 1..=10000 [default: 500]
    #[arg(long = "t1-ms", value_name = "MS")]
    pub t1_ms: Option<u64>,
    /// P-CSCF: Expires of its reg-event SUBSCRIBE after each registration, 60..=86400 [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub reginfo_expires: Option<u32>,
    /// P-CSCF: first pause in seconds before a failed PUBLISH is retried, doubling, 0.01..=3600 [default: 1]
    #[arg(long, value_name = "SECONDS")]
    pub publish_backoff: Option<f64>,
    /// P-CSCF: PUBLISH attempts per identity before giving up, 1..=100 [default: 5]
    #[arg(long, value_name = "N")]
    pub publish_max_attempts: Option<u32>,
    /// HTTP listener for /metrics, /healthz, /readyz: IP:PORT, or `off` [default: 127.0.0.1:9060]
    #[arg(long, value_name = "IP:PORT|off")]
    pub http_listen: Option<String>,
    /// File holding the bearer token the /v1 admin API requires; needed when --http-listen is not loopback
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<std::path::PathBuf>,
    /// PEM certificate chain of `tls:` and `wss:` listeners (SPEC W1, W2)
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls:` and `wss:` listeners
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Seconds within which every request is answered, 0.1..=60 [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub request_deadline: Option<f64>,
    /// TCP: requests of one connection handled at once, 1..=1024; beyond, it is not read [default: 32]
    #[arg(long, value_name = "N")]
    pub tcp_max_inflight: Option<u32>,
    /// TCP: seconds a write may take before the connection is closed, 0.1..=600 [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub tcp_write_timeout: Option<f64>,
    /// TCP: seconds from a message's first byte to its last, 0.1..=600 [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub tcp_message_timeout: Option<f64>,
    /// TCP: connections from one IP address, 1..=65535 [default: 64]
    #[arg(long, value_name = "N")]
    pub tcp_max_per_ip: Option<u32>,
    /// TCP: connections in all, 1..=1000000 [default: 4096]
    #[arg(long, value_name = "N")]
    pub tcp_max_connections: Option<u32>,
    /// SQLite: `full` (a 200 OK survives a power cut) or `normal` (faster, may lose the last commits) [default: full]
    #[arg(long, value_enum)]
    pub sqlite_synchronous: Option<crate::store::Synchronous>,
    /// Registrar: a network whose reg-event PUBLISHes are accepted without a Path match, e.g. 10.0.0.0/8 (repeatable)
    #[arg(long = "trusted-publisher", value_name = "CIDR")]
    #[serde(default)]
    pub trusted_publisher: Vec<String>,
    /// P-CSCF: a network NOTIFYs are accepted from besides the S-CSCF, e.g. 10.0.0.0/8 (repeatable)
    #[arg(long = "notify-from", value_name = "CIDR")]
    #[serde(default)]
    pub notify_from: Vec<String>,
    /// Registrar: digest authentication of REGISTER against `subscriber` [default: digest]
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Digest algorithms offered, in order: md5, sha-256 or both, e.g. sha-256,md5 [default: md5]
    #[arg(long, value_name = "LIST")]
    pub auth_algorithms: Option<String>,
    /// File whose bytes (at least 32) seal nonces; share it so instances accept each other's [default: a random per-process secret]
    #[arg(long, value_name = "FILE")]
    pub auth_secret_file: Option<std::path::PathBuf>,
    /// Seconds a nonce stays valid, 1..=86400 [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub nonce_expires: Option<f64>,
    /// Failed authentications per source IP within 60 s before it is banned, 1..=1000000 [default: 10]
    #[arg(long, value_name = "N")]
    pub auth_fail_limit: Option<u32>,
    /// Seconds a source IP stays banned after too many failures, 0..=604800 [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub auth_ban: Option<f64>,
}

/// One `[domain."…"]` table of the config file: the registrar's policy overrides (R8) and
/// whether the domain authenticates (A1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainSection {
    max_contacts: Option<u32>,
    single_contact: Option<bool>,
    auth: Option<AuthMode>,
}

/// The config file: every `Overrides` key, the database URL, and per-domain rules.
#[derive(Debug, Default)]
struct FileConfig {
    database_url: Option<String>,
    domain: HashMap<String, DomainSection>,
    overrides: Overrides,
}

/// Everything `serve` and the CLI need, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: String,
    pub db_pool_size: u32,
    pub db_connect_timeout: Duration,
    pub migrate: bool,
    pub listen: Vec<ListenAddr>,
    pub role: Role,
    pub policies: Policies,
    pub case_sensitive: bool,
    /// Served domains, lowercased; empty = all (R16).
    pub domains: Vec<String>,
    pub cleanup_interval: Duration,
    pub cleanup_grace: Duration,
    pub max_message_size: usize,
    /// Contacts one REGISTER may carry (H3).
    pub max_contacts_per_register: usize,
    /// Every request is answered within this (H6).
    pub request_deadline: Duration,
    /// The operations listener (O1); `None` when off.
    pub http_listen: Option<SocketAddr>,
    /// The admin API's bearer token (O3).
    pub http_token: Option<String>,
    pub tcp: TcpLimits,
    /// Certificate and key files of the `tls:` listeners (W1); set when there is one.
    pub tls: Option<TlsFiles>,
    pub sqlite_synchronous: crate::store::Synchronous,
    pub retry_after: u32,
    pub retrans_cache_bytes: usize,
    /// SO_RCVBUF asked for the UDP sockets: a burst (a NOTIFY fan-out's answers, a reboot's
    /// REGISTERs) waits in the kernel instead of being dropped and retransmitted 500 ms later.
    pub udp_recv_buffer: usize,
    /// SPEC E2: an expired binding's NOTIFY goes out within this of its expiry.
    pub expiry_notify_delay: Duration,
    /// SPEC E3: networks whose PUBLISHes need no Path match.
    pub trusted_publishers: Vec<Cidr>,
    pub pcscf: PcscfSettings,
    pub auth: AuthSettings,
}

/// The PEM files a `tls:` listener serves with (SPEC W1), read when the server starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// What one stream connection, and all of them together, may hold (SPEC H4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TcpLimits {
    pub idle_timeout: Duration,
    pub max_inflight: usize,
    pub write_timeout: Duration,
    pub message_timeout: Duration,
    pub max_per_ip: usize,
    pub max_connections: usize,
}

/// The P-CSCF role's settings (SPEC P7).
#[derive(Clone, Debug)]
pub struct PcscfSettings {
    pub scscf: Option<String>,
    pub pcscf_uri: Option<String>,
    pub publish_to: Option<String>,
    pub notify_window: Duration,
    pub audit_interval: Duration,
    pub audit_grace: Duration,
    pub pending_expires: Duration,
    pub t1: Duration,
    pub publish_backoff: Duration,
    pub publish_max_attempts: u32,
    /// SPEC E4: the lifetime asked for by the P-CSCF's reg-event SUBSCRIBE.
    pub reginfo_expires: u32,
    /// H5: networks besides the S-CSCF's addresses a NOTIFY may come from.
    pub notify_from: Vec<Cidr>,
}

/// An IP network, `ADDR/PREFIX` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("invalid --notify-from '{s}': expected ADDR/PREFIX, e.g. 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: std::net::IpAddr| -> u128 {
            match a {
                std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                std::net::IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        bits(ip) & mask == bits(self.addr) & mask
    }
}

impl Settings {
    /// Merges defaults, the optional config file and the flags (`database_url` is the
    /// `--database-url` flag or, absent that, `DATABASE_URL`).
    pub fn load(
        config_file: Option<&Path>,
        database_url: Option<String>,
        flags: Overrides,
    ) -> Result<Settings, ConfigError> {
        let file = match config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let database_url = database_url
            .filter(|u| !u.is_empty())
            .or(file.database_url)
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let o = merge(file.overrides, flags);
        const YEAR: u32 = 31_536_000;
        let listen = if o.listen.is_empty() {
            vec![
                "udp:0.0.0.0:5060".to_string(),
                "tcp:0.0.0.0:5060".to_string(),
            ]
        } else {
            o.listen.clone()
        };
        let listen = listen
            .iter()
            .map(|l| l.parse())
            .collect::<Result<Vec<ListenAddr>, _>>()?;
        let base = Policy {
            min_expires: ranged(o.min_expires, 60, "min-expires", 0, YEAR)?,
            max_expires: ranged(o.max_expires, 3600, "max-expires", 0, YEAR)?,
            default_expires: ranged(o.default_expires, 3600, "default-expires", 1, YEAR)?,
            max_contacts: ranged(o.max_contacts, 10, "max-contacts", 0, 10_000)?,
            single_contact: o.single_contact.unwrap_or(false),
            server_id: ranged(o.server_id, 0, "server-id", 0, i32::MAX)?,
            ..Policy::default()
        };
        if base.max_expires > 0 && base.min_expires > base.max_expires {
            return Err(ConfigError::Invalid(
                "--min-expires must not exceed --max-expires".into(),
            ));
        }
        let mut domains_overrides = HashMap::new();
        let mut auth_domains = HashMap::new();
        for (domain, section) in file.domain {
            let domain = domain.to_ascii_lowercase();
            if let Some(mode) = section.auth {
                auth_domains.insert(domain.clone(), mode);
            }
            let max_contacts = match section.max_contacts {
                Some(m) => Some(ranged(Some(m), 0, "max-contacts", 0, 10_000)?),
                None => None,
            };
            domains_overrides.insert(
                domain,
                DomainOverride {
                    max_contacts,
                    single_contact: section.single_contact,
                },
            );
        }
        let auth = AuthSettings {
            mode: o.auth.unwrap_or_default(),
            domains: auth_domains,
            algorithms: match &o.auth_algorithms {
                Some(list) => AuthSettings::parse_algorithms(list)
                    .map_err(|e| ConfigError::Invalid(format!("--auth-algorithms: {e}")))?,
                None => AuthSettings::default().algorithms,
            },
            secret: o.auth_secret_file.as_deref().map(read_secret).transpose()?,
            nonce_expires: seconds(o.nonce_expires, 300.0, "nonce-expires", 1.0, 86_400.0)?,
            fail_limit: ranged(o.auth_fail_limit, 10, "auth-fail-limit", 1, 1_000_000)?,
            ban: seconds(o.auth_ban, 300.0, "auth-ban", 0.0, 604_800.0)?,
        };
        let role = o.role.unwrap_or(Role::Registrar);
        let notify_from = o
            .notify_from
            .iter()
            .map(|c| c.parse::<Cidr>().map_err(ConfigError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let pcscf = PcscfSettings {
            scscf: o.scscf.clone(),
            pcscf_uri: o.pcscf_uri.clone(),
            publish_to: o.publish_to.clone(),
            notify_window: seconds(o.notify_window, 20.0, "notify-window", 0.0, 3600.0)?,
            audit_interval: seconds(o.audit_interval, 60.0, "audit-interval", 0.1, 86_400.0)?,
            audit_grace: seconds(o.audit_grace, 40.0, "audit-grace", 0.0, 86_400.0)?,
            pending_expires: seconds(o.pending_expires, 30.0, "pending-expires", 0.1, 3600.0)?,
            t1: Duration::from_millis(ranged(o.t1_ms, 500, "t1-ms", 1, 10_000)?),
            publish_backoff: seconds(o.publish_backoff, 1.0, "publish-backoff", 0.01, 3600.0)?,
            publish_max_attempts: ranged(
                o.publish_max_attempts,
                5,
                "publish-max-attempts",
                1,
                100,
            )?,
            reginfo_expires: ranged(o.reginfo_expires, 3600, "reginfo-expires", 60, 86_400)?,
            notify_from,
        };
        if role == Role::Pcscf && pcscf.scscf.is_none() {
            return Err(ConfigError::Invalid(
                "--role pcscf needs --scscf sip:HOST:PORT".into(),
            ));
        }
        let tcp = TcpLimits {
            idle_timeout: seconds(o.tcp_idle_timeout, 120.0, "tcp-idle-timeout", 0.1, 86_400.0)?,
            max_inflight: ranged(o.tcp_max_inflight, 32, "tcp-max-inflight", 1, 1024)? as usize,
            write_timeout: seconds(o.tcp_write_timeout, 10.0, "tcp-write-timeout", 0.1, 600.0)?,
            message_timeout: seconds(
                o.tcp_message_timeout,
                10.0,
                "tcp-message-timeout",
                0.1,
                600.0,
            )?,
            max_per_ip: ranged(o.tcp_max_per_ip, 64, "tcp-max-per-ip", 1, 65_535)? as usize,
            max_connections: ranged(
                o.tcp_max_connections,
                4096,
                "tcp-max-connections",
                1,
                1_000_000,
            )? as usize,
        };
        let http_listen = match o.http_listen.as_deref().unwrap_or("127.0.0.1:9060") {
            "off" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::Invalid(format!(
                    "invalid --http-listen '{text}': expected IP:PORT or off"
                ))
            })?),
        };
        let tls = match (&o.tls_cert, &o.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        if let Some(l) = listen
            .iter()
            .find(|l| matches!(l.transport, Transport::Tls | Transport::Wss))
            && tls.is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "a {}: listener needs --tls-cert and --tls-key",
                l.transport
            )));
        }
        let http_token = o.http_token_file.as_deref().map(read_token).transpose()?;
        if let Some(addr) = http_listen
            && !addr.ip().is_loopback()
            && http_token.is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "--http-listen {addr} is not loopback: give --http-token-file to protect the admin API"
            )));
        }
        Ok(Settings {
            database_url,
            db_pool_size: ranged(o.db_pool_size, 16, "db-pool-size", 1, 1000)?,
            db_connect_timeout: seconds(
                o.db_connect_timeout,
                30.0,
                "db-connect-timeout",
                0.0,
                3600.0,
            )?,
            migrate: !o.no_migrate.unwrap_or(false),
            listen,
            role,
            policies: Policies {
                base,
                domains: domains_overrides,
            },
            case_sensitive: o.case_sensitive.unwrap_or(false),
            domains: o.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            cleanup_interval: seconds(o.cleanup_interval, 30.0, "cleanup-interval", 0.1, 86_400.0)?,
            cleanup_grace: seconds(o.cleanup_grace, 60.0, "cleanup-grace", 0.0, 2_592_000.0)?,
            max_message_size: ranged(o.max_message_size, 65_535, "max-message-size", 1024, 65_535)?,
            max_contacts_per_register: ranged(
                o.max_contacts_per_register,
                10,
                "max-contacts-per-register",
                1,
                1000,
            )? as usize,
            request_deadline: seconds(o.request_deadline, 5.0, "request-deadline", 0.1, 60.0)?,
            http_listen,
            http_token,
            tls,
            tcp,
            sqlite_synchronous: o.sqlite_synchronous.unwrap_or_default(),
            retry_after: ranged(o.retry_after, 5, "retry-after", 0, 3600)?,
            retrans_cache_bytes: ranged(
                o.retrans_cache_bytes,
                16 * 1024 * 1024,
                "retrans-cache-bytes",
                0,
                1 << 30,
            )?,
            udp_recv_buffer: ranged(
                o.udp_recv_buffer,
                4 * 1024 * 1024,
                "udp-recv-buffer",
                65_536,
                1 << 28,
            )?,
            expiry_notify_delay: seconds(
                o.expiry_notify_delay,
                5.0,
                "expiry-notify-delay",
                0.5,
                60.0,
            )?,
            trusted_publishers: o
                .trusted_publisher
                .iter()
                .map(|c| c.parse::<Cidr>().map_err(ConfigError::Invalid))
                .collect::<Result<Vec<_>, _>>()?,
            pcscf,
            auth,
        })
    }
}

/// SPEC H7: a number within its documented range, or the one-line error naming both.
fn ranged<T: PartialOrd + std::fmt::Display + Copy>(
    value: Option<T>,
    default: T,
    name: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::Invalid(format!(
            "--{name} must be between {min} and {max} (got {v})"
        )));
    }
    Ok(v)
}

/// SPEC H7: seconds within their documented range (NaN and infinities are out of every range).
fn seconds(
    value: Option<f64>,
    default: f64,
    name: &str,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(ConfigError::Invalid(format!(
            "--{name} must be between {min} and {max} seconds (got {v})"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// SPEC O3: the admin API's token, the file's content without its trailing newline.
fn read_token(path: &Path) -> Result<String, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("--http-token-file {shown}: {e}")))?;
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    if token.len() < 16 || token.contains(|c: char| c.is_control() || c == ' ') {
        return Err(ConfigError::Invalid(format!(
            "--http-token-file {shown}: the token must be at least 16 characters, without spaces"
        )));
    }
    Ok(token)
}

/// SPEC A3: the nonce secret shared by instances.
fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::Invalid(format!("--auth-secret-file {shown}: {e}")))?;
    Secret::from_file_bytes(bytes)
        .map_err(|e| ConfigError::Invalid(format!("--auth-secret-file {shown}: {e}")))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let parse_error = |message: String| ConfigError::Parse {
        path: shown.clone(),
        message,
    };
    // serde cannot combine `flatten` with `deny_unknown_fields`: take the two keys that are not
    // flags out first, then read the rest strictly, so a misspelt key is an error.
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| parse_error(e.message().to_string()))?;
    let database_url = match table.remove("database_url") {
        None => None,
        Some(toml::Value::String(url)) => Some(url),
        Some(_) => return Err(parse_error("database_url must be a string".into())),
    };
    let domain = match table.remove("domain") {
        None => HashMap::new(),
        Some(v) => v
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(format!("[domain]: {}", e.message())))?,
    };
    let overrides = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| parse_error(e.message().to_string()))?;
    Ok(FileConfig {
        database_url,
        domain,
        overrides,
    })
}

/// Flags win over the file, field by field; repeatable flags replace the file's list.
fn merge(file: Overrides, flags: Overrides) -> Overrides {
    macro_rules! pick {
        ($($field:ident),*) => {
            Overrides {
                listen: if flags.listen.is_empty() { file.listen } else { flags.listen },
                domains: if flags.domains.is_empty() { file.domains } else { flags.domains },
                notify_from: if flags.notify_from.is_empty() { file.notify_from } else { flags.notify_from },
                trusted_publisher: if flags.trusted_publisher.is_empty() { file.trusted_publisher } else { flags.trusted_publisher },
                $($field: flags.$field.or(file.$field),)*
            }
        };
    }
    pick!(
        role,
        scscf,
        pcscf_uri,
        publish_to,
        min_expires,
        max_expires,
        default_expires,
        max_contacts,
        max_contacts_per_register,
        single_contact,
        case_sensitive,
        server_id,
        no_migrate,
        cleanup_interval,
        cleanup_grace,
        max_message_size,
        tcp_idle_timeout,
        request_deadline,
        http_listen,
        http_token_file,
        tls_cert,
        tls_key,
        tcp_max_inflight,
        tcp_write_timeout,
        tcp_message_timeout,
        tcp_max_per_ip,
        tcp_max_connections,
        sqlite_synchronous,
        retry_after,
        retrans_cache_bytes,
        udp_recv_buffer,
        db_pool_size,
        db_connect_timeout,
        notify_window,
        audit_interval,
        audit_grace,
        pending_expires,
        expiry_notify_delay,
        t1_ms,
        publish_backoff,
        publish_max_attempts,
        reginfo_expires,
        auth,
        auth_algorithms,
        auth_secret_file,
        nonce_expires,
        auth_fail_limit,
        auth_ban
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn c1_defaults_listen_on_udp_and_tcp_5060() {
        let s = Settings::load(None, Some("sqlite://x.db".into()), Overrides::default()).unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.listen[0].transport, Transport::Udp);
        assert_eq!(s.listen[1].addr, "0.0.0.0:5060".parse().unwrap());
        assert_eq!(s.policies.base.min_expires, 60);
        assert_eq!(s.retry_after, 5);
        assert_eq!(s.pcscf.notify_window, Duration::from_secs(20));
    }

    #[test]
    fn c1_flags_override_the_file_and_r8_domain_rules_apply() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "database_url = \"sqlite://file.db\"\nmax_contacts = 3\nmin_expires = 30\n\
             [domain.\"Example.com\"]\nsingle_contact = true\nmax_contacts = 1"
        )
        .unwrap();
        let flags = Overrides {
            min_expires: Some(90),
            ..Overrides::default()
        };
        let s = Settings::load(Some(f.path()), Some("sqlite://flag.db".into()), flags).unwrap();
        assert_eq!(s.database_url, "sqlite://flag.db");
        assert_eq!(s.policies.base.min_expires, 90);
        assert_eq!(s.policies.base.max_contacts, 3);
        let d = s.policies.for_domain("example.com");
        assert!(d.single_contact);
        assert_eq!(d.max_contacts, 1);
        assert!(!s.policies.for_domain("other.org").single_contact);
    }

    #[test]
    fn c6_bad_config_is_a_readable_error() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "max_contactz = 3").unwrap();
        let err = Settings::load(Some(f.path()), None, Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_contactz"), "{err}");
        let err = Settings::load(
            Some(Path::new("/nonexistent/x.toml")),
            None,
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read config file"),
            "{err}"
        );
        let flags = Overrides {
            listen: vec!["sctp:1.2.3.4:5060".into()],
            ..Overrides::default()
        };
        assert!(Settings::load(None, None, flags).is_err());
    }

    #[test]
    fn listen_accepts_ipv6() {
        let l: ListenAddr = "tcp:[::1]:5070".parse().unwrap();
        assert_eq!(l.transport, Transport::Tcp);
        assert_eq!(l.addr.port(), 5070);
    }
}
