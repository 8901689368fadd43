//! The `registrar` binary: parse the command line, run, and turn any error into one line on
//! stderr with a non-zero exit (SPEC C6).

use clap::Parser;
use registrar::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message may continue on indented lines (the missing arguments) before
            // its usage block: keep those, on one line (SPEC C6).
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!(
                "registrar: {}",
                if message.is_empty() {
                    "invalid arguments"
                } else {
                    message
                }
            );
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Serve(_)) {
        // A one-shot command piped into `head` should end quietly when the pipe closes, as
        // Unix tools do, instead of failing on the next print. (The server keeps Rust's
        // default of ignoring SIGPIPE: a closed TCP peer must not kill it.)
        // SAFETY: resetting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    limit_malloc_arenas();
    registrar::telemetry::init(
        match cli.command {
            Command::Serve(_) => "info",
            _ => "warn",
        },
        cli.log_format,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registrar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(registrar::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registrar: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena of up to 64 MiB, and sqlx runs every
/// SQLite connection on a thread of its own: on SQLite at 9,000–10,000 new registrations/s the
/// server's PSS peaked at 54–66 MiB, with two arenas at 37–44 MiB and the same throughput
/// (BENCHMARKS.md). An operator's own `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: a malloc tuning call made before any thread is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}
