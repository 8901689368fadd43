//! Logging: `tracing` to stderr, filtered by `RUST_LOG`. refinery logs through `log`, which the
//! subscriber's `tracing-log` bridge picks up.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// `--log-format` (SPEC O4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message, fields, and the request span's
    /// fields (`call_id`, `method`, `peer`, `aor`).
    Json,
}

/// `default` applies when `RUST_LOG` is unset: `info` for the server, `warn` for one-shot
/// commands whose output is their stdout.
pub fn init(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
