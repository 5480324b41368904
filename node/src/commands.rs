//! What each subcommand does. The CLI talks to the store directly (no daemon yet).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use protocol::{BlobHash, Collection, Dim, FileEntry, Manifest, ModelId, Object, Signed, Snapshot};
use serde_json::{Value, json};
use store::Store;

use crate::cli::{Cli, Command, SnapshotCommand};
use crate::home::{self, Home};
use crate::output::{self, bytes, emit};
use crate::package;

/// Runs one command; the exit code is 1 when `verify` finds problems.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let dir = match cli.home {
        Some(d) => d,
        None => home::default_dir()?,
    };
    let json = cli.json;
    match cli.command {
        Command::Init => {
            let (home, new) = Home::init(&dir)?;
            let id = home.key.node_id();
            emit(
                json,
                json!({ "home": dir, "node_id": id.to_string(), "created": new }),
                || {
                    if new {
                        format!("initialized moxnet home {}\nnode id {id}", dir.display())
                    } else {
                        format!("{} is already a moxnet home\nnode id {id}", dir.display())
                    }
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(args) => {
            crate::daemon::run(&dir, args, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { id } => {
            let api = crate::api_client::Api::find(&dir)?.with_context(|| {
                "fetching needs a running node on this home: start `moxnet node` first".to_string()
            })?;
            crate::api_client::fetch(&api, &parse_hash(&id)?, json)
        }
        Command::Call {
            id,
            input,
            on,
            verify,
        } => call(&dir, &id, &input, on.as_deref(), verify, json),
        Command::Offers => {
            let api = crate::api_client::Api::find(&dir)?.with_context(|| {
                "offers are heard by a running node: start `moxnet node` first".to_string()
            })?;
            offers(&api, json)
        }
        mut command => match crate::api_client::Api::find(&dir)? {
            // A node holds the store: let it run the command.
            Some(api) => {
                absolutize(&mut command)?;
                crate::api_client::exec(&api, &command, json)
            }
            None => execute(&Home::open(&dir)?, command, json),
        },
    }
}

/// Makes path arguments absolute before a command is sent to a node (whose working directory
/// is elsewhere).
fn absolutize(command: &mut Command) -> Result<()> {
    let abs = |p: &mut PathBuf| -> Result<()> {
        if p.is_relative() {
            *p = std::env::current_dir()
                .context("reading the working directory")?
                .join(&*p);
        }
        Ok(())
    };
    match command {
        Command::Add { path } | Command::Publish { path } => abs(path),
        Command::Get { output, .. } => abs(output),
        Command::Snapshot {
            command: SnapshotCommand::Add {
                package, weights, ..
            },
        } => {
            abs(package)?;
            weights.iter_mut().try_for_each(abs)
        }
        Command::History { target } => {
            if Path::new(target).is_dir() {
                let mut p = PathBuf::from(&*target);
                abs(&mut p)?;
                *target = p.to_string_lossy().into_owned();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Runs a store command against an open home (directly, or inside the node for a client).
pub fn execute(home: &Home, command: Command, json: bool) -> Result<ExitCode> {
    match command {
        Command::Init
        | Command::Node(_)
        | Command::Fetch { .. }
        | Command::Call { .. }
        | Command::Offers => {
            bail!("this command is not run inside a node")
        }
        Command::Models => models(&home.store, json),
        Command::Add { path } => add(home, &path, json),
        Command::Get { hash, output } => get(home, &parse_hash(&hash)?, &output, json),
        Command::Ls => ls(&home.store, json),
        Command::Publish { path } => publish(home, &path, json),
        Command::Show { id } => show(&home.store, ModelId(parse_hash(&id)?), json),
        Command::Snapshot {
            command:
                SnapshotCommand::Add {
                    package,
                    step,
                    metrics,
                    weights,
                },
        } => snapshot_add(home, &package, step, &metrics, &weights, json),
        Command::History { target } => history(&home.store, &target, json),
        Command::Pin { hash } => {
            let h = parse_hash(&hash)?;
            home.store.pin(h).with_context(|| format!("pinning {h}"))?;
            emit(json, json!({ "pinned": h.to_string() }), || {
                format!("pinned {h}")
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Unpin { hash } => {
            let h = parse_hash(&hash)?;
            let was = home.store.unpin(h)?;
            emit(
                json,
                json!({ "unpinned": h.to_string(), "was_pinned": was }),
                || {
                    if was {
                        format!("unpinned {h}")
                    } else {
                        format!("{h} was not pinned")
                    }
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc => {
            let report = home.store.gc()?;
            emit(
                json,
                json!({ "blobs_removed": report.blobs_removed, "bytes_freed": report.bytes_freed }),
                || {
                    format!(
                        "removed {} blobs, freed {}",
                        report.blobs_removed,
                        bytes(report.bytes_freed)
                    )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { hash } => verify(&home.store, hash.as_deref(), json),
    }
}

/// Parses a hash argument with a message that says what a hash looks like.
fn parse_hash(s: &str) -> Result<BlobHash> {
    s.trim()
        .parse::<BlobHash>()
        .map_err(|e| anyhow::anyhow!("{s:?} is not a hash: {e}"))
}

fn add(home: &Home, path: &Path, json: bool) -> Result<ExitCode> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
    let store = &home.store;
    let imported = if meta.is_dir() {
        let files = store::walk(path)?;
        output::with_progress(json, total_size(&files), "adding", |progress| {
            store
                .import_dir(path, progress)
                .map(|(imported, _)| imported)
        })
    } else {
        output::with_progress(json, meta.len(), "adding", |progress| {
            store.import_file(path, progress)
        })
    }
    .with_context(|| format!("adding {}", path.display()))?;
    store.pin(imported.hash)?;
    emit(
        json,
        json!({
            "hash": imported.hash.to_string(),
            "size": imported.size,
            "new": imported.new,
            "kind": if meta.is_dir() { "collection" } else { "file" },
        }),
        || imported.hash.to_string(),
    );
    Ok(ExitCode::SUCCESS)
}

fn get(home: &Home, hash: &BlobHash, output: &Path, json: bool) -> Result<ExitCode> {
    let store = &home.store;
    let record = store
        .record(*hash)?
        .with_context(|| format!("{hash} is not in the store (add or fetch it first)"))?;
    let (kind, written) = match record.kind.as_str() {
        "collection" => {
            let bytes = store.read_bytes(*hash, protocol::MAX_COLLECTION_BYTES as u64)?;
            let collection = Collection::from_bytes(&bytes)
                .with_context(|| format!("decoding folder {hash}"))?;
            ("folder", store.export_files(&collection.entries, output)?)
        }
        "manifest" => {
            let manifest = load_manifest(store, ModelId(*hash))?;
            ("model", store.export_files(&manifest.body().files, output)?)
        }
        _ => ("file", store.export(*hash, output)?),
    };
    emit(
        json,
        json!({ "hash": hash.to_string(), "kind": kind, "path": output, "bytes": written }),
        || format!("wrote {kind} {} ({})", output.display(), bytes(written)),
    );
    Ok(ExitCode::SUCCESS)
}

fn models(store: &Store, json: bool) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for id in store.manifests()? {
        let Ok(signed) = load_manifest(store, id) else {
            continue; // listed but not (or no longer) readable: skip rather than fail the list
        };
        let m = signed.body();
        let local = m.files.iter().all(|f| store.has(f.hash).unwrap_or(false));
        rows.push(json!({
            "model_id": id.to_string(),
            "name": m.name,
            "version": m.version,
            "author": signed.signer().to_string(),
            "files": m.files.len(),
            "bytes": m.total_size(),
            "local": local,
        }));
    }
    emit(json, json!({ "models": rows }), || {
        if rows.is_empty() {
            return "no models known yet".into();
        }
        rows.iter()
            .map(|r| {
                format!(
                    "{}  {} {}  {}{}",
                    r["model_id"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default(),
                    r["version"].as_str().unwrap_or_default(),
                    bytes(r["bytes"].as_u64().unwrap_or_default()),
                    if r["local"].as_bool().unwrap_or_default() {
                        ""
                    } else {
                        "  (not fetched)"
                    },
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn ls(store: &Store, json: bool) -> Result<ExitCode> {
    let blobs = store.list()?;
    let mut rows = Vec::with_capacity(blobs.len());
    for (hash, record) in &blobs {
        rows.push(json!({
            "hash": hash.to_string(),
            "size": record.size,
            "kind": record.kind,
            "pinned": store.is_pinned(*hash)?,
        }));
    }
    emit(json, json!({ "blobs": rows }), || {
        rows.iter()
            .map(|r| {
                format!(
                    "{}  {:>10}  {:<11} {}",
                    r["hash"].as_str().unwrap_or_default(),
                    bytes(r["size"].as_u64().unwrap_or_default()),
                    r["kind"].as_str().unwrap_or_default(),
                    if r["pinned"].as_bool().unwrap_or_default() {
                        "pinned"
                    } else {
                        ""
                    },
                )
                .trim_end()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// Imports a list of files, with one progress bar over all of them.
/// Total size of files listed as (relative path, path).
fn total_size(files: &[(String, PathBuf)]) -> u64 {
    files
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn import_files(store: &Store, files: &[(String, PathBuf)], json: bool) -> Result<Vec<FileEntry>> {
    let mut entries = output::with_progress(json, total_size(files), "importing", |progress| {
        files
            .iter()
            .map(|(rel, path)| {
                let imported = store
                    .import_file(path, progress)
                    .with_context(|| format!("adding {}", path.display()))?;
                Ok(FileEntry {
                    path: rel.clone(),
                    hash: imported.hash,
                    size: imported.size,
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    entries.sort();
    Ok(entries)
}

/// The snapshot chain of training run `name`, oldest first.
fn snapshot_chain(
    store: &Store,
    head: Option<BlobHash>,
) -> Result<Vec<(BlobHash, Signed<Snapshot>)>> {
    let mut chain = Vec::new();
    let mut next = head;
    while let Some(h) = next {
        if chain.len() >= protocol::MAX_SNAPSHOTS {
            bail!(
                "snapshot chain longer than {} (a cycle?)",
                protocol::MAX_SNAPSHOTS
            );
        }
        let bytes = store
            .read_bytes(h, Signed::<Snapshot>::MAX_BYTES as u64)
            .with_context(|| format!("reading snapshot {h}"))?;
        let snap = Signed::<Snapshot>::from_bytes(&bytes)
            .with_context(|| format!("snapshot {h} does not verify"))?;
        next = snap.body().parent;
        chain.push((h, snap));
    }
    chain.reverse();
    Ok(chain)
}

fn publish(home: &Home, path: &Path, json: bool) -> Result<ExitCode> {
    let store = &home.store;
    let package = package::read(path)?;
    let mut manifest = package.manifest;
    if manifest.runtime.kind == "onnx" && manifest.runtime.guest.is_none() {
        prepare_onnx(home, path, &package.files, &mut manifest)?;
    }
    manifest.files = import_files(store, &package.files, json)?;
    protocol::check_files(&manifest.files).map_err(|e| anyhow::anyhow!("{e}"))?;
    manifest.snapshots = snapshot_chain(store, store.snapshot_head(&manifest.name)?)?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    let signed = home.key.sign(manifest);
    let bytes_ = signed.to_bytes();
    if bytes_.len() > Signed::<Manifest>::MAX_BYTES {
        bail!(
            "the manifest is {} bytes, over the {} limit (too many files?)",
            bytes_.len(),
            Signed::<Manifest>::MAX_BYTES
        );
    }
    let id = protocol::model_id(&bytes_);
    let links = signed.body().referenced_blobs();
    store.import_bytes(&bytes_, "manifest", links)?;
    store.index_manifest(id)?;
    store.pin(id.blob())?;
    let m = signed.body();
    emit(
        json,
        json!({
            "model_id": id.to_string(),
            "name": m.name,
            "version": m.version,
            "files": m.files.len(),
            "bytes": m.total_size(),
            "snapshots": m.snapshots.len(),
            "author": signed.signer().to_string(),
        }),
        || id.to_string(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes an ONNX package callable: names the built-in runner (imported as a blob) as its
/// guest and, when `moxnet.toml` declares no interface, takes the interface the runner reports
/// for the graph (with the package's `runner.json` pre- and post-processing applied).
fn prepare_onnx(
    home: &Home,
    path: &Path,
    files: &[(String, PathBuf)],
    manifest: &mut Manifest,
) -> Result<()> {
    let runner = crate::inference::runner_path()?;
    let guest = home
        .store
        .import_file(&runner, &mut |_| {})
        .with_context(|| format!("adding the runner {}", runner.display()))?;
    manifest.runtime.guest = Some(guest.hash);
    if !manifest.interface.inputs.is_empty() || !manifest.interface.outputs.is_empty() {
        return Ok(());
    }
    // The runner sees the package read-only at /model: the folder itself, or for a bare .onnx
    // file a scratch folder holding just that file.
    let scratch;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        scratch = tempfile::tempdir().context("creating a scratch folder")?;
        for (rel, full) in files {
            std::fs::copy(full, scratch.path().join(rel))
                .with_context(|| format!("copying {}", full.display()))?;
        }
        scratch.path().to_path_buf()
    };
    let wasm = std::fs::read(&runner).with_context(|| format!("reading {}", runner.display()))?;
    let sandbox = sandbox::Sandbox::new(sandbox::SandboxConfig {
        cache_dir: Some(home.dir.join("cache/wasm")),
        max_concurrent: 1,
        ..sandbox::SandboxConfig::default()
    })?;
    let model = sandbox
        .load(&wasm, &dir, manifest.runtime.entry.as_deref())
        .context("loading the model in the sandbox to read its interface")?;
    let spec = |s: &graph::Spec| -> Result<protocol::TensorSpec> {
        Ok(protocol::TensorSpec {
            name: s.name.clone(),
            dtype: protocol::DType::parse(s.dtype.name())
                .with_context(|| format!("tensor {:?}: dtype {}", s.name, s.dtype))?,
            shape: s
                .shape
                .iter()
                .map(|d| match d {
                    graph::Dim::Fixed(n) => Dim::Fixed(*n),
                    graph::Dim::Symbolic(n) => Dim::Symbolic(n.clone()),
                })
                .collect(),
        })
    };
    manifest.interface = protocol::Interface {
        inputs: model.inputs().iter().map(spec).collect::<Result<_>>()?,
        outputs: model.outputs().iter().map(spec).collect::<Result<_>>()?,
    };
    Ok(())
}

/// Reads `--input`: JSON text, or `@FILE` (`@-`: stdin).
fn read_input(input: &str) -> Result<Value> {
    let text = match input.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading the input from stdin")?;
            s
        }
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        None => input.to_string(),
    };
    let value: Value = serde_json::from_str(&text).context("the input is not valid JSON")?;
    crate::inference::expand_input(value)
}

/// `moxnet call`: on the running node when there is one (fetching the model first if it is
/// not here), else in this process.
/// `moxnet offers`: the compute offers the node knows.
fn offers(api: &crate::api_client::Api, json: bool) -> Result<ExitCode> {
    let (status, answer) = api.request("GET", "/api/v1/offers", None)?;
    if status != 200 {
        bail!("the node refused (HTTP {status}): {answer}");
    }
    emit(json, answer.clone(), || {
        let list = answer["offers"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            return "no compute offers heard yet".to_string();
        }
        list.iter()
            .map(|o| {
                format!(
                    "{}  {} cores  {} MiB  price {}/Mfuel  models {}  {}  latency {}  failures {}",
                    o["peer_id"].as_str().unwrap_or("?"),
                    o["cores"],
                    o["memory_mib"],
                    o["price_per_mfuel"],
                    o["models"].as_array().map_or(0, Vec::len),
                    o["backends"]
                        .as_array()
                        .map(|b| b
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("+"))
                        .unwrap_or_default(),
                    o["latency_ms"]
                        .as_f64()
                        .map_or_else(|| "unmeasured".to_string(), |l| format!("{l:.1} ms")),
                    o["failures"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn call(
    dir: &Path,
    id: &str,
    input: &str,
    on: Option<&str>,
    verify: bool,
    json: bool,
) -> Result<ExitCode> {
    let id = ModelId(parse_hash(id)?);
    let request = read_input(input)?;
    let forced = on.is_some() || verify;
    let mut query = Vec::new();
    if let Some(peer) = on {
        query.push(format!("on={peer}"));
    }
    if verify {
        query.push("verify=true".to_string());
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let api = crate::api_client::Api::find(dir)?;
    if forced && api.is_none() {
        bail!("--on and --verify run the call on peers: start `moxnet node` first");
    }
    let answer = match api {
        Some(api) => {
            let (status, meta) = if forced {
                (200, Value::Null)
            } else {
                api.request("GET", &format!("/v2/models/{id}"), None)?
            };
            if status == 404 {
                // Not here: a provider runs it if the node knows one, else fetch it first.
                let (_, offers) = api.request("GET", "/api/v1/offers", None)?;
                if offers["offers"].as_array().is_none_or(Vec::is_empty) {
                    crate::api_client::fetch(&api, &id.blob(), json)?;
                }
            } else if status != 200 {
                bail!(
                    "{}",
                    meta["error"]
                        .as_str()
                        .unwrap_or("the node refused the call")
                );
            }
            let (status, answer) = api.request(
                "POST",
                &format!("/v2/models/{id}/infer{query}"),
                Some(&request),
            )?;
            if status != 200 {
                let details = match answer.get("details") {
                    Some(d) => format!("\n{}", serde_json::to_string_pretty(d)?),
                    None => String::new(),
                };
                bail!(
                    "the call failed (HTTP {status}): {}{details}",
                    answer["error"].as_str().unwrap_or("no reason given")
                );
            }
            answer
        }
        None => {
            let home = Home::open(dir)?;
            let config = crate::config::load(dir, &crate::cli::NodeArgs::default())?;
            let (sandbox_config, limits) = config.inference.sandbox();
            let engine = crate::inference::Inference::new(
                dir,
                sandbox::SandboxConfig {
                    // One call in this process: it runs on the instance loading initialised.
                    warm_instances: 1,
                    ..sandbox_config
                },
                limits,
            )?;
            let model = engine.load(&home.store, id).map_err(|e| {
                if e.status == 404 {
                    anyhow::anyhow!(
                        "model {id} is not on this node; start `moxnet node` and call again to fetch it"
                    )
                } else {
                    anyhow::anyhow!("{e}")
                }
            })?;
            engine
                .infer(&model, &request)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    emit(json, answer.clone(), || describe_outputs(&answer));
    Ok(ExitCode::SUCCESS)
}

/// A short human rendering of an OIP response: each output's type, shape and first values.
fn describe_outputs(answer: &Value) -> String {
    let mut lines = Vec::new();
    for o in answer["outputs"].as_array().into_iter().flatten() {
        let data = o["data"].as_array().cloned().unwrap_or_default();
        let shown: Vec<String> = data.iter().take(8).map(|v| v.to_string()).collect();
        let more = if data.len() > 8 {
            format!(", … ({} values)", data.len())
        } else {
            String::new()
        };
        lines.push(format!(
            "{} {} {}: [{}{more}]",
            o["name"].as_str().unwrap_or("?"),
            o["datatype"].as_str().unwrap_or("?"),
            o["shape"],
            shown.join(", ")
        ));
    }
    let p = &answer["parameters"];
    let place = match p["provider"].as_str() {
        Some(peer) => format!(" on {peer} ({})", p["backend"].as_str().unwrap_or("?")),
        None => String::new(),
    };
    lines.push(format!(
        "fuel {}, {:.1} ms{place}",
        p["fuel"],
        p["elapsed_ms"].as_f64().unwrap_or(0.0)
    ));
    if let Some(by) = p["verified_by"].as_array() {
        let by: Vec<&str> = by.iter().filter_map(Value::as_str).collect();
        lines.push(format!(
            "verified: {} agree on the outputs",
            by.join(" and ")
        ));
    }
    lines.join("\n")
}

pub fn load_manifest(store: &Store, id: ModelId) -> Result<Signed<Manifest>> {
    let bytes = store
        .read_bytes(id.blob(), Signed::<Manifest>::MAX_BYTES as u64)
        .with_context(|| format!("reading model {id}"))?;
    Signed::<Manifest>::from_bytes(&bytes)
        .with_context(|| format!("{id} is not a valid signed manifest"))
}

fn dims(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn dims_json(shape: &[Dim]) -> Value {
    Value::Array(
        shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => json!(n),
                Dim::Symbolic(s) => json!(s),
            })
            .collect(),
    )
}

/// The manifest as JSON, for `show --json`.
fn manifest_json(id: ModelId, signed: &Signed<Manifest>) -> Value {
    let m = signed.body();
    let tensors = |list: &[protocol::TensorSpec]| -> Value {
        list.iter()
            .map(|t| json!({ "name": t.name, "datatype": t.dtype.name(), "shape": dims_json(&t.shape) }))
            .collect()
    };
    json!({
        "model_id": id.to_string(),
        "author": signed.signer().to_string(),
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "license": m.license,
        "tags": m.tags,
        "authors": m.authors,
        "interface": { "inputs": tensors(&m.interface.inputs), "outputs": tensors(&m.interface.outputs) },
        "runtime": {
            "kind": m.runtime.kind,
            "entry": m.runtime.entry,
            "guest": m.runtime.guest.map(|g| g.to_string()),
            "memory_mib": m.runtime.memory_mib,
        },
        "files": m.files.iter().map(|f| json!({ "path": f.path, "hash": f.hash.to_string(), "size": f.size })).collect::<Vec<_>>(),
        "datasets": m.datasets.iter().map(|d| json!({ "hash": d.hash.to_string(), "description": d.description })).collect::<Vec<_>>(),
        "parent": m.parent.map(|p| p.to_string()),
        "snapshots": m.snapshots.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    })
}

fn show(store: &Store, id: ModelId, json: bool) -> Result<ExitCode> {
    let signed = load_manifest(store, id)?;
    let m = signed.body();
    emit(json, manifest_json(id, &signed), || {
        let mut out = vec![
            format!("model    {id}"),
            format!("name     {} {}", m.name, m.version),
            format!("author   {} (signature verified)", signed.signer()),
        ];
        if !m.description.is_empty() {
            out.push(format!("about    {}", m.description));
        }
        if !m.license.is_empty() {
            out.push(format!("license  {}", m.license));
        }
        if !m.tags.is_empty() {
            out.push(format!("tags     {}", m.tags.join(", ")));
        }
        if !m.authors.is_empty() {
            out.push(format!("authors  {}", m.authors.join(", ")));
        }
        out.push(format!(
            "runtime  {}{}",
            m.runtime.kind,
            m.runtime
                .entry
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        for t in &m.interface.inputs {
            out.push(format!(
                "input    {} {} {}",
                t.name,
                t.dtype.name(),
                dims(&t.shape)
            ));
        }
        for t in &m.interface.outputs {
            out.push(format!(
                "output   {} {} {}",
                t.name,
                t.dtype.name(),
                dims(&t.shape)
            ));
        }
        if let Some(p) = m.parent {
            out.push(format!("parent   {p}"));
        }
        for d in &m.datasets {
            out.push(format!("dataset  {} {}", d.hash, d.description));
        }
        out.push(format!(
            "files    {} ({})",
            m.files.len(),
            bytes(m.total_size())
        ));
        for f in &m.files {
            out.push(format!(
                "  {}  {:>10}  {}",
                f.hash.short(),
                bytes(f.size),
                f.path
            ));
        }
        if !m.snapshots.is_empty() {
            out.push(format!(
                "snapshots {} (see `moxnet history {id}`)",
                m.snapshots.len()
            ));
        }
        out.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn parse_metric(s: &str) -> Result<(String, f64)> {
    let (name, value) = s
        .split_once('=')
        .with_context(|| format!("metric {s:?} is not NAME=VALUE"))?;
    let value: f64 = value
        .trim()
        .parse()
        .with_context(|| format!("metric {name:?}: {value:?} is not a number"))?;
    let name = name.trim();
    if name.is_empty() || name.len() > protocol::MAX_SHORT_TEXT {
        bail!(
            "metric name {name:?} must be 1 to {} bytes",
            protocol::MAX_SHORT_TEXT
        );
    }
    Ok((name.to_string(), value))
}

fn snapshot_add(
    home: &Home,
    package_dir: &Path,
    step: u64,
    metrics: &[String],
    weights: &[PathBuf],
    json: bool,
) -> Result<ExitCode> {
    let store = &home.store;
    let toml_path = package_dir.join(package::PACKAGE_FILE);
    let text = std::fs::read_to_string(&toml_path)
        .with_context(|| format!("{} has no {}", package_dir.display(), package::PACKAGE_FILE))?;
    let name = package::parse_toml(&text)
        .with_context(|| format!("in {}", toml_path.display()))?
        .name;
    let metrics: BTreeMap<String, f64> = metrics
        .iter()
        .map(|m| parse_metric(m))
        .collect::<Result<_>>()?;
    let mut files = Vec::with_capacity(weights.len());
    for w in weights {
        let rel = w
            .strip_prefix(package_dir)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_string)
            .or_else(|| w.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .with_context(|| format!("{} has no UTF-8 file name", w.display()))?;
        files.push((rel, w.clone()));
    }
    let weights = import_files(store, &files, json)?;
    protocol::check_files(&weights).map_err(|e| anyhow::anyhow!("weights: {e}"))?;
    let parent = store.snapshot_head(&name)?;
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let snapshot = Snapshot {
        model: name.clone(),
        step,
        time_ms,
        metrics,
        weights,
        parent,
    };
    let links = snapshot
        .weights
        .iter()
        .map(|w| w.hash)
        .chain(snapshot.parent)
        .collect();
    let signed = home.key.sign(snapshot);
    let imported = store.import_bytes(&signed.to_bytes(), "snapshot", links)?;
    // The newest snapshot is pinned; it keeps its ancestors and their weights alive.
    store.pin(imported.hash)?;
    if let Some(p) = parent {
        store.unpin(p)?;
    }
    store.set_snapshot_head(&name, imported.hash)?;
    emit(
        json,
        json!({ "snapshot": imported.hash.to_string(), "model": name, "step": step, "parent": parent.map(|p| p.to_string()) }),
        || imported.hash.to_string(),
    );
    Ok(ExitCode::SUCCESS)
}

fn history(store: &Store, target: &str, json: bool) -> Result<ExitCode> {
    let chain = if Path::new(target).is_dir() {
        let text = std::fs::read_to_string(Path::new(target).join(package::PACKAGE_FILE))
            .with_context(|| format!("{target} has no {}", package::PACKAGE_FILE))?;
        let name = package::parse_toml(&text)?.name;
        snapshot_chain(store, store.snapshot_head(&name)?)?
    } else {
        let id = ModelId(parse_hash(target)?);
        let manifest = load_manifest(store, id)?;
        let head = manifest.body().snapshots.last().copied();
        let chain = snapshot_chain(store, head)?;
        let listed: Vec<BlobHash> = chain.iter().map(|(h, _)| *h).collect();
        if listed != manifest.body().snapshots {
            bail!("model {id} lists snapshots that are not one parent-linked chain");
        }
        chain
    };
    let rows: Vec<Value> = chain
        .iter()
        .map(|(h, s)| {
            let b = s.body();
            json!({
                "snapshot": h.to_string(),
                "step": b.step,
                "time_ms": b.time_ms,
                "metrics": b.metrics,
                "weights": b.weights.iter().map(|w| json!({ "path": w.path, "hash": w.hash.to_string(), "size": w.size })).collect::<Vec<_>>(),
                "parent": b.parent.map(|p| p.to_string()),
            })
        })
        .collect();
    emit(json, json!({ "snapshots": rows }), || {
        if chain.is_empty() {
            return "no snapshots".into();
        }
        chain
            .iter()
            .map(|(h, s)| {
                let b = s.body();
                let metrics: Vec<String> =
                    b.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let weight_bytes: u64 = b.weights.iter().map(|w| w.size).sum();
                format!(
                    "step {:>8}  {}  {}  weights {} ({})",
                    b.step,
                    h.short(),
                    metrics.join(" "),
                    b.weights.len(),
                    bytes(weight_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn verify(store: &Store, hash: Option<&str>, json: bool) -> Result<ExitCode> {
    let only = hash.map(parse_hash).transpose()?;
    let report = store.verify(only)?;
    let problems: Vec<Value> = report
        .problems
        .iter()
        .map(|(h, p)| json!({ "hash": h.to_string(), "problem": p.to_string() }))
        .collect();
    emit(
        json,
        json!({ "checked": report.checked, "bytes": report.bytes, "ok": report.is_ok(), "problems": problems }),
        || {
            let mut out: Vec<String> = report
                .problems
                .iter()
                .map(|(h, p)| format!("{h}  {p}"))
                .collect();
            out.push(format!(
                "checked {} blobs ({}): {}",
                report.checked,
                bytes(report.bytes),
                if report.is_ok() {
                    "all intact".to_string()
                } else {
                    format!("{} with problems", report.problems.len())
                }
            ));
            out.join("\n")
        },
    );
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
