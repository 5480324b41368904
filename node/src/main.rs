//! `moxnet`: the command-line interface to a moxnet home (identity, store, packages).
//!
//! Exit status: 0 on success, 1 on failure (or when `verify` finds a problem), 2 on bad usage.

mod accounts;
mod api_client;
mod cache;
mod cli;
mod commands;
mod compute;
mod config;
mod daemon;
mod engines;
mod fetcher;
mod generation;
mod home;
mod inference;
mod language;
mod metrics;
mod models;
mod ops;
mod output;
mod package;
mod remote;
mod render;
mod search;
mod service;
mod votes;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The node starts its graph engines' workers as `moxnet engine-worker …` (not a command
    // for people: see the `engine` crate).
    if std::env::args().nth(1).as_deref() == Some("engine-worker") {
        return engine::worker::main(std::env::args().skip(2));
    }
    let cli = cli::Cli::parse();
    let json = cli.json;
    init_logging(&cli);
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            output::error(json, &err);
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr: text for people, or one JSON object per line with `--log-format json`.
/// `RUST_LOG` picks what is logged (default: warnings, plus the node's own info lines when it
/// runs as a daemon).
fn init_logging(cli: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        // A node alone (no peers yet) is normal: the DHT's bootstrap warning is noise then.
        cli::Command::Node(_) => "warn,libp2p_kad=error,moxnet=info,net=info,sandbox=info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log file or the journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match cli.log_format {
        cli::LogFormat::Text => builder.try_init(),
        cli::LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = installed {
        eprintln!("warning: logging is off: {e}");
    }
}
