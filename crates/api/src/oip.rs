//! The Open Inference Protocol v2 codec (KServe / Triton JSON): typed requests, responses and
//! metadata, and the conversion between JSON data and raw tensors.
//!
//! ```
//! use api::oip::InferRequest;
//! use protocol::DType;
//! # fn main() -> Result<(), String> {
//! let request = InferRequest::from_json(&serde_json::json!({
//!     "inputs": [{ "name": "x", "datatype": "FP32", "data": [[1.0, 2.5]] }]
//! }))?;
//! let input = &request.inputs[0];
//! assert_eq!(input.shape, vec![1, 2]);
//! let tensor = input.encode(DType::F32)?;
//! assert_eq!(tensor.data.len(), 8);
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//! - A request's `data` may be flat (with `shape`) or nested (the nesting is the shape); it is
//!   kept flattened, row-major, with its shape ([`RequestInput`]).
//! - `datatype` may be left out (the CLI's shorthand): whoever runs the model fills it in from
//!   the model's interface before [`RequestInput::encode`].
//! - A [`RawTensor`] is the layout every moxnet part shares: little-endian elements, `BOOL` one
//!   byte each, `BYTES` a `u32` length and the bytes per element.
//! - Every malformed request is an `Err(String)` that names the input and says what is wrong;
//!   the router answers it with 400. Nothing here panics on a client's bytes.
//!
//! **Limits:** data nested at most [`MAX_NESTING`] deep; an input's element count must equal
//! the product of its shape (checked without overflow). The body limit is the router's.

use protocol::DType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// How deeply `data` may nest.
pub const MAX_NESTING: usize = 8;

/// An OIP v2 inference request (`POST /v2/models/{id}/infer`).
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The caller's request id, echoed in the response.
    pub id: Option<Value>,
    /// The inputs.
    pub inputs: Vec<RequestInput>,
    /// The outputs asked for by name (`None`: all).
    pub outputs: Option<Vec<String>>,
    /// Outputs to answer as binary tensor data (the OIP binary data extension): all of them
    /// (`parameters.binary_data_output`), or these by name (`parameters.binary_data` of a
    /// requested output).
    pub binary: Binary,
    /// The request's own `parameters` (e.g. a language model's sampling parameters), as sent.
    pub parameters: Map<String, Value>,
}

/// Which outputs a request wants as binary tensor data (see [`InferRequest::binary`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binary {
    /// Every output, unless one says otherwise in `names_off`.
    pub all: bool,
    /// Outputs asked for as binary by name.
    pub names: Vec<String>,
    /// Outputs asked for as JSON by name (`binary_data: false`), even with `all`.
    pub names_off: Vec<String>,
}

/// The header that says how much of a body is the JSON part, the rest being binary tensor
/// data (the OIP binary data extension, as Triton's clients send and read it).
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// One input of a request, its data flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInput {
    /// The input's name.
    pub name: String,
    /// Its datatype, when the request states one.
    pub datatype: Option<DType>,
    /// Its shape: the request's `shape`, else the nesting of `data`.
    pub shape: Vec<u64>,
    /// Its elements, row-major.
    pub data: Vec<Value>,
}

/// A tensor in the raw layout (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datatype: DType,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its encoded elements.
    pub data: Vec<u8>,
}

/// An OIP v2 inference response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The model's id.
    pub model_name: String,
    /// The model's version.
    pub model_version: String,
    /// The request's id, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The outputs asked for.
    pub outputs: Vec<ResponseOutput>,
    /// What the node adds: fuel, time, and for a remote call the provider and its signed
    /// result (see `docs/http-api.md`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// One output of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseOutput {
    /// Its name.
    pub name: String,
    /// Its OIP datatype name.
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its elements, row-major (BYTES as text); empty when the output goes as binary data.
    #[serde(default)]
    pub data: Elements,
    /// The raw tensor data, when the request asked for this output as binary data (then the
    /// HTTP answer carries these bytes after the JSON, not `data`).
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

/// A response output's elements: JSON values (an answer read back), or a tensor's encoded
/// elements, which are written to JSON straight from their bytes (through a tree of [`Value`]s,
/// a 384-float embedding cost ~60 µs of a call's ~6 ms: its numbers formatted, parsed back and
/// formatted again). Equal when their values are.
#[derive(Debug, Clone)]
pub enum Elements {
    /// As JSON values.
    Values(Vec<Value>),
    /// Encoded as in [`RawTensor::data`].
    Encoded(DType, Vec<u8>),
}

