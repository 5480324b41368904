//! Printing results: text for people, or one JSON object per command with `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::render::Render;

type Result<T> = std::result::Result<T, serde_json::Error>;

/// Prints a command's result: `json` with `--json`, else the text `human` makes.
pub fn emit(json: bool, value: Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        let text = human();
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

/// Prints a typed result: serialised with `--json`, else its [`Render`] text.
pub fn show<T: serde::Serialize + Render>(json: bool, result: &T) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        let text = result.text();
        if !text.is_empty() {
            println!("{text}");
        }
    }
    Ok(())
}

/// Reports a failure on stderr (and as `{"error": …}` on stdout with `--json`).
pub fn error(json: bool, err: &anyhow::Error) {
    eprintln!("error: {err:#}");
    if json {
        println!("{}", serde_json::json!({ "error": format!("{err:#}") }));
    }
}

/// A byte progress bar, shown only when stdout is a terminal and output is text.
pub fn progress(quiet: bool, total: u64, what: &str) -> Option<ProgressBar> {
    if quiet || !std::io::stdout().is_terminal() || total < (8 << 20) {
        return None;
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// Runs `f` with a progress callback (bytes done) behind a bar, shown as [`progress`] decides.
pub fn with_progress<T>(
    quiet: bool,
    total: u64,
    what: &str,
    f: impl FnOnce(&mut dyn FnMut(u64)) -> T,
) -> T {
    let bar = progress(quiet, total, what);
    let result = f(&mut |n| {
        if let Some(b) = &bar {
            b.inc(n)
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}
