//! The CLI's side of the node's HTTP API: finding a running node for a home, sending it store
//! commands, and following a fetch. A minimal HTTP/1.1 client over a loopback TCP socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use protocol::BlobHash;
use serde_json::{Value, json};

use crate::cli::Command;
use crate::output;

/// The file in a home that holds the running node's API address.
pub const API_FILE: &str = "api";

/// A running node's API.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    addr: SocketAddr,
}

impl Api {
    /// The node running on this home, if any (a stale `api` file is ignored).
    pub fn find(home: &Path) -> Result<Option<Api>> {
        let Ok(text) = std::fs::read_to_string(home.join(API_FILE)) else {
            return Ok(None);
        };
        let Ok(addr) = text.trim().parse::<SocketAddr>() else {
            return Ok(None);
        };
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            return Ok(None);
        }
        Ok(Some(Api { addr }))
    }

    /// Sends a request; returns the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to the node's API at {}", self.addr))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .context("sending to the node's API")?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .context("reading the node's answer")?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
        let mut length = None;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .context("reading the node's answer")?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut raw = Vec::new();
        match length {
            Some(n) => {
                raw.resize(n, 0);
                reader
                    .read_exact(&mut raw)
                    .context("reading the node's answer")?;
            }
            None => {
                reader
                    .read_to_end(&mut raw)
                    .context("reading the node's answer")?;
            }
        }
        let value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).context("the node's answer is not JSON")?
        };
        Ok((status, value))
    }
}

/// Has the node run a store command; prints what it printed.
pub fn exec(api: &Api, command: &Command, json: bool) -> Result<ExitCode> {
    let (status, answer) = api.request(
        "POST",
        "/api/v1/exec",
        Some(&json!({ "command": command, "json": json })),
    )?;
    if status != 200 {
        bail!("the node refused the command (HTTP {status}): {answer}");
    }
    if let Some(text) = answer["stdout"].as_str() {
        print!("{text}");
    }
    if let Some(err) = answer["error"].as_str() {
        bail!("{err}");
    }
    Ok(ExitCode::from(answer["code"].as_u64().unwrap_or(1) as u8))
}

/// Starts a fetch on the node and follows it to the end, with a progress bar on a terminal.
pub fn fetch(api: &Api, id: &BlobHash, json: bool) -> Result<ExitCode> {
    let (status, answer) = api.request("POST", &format!("/api/v1/fetch/{id}"), None)?;
    if status != 200 && status != 202 {
        bail!("the node refused to fetch {id} (HTTP {status}): {answer}");
    }
    let mut bar = None;
    loop {
        let (_, progress) = api.request("GET", &format!("/api/v1/fetch/{id}"), None)?;
        let total = progress["bytes_total"].as_u64().unwrap_or(0);
        let done = progress["bytes_done"].as_u64().unwrap_or(0);
        if bar.is_none() && total > 0 {
            bar = output::progress(json, total, "fetching");
        }
        if let Some(b) = &bar {
            b.set_position(done);
        }
        match progress["state"].as_str() {
            Some("complete") => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                output::emit(json, progress.clone(), || {
                    format!(
                        "fetched {id} ({} from {} peers, {} peers banned)",
                        output::bytes(total),
                        progress["peers_used"].as_u64().unwrap_or(0),
                        progress["peers_banned"].as_u64().unwrap_or(0)
                    )
                });
                return Ok(ExitCode::SUCCESS);
            }
            Some("failed") => {
                if let Some(b) = bar {
                    b.abandon();
                }
                bail!(
                    "fetching {id} failed: {}",
                    progress["error"].as_str().unwrap_or("unknown error")
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