impl Default for Elements {
    fn default() -> Self {
        Elements::Values(Vec::new())
    }
}

impl Elements {
    /// The elements as JSON values (see [`RawTensor::json_data`]).
    pub fn values(&self) -> std::borrow::Cow<'_, [Value]> {
        match self {
            Elements::Values(v) => std::borrow::Cow::Borrowed(v),
            Elements::Encoded(datatype, bytes) => {
                std::borrow::Cow::Owned(json_values(*datatype, bytes))
            }
        }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        match self {
            Elements::Values(v) => v.len(),
            Elements::Encoded(datatype, bytes) => match datatype.size() {
                Some(size) => bytes.len() / size,
                None => bytes_elements(bytes).count(),
            },
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Elements {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl Serialize for Elements {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let (datatype, bytes) = match self {
            Elements::Values(v) => return v.serialize(serializer),
            Elements::Encoded(datatype, bytes) => (*datatype, bytes),
        };
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        let Some(size) = datatype.size() else {
            for element in bytes_elements(bytes) {
                seq.serialize_element(&String::from_utf8_lossy(element))?;
            }
            return seq.end();
        };
        for c in bytes.chunks_exact(size) {
            match datatype {
                // The common case, written as f32: the shortest decimal that reads back to it
                // (non-finite ones as null).
                DType::F32 => {
                    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    match x.is_finite() {
                        true => seq.serialize_element(&x)?,
                        false => seq.serialize_element(&())?,
                    }
                }
                _ => seq.serialize_element(&json_element(datatype, c))?,
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Elements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Value>::deserialize(deserializer).map(Elements::Values)
    }
}

/// OIP v2 model metadata (`GET /v2/models/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The model's id.
    pub name: String,
    /// Its version.
    pub versions: Vec<String>,
    /// `moxnet_<runtime kind>`, e.g. `moxnet_onnx`.
    pub platform: String,
    /// What it takes.
    pub inputs: Vec<TensorMetadata>,
    /// What it gives.
    pub outputs: Vec<TensorMetadata>,
    /// The package name, under `package`.
    pub parameters: Map<String, Value>,
}

/// An input or output in model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// Its OIP datatype name.
    pub datatype: String,
    /// Its shape; -1 for a size the caller chooses.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{id}/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReady {
    /// The model's id.
    pub name: String,
    /// Whether it is loaded and can be called.
    pub ready: bool,
}

/// `GET /v2`: the server's metadata, as Triton's clients read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// `moxnet`.
    pub name: String,
    /// The node's version.
    pub version: String,
    /// The protocol extensions it supports (`binary_tensor_data`).
    pub extensions: Vec<String>,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReady {
    /// Whether the node takes calls.
    pub ready: bool,
    /// The engine guests' graphs run on, if not wasm (`onnxruntime`, `onnxruntime-cuda`,
    /// `tract-native`).
    pub backend: Option<String>,
    /// What the node fell back from, and why (e.g. no onnxruntime library): absent when the
    /// engine is the one configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl InferRequest {
    /// Reads an OIP v2 request, checking its form: every input has a name, a known datatype if
    /// any, data that is not ragged, and as many elements as its shape says.
    pub fn from_json(request: &Value) -> Result<InferRequest, String> {
        InferRequest::from_parts(request, &[])
    }

    /// Reads a request whose inputs may carry binary tensor data: `request` is the JSON part
    /// and `binary` the bytes after it; an input with `parameters.binary_data_size` takes that
    /// many bytes from `binary`, in input order, laid out as [`RawTensor`] (BYTES: a `u32`
    /// little-endian length before each element). The sizes must use up `binary` exactly.
    pub fn from_parts(request: &Value, binary: &[u8]) -> Result<InferRequest, String> {
        let mut rest = binary;
        let inputs = request
            .get("inputs")
            .and_then(Value::as_array)
            .ok_or("the request needs \"inputs\": a list of tensors")?
            .iter()
            .map(|input| RequestInput::from_json(input, &mut rest))
            .collect::<Result<Vec<_>, _>>()?;
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes of binary data after the inputs' binary_data_size",
                rest.len()
            ));
        }
        let mut binary = Binary {
            all: request
                .get("parameters")
                .and_then(|p| p.get("binary_data_output"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..Binary::default()
        };
        let outputs = match request.get("outputs") {
            None => None,
            Some(list) => Some(
                list.as_array()
                    .ok_or("\"outputs\" must be a list")?
                    .iter()
                    .map(|o| {
                        let name = o
                            .get("name")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or("each requested output needs a \"name\"")?;
                        match o
                            .get("parameters")
                            .and_then(|p| p.get("binary_data"))
                            .and_then(Value::as_bool)
                        {
                            Some(true) => binary.names.push(name.clone()),
                            Some(false) => binary.names_off.push(name.clone()),
                            None => {}
                        }
                        Ok(name)
                    })
                    .collect::<Result<Vec<_>, &str>>()?,
            ),
        };
        let parameters = match request.get("parameters") {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => return Err("\"parameters\" must be an object".into()),
        };
        Ok(InferRequest {
            id: request.get("id").cloned(),
            inputs,
            outputs,
            binary,
            parameters,
        })
    }

    /// Whether output `name` goes back as binary tensor data.
    pub fn wants_binary(&self, name: &str) -> bool {
        let b = &self.binary;
        b.names.iter().any(|n| n == name) || (b.all && !b.names_off.iter().any(|n| n == name))
    }

    /// Reads what a user types: a full request (`{"inputs": [...]}`), or the shorthand
    /// `{"<input name>": <nested data>, ...}` (shape from the nesting, datatype from the model).
    pub fn from_user_json(input: Value) -> Result<InferRequest, String> {
        match input {
            Value::Object(map) if map.get("inputs").is_some_and(Value::is_array) => {
                InferRequest::from_json(&Value::Object(map))
            }
            Value::Object(map) => InferRequest::from_json(&json!({
                "inputs": map
                    .into_iter()
                    .map(|(name, data)| json!({ "name": name, "data": data }))
                    .collect::<Vec<_>>()
            })),
            _ => Err(
                "the input must be a JSON object: {\"inputs\": [...]} (OIP v2) or \
                 {\"<input name>\": <data>}"
                    .into(),
            ),
        }
    }

    /// The request as OIP v2 JSON, each input with its shape and flat data (what
    /// [`InferRequest::from_json`] reads back to the same request).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if let Some(id) = &self.id {
            out.insert("id".into(), id.clone());
        }
        let inputs = self
            .inputs
            .iter()
            .map(|i| {
                let mut input = Map::new();
                input.insert("name".into(), json!(i.name));
                if let Some(d) = i.datatype {
                    input.insert("datatype".into(), json!(d.name()));
                }
                input.insert("shape".into(), json!(i.shape));
                input.insert("data".into(), Value::Array(i.data.clone()));
                Value::Object(input)
            })
            .collect();
        out.insert("inputs".into(), Value::Array(inputs));
        if let Some(outputs) = &self.outputs {
            let list = outputs.iter().map(|n| json!({ "name": n })).collect();
            out.insert("outputs".into(), Value::Array(list));
        }
        if !self.parameters.is_empty() {
            out.insert("parameters".into(), Value::Object(self.parameters.clone()));
        }
        Value::Object(out)
    }

    /// Whether the request asks for the output `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.outputs
            .as_ref()
            .is_none_or(|w| w.iter().any(|n| n == name))
    }
}

