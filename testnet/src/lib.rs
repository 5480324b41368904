//! Launching real `moxnet` processes, each with its own home, for end-to-end tests and many-node
//! scenarios ([`scenario`]); lying peers that speak the protocol themselves ([`liar`], started
//! with [`Node::start_corrupting`] and [`Node::start_cheating`]); plus the helpers they share: a
//! plain HTTP/1.1 client for the nodes' APIs ([`http`]) and a package whose own guest is the test
//! guest ([`echo_package`]).
//!
//! ```no_run
//! let net = testnet::Testnet::new().expect("temp dir");
//! let a = net.home("a");
//! a.ok(&["init"]);
//! let hash = a.ok(&["add", "Cargo.toml"]);
//! assert_eq!(hash.len(), 64);
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub mod attack;
pub mod credits;
pub mod liar;
pub mod scenario;
pub mod sim;
pub mod votes;

use anyhow::{Context, Result, bail};

pub use liar::Fault;

/// Finds the `moxnet` binary: `$MOXNET_BIN`, else beside the running test's target directory
/// (`target/<profile>/moxnet`, built by `cargo test --workspace`/`cargo nextest run --workspace`).
pub fn moxnet_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("MOXNET_BIN") {
        return Ok(PathBuf::from(bin));
    }
    find_in_target(
        "moxnet",
        "build it with `cargo build -p node` or set MOXNET_BIN",
    )
}

/// Finds the `liar` binary (this crate's `src/bin/liar.rs`): `$MOXNET_LIAR_BIN`, else beside the
/// `moxnet` binary, else beside the running test's target directory.
pub fn liar_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("MOXNET_LIAR_BIN") {
        return Ok(PathBuf::from(bin));
    }
    if let Some(beside) = moxnet_bin()
        .ok()
        .and_then(|m| Some(m.parent()?.join("liar")))
        .filter(|l| l.is_file())
    {
        return Ok(beside);
    }
    find_in_target(
        "liar",
        "build it with `cargo build -p testnet --bin liar` or set MOXNET_LIAR_BIN",
    )
}

/// `name` in a folder above the running executable, up to the target directory
/// (`target/<profile>/deps/<test>-<hash>` → `target/<profile>/<name>`); else an error ending in
/// `hint`.
fn find_in_target(name: &str, hint: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
        if d.file_name() == Some(OsStr::new("target")) {
            break;
        }
    }
    bail!("no {name} binary near {}; {hint}", exe.display())
}

/// One HTTP/1.1 request to a node's API (`addr` is `host:port`): the status and the JSON body.
/// Waits at most `timeout` for the answer. Sends no token: enough for `/v2`; `/api/v1` needs
/// [`http_with`] and the node's token ([`Daemon::token`]).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(u16, serde_json::Value)> {
    let headers = [("Content-Type", "application/json")];
    http_with(addr, method, path, &headers, body, timeout)
}

/// Like [`http`], with the given headers (e.g. `("Authorization", "Bearer …")`) and a `Host`
/// naming `addr`.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(u16, serde_json::Value)> {
    let (status, text) = http_text(addr, method, path, headers, body, timeout)?;
    let value =
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text:?}"))?;
    Ok((status, value))
}

/// Like [`http_with`], returning the body as text (e.g. `/metrics`).
pub fn http_text(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    let body = body.unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(
        s,
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("{method} {path}: no complete answer"))?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: no status line in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// `POST path` with a JSON body to a node's API (with its `token`) whose answer is a stream of
/// server-sent events: each event's data, with when it arrived (read as the bytes come).
pub fn stream_events(
    addr: &str,
    token: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: std::time::Duration,
) -> Result<Vec<(std::time::Instant, String)>> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .with_context(|| format!("POST {path}: reading the stream"))?;
        if n == 0 {
            break;
        }
        let now = std::time::Instant::now();
        pending.extend_from_slice(&buf[..n]);
        // Events are whole lines `data: …`; the chunk-size lines of HTTP framing are skipped.
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                events.push((now, data.to_string()));
            }
        }
    }
    Ok(events)
}

