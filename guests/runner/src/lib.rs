//! The built-in ONNX runner: a moxnet model guest that runs a package's ONNX graph.
//!
//! The graph runs on the host's backend when the node offers one (`graph.backend`), else here
//! in wasm with tract. An optional `runner.json` beside the graph adds the pre- and
//! post-processing text models need, all inside the sandbox:
//!
//! ```json
//! { "text":    { "input": "text", "vocab": "vocab.txt", "lowercase": true, "max_tokens": 256 },
//!   "pooling": { "from": "last_hidden_state", "output": "embedding", "normalize": true } }
//! ```
//!
//! With `text`, the model takes one `BYTES` input of strings, tokenizes them with WordPiece and
//! feeds `input_ids`, `attention_mask` and `token_type_ids` (those the graph has) padded to the
//! longest. With `pooling`, the graph's token output is mean-pooled over the attention mask and
//! (optionally) L2-normalised into one `FP32` vector per string.

use std::cell::RefCell;

use graph::wordpiece::WordPiece;
use graph::{DType, Dim, Spec, Tensor};

mod kernel;
mod bindings {
    //! Guest bindings for the `moxnet:model` world (../wit/model.wit).
    wit_bindgen::generate!({ world: "model", path: "../wit" });
}

use bindings::Guest;
use bindings::moxnet::model::graph as host;
use bindings::moxnet::model::types as wit;

/// Where the sandbox mounts the package.
const ROOT: &str = "/model";

#[derive(serde::Deserialize)]
struct Config {
    text: Option<TextConfig>,
    pooling: Option<PoolingConfig>,
}

#[derive(serde::Deserialize)]
struct TextConfig {
    #[serde(default = "default_text_input")]
    input: String,
    vocab: String,
    #[serde(default = "default_true")]
    lowercase: bool,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
}

#[derive(serde::Deserialize)]
struct PoolingConfig {
    from: String,
    #[serde(default = "default_pool_output")]
    output: String,
    #[serde(default = "default_true")]
    normalize: bool,
}

fn default_text_input() -> String {
    "text".into()
}
fn default_pool_output() -> String {
    "embedding".into()
}
fn default_true() -> bool {
    true
}
fn default_max_tokens() -> usize {
    256
}

/// Where the graph runs.
enum Engine {
    Local(graph::Graph),
    Host {
        handle: u32,
        inputs: Vec<Spec>,
        outputs: Vec<Spec>,
    },
}

impl Engine {
    fn inputs(&self) -> &[Spec] {
        match self {
            Engine::Local(g) => g.inputs(),
            Engine::Host { inputs, .. } => inputs,
        }
    }