impl RequestInput {
    fn from_json(input: &Value, binary: &mut &[u8]) -> Result<RequestInput, String> {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .ok_or("each input needs a \"name\"")?;
        let datatype = match input.get("datatype").and_then(Value::as_str) {
            Some(d) => Some(
                DType::from_name(d)
                    .ok_or_else(|| format!("input {name:?}: unknown datatype {d:?}"))?,
            ),
            None => None,
        };
        if let Some(size) = input
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
        {
            return RequestInput::from_binary(name, input, datatype, size, binary);
        }
        let data = input
            .get("data")
            .ok_or_else(|| format!("input {name:?}: no \"data\""))?;
        let mut flat = Vec::new();
        let nested_shape =
            flatten(data, &mut flat, 0).map_err(|m| format!("input {name:?}: {m}"))?;
        let shape = match input.get("shape") {
            Some(s) => s
                .as_array()
                .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
                .ok_or_else(|| format!("input {name:?}: \"shape\" must be a list of sizes"))?,
            None => nested_shape,
        };
        let expected = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if expected != Some(flat.len() as u64) {
            return Err(format!(
                "input {name:?}: shape {shape:?} needs {} values, the data has {}",
                expected.map_or("too many".to_string(), |n| n.to_string()),
                flat.len()
            ));
        }
        Ok(RequestInput {
            name: name.to_string(),
            datatype,
            shape,
            data: flat.into_iter().cloned().collect(),
        })
    }