/// Waits (up to 60 s) until `node` has heard compute offers from
/// exactly `peers` (peer ids, any order).
pub fn wait_for_offers(node: &Daemon, peers: &[&str]) -> Result<()> {
    let mut want: Vec<&str> = peers.to_vec();
    want.sort_unstable();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, v) = node.api_get("/api/v1/offers")?;
        let mut heard: Vec<&str> = v["offers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["peer_id"].as_str())
            .collect();
        heard.sort_unstable();
        if heard == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("offers heard from {heard:?}, expected {want:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A built test guest: `$MOXNET_GUESTS_DIR/<name>.wasm`, else the source tree's guests build
/// (`scripts/test.sh` builds them: `(cd guests && cargo build --release)`).
pub fn guest(name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("MOXNET_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/target/wasm32-wasip2/release")
        });
    let path = dir.join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "{} is missing: (cd guests && cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

/// Writes, in `dir/own-guest`, a package whose own guest is the hostile test guest: input
/// `mode` (BYTES) picks what it does (`echo` answers its input; `loop`, `memory`, `recurse`,
/// `trap` attack the sandbox).
pub fn echo_package(dir: &Path) -> Result<PathBuf> {
    echo_package_named(dir, "own-guest")
}

/// [`echo_package`] named `name`, in `dir/<name>`: distinct models that share the guest.
pub fn echo_package_named(dir: &Path, name: &str) -> Result<PathBuf> {
    let pkg = dir.join(name);
    std::fs::create_dir_all(&pkg)?;
    std::fs::copy(guest("moxnet_hostile")?, pkg.join("guest.wasm"))?;
    std::fs::write(
        pkg.join("moxnet.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "1"

[runtime]
kind = "wasm"
entry = "guest.wasm"

[[interface.inputs]]
name = "mode"
dtype = "BYTES"
shape = [1]

[[interface.outputs]]
name = "out"
dtype = "BYTES"
shape = [1]
"#
        ),
    )?;
    Ok(pkg)
}

/// A scratch area holding the homes of several nodes (and their `node.log`); deleted on drop
/// unless `TESTNET_KEEP` is set, for looking at what happened.
pub struct Testnet {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Testnet {
    /// A new scratch area.
    pub fn new() -> Result<Self> {
        let mut dir = tempfile::tempdir().context("creating a temp dir")?;
        if std::env::var_os("TESTNET_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("testnet: keeping {}", dir.path().display());
        }
        Ok(Testnet {
            dir,
            bin: moxnet_bin()?,
        })
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A node home named `name`, initialised (`moxnet init`), with `config` as its
    /// `config.toml`.
    pub fn init(&self, name: &str, config: &str) -> Node {
        let n = self.home(name);
        n.ok(&["init"]);
        if let Err(e) = std::fs::write(n.home.join("config.toml"), config) {
            panic!("writing {}'s config: {e}", n.home.display());
        }
        n
    }

    /// A node home named `name` inside the scratch area (not yet initialised).
    pub fn home(&self, name: &str) -> Node {
        Node {
            bin: self.bin.clone(),
            home: self.dir.path().join(name),
            netns: None,
        }
    }
}

/// One node's home, and a way to run `moxnet` against it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The `moxnet` binary.
    pub bin: PathBuf,
    /// Its home directory.
    pub home: PathBuf,
    /// The network namespace its processes run in (`ip netns exec`), if any.
    pub netns: Option<String>,
}

impl Node {
    /// A node for an existing home directory.
    pub fn at(home: impl Into<PathBuf>) -> Result<Node> {
        Ok(Node {
            bin: moxnet_bin()?,
            home: home.into(),
            netns: None,
        })
    }

    /// A `moxnet --home HOME args…` command, ready to run.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = self.command_of(&self.bin);
        cmd.arg("--home").arg(&self.home).args(args);
        cmd.env_remove("MOXNET_HOME");
        cmd
    }

    /// A command running `bin` (in the node's network namespace, if any), stdin closed.
    fn command_of(&self, bin: &Path) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a command to completion.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        match self.command(args).output() {
            Ok(out) => out,
            Err(e) => panic!("cannot run {}: {e}", self.bin.display()),
        }
    }

    /// Runs a command that must succeed; returns its trimmed stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "moxnet {:?} failed ({}):\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "moxnet {:?} succeeded but should have failed; stdout:\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a command with `--json` that must succeed; returns the parsed object.
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> serde_json::Value {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--json")];
        all.extend(args.iter().map(|a| a.as_ref()));
        let text = self.ok(&all);
        match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!("not one JSON object ({e}): {text}"),
        }
    }

    /// Starts a command without waiting for it.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        match self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot start {}: {e}", self.bin.display()),
        }
    }
}

/// Writes `len` bytes of deterministic pseudo-random data to `path`, quickly.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// A running `moxnet node` process; killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub listen: Vec<String>,
    /// Its HTTP API address.
    pub api: String,
    /// Its API token (from `<home>/api.token`), needed for `/api/v1`.
    pub token: String,
}

/// A running `liar` process ([`liar`]): a peer that misbehaves on purpose; killed when dropped.
pub struct Liar {
    /// The process.
    pub child: Child,
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub listen: Vec<String>,
}

impl Node {
    /// Starts `moxnet node` on loopback with a free port and the given bootstrap peers, and waits
    /// until it is up.
    pub fn start(&self, bootstrap: &[&str]) -> Daemon {
        self.start_on("/ip4/127.0.0.1/tcp/0", bootstrap)
    }

    /// Starts `moxnet node` listening on `listen`.
    pub fn start_on(&self, listen: &str, bootstrap: &[&str]) -> Daemon {
        self.start_listening(&[listen], bootstrap)
    }

