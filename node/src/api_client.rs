//! The CLI's side of the node's HTTP API: finding the node running on a home, and calling its
//! typed `/api/v1` routes with the owner's token. A minimal HTTP/1.1 client over a loopback
//! TCP socket (one request per connection).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::dto::{FetchProgress, FetchState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output;

/// The file in a home that holds the running node's API address.
pub const API_FILE: &str = "api";
/// The file in a home that holds the API token (mode 0600), rewritten at every node start.
pub const TOKEN_FILE: &str = "api.token";
/// The largest answer the CLI reads (a listing of a large store).
const MAX_ANSWER: u64 = 256 << 20;

/// A running node's API.
#[derive(Debug, Clone)]
pub struct Api {
    addr: SocketAddr,
    token: String,
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
        let token_file = home.join(TOKEN_FILE);
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| {
                format!(
                    "a node runs on this home but its token {} cannot be read (run as the node's user)",
                    token_file.display()
                )
            })?
            .trim()
            .to_string();
        Ok(Some(Api { addr, token }))
    }

    /// `GET path`, decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.bodyless("GET", path)
    }

    /// `method path` without a body, decoded as `T`.
    pub fn bodyless<T: DeserializeOwned>(&self, method: &str, path: &str) -> Result<T> {
        self.call(method, path, None::<&()>)
    }

    /// `method path` with a JSON body, decoded as `T`.
    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call(method, path, Some(body))
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, answer) = self.request(method, path, body.as_deref())?;
        if !(200..300).contains(&status) {
            let reason = answer["error"]
                .as_str()
                .map_or_else(|| answer.to_string(), str::to_string);
            bail!("{reason} (HTTP {status} from the node)");
        }
        serde_json::from_value(answer)
            .with_context(|| format!("the node's answer to {method} {path} is not what this CLI expects (is it another version?)"))
    }

    /// `POST path` with a JSON body whose answer is a stream of server-sent events: `on_data`
    /// gets each event's data as it arrives (until `[DONE]`, or until it returns `false`). An
    /// answer that is not a stream is an error with the node's reason.
    pub fn stream(
        &self,
        path: &str,
        body: &Value,
        on_data: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<()> {
        let body = serde_json::to_vec(body)?;
        let Opened {
            status,
            headers,
            body: mut reader,
        } = self.open("POST", path, &body)?;
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let mut body: Box<dyn BufRead> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(reader.by_ref())
        };
        if status != 200 {
            let mut raw = Vec::new();
            body.read_to_end(&mut raw)
                .context("reading the node's answer")?;
            let answer: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let reason = answer["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&raw).into_owned(),
                str::to_string,
            );
            bail!("{reason} (HTTP {status} from the node)");
        }
        let mut data = String::new();
        loop {
            let mut line = String::new();
            if body
                .read_line(&mut line)
                .context("reading the node's stream")?
                == 0
            {
                bail!("the node's stream ended before [DONE]");
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            } else if line.is_empty() && !data.is_empty() {
                let event = std::mem::take(&mut data);
                if event == "[DONE]" || !on_data(&event)? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends a request and reads the status line and headers.
    fn open(&self, method: &str, path: &str, body: &[u8]) -> Result<Opened> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to the node's API at {}", self.addr))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        )
        .and_then(|()| stream.write_all(body))
        .context("sending to the node's API")?;
        let mut reader = BufReader::new(stream.take(MAX_ANSWER));
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .context("reading the node's answer")?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .context("reading the node's answer")?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ok(Opened {
            status,
            headers,
            body: reader,
        })
    }

    /// Sends a request; returns the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, Value)> {
        let Opened {
            status,
            headers,
            body: mut reader,
        } = self.open(method, path, body.unwrap_or_default())?;
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
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

/// An answer whose status and headers are read.
struct Opened {
    status: u16,
    headers: Vec<(String, String)>,
    body: BufReader<std::io::Take<TcpStream>>,
}

/// An HTTP/1.1 chunked body, decoded (chunk extensions and trailers ignored).
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or_default();
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

/// Starts a fetch on the node and follows it to the end, with a progress bar on a terminal.
pub fn fetch(api: &Api, id: &str, json: bool) -> Result<FetchProgress> {
    let path = format!("/api/v1/fetch/{id}");
    api.bodyless::<FetchProgress>("POST", &path)?;
    let mut bar = None;
    // Polled often at first (a small fetch ends in milliseconds), then every 200 ms.
    let mut pause = Duration::from_millis(10);
    loop {
        let progress: FetchProgress = api.get(&path)?;
        if bar.is_none() && progress.bytes_total > 0 {
            bar = output::progress(json, progress.bytes_total, "fetching");
        }
        if let Some(b) = &bar {
            b.set_position(progress.bytes_done);
        }
        match progress.state {
            FetchState::Complete => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return Ok(progress);
            }
            FetchState::Failed => {
                if let Some(b) = bar {
                    b.abandon();
                }
                bail!(
                    "fetching {id} failed: {}",
                    progress.error.as_deref().unwrap_or("unknown error")
                );
            }
            FetchState::Running => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}
