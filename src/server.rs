//! Wiring of `serve`: listeners, role handlers, background jobs and shutdown.

use crate::config::Settings;
use crate::store::Store;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("the SIP listeners are not implemented yet")]
    NotImplemented,
}

pub async fn run(_settings: Settings, store: Store) -> Result<(), ServerError> {
    store.close().await;
    Err(ServerError::NotImplemented)
}
