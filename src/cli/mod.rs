//! The command line (SPEC C): one file per command group. This is the edge where every error
//! becomes one readable line.

mod contacts;
mod migrate;
mod output;
mod pcontacts;
mod serve;
mod users;

use crate::config::{ConfigError, Overrides, Settings};
use crate::sip::aor::AorError;
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
    #[command(subcommand)]
    pub command: Command,
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
    #[error("invalid AoR '{input}': {source}")]
    Aor { input: String, source: AorError },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let flags = match &cli.command {
        Command::Serve(flags) => (**flags).clone(),
        _ => Overrides::default(),
    };
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
    };
    Store::connect(&settings.database_url, &options)
        .await
        .map_err(|source| CliError::Connect {
            url: crate::store::redact(&settings.database_url),
            source,
        })
}

fn parse_aor(input: &str, settings: &Settings) -> Result<crate::store::Aor, CliError> {
    crate::sip::aor::parse_aor(input, settings.case_sensitive).map_err(|source| CliError::Aor {
        input: input.to_string(),
        source,
    })
}