    /// An input whose data comes as binary (see [`InferRequest::from_parts`]), decoded to
    /// values: the datatype and shape are required, the size must match them exactly, and
    /// BYTES elements must be UTF-8 (this node carries them as text).
    fn from_binary(
        name: &str,
        input: &Value,
        datatype: Option<DType>,
        size: &Value,
        binary: &mut &[u8],
    ) -> Result<RequestInput, String> {
        let datatype =
            datatype.ok_or_else(|| format!("input {name:?}: binary data needs a \"datatype\""))?;
        if input.get("data").is_some() {
            return Err(format!(
                "input {name:?}: both \"data\" and binary_data_size"
            ));
        }
        let size = size
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| format!("input {name:?}: binary_data_size must be a size"))?;
        let Some((bytes, rest)) = binary.split_at_checked(size) else {
            return Err(format!(
                "input {name:?}: binary_data_size {size}, but only {} bytes of binary data are left",
                binary.len()
            ));
        };
        *binary = rest;
        let shape = input
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| format!("input {name:?}: binary data needs a \"shape\""))?;
        let count = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("input {name:?}: shape {shape:?} is too large"))?;
        let tensor = RawTensor {
            name: name.to_string(),
            datatype,
            shape: shape.clone(),
            data: bytes.to_vec(),
        };
        let data = match datatype.size() {
            Some(width) => {
                if Some(size as u64) != count.checked_mul(width as u64) {
                    return Err(format!(
                        "input {name:?}: shape {shape:?} of {} needs {} bytes, binary_data_size is {size}",
                        datatype.name(),
                        count.saturating_mul(width as u64)
                    ));
                }
                tensor.json_data()
            }
            None => {
                let mut rest = bytes;
                let mut out = Vec::new();
                while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                    let Some((element, tail)) =
                        tail.split_at_checked(u32::from_le_bytes(*len) as usize)
                    else {
                        return Err(format!(
                            "input {name:?}: a BYTES element runs past the data"
                        ));
                    };
                    let text = std::str::from_utf8(element).map_err(|_| {
                        format!("input {name:?}: a BYTES element is not UTF-8 text")
                    })?;
                    out.push(Value::String(text.to_string()));
                    rest = tail;
                }
                if !rest.is_empty() {
                    return Err(format!("input {name:?}: a BYTES element's length is cut"));
                }
                out
            }
        };
        if data.len() as u64 != count {
            return Err(format!(
                "input {name:?}: shape {shape:?} needs {count} values, the binary data has {}",
                data.len()
            ));
        }
        Ok(RequestInput {
            name: name.to_string(),
            datatype: Some(datatype),
            shape,
            data,
        })
    }

    /// Encodes the data as a raw tensor of `datatype` (the request's, or the model's when the
    /// request gave none): every value must be of that type and fit in it.
    pub fn encode(&self, datatype: DType) -> Result<RawTensor, String> {
        let name = &self.name;
        let dt = datatype.name();
        let wrong = |v: &Value| format!("input {name:?}: {v} is not a {dt} value");
        let mut data = Vec::with_capacity(self.data.len() * datatype.size().unwrap_or(8));
        for v in &self.data {
            match datatype {
                DType::Bytes => {
                    let s = v.as_str().ok_or_else(|| wrong(v))?;
                    let len = u32::try_from(s.len())
                        .map_err(|_| format!("input {name:?}: an element is over 4 GiB"))?;
                    data.extend_from_slice(&len.to_le_bytes());
                    data.extend_from_slice(s.as_bytes());
                }
                DType::Bool => data.push(u8::from(v.as_bool().ok_or_else(|| wrong(v))?)),
                DType::F16 => {
                    let x = v.as_f64().ok_or_else(|| wrong(v))?;
                    data.extend_from_slice(&half::f16::from_f64(x).to_le_bytes());
                }
                DType::Bf16 => {
                    let x = v.as_f64().ok_or_else(|| wrong(v))?;
                    data.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes());
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
                    let size = datatype.size().unwrap_or(8);
                    if size < 8 && x >> (size * 8) != 0 {
                        return Err(format!("input {name:?}: {x} does not fit in {dt}"));
                    }
                    data.extend_from_slice(&x.to_le_bytes()[..size]);
                }
                DType::I8 | DType::I16 | DType::I32 | DType::I64 => {
                    let x = v.as_i64().ok_or_else(|| wrong(v))?;
                    let size = datatype.size().unwrap_or(8);
                    let bits = size as u32 * 8;
                    if bits < 64 && (x < -(1i64 << (bits - 1)) || x >= 1i64 << (bits - 1)) {
                        return Err(format!("input {name:?}: {x} does not fit in {dt}"));
                    }
                    data.extend_from_slice(&x.to_le_bytes()[..size]);
                }
            }
        }
        Ok(RawTensor {
            name: name.clone(),
            datatype,
            shape: self.shape.clone(),
            data,
        })
    }
}

