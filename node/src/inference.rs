//! Inference on this node: models run in the wasmtime sandbox, requests and answers in the
//! JSON of the Open Inference Protocol v2 (KServe / Triton).
//!
//! A model runs from its package, materialised once into `<home>/run/<model id>/` from the
//! store (verified bytes, written atomically), with its runtime's guest: the blob the manifest
//! names, or the built-in ONNX runner for `kind = "onnx"` packages without one. Loaded models
//! stay in memory; every call gets a fresh instance (see the `sandbox` crate).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use catalog::Catalog;
use graph::{DType, Dim, Spec, Tensor};
use protocol::{Manifest, ModelId, Signed};
use sandbox::{CallLimits, Outcome, Sandbox, SandboxConfig, SandboxError};
use serde_json::{Map, Value, json};
use store::Store;

use crate::home::Home;

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
    pub fn metadata(&self) -> Value {
        json!({
            "name": self.id.to_string(),
            "versions": [self.version],
            "platform": format!("moxnet_{}", self.kind),
            "inputs": self.model.inputs().iter().map(spec_json).collect::<Vec<_>>(),
            "outputs": self.model.outputs().iter().map(spec_json).collect::<Vec<_>>(),
            "parameters": { "package": self.name },
        })
    }
}

/// The node's inference engine: one sandbox and the models loaded in it.
pub struct Inference {
    sandbox: Sandbox,
    run_dir: PathBuf,
    limits: CallLimits,
    loaded: Mutex<HashMap<ModelId, Arc<Loaded>>>,
    /// Serialises loads so that two calls do not materialise the same package at once.
    loading: Mutex<()>,
}

impl Inference {
    /// An engine for the home at `home_dir` (compile cache in `<home>/cache/wasm`).
    pub fn new(home_dir: &Path, config: SandboxConfig, limits: CallLimits) -> Result<Inference> {
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(home_dir.join("cache/wasm")),
            ..config
        })
        .context("starting the sandbox")?;
        Ok(Inference {
            sandbox,
            run_dir: home_dir.join("run"),
            limits,
            loaded: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
        })
    }

    /// The sandbox's host backend, if any.
    pub fn backend(&self) -> Option<&str> {
        self.sandbox.backend_name()
    }

    /// The model if it is loaded already.
    pub fn get(&self, id: ModelId) -> Option<Arc<Loaded>> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Loads a local model of `home` (manifest, files and guest in its store).
    pub fn load(&self, home: &Home, id: ModelId) -> Result<Arc<Loaded>, CallError> {
        let store = &home.store;
        if let Some(l) = self.get(id) {
            return Ok(l);
        }
        let _one = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = self.get(id) {
            return Ok(l);
        }
        let signed = local_manifest(&home.catalog, id)?;
        let m = signed.body();
        if !home.catalog.is_local(id) {
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
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, loaded.clone());
        Ok(loaded)
    }

    /// Runs an OIP v2 infer request (already loaded model) and returns the OIP response.
    pub fn infer(&self, model: &Loaded, request: &Value) -> Result<Value, CallError> {
        let wanted = requested_outputs(request)?;
        let outcome = self.run(model, request, None)?;
        Ok(response(model, request, outcome, wanted.as_deref()))
    }

    /// Runs an OIP v2 infer request with at most `max_fuel` (and this node's own limits) and
    /// returns every output.
    pub fn run(
        &self,
        model: &Loaded,
        request: &Value,
        max_fuel: Option<u64>,
    ) -> Result<Outcome, CallError> {
        let inputs = parse_request(request, model.inputs())?;
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

/// The names of the outputs a request asks for, if it names any.
pub fn requested_outputs(request: &Value) -> Result<Option<Vec<String>>, CallError> {
    let Some(list) = request.get("outputs") else {
        return Ok(None);
    };
    let list = list
        .as_array()
        .ok_or_else(|| CallError::new(400, "\"outputs\" must be a list"))?;
    list.iter()
        .map(|o| {
            o.get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CallError::new(400, "each requested output needs a \"name\""))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn spec_json(s: &Spec) -> Value {
    json!({
        "name": s.name,
        "datatype": s.dtype.name(),
        "shape": s.shape.iter().map(Dim::oip).collect::<Vec<_>>(),
    })
}

/// Parses the `inputs` of an OIP v2 request into tensors; `specs` give the dtype of inputs
/// that omit one (the CLI's shorthand) and are otherwise checked by the sandbox.
pub fn parse_request(request: &Value, specs: &[Spec]) -> Result<Vec<Tensor>, CallError> {
    let bad = |m: String| CallError::new(400, m);
    let inputs = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the request needs \"inputs\": a list of tensors".into()))?;
    inputs
        .iter()
        .map(|input| {
            let name = input
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("each input needs a \"name\"".into()))?;
            let dtype = match input.get("datatype").and_then(Value::as_str) {
                Some(d) => DType::from_name(d)
                    .ok_or_else(|| bad(format!("input {name:?}: unknown datatype {d:?}")))?,
                None => specs
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.dtype)
                    .ok_or_else(|| bad(format!("input {name:?}: no \"datatype\"")))?,
            };
            let data = input
                .get("data")
                .ok_or_else(|| bad(format!("input {name:?}: no \"data\"")))?;
            let mut flat = Vec::new();
            let nested_shape =
                flatten(data, &mut flat, 0).map_err(|m| bad(format!("input {name:?}: {m}")))?;
            let shape = match input.get("shape") {
                Some(s) => s
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
                    .ok_or_else(|| {
                        bad(format!("input {name:?}: \"shape\" must be a list of sizes"))
                    })?,
                None => nested_shape,
            };
            let tensor = encode(name, dtype, shape, &flat)
                .map_err(|m| bad(format!("input {name:?}: {m}")))?;
            tensor
                .check(&graph::Limits::default())
                .map_err(|e| bad(e.to_string()))?;
            Ok(tensor)
        })
        .collect()
}

