//! Inference on this node: models run in the wasmtime sandbox. Requests and answers are the
//! typed Open Inference Protocol v2 of `api::oip`; this module maps their raw tensors onto the
//! sandbox's (filling in a datatype the request left out from the model's interface).
//!
//! A model runs from its package, materialised once into `<home>/run/<model id>/` from the
//! store (verified bytes, written atomically), with its runtime's guest: the blob the manifest
//! names, or the built-in ONNX runner for `kind = "onnx"` packages without one. Loaded models
//! stay in memory; every call gets a fresh instance (see the `sandbox` crate).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use api::oip::{InferRequest, InferResponse, ModelMetadata, RawTensor, TensorMetadata};
use catalog::Catalog;
use graph::{DType, Dim, Spec, Tensor};
use protocol::{BlobHash, Manifest, ModelId, Object, Signed};
use sandbox::{CallLimits, Outcome, Sandbox, SandboxConfig, SandboxError};
use serde_json::{Map, Value, json};
use store::Store;

/// The largest guest component a manifest may name.
const MAX_GUEST_BYTES: u64 = 64 << 20;
/// The runner's file name, as the guests workspace builds it.
const RUNNER_FILE: &str = "moxnet_runner.wasm";

/// Where the built-in ONNX runner is: `$MOXNET_RUNNER`, else beside the binary
/// (`<target>/<profile>/moxnet` → `<target>/wasm32-wasip2/release/moxnet_runner.wasm`, or the
/// same folder), else in the source tree's guests build.
pub fn runner_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOXNET_RUNNER") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(RUNNER_FILE));
        if let Some(target) = dir.parent() {
            candidates.push(target.join("wasm32-wasip2/release").join(RUNNER_FILE));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../guests/target/wasm32-wasip2/release")
            .join(RUNNER_FILE),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "the built-in ONNX runner is not built; run `cargo build --release --manifest-path \
             guests/Cargo.toml` (or set MOXNET_RUNNER to its .wasm); looked in {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Reads the built-in runner.
pub fn runner_bytes() -> Result<Vec<u8>> {
    let path = runner_path()?;
    std::fs::read(&path).with_context(|| format!("reading the runner {}", path.display()))
}

/// Why a call failed, with the HTTP status OIP clients expect.
#[derive(Debug)]
pub struct CallError {
    /// HTTP status: 400 bad request, 404 unknown model, 503 busy, 500 model or node failure.
    pub status: u16,
    /// What went wrong, for the caller.
    pub message: String,
    /// Evidence, when there is some (e.g. the signed results of two providers that disagree).
    pub details: Option<Value>,
}

impl CallError {
    /// An error with a status and a message.
    pub fn new(status: u16, message: impl Into<String>) -> CallError {
        CallError {
            status,
            message: message.into(),
            details: None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SandboxError> for CallError {
    fn from(e: SandboxError) -> CallError {
        let status = match &e {
            SandboxError::InvalidInput(_) => 400,
            SandboxError::Busy { .. } => 503,
            _ => 500,
        };
        CallError::new(status, e.to_string())
    }
}

/// A model loaded in the sandbox.
pub struct Loaded {
    /// The model id.
    pub id: ModelId,
    /// The package name.
    pub name: String,
    /// The package version.
    pub version: String,
    /// The runtime kind (`onnx`, `wasm`).
    pub kind: String,
    model: sandbox::Model,
}

impl Loaded {
    /// The model's inputs, as its guest reports them.
    pub fn inputs(&self) -> &[Spec] {
        self.model.inputs()
    }

    /// OIP model metadata.
    pub fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            name: self.id.to_string(),
            versions: vec![self.version.clone()],
            platform: format!("moxnet_{}", self.kind),
            inputs: self.model.inputs().iter().map(spec_metadata).collect(),
            outputs: self.model.outputs().iter().map(spec_metadata).collect(),
            parameters: parameters([("package", json!(self.name))]),
        }
    }
}

/// Models kept loaded (compiled, with a spare instance each); when a new one is loaded beyond
/// this, the least recently called gives way (calls running on it keep it until they end). A
/// provider loads whatever model a caller names, so this bounds the memory callers can make it
/// spend on loaded models.
pub const MAX_LOADED: usize = 32;

/// The node's inference engine: one sandbox and the models loaded in it.
pub struct Inference {
    sandbox: Sandbox,
    run_dir: PathBuf,
    limits: CallLimits,
    /// Loaded models, with when each was last used (a counter; see [`MAX_LOADED`]).
    loaded: Mutex<HashMap<ModelId, (Arc<Loaded>, u64)>>,
    uses: std::sync::atomic::AtomicU64,
    /// One lock per model being loaded, so that two calls do not materialise the same
    /// package at once, while other models load beside it.
    loading: Mutex<HashMap<ModelId, Arc<Mutex<()>>>>,
    /// Loads (compiles) running now, at most [`MAX_LOADING`].
    loads: (Mutex<usize>, std::sync::Condvar),
    /// What the host engine fell back from, and why.
    fallback: Option<String>,
}

/// A lock that survives a panic of its holder (the data is still consistent: every critical
/// section here is a map update).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One of the [`MAX_LOADING`] load slots, given back on drop.
struct LoadSlot<'a>(&'a (Mutex<usize>, std::sync::Condvar));

impl<'a> LoadSlot<'a> {
    fn take(slots: &'a (Mutex<usize>, std::sync::Condvar)) -> LoadSlot<'a> {
        let (count, freed) = slots;
        let mut n = lock(count);
        while *n >= MAX_LOADING {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        LoadSlot(slots)
    }
}

impl Drop for LoadSlot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *lock(count) -= 1;
        freed.notify_one();
    }
}

/// Models loaded (compiled) at once. A guest is compiled before anything can be known about
/// it, and a hostile one may be built to compile slowly (bounded by the sandbox's largest
/// component, 64 MiB): it takes one of these, never all the node's loads.
pub const MAX_LOADING: usize = 2;

impl Inference {
    /// An engine for the home at `home_dir` (compile cache in `<home>/cache/wasm`), whose
    /// guests hand their graphs to `host`'s engine.
    pub fn new(
        home_dir: &Path,
        config: SandboxConfig,
        limits: CallLimits,
        host: crate::engines::HostEngine,
    ) -> Result<Inference> {
        let sandbox = Sandbox::with_backend(
            SandboxConfig {
                cache_dir: Some(home_dir.join("cache/wasm")),
                ..config
            },
            host.backend,
        )
        .context("starting the sandbox")?;
        Ok(Inference {
            sandbox,
            run_dir: home_dir.join("run"),
            limits,
            loaded: Mutex::new(HashMap::new()),
            uses: std::sync::atomic::AtomicU64::new(0),
            loading: Mutex::new(HashMap::new()),
            loads: (Mutex::new(0), std::sync::Condvar::new()),
            fallback: host.fallback,
        })
    }

    /// What the host engine fell back from, and why (`None`: it is the one asked for).
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The sandbox's host backend, if any.
    pub fn backend(&self) -> Option<&str> {
        self.sandbox.backend_name()
    }

    /// The model if it is loaded already (which counts as a use of it).
    pub fn get(&self, id: ModelId) -> Option<Arc<Loaded>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let (model, last) = loaded.get_mut(&id)?;
        *last = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(model.clone())
    }

    /// Models loaded now.
    pub fn loaded_count(&self) -> usize {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Loads a local model (its manifest in `catalog`, its files and guest in `store`).
    pub fn load(
        &self,
        store: &Store,
        catalog: &Catalog,
        id: ModelId,
    ) -> Result<Arc<Loaded>, CallError> {
        if let Some(l) = self.get(id) {
            return Ok(l);
        }
        let this_model = lock(&self.loading).entry(id).or_default().clone();
        let loaded = {
            let _one = lock(&this_model);
            self.load_one(store, catalog, id)
        };
        // Forget the lock once nobody else waits on it.
        let mut loading = lock(&self.loading);
        if Arc::strong_count(&this_model) == 2 {
            loading.remove(&id);
        }
        loaded
    }

    /// [`Inference::load`] under `id`'s lock: waits for one of the [`MAX_LOADING`] slots.
    fn load_one(
        &self,
        store: &Store,
        catalog: &Catalog,
        id: ModelId,
    ) -> Result<Arc<Loaded>, CallError> {
        if let Some(l) = self.get(id) {
            return Ok(l);
        }
        let _slot = LoadSlot::take(&self.loads);
        let signed = local_manifest(catalog, id)?;
        let m = signed.body();
        if !catalog.is_local(id) {
            return Err(CallError::new(
                404,
                format!("model {id} is known here but its files or guest are not (fetch it first)"),
            ));
        }
        let wasm = guest_bytes(store, m).map_err(|e| CallError::new(500, format!("{e:#}")))?;
        let dir = self.run_dir.join(id.to_string());
        if !dir.exists() {
            std::fs::create_dir_all(&self.run_dir)
                .map_err(|e| CallError::new(500, format!("{}: {e}", self.run_dir.display())))?;
            store
                .export_files(&m.files, &dir)
                .map_err(|e| CallError::new(500, format!("materialising the package: {e}")))?;
        }
        let model = self
            .sandbox
            .load(&wasm, &dir, m.runtime.entry.as_deref())
            .map_err(CallError::from)?;
        let loaded = Arc::new(Loaded {
            id,
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.runtime.kind.clone(),
            model,
        });
        let mut all = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        while all.len() >= MAX_LOADED {
            let Some(stalest) = all
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(k, _)| *k)
            else {
                break;
            };
            all.remove(&stalest);
            tracing::debug!(model = %stalest, "unloaded the least recently called model");
        }
        let now = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        all.insert(id, (loaded.clone(), now));
        Ok(loaded)
    }

    /// Runs an OIP v2 infer request (already loaded model) and returns the OIP response.
    pub fn infer(
        &self,
        model: &Loaded,
        request: &InferRequest,
    ) -> Result<InferResponse, CallError> {
        let outcome = self.run(model, request, None)?;
        Ok(response(
            model.id.to_string(),
            model.version.clone(),
            request,
            &outcome.outputs,
            parameters([
                ("backend", json!(self.engine(&outcome))),
                ("fuel", json!(outcome.fuel)),
                ("elapsed_ms", json!(outcome.elapsed.as_secs_f64() * 1e3)),
                ("host_calls", json!(outcome.host.calls)),
                ("host_ms", json!(outcome.host.time.as_secs_f64() * 1e3)),
                ("from_snapshot", json!(outcome.from_snapshot)),
                // As a provider would sign it: BLAKE3 of the encoded outputs.
                (
                    "output_hash",
                    json!(BlobHash::of(&to_wire(&outcome.outputs).to_bytes()).to_string()),
                ),
            ]),
        ))
    }

    /// Runs an OIP v2 infer request with at most `max_fuel` (and this node's own limits) and
    /// returns every output.
    pub fn run(
        &self,
        model: &Loaded,
        request: &InferRequest,
        max_fuel: Option<u64>,
    ) -> Result<Outcome, CallError> {
        let inputs = input_tensors(request, model.inputs())?;
        let mut limits = self.limits.clone();
        if let Some(f) = max_fuel {
            limits.fuel = limits.fuel.min(f);
        }
        Ok(self.sandbox.predict(&model.model, inputs, &limits)?)
    }

    /// Sandbox calls running now and waiting for a slot.
    pub fn occupancy(&self) -> (usize, usize) {
        self.sandbox.occupancy()
    }

    /// Whether a call now would be answered busy.
    pub fn is_full(&self) -> bool {
        self.sandbox.is_full()
    }

    /// Calls the sandbox runs at once.
    pub fn max_concurrent(&self) -> usize {
        self.sandbox.max_concurrent()
    }

    /// The most fuel a call may use here.
    pub fn max_fuel(&self) -> u64 {
        self.limits.fuel
    }

    /// The engine an outcome's graph ran on: the host backend's name if it was used.
    pub fn engine(&self, outcome: &Outcome) -> String {
        match self.sandbox.backend_name() {
            Some(name) if outcome.host.calls > 0 => name.to_string(),
            _ => "wasm".to_string(),
        }
    }
}