    fn outputs(&self) -> &[Spec] {
        match self {
            Engine::Local(g) => g.outputs(),
            Engine::Host { outputs, .. } => outputs,
        }
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, wit::Error> {
        match self {
            Engine::Local(g) => g.run(inputs).map_err(from_graph_error),
            Engine::Host { handle, .. } => {
                let inputs: Vec<wit::Tensor> = inputs.into_iter().map(to_wit).collect();
                let outputs = host::compute(*handle, &inputs).map_err(wit::Error::Failed)?;
                outputs.into_iter().map(from_wit).collect()
            }
        }
    }
}

struct State {
    engine: Engine,
    text: Option<(TextConfig, WordPiece)>,
    pooling: Option<PoolingConfig>,
    metadata: wit::Metadata,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

struct Runner;

impl Guest for Runner {
    fn init(entry: Option<String>) -> Result<wit::Metadata, wit::Error> {
        // The f32 matrix kernel joins tract's registry before any graph is loaded.
        kernel::register();
        let entry = entry.unwrap_or_else(|| "model.onnx".into());
        let engine = match host::backend() {
            Some(_) => {
                let loaded = host::load(&entry).map_err(wit::Error::Failed)?;
                Engine::Host {
                    handle: loaded.handle,
                    inputs: loaded
                        .inputs
                        .into_iter()
                        .map(from_wit_spec)
                        .collect::<Result<_, _>>()?,
                    outputs: loaded
                        .outputs
                        .into_iter()
                        .map(from_wit_spec)
                        .collect::<Result<_, _>>()?,
                }
            }
            None => {
                let bytes = read(&entry)?;
                Engine::Local(graph::Graph::load(&bytes).map_err(from_graph_error)?)
            }
        };
        let dir = match entry.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => String::new(),
        };
        let config: Config = match std::fs::read(format!("{ROOT}/{dir}runner.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| wit::Error::Failed(format!("runner.json: {e}")))?,
            Err(_) => Config {
                text: None,
                pooling: None,
            },
        };
        let text = match config.text {
            Some(t) => {
                let vocab = String::from_utf8(read(&format!("{dir}{}", t.vocab))?)
                    .map_err(|_| wit::Error::Failed(format!("{} is not UTF-8", t.vocab)))?;
                let wp = WordPiece::from_vocab(vocab, t.lowercase).map_err(from_graph_error)?;
                Some((t, wp))
            }
            None => None,
        };
        let mut inputs: Vec<Spec> = engine.inputs().to_vec();
        if let Some((t, _)) = &text {
            inputs = vec![Spec {
                name: t.input.clone(),
                dtype: DType::Bytes,
                shape: vec![Dim::Symbolic("batch".into())],
            }];
        }
        let mut outputs: Vec<Spec> = engine.outputs().to_vec();
        if let Some(p) = &config.pooling {
            let from = outputs.iter().find(|s| s.name == p.from).ok_or_else(|| {
                wit::Error::Failed(format!("the graph has no output {:?}", p.from))
            })?;
            let hidden = from
                .shape
                .last()
                .cloned()
                .unwrap_or(Dim::Symbolic("hidden".into()));
            outputs = vec![Spec {
                name: p.output.clone(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("batch".into()), hidden],
            }];
        }
        let metadata = wit::Metadata {
            inputs: inputs.iter().map(to_wit_spec).collect(),
            outputs: outputs.iter().map(to_wit_spec).collect(),
        };
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                engine,
                text,
                pooling: config.pooling,
                metadata: metadata.clone(),
            })
        });
        Ok(metadata)
    }

    fn predict(inputs: Vec<wit::Tensor>) -> Result<Vec<wit::Tensor>, wit::Error> {
        STATE.with(|s| {
            let state = s.borrow();
            let state = state
                .as_ref()
                .ok_or_else(|| wit::Error::Failed("predict before init".into()))?;
            let inputs: Vec<Tensor> = inputs.into_iter().map(from_wit).collect::<Result<_, _>>()?;
            for t in &inputs {
                t.check(&graph::Limits::default())
                    .map_err(from_graph_error)?;
            }
            let (inputs, mask) = match &state.text {
                Some((config, wp)) => {
                    let (inputs, mask) = tokenize(config, wp, state.engine.inputs(), &inputs)?;
                    (inputs, Some(mask))
                }
                None => (inputs, None),
            };
            let outputs = state.engine.run(inputs)?;
            let outputs = match (&state.pooling, mask) {
                (Some(p), Some(mask)) => vec![pool(p, &outputs, &mask)?],
                (Some(p), None) => {
                    return Err(wit::Error::Failed(format!(
                        "pooling {:?} needs a text input for its attention mask",
                        p.from
                    )));
                }
                (None, _) => outputs,
            };
            let _ = &state.metadata;
            Ok(outputs.into_iter().map(to_wit).collect())
        })
    }
}

bindings::export!(Runner with_types_in bindings);

fn read(path: &str) -> Result<Vec<u8>, wit::Error> {
    std::fs::read(format!("{ROOT}/{path}"))
        .map_err(|e| wit::Error::Failed(format!("cannot read {path}: {e}")))
}

/// A mask of which token positions are real, `[batch][sequence]`.
struct Mask {
    batch: usize,
    sequence: usize,
    real: Vec<bool>,
}

fn tokenize(
    config: &TextConfig,
    wp: &WordPiece,
    graph_inputs: &[Spec],
    inputs: &[Tensor],
) -> Result<(Vec<Tensor>, Mask), wit::Error> {
    let [text] = inputs else {
        return Err(wit::Error::InvalidInput(format!(
            "this model takes one BYTES input {:?}",
            config.input
        )));
    };
    if text.name != config.input || text.dtype != DType::Bytes || text.shape.len() != 1 {
        return Err(wit::Error::InvalidInput(format!(
            "this model takes one BYTES input {:?} of shape [batch]",
            config.input
        )));
    }
    let mut rows = Vec::new();
    for value in text.byte_elements().map_err(from_graph_error)? {
        let s = std::str::from_utf8(value).map_err(|_| {
            wit::Error::InvalidInput(format!("{:?} must be UTF-8 text", config.input))
        })?;
        rows.push(wp.encode(s, config.max_tokens));
    }
    let batch = rows.len();
    let sequence = rows.iter().map(Vec::len).max().unwrap_or(0);
    let shape = vec![batch as u64, sequence as u64];
    let mut ids = Vec::with_capacity(batch * sequence);
    let mut real = Vec::with_capacity(batch * sequence);
    for row in &rows {
        for i in 0..sequence {
            ids.push(row.get(i).copied().unwrap_or(wp.pad()));
            real.push(i < row.len());
        }
    }
    let mut out = Vec::new();
    for spec in graph_inputs {
        let values: Vec<i64> = match spec.name.as_str() {
            "input_ids" => ids.clone(),
            "attention_mask" => real.iter().map(|&r| r as i64).collect(),
            "token_type_ids" => vec![0; ids.len()],
            other => {
                return Err(wit::Error::Failed(format!(
                    "the graph input {other:?} cannot be fed from text"
                )));
            }
        };
        out.push(Tensor::from_i64(&spec.name, shape.clone(), &values));
    }
    Ok((
        out,
        Mask {
            batch,
            sequence,
            real,
        },
    ))
}

