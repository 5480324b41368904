//! `moxnet`: the command-line interface to a moxnet home (identity, store, packages).
//!
//! Exit status: 0 on success, 1 on failure (or when `verify` finds a problem), 2 on bad usage.

mod api_client;
mod cli;
mod commands;
mod compute;
mod config;
mod daemon;
mod fetcher;
mod home;
mod inference;
mod output;
mod package;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let json = cli.json;
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            output::error(json, &err);
            ExitCode::from(1)
        }
    }
}