/// The wire form of tensors (for calls between peers).
pub fn to_wire(tensors: &[Tensor]) -> protocol::compute::Outputs {
    protocol::compute::Outputs {
        tensors: tensors
            .iter()
            .map(|t| protocol::compute::WireTensor {
                name: t.name.clone(),
                dtype: t.dtype.name().to_string(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect(),
    }
}

/// Tensors from their wire form, checked (dtype known, data the size the shape says).
pub fn from_wire(outputs: protocol::compute::Outputs) -> Result<Vec<Tensor>, String> {
    outputs
        .tensors
        .into_iter()
        .map(|w| {
            let dtype = DType::from_name(&w.dtype)
                .ok_or_else(|| format!("output {:?}: unknown datatype {:?}", w.name, w.dtype))?;
            let t = Tensor {
                name: w.name,
                dtype,
                shape: w.shape,
                data: w.data,
            };
            t.check(&graph::Limits::default())
                .map_err(|e| format!("output {:?}: {e}", t.name))?;
            Ok(t)
        })
        .collect()
}

/// The manifest of a model the catalogue knows (verified when it arrived), or 404.
pub fn local_manifest(catalog: &Catalog, id: ModelId) -> Result<Arc<Signed<Manifest>>, CallError> {
    catalog.get(id).ok_or_else(|| {
        CallError::new(
            404,
            format!("model {id} is not in the store (fetch it first)"),
        )
    })
}

/// The guest a manifest runs with.
fn guest_bytes(store: &Store, m: &Manifest) -> Result<Vec<u8>> {
    match (&m.runtime.guest, m.runtime.kind.as_str()) {
        (Some(hash), _) => store
            .read_bytes(*hash, MAX_GUEST_BYTES)
            .with_context(|| format!("reading the guest {hash}")),
        (None, "onnx") => runner_bytes(),
        // A package that is its own guest: the entry file is the component.
        (None, "wasm") => {
            let entry = m
                .runtime
                .entry
                .as_deref()
                .context("a \"wasm\" runtime needs an entry: the component file")?;
            let file = m
                .files
                .iter()
                .find(|f| f.path == entry)
                .with_context(|| format!("the entry {entry:?} is not a file of the package"))?;
            store
                .read_bytes(file.hash, MAX_GUEST_BYTES)
                .with_context(|| format!("reading the guest {entry}"))
        }
        (None, kind) => bail!(
            "the package's runtime is {kind:?} without a guest; it holds files, not a callable model"
        ),
    }
}

/// The OIP datatype of a sandbox tensor type.
pub(crate) fn oip_dtype(d: DType) -> protocol::DType {
    use protocol::DType as P;
    match d {
        DType::Bool => P::Bool,
        DType::U8 => P::U8,
        DType::U16 => P::U16,
        DType::U32 => P::U32,
        DType::U64 => P::U64,
        DType::I8 => P::I8,
        DType::I16 => P::I16,
        DType::I32 => P::I32,
        DType::I64 => P::I64,
        DType::F16 => P::F16,
        DType::F32 => P::F32,
        DType::F64 => P::F64,
        DType::Bytes => P::Bytes,
    }
}

/// The sandbox's tensor type for an OIP datatype, if the sandbox has it (not `BF16`).
fn sandbox_dtype(d: protocol::DType) -> Option<DType> {
    use protocol::DType as P;
    Some(match d {
        P::Bool => DType::Bool,
        P::U8 => DType::U8,
        P::U16 => DType::U16,
        P::U32 => DType::U32,
        P::U64 => DType::U64,
        P::I8 => DType::I8,
        P::I16 => DType::I16,
        P::I32 => DType::I32,
        P::I64 => DType::I64,
        P::F16 => DType::F16,
        P::F32 => DType::F32,
        P::F64 => DType::F64,
        P::Bytes => DType::Bytes,
        P::Bf16 => return None,
    })
}

fn spec_metadata(s: &Spec) -> TensorMetadata {
    TensorMetadata {
        name: s.name.clone(),
        datatype: s.dtype.name().to_string(),
        shape: s.shape.iter().map(Dim::oip).collect(),
    }
}

/// The tensors of a request's inputs; `specs` give the datatype of inputs that omit one (the
/// CLI's shorthand) and are otherwise checked by the sandbox.
pub fn input_tensors(request: &InferRequest, specs: &[Spec]) -> Result<Vec<Tensor>, CallError> {
    let bad = |m: String| CallError::new(400, m);
    request
        .inputs
        .iter()
        .map(|input| {
            let name = &input.name;
            let datatype = match input.datatype {
                Some(d) => d,
                None => specs
                    .iter()
                    .find(|s| &s.name == name)
                    .map(|s| oip_dtype(s.dtype))
                    .ok_or_else(|| bad(format!("input {name:?}: no \"datatype\"")))?,
            };
            let dtype = sandbox_dtype(datatype).ok_or_else(|| {
                bad(format!(
                    "input {name:?}: {} is not supported by this node's sandbox",
                    datatype.name()
                ))
            })?;
            let raw = input.encode(datatype).map_err(bad)?;
            let tensor = Tensor {
                name: raw.name,
                dtype,
                shape: raw.shape,
                data: raw.data,
            };
            tensor
                .check(&graph::Limits::default())
                .map_err(|e| bad(e.to_string()))?;
            Ok(tensor)
        })
        .collect()
}

/// The OIP response to `request` from the tensors a model returned.
pub fn response(
    model_name: String,
    version: String,
    request: &InferRequest,
    tensors: &[Tensor],
    parameters: Map<String, Value>,
) -> InferResponse {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .filter(|t| request.wants(&t.name))
        .map(|t| RawTensor {
            name: t.name.clone(),
            datatype: oip_dtype(t.dtype),
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect();
    InferResponse::new(model_name, version, request, &raw, parameters)
}

/// `parameters` from `(key, value)` pairs.
pub fn parameters<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_without_a_datatype_take_the_models() {
        let specs = [Spec {
            name: "x".into(),
            dtype: DType::I8,
            shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(2)],
        }];
        let request =
            InferRequest::from_user_json(json!({ "x": [[1, 2], [3, -4]] })).expect("shorthand");
        let t = &input_tensors(&request, &specs).expect("tensors")[0];
        assert_eq!((t.dtype, t.shape.clone()), (DType::I8, vec![2, 2]));
        assert_eq!(t.data, vec![1, 2, 3, 0xfc]);
        let answer = response(
            "m".into(),
            "1".into(),
            &request,
            std::slice::from_ref(t),
            Map::new(),
        );
        assert_eq!(
            *answer.outputs[0].data.values(),
            [json!(1), json!(2), json!(3), json!(-4)]
        );
        assert_eq!(answer.outputs[0].datatype, "INT8");
    }

    #[test]
    fn bad_inputs_are_400_with_a_reason() {
        for (request, needle) in [
            (
                json!({ "inputs": [{ "name": "y", "data": [1] }] }),
                "datatype",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "BF16", "data": [1] }] }),
                "not supported",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "INT8", "data": [300] }] }),
                "fit",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "BYTES", "shape": [0], "data": [] }, { "name": "x", "datatype": "BYTES", "data": [1] }] }),
                "not a BYTES",
            ),
        ] {
            let r = InferRequest::from_json(&request).expect("well-formed");
            let err = input_tensors(&r, &[]).expect_err(&request.to_string());
            assert_eq!(err.status, 400);
            assert!(err.message.contains(needle), "{request}: {}", err.message);
        }
    }
}
