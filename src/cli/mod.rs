//! The command line (SPEC C): one file per command group. This is the edge where every error
//! becomes one readable line.

mod contacts;
mod migrate;
mod output;
mod pcontacts;
mod serve;
mod users;

use crate::config::{ConfigError, Overrides, Settings};
use crate::store::{ConnectOptions, Store, StoreError};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Parser)]
#[command(
    name = "registrar",
    version,
    about = "SIP registrar and IMS P-CSCF keeping every binding in PostgreSQL or SQLite"
)]
pub struct Cli {
    /// Database: postgres://USER@HOST/DB or sqlite://FILE?mode=rwc [default: sqlite://registrar.db?mode=rwc]
    #[arg(long, global = true, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// TOML config file (keys are the serve flags in snake_case)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines as text or JSON objects (one per line)
    #[arg(long, global = true, value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    #[command(flatten)]
    pub policy: PolicyFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// The registrar's policy flags, global so that `contacts add` and every AoR a command keys
/// apply the rules `serve` applies (SPEC H8). Also config-file keys.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PolicyFlags {
    /// Shortest non-zero expires accepted, 0..=31536000; shorter is answered 423 [default: 60]
    #[arg(long, global = true, value_name = "SECONDS")]
    pub min_expires: Option<u32>,
    /// Longest expires granted, 0..=31536000; longer is clamped; 0 = no maximum [default: 3600]
    #[arg(long, global = true, value_name = "SECONDS")]
    pub max_expires: Option<u32>,
    /// Expires when the REGISTER gives none, 1..=31536000 [default: 3600]
    #[arg(long, global = true, value_name = "SECONDS")]
    pub default_expires: Option<u32>,
    /// Most live bindings per AoR, 0..=10000; 0 = unlimited [default: 10]
    #[arg(long, global = true, value_name = "N")]
    pub max_contacts: Option<u32>,
    /// One binding per AoR: a new registration replaces the others (Kamailio save() flag 0x04)
    #[arg(long, global = true, num_args = 0, default_missing_value = "true")]
    pub single_contact: Option<bool>,
    /// Keep the AoR user part's case (Kamailio case_sensitive=1)
    #[arg(long, global = true, num_args = 0, default_missing_value = "true")]
    pub case_sensitive: Option<bool>,
}

impl PolicyFlags {
    fn apply(self, flags: &mut Overrides) {
        flags.min_expires = self.min_expires.or(flags.min_expires);
        flags.max_expires = self.max_expires.or(flags.max_expires);
        flags.default_expires = self.default_expires.or(flags.default_expires);
        flags.max_contacts = self.max_contacts.or(flags.max_contacts);
        flags.single_contact = self.single_contact.or(flags.single_contact);
        flags.case_sensitive = self.case_sensitive.or(flags.case_sensitive);
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the SIP server (registrar or P-CSCF role)
    Serve(Box<Overrides>),
    /// Apply the database migrations and report what was applied
    Migrate,
    /// Inspect and change the registrar's bindings (table `location`)
    #[command(subcommand)]
    Contacts(contacts::ContactsCommand),
    /// Inspect the P-CSCF's pcontacts (table `pcscf_location`)
    #[command(subcommand)]
    Pcontacts(pcontacts::PcontactsCommand),
    /// Manage the users that authenticate REGISTERs (table `subscriber`)
    #[command(subcommand)]
    Users(users::UsersCommand),
}

/// Everything a command can fail with, each printed as one line.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot use database {url}: {source}")]
    Connect { url: String, source: StoreError },
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let mut flags = match &cli.command {
        Command::Serve(flags) => (**flags).clone(),
        _ => Overrides::default(),
    };
    cli.policy.clone().apply(&mut flags);
    let settings = Settings::load(cli.config.as_deref(), cli.database_url.clone(), flags)?;
    match cli.command {
        Command::Serve(_) => serve::run(settings).await,
        Command::Migrate => migrate::run(&settings).await,
        Command::Contacts(cmd) => contacts::run(cmd, &settings).await,
        Command::Pcontacts(cmd) => pcontacts::run(cmd, &settings).await,
        Command::Users(cmd) => users::run(cmd, &settings).await,
    }
}

/// Connects for a one-shot command: fail fast (SPEC C6: ≤ 5 s) rather than wait for a server.
async fn connect_briefly(settings: &Settings) -> Result<Store, CliError> {
    let options = ConnectOptions {
        pool_size: 2,
        connect_timeout: Duration::from_secs(3),
        acquire_timeout: Duration::from_secs(3),
        statement_timeout: None,
        sqlite_synchronous: settings.sqlite_synchronous,
    };
    Store::connect(&settings.database_url, &options)
        .await
        .map_err(|source| CliError::Connect {
            url: crate::store::redact(&settings.database_url),
            source,
        })
}

fn parse_aor(input: &str, settings: &Settings) -> Result<crate::store::Aor, CliError> {
    Ok(crate::admin::parse_aor(input, settings.case_sensitive)?)
}
