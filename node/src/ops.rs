//! The store operations behind the CLI and `/api/v1`: each takes an open home and returns the
//! typed answer of its route ([`api::dto`]). The CLI calls them directly when no node runs on
//! the home; the node calls them for its API clients (it holds the store open). Rendering is
//! elsewhere (`render.rs`), so nothing here prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use api::dto::{
    Added, BlobList, BlobRow, DatasetView, DimView, Exported, FileView, GcReport, History,
    InterfaceView, ModelList, ModelRow, ModelView, PinChange, Problem, Published, ReindexReport,
    RuntimeView, SnapshotAdded, SnapshotRequest, SnapshotView, TensorView, VerifyReport,
};
use catalog::Catalog;
use protocol::{BlobHash, Collection, Dim, FileEntry, Manifest, ModelId, Object, Signed, Snapshot};
use store::Store;

use crate::home::Home;
use crate::output;
use crate::package;

/// Something a request names is not in the store (HTTP 404).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// A request is malformed (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Parses a hash argument with a message that says what a hash looks like.
pub fn parse_hash(s: &str) -> Result<BlobHash> {
    s.trim()
        .parse::<BlobHash>()
        .map_err(|e| BadRequest(format!("{s:?} is not a hash: {e}")).into())
}

/// A model's manifest from the catalogue (verified when it arrived), or 404.
pub fn manifest(catalog: &Catalog, id: ModelId) -> Result<Arc<Signed<Manifest>>> {
    catalog
        .get(id)
        .ok_or_else(|| NotFound(format!("model {id} is not in the store (fetch it first)")).into())
}

/// Like [`manifest`], also adopting a manifest that is in the store as a plain blob (e.g.
/// `moxnet add model.manifest`): its signature is checked once, and it is catalogued.
fn manifest_or_blob(home: &Home, id: ModelId) -> Result<Arc<Signed<Manifest>>> {
    if home.catalog.get(id).is_none() && home.store.has(id.blob())? {
        let bytes = home
            .store
            .read_bytes(id.blob(), Signed::<Manifest>::MAX_BYTES as u64)
            .with_context(|| format!("reading {id}"))?;
        home.catalog
            .insert_bytes(&bytes)
            .with_context(|| format!("{id} is not a valid signed manifest"))?;
    }
    manifest(&home.catalog, id)
}

/// `moxnet add`: a file or folder into the store, pinned.
pub fn add(home: &Home, path: &Path, quiet: bool) -> Result<Added> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BadRequest(format!("{} does not exist", path.display()))
        } else {
            BadRequest(format!("{}: {e}", path.display()))
        }
    })?;
    let store = &home.store;
    let imported = if meta.is_dir() {
        let files = store::walk(path)?;
        output::with_progress(quiet, total_size(&files), "adding", |progress| {
            store
                .import_dir(path, progress)
                .map(|(imported, _)| imported)
        })
    } else {
        output::with_progress(quiet, meta.len(), "adding", |progress| {
            store.import_file(path, progress)
        })
    }
    .with_context(|| format!("adding {}", path.display()))?;
    store.pin(imported.hash)?;
    // Added files may be what a known model was missing.
    home.catalog.refresh_all()?;
    Ok(Added {
        hash: imported.hash.to_string(),
        size: imported.size,
        new: imported.new,
        kind: if meta.is_dir() { "collection" } else { "file" }.into(),
    })
}

/// `moxnet get`: a blob, folder or model package written to `output` (verified).
pub fn export(home: &Home, hash: BlobHash, output: &Path) -> Result<Exported> {
    let store = &home.store;
    let record = store.record(hash)?.ok_or_else(|| {
        NotFound(format!(
            "{hash} is not in the store (add or fetch it first)"
        ))
    })?;
    let (kind, written) = match record.kind.as_str() {
        "collection" => {
            let bytes = store.read_bytes(hash, protocol::MAX_COLLECTION_BYTES as u64)?;
            let collection = Collection::from_bytes(&bytes)
                .with_context(|| format!("decoding folder {hash}"))?;
            ("folder", store.export_files(&collection.entries, output)?)
        }
        "manifest" => {
            let manifest = manifest(&home.catalog, ModelId(hash))?;
            ("model", store.export_files(&manifest.body().files, output)?)
        }
        _ => ("file", store.export(hash, output)?),
    };
    Ok(Exported {
        hash: hash.to_string(),
        kind: kind.into(),
        path: output.to_path_buf(),
        bytes: written,
    })
}