    /// Starts `moxnet node` listening on every address of `listen` (e.g. TCP and QUIC, as the
    /// default configuration does).
    pub fn start_listening(&self, listen: &[&str], bootstrap: &[&str]) -> Daemon {
        let mut args = vec!["--json", "node", "--api", "127.0.0.1:0", "--no-mdns"];
        for l in listen {
            args.extend(["--listen", *l]);
        }
        for b in bootstrap {
            args.extend(["--bootstrap", *b]);
        }
        let (child, info) = started(
            self.command(&args),
            "moxnet node",
            &self.home.join("node.log"),
        );
        Daemon {
            peer_id: text(&info, "peer_id"),
            listen: texts(&info, "listen"),
            api: text(&info, "api"),
            token: std::fs::read_to_string(self.home.join("api.token"))
                .map(|t| t.trim().to_string())
                .unwrap_or_default(),
            child,
        }
    }

    /// Starts a [`liar`] on this home (initialised and published to, with no node running on it)
    /// that serves its blobs with corrupted bytes: one byte flipped in every 64 KiB of every
    /// range. It announces and provides its models like a node.
    pub fn start_corrupting(&self, bootstrap: &[&str]) -> Liar {
        self.start_liar(&["corrupt-blobs"], bootstrap)
    }

    /// Starts a [`liar`] on this home that serves its blobs with true bytes and false sizes
    /// ([`liar::Lie::WrongSizes`]).
    pub fn start_lying_about_sizes(&self, bootstrap: &[&str]) -> Liar {
        self.start_liar(&["wrong-sizes"], bootstrap)
    }

    /// Starts a [`liar`] on this home that offers compute and answers calls with `fault`, copying
    /// the outputs of the honest provider `honest` (a peer id) before it lies about them.
    pub fn start_cheating(&self, fault: Fault, honest: &str, bootstrap: &[&str]) -> Liar {
        self.start_liar(
            &["compute", "--fault", fault.name(), "--honest", honest],
            bootstrap,
        )
    }

    fn start_liar(&self, mode: &[&str], bootstrap: &[&str]) -> Liar {
        let bin = match liar_bin() {
            Ok(b) => b,
            Err(e) => panic!("{e:#}"),
        };
        let mut cmd = self.command_of(&bin);
        cmd.args(mode)
            .arg("--home")
            .arg(&self.home)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        for b in bootstrap {
            cmd.args(["--bootstrap", *b]);
        }
        let (child, info) = started(cmd, "liar", &self.home.join("liar.log"));
        Liar {
            peer_id: text(&info, "peer_id"),
            listen: texts(&info, "listen"),
            child,
        }
    }
}

/// Spawns `cmd` and reads the JSON line it prints once it is up; panics with its stderr if it
/// prints none.
/// Starts `cmd` (a node or a liar), its stderr going to `log` (a pipe nobody reads would fill
/// and block it), and reads the JSON line it prints once it is up.
fn started(mut cmd: Command, what: &str, log: &Path) -> (Child, serde_json::Value) {
    let log_file = match std::fs::File::create(log) {
        Ok(f) => f,
        Err(e) => panic!("cannot create {}: {e}", log.display()),
    };
    cmd.stdout(Stdio::piped()).stderr(log_file);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot start {what}: {e}"),
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let mut reader = std::io::BufReader::new(out);
        let _ = std::io::BufRead::read_line(&mut reader, &mut line);
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut reader, &mut sink);
        });
    }
    match serde_json::from_str(&line) {
        Ok(info) => (child, info),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not start: {line:?} {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

fn text(info: &serde_json::Value, key: &str) -> String {
    info[key].as_str().unwrap_or_default().to_string()
}

fn texts(info: &serde_json::Value, key: &str) -> Vec<String> {
    info[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Stops a child: SIGKILL, or SIGTERM when `gently`; then waits for it.
fn end(child: &mut Child, gently: bool) -> std::io::Result<std::process::ExitStatus> {
    if gently {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    } else {
        let _ = child.kill();
    }
    child.wait()
}

impl Daemon {
    /// `GET path` on the node's API with its token: the status and the JSON body.
    pub fn api_get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        self.api_call("GET", path, None)
    }

    /// `method path` on the node's API with its token and a JSON body.
    pub fn api_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let auth = format!("Bearer {}", self.token);
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        http_with(
            &self.api,
            method,
            path,
            &headers,
            body,
            std::time::Duration::from_secs(60),
        )
    }

    /// The first listen address (for `--bootstrap`).
    pub fn addr(&self) -> &str {
        self.listen.first().map(String::as_str).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = end(&mut self.child, false);
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        match end(&mut self.child, true) {
            Ok(s) => s,
            Err(e) => panic!("waiting for moxnet node: {e}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = end(&mut self.child, false);
    }
}

impl Liar {
    /// The first listen address (for `--bootstrap`).
    pub fn addr(&self) -> &str {
        self.listen.first().map(String::as_str).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(mut self) {
        let _ = end(&mut self.child, false);
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        let _ = end(&mut self.child, false);
    }
}