/// Flattens nested JSON arrays (row-major) and returns the nesting's shape.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<Vec<u64>, String> {
    if depth > 8 {
        return Err("data is nested too deeply".into());
    }
    match v {
        Value::Array(items) => {
            let mut inner: Option<Vec<u64>> = None;
            for item in items {
                let shape = flatten(item, out, depth + 1)?;
                match &inner {
                    None => inner = Some(shape),
                    Some(s) if *s == shape => {}
                    Some(_) => return Err("nested data is ragged".into()),
                }
            }
            let mut shape = vec![items.len() as u64];
            shape.extend(inner.unwrap_or_default());
            Ok(shape)
        }
        scalar => {
            out.push(scalar);
            Ok(if depth == 0 { vec![1] } else { Vec::new() })
        }
    }
}

/// Encodes JSON scalars as a tensor of `dtype`.
fn encode(name: &str, dtype: DType, shape: Vec<u64>, values: &[&Value]) -> Result<Tensor, String> {
    let expected = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    if expected != Some(values.len() as u64) {
        return Err(format!(
            "shape {shape:?} needs {} values, the data has {}",
            expected.map_or("too many".to_string(), |n| n.to_string()),
            values.len()
        ));
    }
    let mut data = Vec::new();
    let wrong = |v: &Value| format!("{v} is not a {dtype} value");
    for v in values {
        match dtype {
            DType::Bytes => {
                let s = v.as_str().ok_or_else(|| wrong(v))?;
                data.extend_from_slice(&(s.len() as u32).to_le_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            DType::Bool => data.push(u8::from(v.as_bool().ok_or_else(|| wrong(v))?)),
            DType::F16 => {
                let x = v.as_f64().ok_or_else(|| wrong(v))?;
                data.extend_from_slice(&half::f16::from_f64(x).to_le_bytes());
            }
            DType::F32 => {
                let x = v.as_f64().ok_or_else(|| wrong(v))?;
                data.extend_from_slice(&(x as f32).to_le_bytes());
            }
            DType::F64 => {
                data.extend_from_slice(&v.as_f64().ok_or_else(|| wrong(v))?.to_le_bytes())
            }
            DType::U8 | DType::U16 | DType::U32 | DType::U64 => {
                let x = v.as_u64().ok_or_else(|| wrong(v))?;
                let size = dtype.size().unwrap_or(8);
                if size < 8 && x >> (size * 8) != 0 {
                    return Err(format!("{x} does not fit in {dtype}"));
                }
                data.extend_from_slice(&x.to_le_bytes()[..size]);
            }
            DType::I8 | DType::I16 | DType::I32 | DType::I64 => {
                let x = v.as_i64().ok_or_else(|| wrong(v))?;
                let size = dtype.size().unwrap_or(8);
                let bits = size as u32 * 8;
                if bits < 64 && (x < -(1i64 << (bits - 1)) || x >= 1i64 << (bits - 1)) {
                    return Err(format!("{x} does not fit in {dtype}"));
                }
                data.extend_from_slice(&x.to_le_bytes()[..size]);
            }
        }
    }
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}

/// Decodes a tensor's elements as JSON values (BYTES as UTF-8 text, lossily).
fn decode(t: &Tensor) -> Vec<Value> {
    let Some(size) = t.dtype.size() else {
        return t
            .byte_elements()
            .unwrap_or_default()
            .into_iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect();
    };
    t.data
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            let sign_extend = |bits: u32| {
                let raw = u64::from_le_bytes(b);
                ((raw << (64 - bits)) as i64) >> (64 - bits)
            };
            match t.dtype {
                DType::Bool => Value::Bool(c[0] != 0),
                DType::U8 | DType::U16 | DType::U32 | DType::U64 => json!(u64::from_le_bytes(b)),
                DType::I8 | DType::I16 | DType::I32 | DType::I64 => {
                    json!(sign_extend(size as u32 * 8))
                }
                // The shortest decimal that reads back as the same f16/f32, not its f64 expansion.
                DType::F16 => shortest(half::f16::from_le_bytes([c[0], c[1]])),
                DType::F32 => shortest(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                DType::F64 => json!(f64::from_le_bytes(b)),
                DType::Bytes => Value::Null,
            }
        })
        .collect()
}

/// A float as the JSON number with the fewest digits that parses back to it (`null` if not finite).
fn shortest(x: impl std::fmt::Display) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(v))
}

