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
    #[error("invalid --listen '{0}': expected udp:IP:PORT or tcp:IP:PORT")]
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
        let bad = || ConfigError::Listen(s.to_string());
        let (proto, addr) = s.split_once(':').ok_or_else(bad)?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            _ => return Err(bad()),
        };
        let addr = addr.parse().map_err(|_| bad())?;
        Ok(ListenAddr { transport, addr })
    }
}

/// Settings that may come from flags; each is also a config-file key (snake_case).
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Listen socket, repeatable: udp:IP:PORT or tcp:IP:PORT [default: udp and tcp on 0.0.0.0:5060]
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
    /// Shortest non-zero expires accepted; shorter is answered 423 [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub min_expires: Option<u32>,
    /// Longest expires granted; longer is clamped; 0 = no maximum [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub max_expires: Option<u32>,
    /// Expires when the REGISTER gives none [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub default_expires: Option<u32>,
    /// Most live bindings per AoR; 0 = unlimited [default: 0]
    #[arg(long, value_name = "N")]
    pub max_contacts: Option<u32>,
    /// One binding per AoR: a new registration replaces the others (Kamailio save() flag 0x04)
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub single_contact: Option<bool>,
    /// Keep the AoR user part's case (Kamailio case_sensitive=1)
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub case_sensitive: Option<bool>,
    /// This instance's id, stored in server_id [default: 0]
    #[arg(long, value_name = "N")]
    pub server_id: Option<i32>,
    /// Do not apply migrations at start
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub no_migrate: Option<bool>,
    /// Seconds between expired-binding cleanups [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub cleanup_interval: Option<f64>,
    /// Seconds a binding stays in the table after expiring [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub cleanup_grace: Option<f64>,
    /// Largest SIP message accepted, in bytes [default: 65535]
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Seconds before an idle TCP connection is closed [default: 120]
    #[arg(long, value_name = "SECONDS")]
    pub tcp_idle_timeout: Option<f64>,
    /// Retry-After seconds on 500/503 when the database is unavailable or overloaded [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub retry_after: Option<u32>,
    /// Bytes of responses kept to answer UDP retransmissions [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub retrans_cache_bytes: Option<usize>,
    /// Database connections in the pool [default: 16]
    #[arg(long, value_name = "N")]
    pub db_pool_size: Option<u32>,
    /// Seconds to wait for an unreachable database at start [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub db_connect_timeout: Option<f64>,
    /// P-CSCF: seconds after expiry during which a REGISTER is refused without PUBLISH [default: 20]
    #[arg(long, value_name = "SECONDS")]
    pub notify_window: Option<f64>,
    /// P-CSCF: seconds between scans for stale pcontacts [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub audit_interval: Option<f64>,
    /// P-CSCF: extra seconds past the notify window before the scan PUBLISHes [default: 40]
    #[arg(long, value_name = "SECONDS")]
    pub audit_grace: Option<f64>,
    /// P-CSCF: seconds a new pcontact stays REG_PENDING [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub pending_expires: Option<f64>,
    /// P-CSCF: RFC 3261 T1 in milliseconds [default: 500]
    #[arg(long = "t1-ms", value_name = "MS")]
    pub t1_ms: Option<u64>,
    /// P-CSCF: first pause before a failed PUBLISH is retried, doubling [default: 1]
    #[arg(long, value_name = "SECONDS")]
    pub publish_backoff: Option<f64>,
    /// P-CSCF: PUBLISH attempts per identity before giving up [default: 5]
    #[arg(long, value_name = "N")]
    pub publish_max_attempts: Option<u32>,
    /// Registrar: digest authentication of REGISTER against `subscriber` [default: digest]
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Digest algorithms offered, in order: md5, sha-256 or both, e.g. sha-256,md5 [default: md5]
    #[arg(long, value_name = "LIST")]
    pub auth_algorithms: Option<String>,
    /// File whose bytes (at least 32) seal nonces; share it so instances accept each other's [default: a random per-process secret]
    #[arg(long, value_name = "FILE")]
    pub auth_secret_file: Option<std::path::PathBuf>,
    /// Seconds a nonce stays valid [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub nonce_expires: Option<f64>,
    /// Failed authentications per source IP within 60 s before it is banned [default: 10]
    #[arg(long, value_name = "N")]
    pub auth_fail_limit: Option<u32>,
    /// Seconds a source IP stays banned after too many failures [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub auth_ban: Option<f64>,
}

