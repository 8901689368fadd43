//! `registrar users add|passwd|rm|list` (SPEC A7): the `subscriber` table digest authentication
//! reads. Only hashes are stored (the realm is the AoR's domain, as Kamailio's kamctl does it);
//! no password or hash is ever printed.

use super::{CliError, connect_briefly, parse_aor};
use crate::config::Settings;
use crate::sip::aor::aor_uri;
use crate::store::Subscriber;
use clap::{Args, Subcommand};
use std::io::BufRead;

/// Longest password accepted (hashing does not care; a line this long is a mistake).
const MAX_PASSWORD: usize = 1024;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user that can authenticate REGISTERs for the AoR
    Add {
        /// Address of record, e.g. sip:alice@example.com (its domain is the realm)
        aor: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Change a user's password
    Passwd {
        aor: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Delete a user
    Rm { aor: String },
    /// Every user, with which credentials each holds (never the credentials themselves)
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PasswordSource {
    /// The password (visible to other local users in the process list: prefer --password-stdin)
    #[arg(long, value_name = "PASSWORD")]
    password: Option<String>,
    /// Read the password from the first line of standard input
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordSource {
    fn read(self) -> Result<String, CliError> {
        let password = match self.password {
            Some(p) => p,
            None => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?;
                line.trim_end_matches(['\n', '\r']).to_string()
            }
        };
        if password.is_empty() {
            return Err(CliError::Usage("the password is empty".into()));
        }
        if password.len() > MAX_PASSWORD || password.contains(|c: char| c.is_control()) {
            return Err(CliError::Usage(format!(
                "the password must be at most {MAX_PASSWORD} bytes without control characters"
            )));
        }
        Ok(password)
    }
}

pub async fn run(cmd: UsersCommand, settings: &Settings) -> Result<(), CliError> {
    match cmd {
        UsersCommand::Add { aor, password } => {
            let aor = parse_aor(&aor, settings)?;
            let credentials =
                crate::auth::credentials_for(&aor.username, &aor.domain, &password.read()?);
            let store = connect_briefly(settings).await?;
            if !store.add_subscriber(&aor, &credentials).await? {
                return Err(CliError::Refused(format!(
                    "user {} exists already (use `users passwd` to change its password)",
                    aor_uri(&aor)
                )));
            }
            println!("added user {}", aor_uri(&aor));
        }
        UsersCommand::Passwd { aor, password } => {
            let aor = parse_aor(&aor, settings)?;
            let credentials =
                crate::auth::credentials_for(&aor.username, &aor.domain, &password.read()?);
            let store = connect_briefly(settings).await?;
            if !store.set_credentials(&aor, &credentials).await? {
                return Err(CliError::Refused(format!("no user {}", aor_uri(&aor))));
            }
            println!("changed the password of {}", aor_uri(&aor));
        }
        UsersCommand::Rm { aor } => {
            let aor = parse_aor(&aor, settings)?;
            let store = connect_briefly(settings).await?;
            if !store.remove_subscriber(&aor).await? {
                return Err(CliError::Refused(format!("no user {}", aor_uri(&aor))));
            }
            println!("removed user {}", aor_uri(&aor));
        }
        UsersCommand::List { json } => {
            let store = connect_briefly(settings).await?;
            let users = store.subscribers().await?;
            print_users(&users, json);
        }
    }
    Ok(())
}

/// Which credentials a row holds, by name.
fn held(s: &Subscriber) -> Vec<&'static str> {
    let mut held = Vec::new();
    if !s.password.is_empty() {
        held.push("password");
    }
    if !s.ha1.is_empty() {
        held.push("ha1");
    }
    if !s.ha1b.is_empty() {
        held.push("ha1b");
    }
    if s.ha1_sha256.as_ref().is_some_and(|h| !h.is_empty()) {
        held.push("ha1_sha256");
    }
    held
}

fn print_users(users: &[Subscriber], json: bool) {
    if json {
        let list: Vec<serde_json::Value> = users
            .iter()
            .map(|s| {
                serde_json::json!({
                    "aor": aor_uri(&s.aor),
                    "username": s.aor.username,
                    "domain": s.aor.domain,
                    "credentials": held(s),
                    "id": s.id,
                })
            })
            .collect();
        super::output::print_json(&serde_json::Value::Array(list));
        return;
    }
    for s in users {
        println!("{}  credentials: {}", aor_uri(&s.aor), held(s).join(" "));
    }
    println!("{} user(s)", users.len());
}
