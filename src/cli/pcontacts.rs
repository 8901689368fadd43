//! `registrar pcontacts show|dump` (SPEC C4): the P-CSCF's `pcscf_location`, states by name.

use super::output::print_records;
use super::{CliError, connect_briefly};
use crate::admin;
use crate::config::Settings;
use crate::sip::uri::Uri;
use crate::store::ContactAddress;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PcontactsCommand {
    /// The pcontact of one UE contact URI, or every pcontact of a public identity
    Show {
        /// The UE's Contact URI, e.g. sip:ue@198.51.100.7:5060
        #[arg(required_unless_present = "aor", conflicts_with = "aor")]
        contact: Option<String>,
        /// A public identity (IMPU) instead of a contact
        #[arg(long, value_name = "IMPU")]
        aor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every pcontact, in every state
    Dump {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PcontactsCommand, settings: &Settings) -> Result<(), CliError> {
    match cmd {
        PcontactsCommand::Show { contact, aor, json } => {
            let address = contact.as_deref().map(contact_address).transpose()?;
            let store = connect_briefly(settings).await?;
            let found = match (&address, &aor) {
                (Some(address), _) => store
                    .pcontact(address)
                    .await?
                    .iter()
                    .map(|p| admin::pcontact_json(p, chrono::Utc::now()))
                    .collect(),
                (None, Some(impu)) => admin::pcontacts_of(&store, impu).await?,
                (None, None) => Vec::new(),
            };
            print_records(&found, json);
            if !json && found.is_empty() {
                println!("no pcontact found");
            }
        }
        PcontactsCommand::Dump { json } => {
            let store = connect_briefly(settings).await?;
            let now = chrono::Utc::now();
            let all: Vec<_> = store
                .dump_pcontacts()
                .await?
                .iter()
                .map(|p| admin::pcontact_json(p, now))
                .collect();
            print_records(&all, json);
            if !json {
                println!("{} pcontact(s)", all.len());
            }
        }
    }
    Ok(())
}

/// A UE contact URI → the (host, port, transport) its pcontact is keyed by (SPEC S1).
fn contact_address(text: &str) -> Result<ContactAddress, CliError> {
    let uri = Uri::parse(text.trim())
        .map_err(|e| CliError::Usage(format!("invalid contact URI '{text}': {e}")))?;
    if !uri.scheme.is_sip() {
        return Err(CliError::Usage(format!("'{text}' is not a SIP URI")));
    }
    Ok(ContactAddress {
        host: uri.host.to_ascii_lowercase(),
        port: uri.port.unwrap_or(5060),
        protocol: uri.transport(),
    })
}