/// Flattens nested JSON arrays (row-major) and returns the nesting's shape.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<Vec<u64>, String> {
    if depth > MAX_NESTING {
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

impl RawTensor {
    /// The elements as JSON values: numbers as the shortest decimal that reads back to the same
    /// value of their own precision, BYTES as UTF-8 text (lossily). Elements the data cannot
    /// hold (a truncated BYTES element) are left out.
    pub fn json_data(&self) -> Vec<Value> {
        json_values(self.datatype, &self.data)
    }
}

/// The elements of encoded `data` (see [`RawTensor::json_data`]).
fn json_values(datatype: DType, data: &[u8]) -> Vec<Value> {
    match datatype.size() {
        Some(size) => data
            .chunks_exact(size)
            .map(|c| json_element(datatype, c))
            .collect(),
        None => bytes_elements(data)
            .map(|e| Value::String(String::from_utf8_lossy(e).into_owned()))
            .collect(),
    }
}

/// The elements of BYTES data: each a little-endian u32 length, then that many bytes; a
/// truncated last one is left out.
fn bytes_elements(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let (value, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        rest = tail;
        Some(value)
    })
}

/// One element of a fixed-width `datatype`, `c` its bytes.
fn json_element(datatype: DType, c: &[u8]) -> Value {
    let mut b = [0u8; 8];
    b[..c.len()].copy_from_slice(c);
    let sign_extend = |bits: u32| {
        let raw = u64::from_le_bytes(b);
        ((raw << (64 - bits)) as i64) >> (64 - bits)
    };
    match datatype {
        DType::Bool => Value::Bool(c[0] != 0),
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => json!(u64::from_le_bytes(b)),
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => json!(sign_extend(c.len() as u32 * 8)),
        DType::F16 => shortest(half::f16::from_le_bytes([b[0], b[1]])),
        DType::Bf16 => shortest(half::bf16::from_le_bytes([b[0], b[1]])),
        DType::F32 => shortest_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::F64 => json!(f64::from_le_bytes(b)),
        DType::Bytes => Value::Null,
    }
}

/// A float as the JSON number with the fewest digits that parses back to it (`null` if not finite).
fn shortest(x: impl std::fmt::Display) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(v))
}

/// [`shortest`] for `f32`, the common case (a 384-float embedding took ~100 ns a number
/// through `Display` and a `String`): the shortest digits written on the stack.
fn shortest_f32(x: f32) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    zmij::Buffer::new()
        .format_finite(x)
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