fn pool(config: &PoolingConfig, outputs: &[Tensor], mask: &Mask) -> Result<Tensor, wit::Error> {
    let from = outputs
        .iter()
        .find(|t| t.name == config.from)
        .ok_or_else(|| wit::Error::Failed(format!("the graph gave no {:?}", config.from)))?;
    let values = from.f32s().map_err(from_graph_error)?;
    let [b, s, h] = from.shape[..] else {
        return Err(wit::Error::Failed(format!(
            "{:?} has shape {:?}, not [batch, sequence, hidden]",
            config.from, from.shape
        )));
    };
    let (b, s, h) = (b as usize, s as usize, h as usize);
    if b != mask.batch || s != mask.sequence || values.len() != b * s * h {
        return Err(wit::Error::Failed(format!(
            "{:?} has shape {:?}, which does not match the tokens",
            config.from, from.shape
        )));
    }
    let mut pooled = vec![0f32; b * h];
    for i in 0..b {
        let row = &mut pooled[i * h..(i + 1) * h];
        let mut count = 0f32;
        for j in 0..s {
            if mask.real[i * s + j] {
                count += 1.0;
                let token = &values[(i * s + j) * h..(i * s + j + 1) * h];
                for (acc, v) in row.iter_mut().zip(token) {
                    *acc += v;
                }
            }
        }
        for v in row.iter_mut() {
            *v /= count.max(1e-9);
        }
        if config.normalize {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for v in row.iter_mut() {
                *v /= norm;
            }
        }
    }
    Ok(Tensor::from_f32(
        &config.output,
        vec![b as u64, h as u64],
        &pooled,
    ))
}

fn from_graph_error(e: graph::Error) -> wit::Error {
    match e {
        graph::Error::Invalid(m) => wit::Error::InvalidInput(m),
        other => wit::Error::Failed(other.to_string()),
    }
}

fn to_wit_dtype(d: DType) -> wit::Dtype {
    match d {
        DType::Bool => wit::Dtype::Boolean,
        DType::U8 => wit::Dtype::Uint8,
        DType::U16 => wit::Dtype::Uint16,
        DType::U32 => wit::Dtype::Uint32,
        DType::U64 => wit::Dtype::Uint64,
        DType::I8 => wit::Dtype::Int8,
        DType::I16 => wit::Dtype::Int16,
        DType::I32 => wit::Dtype::Int32,
        DType::I64 => wit::Dtype::Int64,
        DType::F16 => wit::Dtype::Fp16,
        DType::F32 => wit::Dtype::Fp32,
        DType::F64 => wit::Dtype::Fp64,
        DType::Bytes => wit::Dtype::Bytes,
    }
}

fn from_wit_dtype(d: wit::Dtype) -> DType {
    match d {
        wit::Dtype::Boolean => DType::Bool,
        wit::Dtype::Uint8 => DType::U8,
        wit::Dtype::Uint16 => DType::U16,
        wit::Dtype::Uint32 => DType::U32,
        wit::Dtype::Uint64 => DType::U64,
        wit::Dtype::Int8 => DType::I8,
        wit::Dtype::Int16 => DType::I16,
        wit::Dtype::Int32 => DType::I32,
        wit::Dtype::Int64 => DType::I64,
        wit::Dtype::Fp16 => DType::F16,
        wit::Dtype::Fp32 => DType::F32,
        wit::Dtype::Fp64 => DType::F64,
        wit::Dtype::Bytes => DType::Bytes,
    }
}

fn to_wit(t: Tensor) -> wit::Tensor {
    wit::Tensor {
        name: t.name,
        dtype: to_wit_dtype(t.dtype),
        shape: t.shape,
        data: t.data,
    }
}

fn from_wit(t: wit::Tensor) -> Result<Tensor, wit::Error> {
    Ok(Tensor {
        name: t.name,
        dtype: from_wit_dtype(t.dtype),
        shape: t.shape,
        data: t.data,
    })
}

fn to_wit_spec(s: &Spec) -> wit::TensorSpec {
    wit::TensorSpec {
        name: s.name.clone(),
        dtype: to_wit_dtype(s.dtype),
        shape: s
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => wit::Dim::Fixed(*n),
                Dim::Symbolic(n) => wit::Dim::Symbolic(n.clone()),
            })
            .collect(),
    }
}

fn from_wit_spec(s: wit::TensorSpec) -> Result<Spec, wit::Error> {
    Ok(Spec {
        name: s.name,
        dtype: from_wit_dtype(s.dtype),
        shape: s
            .shape
            .into_iter()
            .map(|d| match d {
                wit::Dim::Fixed(n) => Dim::Fixed(n),
                wit::Dim::Symbolic(n) => Dim::Symbolic(n),
            })
            .collect(),
    })
}