/// The OIP v2 response for a call run here.
fn response(model: &Loaded, request: &Value, outcome: Outcome, wanted: Option<&[String]>) -> Value {
    oip_response(
        &model.id.to_string(),
        &model.version,
        request,
        &outcome.outputs,
        wanted,
        json!({
            "fuel": outcome.fuel,
            "elapsed_ms": outcome.elapsed.as_secs_f64() * 1e3,
            "host_calls": outcome.host.calls,
            "host_ms": outcome.host.time.as_secs_f64() * 1e3,
        }),
    )
}

/// An OIP v2 response: the outputs asked for (all if `wanted` is `None`) and `parameters`.
pub fn oip_response(
    model_name: &str,
    version: &str,
    request: &Value,
    tensors: &[Tensor],
    wanted: Option<&[String]>,
    parameters: Value,
) -> Value {
    let outputs: Vec<Value> = tensors
        .iter()
        .filter(|t| wanted.is_none_or(|w| w.contains(&t.name)))
        .map(|t| {
            json!({
                "name": t.name,
                "datatype": t.dtype.name(),
                "shape": t.shape,
                "data": decode(t),
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("model_name".into(), json!(model_name));
    answer.insert("model_version".into(), json!(version));
    if let Some(id) = request.get("id") {
        answer.insert("id".into(), id.clone());
    }
    answer.insert("outputs".into(), Value::Array(outputs));
    answer.insert("parameters".into(), parameters);
    Value::Object(answer)
}

/// Turns the CLI's input into an OIP request: a full request (`{"inputs": [...]}`) as is, or
/// the shorthand `{"text": ["hello"]}` (input name → nested data; shape from the nesting).
pub fn expand_input(input: Value) -> Result<Value> {
    match input {
        Value::Object(map) if map.get("inputs").is_some_and(Value::is_array) => {
            Ok(Value::Object(map))
        }
        Value::Object(map) => Ok(json!({
            "inputs": map
                .into_iter()
                .map(|(name, data)| json!({ "name": name, "data": data }))
                .collect::<Vec<_>>()
        })),
        _ => bail!(
            "the input must be a JSON object: {{\"inputs\": [...]}} (OIP v2) or {{\"<input name>\": <data>}}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_json_becomes_tensors_and_back() {
        let specs = [Spec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(2)],
        }];
        let request = expand_input(json!({ "x": [[1.0, 2.5], [3.0, -4.0]] })).expect("expand");
        let t = &parse_request(&request, &specs).expect("parse")[0];
        assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![2, 2]));
        assert_eq!(
            decode(t),
            vec![json!(1.0), json!(2.5), json!(3.0), json!(-4.0)]
        );

        let text = json!({ "inputs": [{ "name": "t", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""] }] });
        let t = &parse_request(&text, &[]).expect("bytes")[0];
        assert_eq!(decode(t), vec![json!("héllo"), json!("")]);

        // Floats print as the shortest decimal of their own precision.
        let floats =
            json!({ "inputs": [{ "name": "f", "datatype": "FP32", "data": [0.1, 1e-7] }] });
        let t = &parse_request(&floats, &[]).expect("f32")[0];
        assert_eq!(
            serde_json::to_string(&decode(t)).expect("json"),
            "[0.1,1e-7]"
        );
        let halves =
            json!({ "inputs": [{ "name": "h", "datatype": "FP16", "data": [0.5, 65504.0] }] });
        let t = &parse_request(&halves, &[]).expect("f16")[0];
        assert_eq!(decode(t), vec![json!(0.5), json!(65504.0)]);

        let ints = json!({ "inputs": [{ "name": "i", "datatype": "INT8", "data": [-128, 127] }] });
        let t = &parse_request(&ints, &[]).expect("i8")[0];
        assert_eq!(decode(t), vec![json!(-128), json!(127)]);
    }

    #[test]
    fn bad_requests_are_400_with_a_reason() {
        for (request, needle) in [
            (json!({}), "inputs"),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP32", "data": [[1.0], [1.0, 2.0]] }] }),
                "ragged",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [3], "data": [1.0] }] }),
                "needs 3",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "INT8", "data": [300] }] }),
                "fit",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP7", "data": [1] }] }),
                "unknown datatype",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "BYTES", "data": [1] }] }),
                "not a BYTES",
            ),
            (
                json!({ "inputs": [{ "name": "x", "data": [1] }] }),
                "datatype",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [4_294_967_296_u64, 4_294_967_296_u64], "data": [] }] }),
                "needs",
            ),
        ] {
            let err = parse_request(&request, &[]).expect_err(&request.to_string());
            assert_eq!(err.status, 400);
            assert!(err.message.contains(needle), "{}: {}", request, err.message);
        }
    }
}