impl InferResponse {
    /// The HTTP body: JSON alone, or, when some outputs go as binary data, the JSON (those
    /// outputs with `parameters.binary_data_size` and no `data`) followed by their bytes in
    /// output order; then also the JSON part's length, for [`HEADER_LENGTH`].
    pub fn to_body(&self) -> (Vec<u8>, Option<usize>) {
        if self.outputs.iter().all(|o| o.raw.is_none()) {
            // Written straight out: no tree of values built first, no `Display` in between.
            // (It cannot fail: every key is a string and every number finite.)
            return (
                serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()),
                None,
            );
        }
        let mut json = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        let mut binary = Vec::new();
        if let Some(outputs) = json.get_mut("outputs").and_then(Value::as_array_mut) {
            for (out, o) in outputs.iter_mut().zip(&self.outputs) {
                if let (Some(raw), Some(map)) = (&o.raw, out.as_object_mut()) {
                    map.remove("data");
                    map.insert(
                        "parameters".into(),
                        json!({ "binary_data_size": raw.len() }),
                    );
                    binary.extend_from_slice(raw);
                }
            }
        }
        let mut body = json.to_string().into_bytes();
        let header = body.len();
        body.extend_from_slice(&binary);
        (body, Some(header))
    }

    /// The response to `request`: the outputs it asked for (all when it named none), in the
    /// model's order, and `parameters`.
    pub fn new(
        model_name: String,
        model_version: String,
        request: &InferRequest,
        tensors: &[RawTensor],
        parameters: Map<String, Value>,
    ) -> InferResponse {
        InferResponse {
            model_name,
            model_version,
            id: request.id.clone(),
            outputs: tensors
                .iter()
                .filter(|t| request.wants(&t.name))
                .map(|t| {
                    let binary = request.wants_binary(&t.name);
                    ResponseOutput {
                        name: t.name.clone(),
                        datatype: t.datatype.name().to_string(),
                        shape: t.shape.clone(),
                        data: if binary {
                            Elements::default()
                        } else {
                            Elements::Encoded(t.datatype, t.data.clone())
                        },
                        raw: binary.then(|| t.data.clone()),
                    }
                })
                .collect(),
            parameters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(request: Value, datatype: DType) -> Vec<Value> {
        let r = InferRequest::from_json(&request).expect("parse");
        r.inputs[0].encode(datatype).expect("encode").json_data()
    }

    #[test]
    fn f32_numbers_are_written_as_short_as_the_general_path_writes_them() {
        let mut bits = 0x9e37_79b9u32;
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            0.1,
            1e-7,
            3.4e38,
            f32::MIN_POSITIVE,
            1e-45,
            16_777_217.0,
        ];
        for _ in 0..20_000 {
            bits ^= bits << 13;
            bits ^= bits >> 17;
            bits ^= bits << 5;
            values.push(f32::from_bits(bits));
        }
        for x in values
            .into_iter()
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
        {
            let (fast, general) = (shortest_f32(x), shortest(x));
            let digits = |v: &Value| v.to_string().chars().filter(char::is_ascii_digit).count();
            // Both the shortest: where two such decimals are equally near (a tie), either
            // may be written; both read back to the same f32.
            assert_eq!(
                digits(&fast),
                digits(&general),
                "{x:e} ({:#x})",
                x.to_bits()
            );
            match (fast.as_f64(), general.as_f64()) {
                (Some(a), Some(b)) => {
                    assert_eq!((a as f32).to_bits(), x.to_bits(), "{x:e} reads back");
                    assert_eq!((b as f32).to_bits(), x.to_bits(), "{x:e} reads back");
                }
                (a, b) => assert!(a.is_none() && b.is_none() && !x.is_finite(), "{x:e}"),
            }
        }
    }

    #[test]
    fn encoded_elements_write_the_json_their_values_write() {
        let mut bits = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            bits
        };
        let mut floats: Vec<u8> = [0.0f32, -0.0, 1.0, 0.1, 1e-7, 3.4e38, 1e-45, f32::NAN]
            .iter()
            .chain(&[f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE])
            .flat_map(|x| x.to_le_bytes())
            .collect();
        floats.extend((0..100_000).flat_map(|_| (next() as u32).to_le_bytes()));
        let random: Vec<u8> = (0..4096).flat_map(|_| next().to_le_bytes()).collect();
        let mut text = Vec::new();
        for s in ["héllo", "", "x"] {
            text.extend((s.len() as u32).to_le_bytes());
            text.extend(s.as_bytes());
        }
        // A truncated last element is left out by both.
        text.extend([9, 0, 0, 0, b'a']);
        let mut cases = vec![(DType::F32, floats), (DType::Bytes, text)];
        // Every fixed-size element type on random bytes too (a new one is covered once added).
        cases.extend(
            DType::all()
                .filter(|d| !matches!(d, DType::Bytes))
                .map(|d| (d, random.clone())),
        );
        for (datatype, bytes) in cases {
            let encoded = Elements::Encoded(datatype, bytes.clone());
            let values = json_values(datatype, &bytes);
            assert_eq!(encoded.len(), values.len(), "{datatype:?}");
            let written = serde_json::to_string(&encoded).expect("json");
            assert_eq!(encoded, Elements::Values(values.clone()));
            if datatype != DType::F32 {
                assert_eq!(written, serde_json::to_string(&values).expect("json"));
                continue;
            }
            // f32s as f32s: as short, and reading back to the same f32 (where exponents
            // start differs from the f64 writer's, which `values` went through).
            let read: Vec<Value> = serde_json::from_str(&written).expect("read back");
            let general = serde_json::to_string(&values).expect("json");
            let numbers = |text: &str| -> Vec<String> {
                let text = text.trim_start_matches('[').trim_end_matches(']');
                text.split(',').map(str::to_string).collect()
            };
            // Significant digits: the mantissa's, without leading or trailing zeros.
            let significant = |n: &str| {
                let mantissa = n
                    .split(['e', 'E'])
                    .next()
                    .unwrap_or(n)
                    .replace(['-', '.'], "");
                mantissa.trim_matches('0').len()
            };
            let (ours, theirs) = (numbers(&written), numbers(&general));
            assert_eq!((ours.len(), theirs.len()), (read.len(), read.len()));
            for (((read, x), ours), theirs) in read
                .iter()
                .zip(bytes.chunks_exact(4))
                .zip(&ours)
                .zip(&theirs)
            {
                let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                match read.as_f64() {
                    Some(r) => assert_eq!((r as f32).to_bits(), x.to_bits(), "{x:e}"),
                    None => assert!(read.is_null() && !x.is_finite(), "{x:e}"),
                }
                assert!(
                    significant(ours) <= significant(theirs),
                    "{x:e}: {ours} against {theirs}"
                );
            }
        }
    }

    #[test]
    fn nested_json_becomes_raw_tensors_and_back() {
        let request =
            InferRequest::from_user_json(json!({ "x": [[1.0, 2.5], [3.0, -4.0]] })).expect("x");
        let input = &request.inputs[0];
        assert_eq!((input.datatype, input.shape.clone()), (None, vec![2, 2]));
        let t = input.encode(DType::F32).expect("encode");
        assert_eq!(t.data.len(), 16);
        assert_eq!(
            t.json_data(),
            vec![json!(1.0), json!(2.5), json!(3.0), json!(-4.0)]
        );
        // The canonical form reads back to the same request.
        assert_eq!(InferRequest::from_json(&request.to_json()), Ok(request));

        let text = json!({ "inputs": [{ "name": "t", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""] }] });
        assert_eq!(
            roundtrip(text, DType::Bytes),
            vec![json!("héllo"), json!("")]
        );
        // Floats print as the shortest decimal of their own precision.
        let floats = json!({ "inputs": [{ "name": "f", "data": [0.1, 1e-7] }] });
        assert_eq!(
            serde_json::to_string(&roundtrip(floats, DType::F32)).expect("json"),
            "[0.1,1e-7]"
        );
        let halves = json!({ "inputs": [{ "name": "h", "data": [0.5, 65504.0] }] });
        assert_eq!(
            roundtrip(halves.clone(), DType::F16),
            vec![json!(0.5), json!(65504.0)]
        );
        assert_eq!(roundtrip(halves, DType::Bf16)[0], json!(0.5));
        let ints = json!({ "inputs": [{ "name": "i", "data": [-128, 127] }] });
        assert_eq!(roundtrip(ints, DType::I8), vec![json!(-128), json!(127)]);
        let big = json!({ "inputs": [{ "name": "u", "data": [u64::MAX] }] });
        assert_eq!(roundtrip(big, DType::U64), vec![json!(u64::MAX)]);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (request, needle) in [
            (json!({}), "inputs"),
            (
                json!({ "inputs": [{ "datatype": "FP32", "data": [1] }] }),
                "name",
            ),
            (json!({ "inputs": [{ "name": "x" }] }), "no \"data\""),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP32", "data": [[1.0], [1.0, 2.0]] }] }),
                "ragged",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [3], "data": [1.0] }] }),
                "needs 3",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP7", "data": [1] }] }),
                "unknown datatype",
            ),
            (
                json!({ "inputs": [{ "name": "x", "shape": "2", "data": [1, 2] }] }),
                "list of sizes",
            ),
            (
                json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [4_294_967_296_u64, 4_294_967_296_u64], "data": [] }] }),
                "needs too many",
            ),
            (
                json!({ "inputs": [{ "name": "x", "data": [[[[[[[[[[1]]]]]]]]]] }] }),
                "too deeply",
            ),
            (
                json!({ "inputs": [], "outputs": [{ "label": "y" }] }),
                "output needs",
            ),
        ] {
            let err = InferRequest::from_json(&request).expect_err(&request.to_string());
            assert!(err.contains(needle), "{request}: {err}");
        }
        for (data, datatype, needle) in [
            (json!([300]), DType::I8, "fit"),
            (json!([-1]), DType::U32, "not a UINT32"),
            (json!([1]), DType::Bytes, "not a BYTES"),
            (json!(["1"]), DType::F32, "not a FP32"),
        ] {
            let r = InferRequest::from_json(&json!({ "inputs": [{ "name": "x", "data": data }] }))
                .expect("form is fine");
            let err = r.inputs[0].encode(datatype).expect_err("value is not");
            assert!(err.contains(needle), "{err}");
        }
        assert!(InferRequest::from_user_json(json!([1])).is_err());
    }

    #[test]
    fn a_response_has_the_outputs_asked_for() {
        let request = InferRequest::from_json(
            &json!({ "id": "r1", "inputs": [], "outputs": [{ "name": "b" }] }),
        )
        .expect("parse");
        let t = |name: &str| RawTensor {
            name: name.into(),
            datatype: DType::Bool,
            shape: vec![1],
            data: vec![1],
        };
        let r = InferResponse::new(
            "m".into(),
            "1".into(),
            &request,
            &[t("a"), t("b")],
            Map::new(),
        );
        assert_eq!(r.id, Some(json!("r1")));
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(*r.outputs[0].data.values(), [json!(true)]);
        // A truncated BYTES element is left out, never read past the end.
        let cut = RawTensor {
            name: "s".into(),
            datatype: DType::Bytes,
            shape: vec![1],
            data: vec![9, 0, 0, 0, b'a'],
        };
        assert!(cut.json_data().is_empty());
    }

    #[test]
    fn binary_tensor_data_reads_and_answers_as_triton_clients_send_it() {
        // Two FP32 values and two BYTES elements, as tritonclient lays them out.
        let mut binary = Vec::new();
        binary.extend_from_slice(&1.5f32.to_le_bytes());
        binary.extend_from_slice(&(-2.0f32).to_le_bytes());
        for s in ["hé", ""] {
            binary.extend_from_slice(&(s.len() as u32).to_le_bytes());
            binary.extend_from_slice(s.as_bytes());
        }
        let header = json!({
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                {"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": binary.len() - 8}},
            ],
            "parameters": {"binary_data_output": true},
        });
        let request = InferRequest::from_parts(&header, &binary).expect("binary request");
        assert_eq!(request.inputs[0].data, vec![json!(1.5), json!(-2.0)]);
        assert_eq!(request.inputs[1].data, vec![json!("hé"), json!("")]);
        assert_eq!(
            request.inputs[0].encode(DType::F32).expect("encode").data,
            binary[..8]
        );
        assert!(request.wants_binary("y"));

        // The answer: JSON then the output's bytes, its size in the JSON.
        let y = RawTensor {
            name: "y".into(),
            datatype: DType::F32,
            shape: vec![2],
            data: binary[..8].to_vec(),
        };
        let response = InferResponse::new("m".into(), "1".into(), &request, &[y], Map::new());
        let (body, header) = response.to_body();
        let header = header.expect("binary answer");
        let json: Value = serde_json::from_slice(&body[..header]).expect("json");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(&body[header..], &binary[..8]);

        // Named outputs: binary only where asked.
        let named = json!({
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": false}}, {"name": "z", "parameters": {"binary_data": true}}],
        });
        let request = InferRequest::from_json(&named).expect("named");
        assert!(!request.wants_binary("y") && request.wants_binary("z"));
    }

    #[test]
    fn binary_data_that_does_not_fit_is_refused() {
        let x = |size: u64, extra: serde_json::Value| {
            let mut input = json!({"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": size}});
            if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
                i.extend(e.clone());
            }
            json!({ "inputs": [input] })
        };
        let eight = [0u8; 8];
        assert!(InferRequest::from_parts(&x(8, json!({})), &eight).is_ok());
        for (request, bytes, why) in [
            (x(8, json!({})), &eight[..4], "only 4 bytes"),
            (x(4, json!({})), &eight[..], "needs 8 bytes"),
            (x(4, json!({"shape": [1]})), &eight[..], "after the inputs"),
            (x(8, json!({"data": [1.0, 2.0]})), &eight[..], "both"),
            (
                x(8, json!({"datatype": null})),
                &eight[..],
                "needs a \"datatype\"",
            ),
            (
                x(8, json!({"shape": null})),
                &eight[..],
                "needs a \"shape\"",
            ),
            (
                x(u64::MAX, json!({})),
                &eight[..],
                "bytes of binary data are left",
            ),
        ] {
            let e = InferRequest::from_parts(&request, bytes).expect_err(why);
            assert!(e.contains(why), "{e} (wanted {why})");
        }
        let bytes = |data: &[u8], size: usize| {
            let request = json!({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}]});
            InferRequest::from_parts(&request, data)
        };
        let e = bytes(&[2, 0, 0, 0, 0xff, 0xfe], 6).expect_err("not UTF-8");
        assert!(e.contains("UTF-8"), "{e}");
        let e = bytes(&[9, 0, 0, 0, b'a'], 5).expect_err("runs past");
        assert!(e.contains("runs past"), "{e}");
        let e = bytes(&[1, 0, 0, 0, b'a', 1, 0], 7).expect_err("cut");
        assert!(e.contains("cut"), "{e}");
    }
}
