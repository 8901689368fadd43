//! `registrar serve` (SPEC C1): connect (waiting for the database), migrate, then run the server.

use super::CliError;
use crate::config::Settings;
use crate::store::{ConnectOptions, Store, redact};
use std::time::Duration;

pub async fn run(settings: Settings) -> Result<(), CliError> {
    let options = ConnectOptions {
        pool_size: settings.db_pool_size,
        connect_timeout: settings.db_connect_timeout,
        acquire_timeout: Duration::from_secs(2),
        // H6: below the request deadline, so a stuck statement ends before the UA is answered.
        statement_timeout: Some(settings.request_deadline.mul_f64(0.8)),
        sqlite_synchronous: settings.sqlite_synchronous,
    };
    tracing::info!(database = %redact(&settings.database_url), "connecting");
    let store = Store::connect(&settings.database_url, &options)
        .await
        .map_err(|source| CliError::Connect {
            url: redact(&settings.database_url),
            source,
        })?;
    if settings.database_url.starts_with("sqlite:") {
        tracing::info!(
            "sqlite synchronous={}",
            settings.sqlite_synchronous.as_str()
        );
    }
    if settings.migrate {
        let report = store.migrate().await?;
        tracing::info!(applied = ?report.applied, version = report.version, "schema ready");
    }
    crate::server::run(settings, store).await?;
    Ok(())
}
