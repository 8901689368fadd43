//! `registrar contacts show|rm|dump|add` (SPEC C2–C4): Kamailio's `$ulc`, `unregister()`,
//! `ul.dump` and `ul.add` against the `location` table.

use super::output::print_records;
use super::{CliError, connect_briefly, parse_aor};
use crate::admin;
use crate::config::Settings;
use crate::registrar::{self, Contacts, Outcome, Register, RequestedContact};
use crate::sip::uri::Uri;
use crate::store::Removal;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Every live binding of an AoR with all stored attributes
    Show {
        /// Address of record, e.g. sip:alice@example.com
        aor: String,
        /// Print a JSON array instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove all bindings of an AoR, or the one named (Kamailio unregister())
    Rm {
        aor: String,
        /// Remove only the binding with this contact URI
        #[arg(long, value_name = "URI", conflicts_with = "ruid")]
        contact: Option<String>,
        /// Remove only the binding with this ruid
        #[arg(long, value_name = "RUID")]
        ruid: Option<String>,
    },
    /// Every live binding of every AoR
    Dump {
        #[arg(long)]
        json: bool,
    },
    /// Add an administrative binding (Kamailio ul.add), under the same rules as a REGISTER
    Add {
        aor: String,
        /// Contact URI to bind, e.g. sip:alice@192.0.2.1:5060
        contact: String,
        /// Seconds until it expires [default: the default_expires setting, 3600]
        #[arg(long, value_name = "SECONDS")]
        expires: Option<u32>,
        /// q-value, 0 to 1
        #[arg(long, value_name = "Q")]
        q: Option<f64>,
    },
}

pub async fn run(cmd: ContactsCommand, settings: &Settings) -> Result<(), CliError> {
    match cmd {
        ContactsCommand::Show { aor, json } => {
            let aor = parse_aor(&aor, settings)?;
            let store = connect_briefly(settings).await?;
            let bindings = admin::bindings(&store, &aor).await?;
            print_records(&bindings, json);
            if !json && bindings.is_empty() {
                println!("no live bindings for {}", crate::sip::aor::aor_uri(&aor));
            }
        }
        ContactsCommand::Dump { json } => {
            let store = connect_briefly(settings).await?;
            let bindings = admin::dump(&store).await?;
            print_records(&bindings, json);
            if !json {
                println!("{} live binding(s)", bindings.len());
            }
        }
        ContactsCommand::Rm { aor, contact, ruid } => {
            let aor = parse_aor(&aor, settings)?;
            let which = match (contact, ruid) {
                (Some(c), _) => Removal::Contact(c),
                (None, Some(r)) => Removal::Ruid(r),
                (None, None) => Removal::All,
            };
            let store = connect_briefly(settings).await?;
            // No SIP socket in this process: the removal is not NOTIFYed (README).
            let removed = admin::remove_bindings(&store, &aor, &which, None).await?;
            println!("removed {removed} binding(s)");
        }
        ContactsCommand::Add {
            aor,
            contact,
            expires,
            q,
        } => add(settings, &aor, &contact, expires, q).await?,
    }
    Ok(())
}

async fn add(
    settings: &Settings,
    aor_text: &str,
    contact: &str,
    expires: Option<u32>,
    q: Option<f64>,
) -> Result<(), CliError> {
    let aor = parse_aor(aor_text, settings)?;
    if expires == Some(0) {
        return Err(CliError::Usage(
            "--expires 0 would make a permanent binding, which is not supported".into(),
        ));
    }
    let uri = Uri::parse(contact)
        .map_err(|e| CliError::Usage(format!("invalid contact '{contact}': {e}")))?;
    let q = match q {
        None => None,
        Some(v) if (0.0..=1.0).contains(&v) => Some((v * 1000.0).round() as u16),
        Some(v) => return Err(CliError::Usage(format!("--q {v} is outside 0..1"))),
    };
    let policy = settings.policies.for_domain(&aor.domain);
    let request = Register {
        aor,
        call_id: format!("cli-{}", uuid::Uuid::new_v4()),
        cseq: 1,
        contacts: Contacts::List(vec![RequestedContact {
            uri: contact.to_string(),
            host: uri.host.clone(),
            port: uri.port,
            transport: uri.transport(),
            expires,
            q,
            instance: None,
            reg_id: None,
            methods: None,
        }]),
        expires_header: None,
        path: None,
        source: None,
        user_agent: Some("registrar-cli".into()),
        socket: None,
        connection_id: 0,
    };
    let store = connect_briefly(settings).await?;
    let registration = registrar::register_administratively(&store, &policy, &request).await?;
    match registration.outcome {
        Outcome::Registered => {
            let added = registration.bindings.iter().find(|b| b.contact == contact);
            match added {
                Some(b) => println!(
                    "bound {contact} to {} until {} (ruid {})",
                    crate::sip::aor::aor_uri(&request.aor),
                    b.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    b.ruid
                ),
                None => println!("{contact} was not kept"),
            }
            Ok(())
        }
        Outcome::Refused(r) => Err(CliError::Refused(format!(
            "refused: {} {}{}",
            r.code,
            r.reason,
            r.registrar_error
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ))),
    }
}