/// `moxnet models`: every model this node knows, local or not yet fetched.
pub fn models(catalog: &Catalog) -> ModelList {
    let models = catalog
        .entries()
        .into_iter()
        .map(|e| {
            let m = e.manifest.body();
            ModelRow {
                model_id: e.id.to_string(),
                name: m.name.clone(),
                version: m.version.clone(),
                author: e.manifest.signer().to_string(),
                files: m.files.len(),
                bytes: m.total_size(),
                local: e.local,
            }
        })
        .collect();
    ModelList { models }
}

/// `moxnet ls`: the blobs in the store.
pub fn blobs(store: &Store) -> Result<BlobList> {
    let mut blobs = Vec::new();
    for (hash, record) in store.list()? {
        blobs.push(BlobRow {
            hash: hash.to_string(),
            size: record.size,
            kind: record.kind,
            pinned: store.is_pinned(hash)?,
        });
    }
    Ok(BlobList { blobs })
}

/// Total size of files listed as (relative path, path).
fn total_size(files: &[(String, PathBuf)]) -> u64 {
    files
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Imports a list of files, with one progress bar over all of them.
fn import_files(store: &Store, files: &[(String, PathBuf)], quiet: bool) -> Result<Vec<FileEntry>> {
    let mut entries = output::with_progress(quiet, total_size(files), "importing", |progress| {
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

/// `moxnet publish`: a package folder or bare `.onnx` file packed into a signed model.
pub fn publish(home: &Home, path: &Path, quiet: bool) -> Result<Published> {
    let store = &home.store;
    let package = package::read(path)?;
    let mut manifest = package.manifest;
    manifest.royalty = package.royalty.map(|r| r.resolve(home.key.node_id()));
    if manifest.runtime.kind == "onnx" && manifest.runtime.guest.is_none() {
        prepare_onnx(home, path, &package.files, &mut manifest)?;
    }
    if manifest.runtime.kind == crate::language::KIND {
        prepare_gguf(&package.files, &mut manifest)?;
    }
    manifest.files = import_files(store, &package.files, quiet)?;
    protocol::check_files(&manifest.files).map_err(|e| anyhow::anyhow!("{e}"))?;
    manifest.snapshots = home
        .catalog
        .snapshot_chain(store.snapshot_head(&manifest.name)?)?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    let signed = home.key.sign(manifest);
    let size = signed.to_bytes().len();
    if size > Signed::<Manifest>::MAX_BYTES {
        bail!(
            "the manifest is {size} bytes, over the {} limit (too many files?)",
            Signed::<Manifest>::MAX_BYTES
        );
    }
    let id = home.catalog.insert(signed)?;
    store.pin(id.blob())?;
    let signed = self::manifest(&home.catalog, id)?;
    let m = signed.body();
    Ok(Published {
        model_id: id.to_string(),
        name: m.name.clone(),
        version: m.version.clone(),
        files: m.files.len(),
        bytes: m.total_size(),
        snapshots: m.snapshots.len(),
        author: signed.signer().to_string(),
    })
}

/// Reads a language model's GGUF header (the runtime entry; checked, never trusted) into the
/// manifest: architecture, context length, quantisation, parameters, chat template; and, when
/// `moxnet.toml` declares no interface, gives it the text-in, text-out interface of `/v2`.
fn prepare_gguf(files: &[(String, PathBuf)], manifest: &mut Manifest) -> Result<()> {
    let entry = match &manifest.runtime.entry {
        Some(e) => e.clone(),
        None => {
            let ggufs: Vec<&String> = files
                .iter()
                .map(|(rel, _)| rel)
                .filter(|rel| rel.ends_with(".gguf"))
                .collect();
            match ggufs.as_slice() {
                [one] => (*one).clone(),
                _ => bail!(
                    "a gguf package names its model file: [runtime] entry = \"model.gguf\" ({} .gguf files here)",
                    ggufs.len()
                ),
            }
        }
    };
    let full = files
        .iter()
        .find(|(rel, _)| *rel == entry)
        .map(|(_, full)| full)
        .with_context(|| format!("runtime entry {entry:?} is not a file of the package"))?;
    let size = std::fs::metadata(full)
        .with_context(|| format!("reading {}", full.display()))?
        .len();
    let header = crate::language::read_header(full, size)
        .with_context(|| format!("{} is not a usable GGUF model", full.display()))?;
    let template = header
        .chat_template
        .filter(|t| t.len() <= protocol::MAX_CHAT_TEMPLATE);
    manifest.runtime.entry = Some(entry);
    manifest.runtime.language_model = Some(protocol::LanguageModel {
        architecture: header.architecture,
        context_length: header.context_length,
        quantisation: header.quantisation,
        parameters: header.parameters,
        chat_template: template,
    });
    if manifest.interface.inputs.is_empty() && manifest.interface.outputs.is_empty() {
        let text = |name: &str| protocol::TensorSpec {
            name: name.into(),
            dtype: protocol::DType::Bytes,
            shape: vec![Dim::Fixed(1)],
        };
        manifest.interface = protocol::Interface {
            inputs: vec![text("prompt")],
            outputs: vec![text("text")],
        };
    }
    if manifest.tags.is_empty() {
        manifest.tags = vec!["llm".into(), "gguf".into()];
    }
    Ok(())
}

/// The sandbox publishes read interfaces with (one per process, kept: it keeps the runner
/// compiled, so a node publishing many models loads it once), for the wasm cache in `cache`.
fn interface_sandbox(cache: &Path) -> Result<Arc<sandbox::Sandbox>> {
    static KEPT: Mutex<Option<(PathBuf, Arc<sandbox::Sandbox>)>> = Mutex::new(None);
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((dir, sandbox)) = kept.as_ref()
        && dir == cache
    {
        return Ok(sandbox.clone());
    }
    let sandbox = Arc::new(sandbox::Sandbox::new(sandbox::SandboxConfig {
        cache_dir: Some(cache.to_path_buf()),
        max_concurrent: 1,
        // It only asks models for their interface.
        snapshot_after: None,
        ..sandbox::SandboxConfig::default()
    })?);
    *kept = Some((cache.to_path_buf(), sandbox.clone()));
    Ok(sandbox)
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
    let model = interface_sandbox(&home.dir.join("cache/wasm"))?
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

fn file_views(files: &[FileEntry]) -> Vec<FileView> {
    files
        .iter()
        .map(|f| FileView {
            path: f.path.clone(),
            hash: f.hash.to_string(),
            size: f.size,
        })
        .collect()
}

/// `moxnet show`: a model's manifest (its signature was checked when it arrived).
pub fn show(home: &Home, id: ModelId) -> Result<ModelView> {
    let signed = manifest_or_blob(home, id)?;
    let m = signed.body();
    let tensors = |list: &[protocol::TensorSpec]| -> Vec<TensorView> {
        list.iter()
            .map(|t| TensorView {
                name: t.name.clone(),
                datatype: t.dtype.name().to_string(),
                shape: t
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => DimView::Fixed(*n),
                        Dim::Symbolic(s) => DimView::Symbolic(s.clone()),
                    })
                    .collect(),
            })
            .collect()
    };
    Ok(ModelView {
        model_id: id.to_string(),
        author: signed.signer().to_string(),
        name: m.name.clone(),
        version: m.version.clone(),
        description: m.description.clone(),
        license: m.license.clone(),
        tags: m.tags.clone(),
        authors: m.authors.clone(),
        interface: InterfaceView {
            inputs: tensors(&m.interface.inputs),
            outputs: tensors(&m.interface.outputs),
        },
        runtime: RuntimeView {
            kind: m.runtime.kind.clone(),
            entry: m.runtime.entry.clone(),
            guest: m.runtime.guest.map(|g| g.to_string()),
            memory_mib: m.runtime.memory_mib,
            language_model: m.runtime.language_model.as_ref().map(|l| {
                api::dto::LanguageModelView {
                    architecture: l.architecture.clone(),
                    context_length: l.context_length,
                    quantisation: l.quantisation.clone(),
                    parameters: l.parameters,
                    chat_template: l.chat_template.clone(),
                }
            }),
        },
        files: file_views(&m.files),
        datasets: m
            .datasets
            .iter()
            .map(|d| DatasetView {
                hash: d.hash.to_string(),
                description: d.description.clone(),
            })
            .collect(),
        parent: m.parent.map(|p| p.to_string()),
        children: home
            .catalog
            .derived(id)
            .iter()
            .map(|c| c.to_string())
            .collect(),
        snapshots: m.snapshots.iter().map(|s| s.to_string()).collect(),
        royalty: m.royalty.map(|r| api::dto::RoyaltyView {
            payee: r.payee.to_string(),
            bps: r.bps,
        }),
        votes: None,
    })
}

/// Parses `NAME=VALUE` metric arguments.
pub fn parse_metrics(args: &[String]) -> Result<BTreeMap<String, f64>> {
    args.iter()
        .map(|s| {
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
        })
        .collect()
}

/// The training-run name of a package folder (its `moxnet.toml`'s package name).
pub fn run_name(package_dir: &Path) -> Result<String> {
    let toml_path = package_dir.join(package::PACKAGE_FILE);
    let text = std::fs::read_to_string(&toml_path)
        .with_context(|| format!("{} has no {}", package_dir.display(), package::PACKAGE_FILE))?;
    Ok(package::parse_toml(&text)
        .with_context(|| format!("in {}", toml_path.display()))?
        .name)
}

/// `moxnet snapshot add`: a signed training snapshot, appended to its run's chain.
pub fn snapshot(home: &Home, request: &SnapshotRequest, quiet: bool) -> Result<SnapshotAdded> {
    let store = &home.store;
    let name = &request.model;
    if name.is_empty() || name.len() > protocol::MAX_SHORT_TEXT {
        return Err(BadRequest(format!("run name {name:?} is empty or too long")).into());
    }
    if let Some((_, bad)) = request.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(BadRequest(format!("metric value {bad} is not a finite number")).into());
    }
    let weights = import_files(store, &request.weights, quiet)?;
    protocol::check_files(&weights).map_err(|e| BadRequest(format!("weights: {e}")))?;
    let parent = store.snapshot_head(name)?;
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let snapshot = Snapshot {
        model: name.clone(),
        step: request.step,
        time_ms,
        metrics: request.metrics.clone(),
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
    store.set_snapshot_head(name, imported.hash)?;
    Ok(SnapshotAdded {
        snapshot: imported.hash.to_string(),
        model: name.clone(),
        step: request.step,
        parent: parent.map(|p| p.to_string()),
    })
}

fn history_of(chain: &[(BlobHash, Arc<Signed<Snapshot>>)]) -> History {
    History {
        snapshots: chain
            .iter()
            .map(|(h, s)| {
                let b = s.body();
                SnapshotView {
                    snapshot: h.to_string(),
                    step: b.step,
                    time_ms: b.time_ms,
                    metrics: b.metrics.clone(),
                    weights: file_views(&b.weights),
                    parent: b.parent.map(|p| p.to_string()),
                }
            })
            .collect(),
    }
}

/// `moxnet history <id>`: the snapshots a published model links.
pub fn model_history(catalog: &Catalog, id: ModelId) -> Result<History> {
    let manifest = manifest(catalog, id)?;
    let head = manifest.body().snapshots.last().copied();
    let chain = catalog.snapshot_chain(head)?;
    let listed: Vec<BlobHash> = chain.iter().map(|(h, _)| *h).collect();
    if listed != manifest.body().snapshots {
        bail!("model {id} lists snapshots that are not one parent-linked chain");
    }
    Ok(history_of(&chain))
}

/// `moxnet history <folder>`: the snapshots recorded so far for a training run.
pub fn run_history(home: &Home, name: &str) -> Result<History> {
    let head = home.store.snapshot_head(name)?;
    Ok(history_of(&home.catalog.snapshot_chain(head)?))
}

/// `moxnet pin` / `moxnet unpin`.
pub fn set_pin(store: &Store, hash: BlobHash, pin: bool) -> Result<PinChange> {
    let was_pinned = if pin {
        let was = store.is_pinned(hash)?;
        store.pin(hash).with_context(|| format!("pinning {hash}"))?;
        was
    } else {
        store.unpin(hash)?
    };
    Ok(PinChange {
        hash: hash.to_string(),
        pinned: pin,
        was_pinned,
    })
}

/// `moxnet gc`.
pub fn gc(home: &Home) -> Result<GcReport> {
    let report = home.store.gc()?;
    if report.blobs_removed > 0 {
        // Models whose files went are no longer local (their manifests stay: see `Store::gc`).
        home.catalog.refresh_all()?;
    }
    Ok(GcReport {
        blobs_removed: report.blobs_removed,
        bytes_freed: report.bytes_freed,
        orphans: report.orphans,
        partials_removed: report.partials_removed,
    })
}

/// `moxnet reindex`: adopts blob files the index lost (pinned), and the models among them.
pub fn reindex(home: &Home) -> Result<ReindexReport> {
    let report = home.store.reindex()?;
    let mut models = 0;
    for id in home.store.manifests()? {
        if home.catalog.get(id).is_none() {
            let bytes = home
                .store
                .read_bytes(id.blob(), Signed::<Manifest>::MAX_BYTES as u64)?;
            home.catalog.insert_bytes(&bytes)?;
            models += 1;
        }
    }
    home.catalog.refresh_all()?;
    Ok(ReindexReport {
        adopted: report.adopted,
        adopted_bytes: report.adopted_bytes,
        removed: report.removed,
        models,
    })
}

/// `moxnet verify`.
pub fn verify(store: &Store, only: Option<BlobHash>) -> Result<VerifyReport> {
    let report = store.verify(only)?;
    Ok(VerifyReport {
        checked: report.checked,
        bytes: report.bytes,
        ok: report.is_ok(),
        problems: report
            .problems
            .iter()
            .map(|(h, p)| Problem {
                hash: h.to_string(),
                problem: p.to_string(),
            })
            .collect(),
    })
}

/// Revokes the home's key with no node running: the revocation is kept in the store's `votes`
/// tree, where the node finds it at its next start (dropping this key's votes then) and passes
/// it on in its vote syncs.
pub fn revoke(home: &Home, reason: String) -> Result<api::dto::RevokeView> {
    if reason.len() > protocol::vote::MAX_REVOCATION_REASON {
        bail!(
            "the reason is {} bytes; at most {}",
            reason.len(),
            protocol::vote::MAX_REVOCATION_REASON
        );
    }
    let signed = home.key.sign(protocol::vote::Revocation {
        issued_ms: crate::compute::now_ms(),
        reason,
    });
    let envelope = signed.to_bytes();
    let id = BlobHash::of(&envelope);
    let tree = home.store.open_tree("votes").context("opening the votes")?;
    tree.insert(id.as_bytes(), envelope)?;
    tree.flush()?;
    Ok(api::dto::RevokeView {
        node_id: home.key.node_id().to_string(),
        revocation_id: id.to_string(),
        dropped_votes: 0,
    })
}
