//! `registrar users add|passwd|rm|list` (SPEC A7): the `subscriber` table digest authentication
//! reads. Only hashes are stored (the realm is the AoR's domain, as Kamailio's kamctl does it);
//! no password or hash is ever printed.

use super::{CliError, connect_briefly, parse_aor};
use crate::admin;
use crate::config::Settings;
use crate::sip::aor::aor_uri;
use clap::{Args, Subcommand};
use std::io::BufRead;

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
        admin::check_password(&password)?;
        Ok(password)
    }
}

pub async fn run(cmd: UsersCommand, settings: &Settings) -> Result<(), CliError> {
    match cmd {
        UsersCommand::Add { aor, password } => {
            let aor = parse_aor(&aor, settings)?;
            let password = password.read()?;
            let store = connect_briefly(settings).await?;
            admin::add_user(&store, &aor, &password).await?;
            println!("added user {}", aor_uri(&aor));
        }
        UsersCommand::Passwd { aor, password } => {
            let aor = parse_aor(&aor, settings)?;
            let password = password.read()?;
            let store = connect_briefly(settings).await?;
            admin::set_password(&store, &aor, &password).await?;
            println!("changed the password of {}", aor_uri(&aor));
        }
        UsersCommand::Rm { aor } => {
            let aor = parse_aor(&aor, settings)?;
            let store = connect_briefly(settings).await?;
            admin::remove_user(&store, &aor).await?;
            println!("removed user {}", aor_uri(&aor));
        }
        UsersCommand::List { json } => {
            let store = connect_briefly(settings).await?;
            let users = admin::users(&store).await?;
            if json {
                super::output::print_json(&users);
            } else {
                for u in &users {
                    let held: Vec<&str> = u["credentials"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.as_str())
                        .collect();
                    println!(
                        "{}  credentials: {}",
                        u["aor"].as_str().unwrap_or(""),
                        held.join(" ")
                    );
                }
                println!("{} user(s)", users.len());
            }
        }
    }
    Ok(())
}
