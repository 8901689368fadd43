//! Logging: `tracing` to stderr, filtered by `RUST_LOG`. refinery logs through `log`, which the
//! subscriber's `tracing-log` bridge picks up.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// `default` applies when `RUST_LOG` is unset: `info` for the server, `warn` for one-shot
/// commands whose output is their stdout.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
