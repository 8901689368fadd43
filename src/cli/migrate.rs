//! `registrar migrate` (SPEC C5).

use super::{CliError, connect_briefly};
use crate::config::Settings;
use crate::store::redact;

pub async fn run(settings: &Settings) -> Result<(), CliError> {
    let store = connect_briefly(settings).await?;
    let report = store.migrate().await?;
    let target = redact(&settings.database_url);
    if report.applied.is_empty() {
        println!("{target}: schema up to date at version {}", report.version);
    } else {
        println!(
            "{target}: applied {}; schema at version {}",
            report.applied.join(", "),
            report.version
        );
    }
    store.close().await;
    Ok(())
}