/// One `[domain."…"]` table of the config file: the registrar's policy overrides (R8) and
/// whether the domain authenticates (A1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainSection {
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
    pub tcp_idle_timeout: Duration,
    pub retry_after: u32,
    pub retrans_cache_bytes: usize,
    pub pcscf: PcscfSettings,
    pub auth: AuthSettings,
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
        let seconds = |v: Option<f64>, default: f64, name: &str| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            Duration::try_from_secs_f64(v).map_err(|_| {
                ConfigError::Invalid(format!("--{name} must be a non-negative number of seconds"))
            })
        };
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
            min_expires: o.min_expires.unwrap_or(60),
            max_expires: o.max_expires.unwrap_or(3600),
            default_expires: o.default_expires.unwrap_or(3600),
            max_contacts: o.max_contacts.unwrap_or(0),
            single_contact: o.single_contact.unwrap_or(false),
            server_id: o.server_id.unwrap_or(0),
            ..Policy::default()
        };
        if base.default_expires == 0 {
            return Err(ConfigError::Invalid(
                "--default-expires must be above 0".into(),
            ));
        }
        let mut domains_overrides = HashMap::new();
        let mut auth_domains = HashMap::new();
        for (domain, section) in file.domain {
            let domain = domain.to_ascii_lowercase();
            if let Some(mode) = section.auth {
                auth_domains.insert(domain.clone(), mode);
            }
            domains_overrides.insert(
                domain,
                DomainOverride {
                    max_contacts: section.max_contacts,
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
            nonce_expires: seconds(o.nonce_expires, 300.0, "nonce-expires")?,
            fail_limit: o.auth_fail_limit.unwrap_or(10),
            ban: seconds(o.auth_ban, 300.0, "auth-ban")?,
        };
        let role = o.role.unwrap_or(Role::Registrar);
        let pcscf = PcscfSettings {
            scscf: o.scscf.clone(),
            pcscf_uri: o.pcscf_uri.clone(),
            publish_to: o.publish_to.clone(),
            notify_window: seconds(o.notify_window, 20.0, "notify-window")?,
            audit_interval: seconds(o.audit_interval, 60.0, "audit-interval")?,
            audit_grace: seconds(o.audit_grace, 40.0, "audit-grace")?,
            pending_expires: seconds(o.pending_expires, 30.0, "pending-expires")?,
            t1: Duration::from_millis(o.t1_ms.unwrap_or(500).max(1)),
            publish_backoff: seconds(o.publish_backoff, 1.0, "publish-backoff")?,
            publish_max_attempts: o.publish_max_attempts.unwrap_or(5).max(1),
        };
        if role == Role::Pcscf && pcscf.scscf.is_none() {
            return Err(ConfigError::Invalid(
                "--role pcscf needs --scscf sip:HOST:PORT".into(),
            ));
        }
        Ok(Settings {
            database_url,
            db_pool_size: o.db_pool_size.unwrap_or(16).max(1),
            db_connect_timeout: seconds(o.db_connect_timeout, 30.0, "db-connect-timeout")?,
            migrate: !o.no_migrate.unwrap_or(false),
            listen,
            role,
            policies: Policies {
                base,
                domains: domains_overrides,
            },
            case_sensitive: o.case_sensitive.unwrap_or(false),
            domains: o.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            cleanup_interval: seconds(o.cleanup_interval, 30.0, "cleanup-interval")?,
            cleanup_grace: seconds(o.cleanup_grace, 60.0, "cleanup-grace")?,
            max_message_size: o.max_message_size.unwrap_or(65_535).clamp(1024, 65_535),
            tcp_idle_timeout: seconds(o.tcp_idle_timeout, 120.0, "tcp-idle-timeout")?,
            retry_after: o.retry_after.unwrap_or(5),
            retrans_cache_bytes: o.retrans_cache_bytes.unwrap_or(16 * 1024 * 1024),
            pcscf,
            auth,
        })
    }
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
        single_contact,
        case_sensitive,
        server_id,
        no_migrate,
        cleanup_interval,
        cleanup_grace,
        max_message_size,
        tcp_idle_timeout,
        retry_after,
        retrans_cache_bytes,
        db_pool_size,
        db_connect_timeout,
        notify_window,
        audit_interval,
        audit_grace,
        pending_expires,
        t1_ms,
        publish_backoff,
        publish_max_attempts,
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
