//! The GGUF header, read as attacker input.
//!
//! A GGUF file is a header (magic `GGUF`, version, tensor and key counts, typed key/value
//! metadata, one record per tensor: name, dimensions, element type, offset) followed, at the
//! next multiple of `general.alignment`, by the tensors' bytes. [`parse`] reads the header from
//! a prefix of the file and checks everything llama.cpp would trust: counts against [`Limits`]
//! before anything is allocated for them, every length against the bytes that remain, value
//! types, dimensions (1 to 4, none zero, the product without overflow and a whole number of
//! blocks), element types, offsets (contiguous, aligned, as llama.cpp lays them out) and that
//! the data the header describes lies inside the file. It never panics and allocates at most
//! about the header's own size.
//!
//! It is I/O-free: the caller reads at most [`Limits::max_header_bytes`] from the start of the
//! file and passes them with the file's length.

use std::collections::BTreeMap;
use std::fmt;

/// `GGUF`, little-endian.
const MAGIC: &[u8; 4] = b"GGUF";
/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Bounds on what a header may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the header (everything before the tensor data) may take: 64 MiB. Vocabularies of
    /// 250k tokens with merges take about 10 MiB.
    pub max_header_bytes: u64,
    /// Tensors: 65,536 (a 400B-parameter model has under 3,000).
    pub max_tensors: u64,
    /// Metadata keys: 65,536.
    pub max_keys: u64,
    /// Bytes of one key or tensor name: 256 (llama.cpp allows 64 for tensor names).
    pub max_name_bytes: u64,
    /// Context length a model may claim: 2^24 tokens (16,777,216). A node caps the context it
    /// allocates separately; this only refuses absurd claims.
    pub max_context: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 << 20,
            max_tensors: 65_536,
            max_keys: 65_536,
            max_name_bytes: 256,
            max_context: 1 << 24,
        }
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The file ends inside its header.
    Truncated {
        /// What was being read.
        what: String,
    },
    /// The header goes on past [`Limits::max_header_bytes`].
    HeaderTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Anything else: a bad magic, version, count, type, size or offset.
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { what } => {
                write!(
                    f,
                    "not a whole GGUF file: it ends inside its header ({what})"
                )
            }
            Error::HeaderTooLarge { limit } => write!(
                f,
                "the GGUF header is larger than the {} MiB limit",
                limit >> 20
            ),
            Error::Invalid(why) => write!(f, "malformed GGUF: {why}"),
        }
    }
}

impl std::error::Error for Error {}

fn invalid<T>(why: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(why.into()))
}

/// A metadata value. Arrays keep their element type and length, and their elements only when
/// they are scalars or strings the caller may want (see [`Gguf::metadata`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// FLOAT32 or FLOAT64.
    Float(f64),
    /// BOOL.
    Bool(bool),
    /// STRING (UTF-8 checked).
    Str(String),
    /// ARRAY: its element type's number and length; elements are skipped.
    Array {
        /// GGUF value type of the elements.
        element_type: u32,
        /// Number of elements.
        len: u64,
    },
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Dimensions, innermost first (GGML order).
    pub dims: Vec<u64>,
    /// GGML element type.
    pub ggml_type: u32,
    /// Offset in the data section.
    pub offset: u64,
    /// Bytes it takes.
    pub bytes: u64,
}

/// A checked GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `general.name`, when given.
    pub name: Option<String>,
    /// `{architecture}.context_length`: the context the model was trained for.
    pub context_length: u64,
    /// The quantisation, e.g. `Q4_1`: from `general.file_type`, else the commonest tensor type.
    pub quantisation: String,
    /// `tokenizer.chat_template`, when given.
    pub chat_template: Option<String>,
    /// Number of tokens in `tokenizer.ggml.tokens`, when given.
    pub vocab_size: Option<u64>,
    /// Parameters: elements of every tensor.
    pub parameters: u64,
    /// Tensor records, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the tensor data starts in the file.
    pub data_offset: u64,
    /// Every metadata key and its value (arrays by type and length only).
    pub metadata: BTreeMap<String, Value>,
}

/// GGML element types: (name, elements per block, bytes per block).
fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// llama.cpp's `llama_ftype` names (`general.file_type`).
fn file_type_name(t: u64) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// Reads little-endian values from the header prefix, telling a file that ends from a header
/// that outgrows the prefix.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The whole prefix is the whole file.
    whole_file: bool,
    limit: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], Error> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(if self.whole_file {
                Error::Truncated { what: what.into() }
            } else {
                Error::HeaderTooLarge { limit: self.limit }
            });
        }
        // `n <= left`, which is a usize.
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length, then UTF-8 bytes. `max` bounds the length.
    fn string(&mut self, what: &str, max: u64) -> Result<String, Error> {
        let len = self.u64(what)?;
        if len > max {
            return invalid(format!("{what} is {len} bytes, over the {max}-byte limit"));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).or_else(|_| invalid(format!("{what} is not UTF-8")))
    }

    /// Skips a string, checking only that its bytes are there.
    fn skip_string(&mut self, what: &str) -> Result<(), Error> {
        let len = self.u64(what)?;
        self.take(len, what).map(|_| ())
    }

    /// A value of GGUF type `ty`. Arrays are walked (their strings skipped, their scalars
    /// stepped over), never stored.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, Error> {
        Ok(match ty {
            0 => Value::Uint(u64::from(self.array::<1>(key)?[0])),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.array(key)?))),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array(key)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(key)?))),
            4 => Value::Uint(u64::from(self.u32(key)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(key)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(key)?))),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return invalid(format!("{key}: boolean byte {b}")),
            },
            8 => Value::Str(self.string(key, self.limit)?),
            9 => {
                if depth > 0 {
                    return invalid(format!("{key}: an array of arrays"));
                }
                let element_type = self.u32(key)?;
                let len = self.u64(key)?;
                match element_type {
                    8 => {
                        for _ in 0..len {
                            self.skip_string(key)?;
                        }
                    }
                    9 => return invalid(format!("{key}: an array of arrays")),
                    t => {
                        let size = scalar_size(t)
                            .ok_or_else(|| Error::Invalid(format!("{key}: value type {t}")))?;
                        let bytes = len.checked_mul(size).ok_or_else(|| {
                            Error::Invalid(format!("{key}: an array of {len} elements"))
                        })?;
                        self.take(bytes, key)?;
                    }
                }
                Value::Array { element_type, len }
            }
            10 => Value::Uint(self.u64(key)?),
            11 => Value::Int(i64::from_le_bytes(self.array(key)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
            t => return invalid(format!("{key}: value type {t}")),
        })
    }
}

/// Bytes of one scalar of GGUF value type `t`.
fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

/// Reads and checks the header of a GGUF file whose first bytes are `prefix` (at most
/// [`Limits::max_header_bytes`] of them, or the whole file) and whose length is `file_len`.
pub fn parse(prefix: &[u8], file_len: u64, limits: &Limits) -> Result<Gguf, Error> {
    if (prefix.len() as u64) > file_len {
        return invalid("the prefix is longer than the file");
    }
    let mut r = Reader {
        bytes: prefix,
        pos: 0,
        whole_file: prefix.len() as u64 == file_len,
        limit: limits.max_header_bytes,
    };
    if &r.array::<4>("magic")? != MAGIC {
        return invalid("no GGUF magic at the start (is this a GGUF file?)");
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return invalid(format!("version {version} (versions 2 and 3 are read)"));
    }
    let n_tensors = r.u64("tensor count")?;
    if n_tensors > limits.max_tensors {
        return invalid(format!(
            "{n_tensors} tensors, over the limit of {}",
            limits.max_tensors
        ));
    }
    let n_keys = r.u64("metadata count")?;
    if n_keys > limits.max_keys {
        return invalid(format!(
            "{n_keys} metadata keys, over the limit of {}",
            limits.max_keys
        ));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_keys {
        let key = r.string("a metadata key", limits.max_name_bytes)?;
        let ty = r.u32(&key)?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return invalid(format!("metadata key {key:?} appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::Uint(a)) if a.is_power_of_two() && *a <= 1 << 16 => *a,
        Some(v) => return invalid(format!("general.alignment {v:?}")),
    };
    let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
    let mut names = std::collections::BTreeSet::new();
    let mut expected_offset = 0u64;
    let mut parameters = 0u64;
    let mut type_counts: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..n_tensors {
        let name = r.string("a tensor name", limits.max_name_bytes)?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return invalid(format!("tensor {name:?} has {n_dims} dimensions (1 to 4)"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut elements = 1u64;
        for _ in 0..n_dims {
            let d = r.u64(&name)?;
            if d == 0 || d > i64::MAX as u64 {
                return invalid(format!("tensor {name:?} has a dimension of {d}"));
            }
            elements = elements
                .checked_mul(d)
                .filter(|e| *e <= i64::MAX as u64)
                .ok_or_else(|| Error::Invalid(format!("tensor {name:?}: too many elements")))?;
            dims.push(d);
        }
        let ggml_type = r.u32(&name)?;
        let (type_name, block, block_bytes) = ggml_type_checked(ggml_type, &name)?;
        if dims[0] % block != 0 {
            return invalid(format!(
                "tensor {name:?}: its first dimension {} is not a whole number of {type_name} blocks of {block}",
                dims[0]
            ));
        }
        let bytes = (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| Error::Invalid(format!("tensor {name:?}: too many bytes")))?;
        let offset = r.u64(&name)?;
        if offset != expected_offset {
            return invalid(format!(
                "tensor {name:?} is at offset {offset}, where {expected_offset} was expected (tensors are laid out in order, aligned to {alignment})"
            ));
        }
        expected_offset = pad(bytes, alignment)
            .and_then(|b| offset.checked_add(b))
            .ok_or_else(|| Error::Invalid(format!("tensor {name:?}: offsets overflow")))?;
        if !names.insert(name.clone()) {
            return invalid(format!("tensor name {name:?} appears twice"));
        }
        parameters = parameters.saturating_add(elements);
        *type_counts.entry(ggml_type).or_default() += elements;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            bytes,
        });
    }
    let data_offset = pad(r.pos as u64, alignment)
        .ok_or_else(|| Error::Invalid("the data offset overflows".into()))?;
    let data_end = tensors
        .last()
        .map_or(Some(data_offset), |t| {
            data_offset.checked_add(t.offset)?.checked_add(t.bytes)
        })
        .ok_or_else(|| Error::Invalid("the tensor data's end overflows".into()))?;
    if data_end > file_len {
        return invalid(format!(
            "the header describes {data_end} bytes of file, but the file has {file_len} (truncated, or the header lies about sizes)"
        ));
    }
    let text = |key: &str| -> Result<Option<String>, Error> {
        match metadata.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(v) => invalid(format!("{key} is {v:?}, not a string")),
        }
    };
    let architecture = text("general.architecture")?
        .ok_or_else(|| Error::Invalid("general.architecture is missing".into()))?;
    if architecture.is_empty()
        || architecture.len() > 64
        || !architecture
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return invalid(format!("general.architecture {architecture:?}"));
    }
    let ctx_key = format!("{architecture}.context_length");
    let context_length = match metadata.get(&ctx_key) {
        None => return invalid(format!("{ctx_key} is missing")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Error::Invalid(format!("{ctx_key} is {v:?}, not a count")))?,
    };
    if context_length == 0 || context_length > limits.max_context {
        return invalid(format!(
            "{ctx_key} is {context_length} tokens (1 to {} accepted)",
            limits.max_context
        ));
    }
    let quantisation = match metadata.get("general.file_type") {
        Some(v) => {
            let t = v
                .as_u64()
                .ok_or_else(|| Error::Invalid(format!("general.file_type is {v:?}")))?;
            file_type_name(t).map_or_else(|| format!("file type {t}"), str::to_string)
        }
        None => type_counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .and_then(|(t, _)| ggml_type(*t))
            .map_or("none", |(n, _, _)| n)
            .to_string(),
    };
    let vocab_size = match metadata.get("tokenizer.ggml.tokens") {
        None => None,
        Some(Value::Array {
            element_type: 8,
            len,
        }) => Some(*len),
        Some(v) => return invalid(format!("tokenizer.ggml.tokens is {v:?}")),
    };
    Ok(Gguf {
        version,
        name: text("general.name")?,
        chat_template: text("tokenizer.chat_template")?,
        architecture,
        context_length,
        quantisation,
        vocab_size,
        parameters,
        tensors,
        data_offset,
        metadata,
    })
}

fn ggml_type_checked(t: u32, name: &str) -> Result<(&'static str, u64, u64), Error> {
    ggml_type(t).ok_or_else(|| Error::Invalid(format!("tensor {name:?} has element type {t}")))
}

/// `n` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
fn pad(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

/// Writes GGUF headers, for tests and tools that build files (hostile ones included).
pub mod write {
    /// A metadata value to write.
    #[derive(Debug, Clone)]
    pub enum Val {
        /// UINT32.
        U32(u32),
        /// UINT64.
        U64(u64),
        /// STRING.
        Str(String),
        /// ARRAY of STRING.
        Strs(Vec<String>),
        /// FLOAT32.
        F32(f32),
    }

    /// A tensor record to write: name, dims, GGML type, offset.
    pub type Tensor = (String, Vec<u64>, u32, u64);

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// The header bytes (not padded to the data offset).
    pub fn header(version: u32, keys: &[(String, Val)], tensors: &[Tensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        for (k, v) in keys {
            string(&mut out, k);
            match v {
                Val::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::U64(x) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Val::Strs(list) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    for s in list {
                        string(&mut out, s);
                    }
                }
            }
        }
        for (name, dims, ty, offset) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::write::{Val, header};
    use super::*;
    use proptest::prelude::*;

    fn keys(ctx: u64) -> Vec<(String, Val)> {
        vec![
            ("general.architecture".into(), Val::Str("llama".into())),
            ("general.name".into(), Val::Str("tiny".into())),
            ("general.file_type".into(), Val::U32(3)),
            ("llama.context_length".into(), Val::U64(ctx)),
            (
                "tokenizer.ggml.tokens".into(),
                Val::Strs(vec!["a".into(), "b".into(), "<|im_end|>".into()]),
            ),
            (
                "tokenizer.chat_template".into(),
                Val::Str("{% for m in messages %}<|im_start|>{% endfor %}".into()),
            ),
        ]
    }

    /// A whole file: header, padding, and zeroed tensor data.
    fn file(keys: &[(String, Val)], tensors: &[write::Tensor], data: u64) -> Vec<u8> {
        let mut out = header(3, keys, tensors);
        let padded = pad(out.len() as u64, 32).unwrap_or(0) as usize;
        out.resize(padded + data as usize, 0);
        out
    }

    fn two_tensors() -> Vec<write::Tensor> {
        // Q4_1: 32 elements in 20 bytes; 64×2 = 4 blocks = 80 bytes, padded to 96.
        vec![
            ("tok_embd".into(), vec![64, 2], 3, 0),
            ("output_norm".into(), vec![64], 0, 96),
        ]
    }

    #[test]
    fn a_well_formed_header_is_read() -> Result<(), Error> {
        let bytes = file(&keys(2048), &two_tensors(), 96 + 256);
        let g = parse(&bytes, bytes.len() as u64, &Limits::default())?;
        assert_eq!(g.architecture, "llama");
        assert_eq!(g.name.as_deref(), Some("tiny"));
        assert_eq!(g.context_length, 2048);
        assert_eq!(g.quantisation, "Q4_1");
        assert_eq!(g.vocab_size, Some(3));
        assert_eq!(g.parameters, 128 + 64);
        assert_eq!(g.tensors[1].bytes, 256);
        assert!(
            g.chat_template
                .as_deref()
                .is_some_and(|t| t.contains("im_start"))
        );
        assert_eq!(g.data_offset % 32, 0);
        Ok(())
    }

    fn refused(bytes: &[u8], len: u64) -> String {
        match parse(bytes, len, &Limits::default()) {
            Ok(g) => panic!("accepted: {g:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_headers_get_clear_errors() {
        let t = two_tensors();
        // Huge tensor count.
        let mut b = file(&keys(2048), &t, 352);
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(refused(&b, b.len() as u64).contains("tensors, over the limit"));
        // Huge key count.
        let mut b = file(&keys(2048), &t, 352);
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(refused(&b, b.len() as u64).contains("metadata keys"));
        // Lying sizes: the data the header describes is not in the file.
        let b = file(&keys(2048), &t, 100);
        assert!(refused(&b, b.len() as u64).contains("header lies about sizes"));
        // Truncated inside the header.
        let b = file(&keys(2048), &t, 352);
        let cut = &b[..b.len() / 3];
        assert!(refused(cut, cut.len() as u64).contains("ends inside its header"));
        // Absurd context length.
        let b = file(&keys(1 << 40), &t, 352);
        assert!(refused(&b, b.len() as u64).contains("context_length"));
        // A tensor at the wrong offset, a zero dimension, an unknown type, five dimensions.
        for (tensors, expect) in [
            (
                vec![("a".to_string(), vec![64], 0u32, 64u64)],
                "where 0 was expected",
            ),
            (vec![("a".into(), vec![0], 0, 0)], "dimension of 0"),
            (vec![("a".into(), vec![64], 77, 0)], "element type 77"),
            (vec![("a".into(), vec![1; 5], 0, 0)], "5 dimensions"),
            (vec![("a".into(), vec![33], 2, 0)], "not a whole number"),
            (
                vec![("a".into(), vec![1 << 40, 1 << 40], 0, 0)],
                "too many elements",
            ),
        ] {
            let b = file(&keys(2048), &tensors, 4096);
            let e = refused(&b, b.len() as u64);
            assert!(e.contains(expect), "{e}");
        }
        // A string longer than the file.
        let mut b = header(3, &[], &[]);
        b[16..24].copy_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&(1u64 << 50).to_le_bytes());
        assert!(refused(&b, b.len() as u64).contains("over the"));
        // Not GGUF at all.
        assert!(refused(b"PK\x03\x04 not gguf", 16).contains("magic"));
    }

    #[test]
    fn a_header_larger_than_the_limit_is_refused_as_such() {
        let mut k = keys(2048);
        k.push(("pad".into(), Val::Strs(vec!["x".repeat(20); 200])));
        let b = file(&k, &two_tensors(), 352);
        let limits = Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        };
        // The caller read only the first `max_header_bytes`.
        let e = parse(&b[..1024], b.len() as u64, &limits);
        assert_eq!(e, Err(Error::HeaderTooLarge { limit: 1024 }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, bytes.len() as u64, &Limits::default());
        }

        #[test]
        fn every_truncation_and_corruption_of_a_good_file_is_an_error_or_a_checked_header(
            cut in 0usize..600,
            flip in 0usize..600,
            bit in 0u8..8,
        ) {
            let good = file(&keys(2048), &two_tensors(), 352);
            let cut = cut.min(good.len());
            prop_assert!(parse(&good[..cut], cut as u64, &Limits::default()).is_err() || cut == good.len());
            let mut bad = good.clone();
            let i = flip % bad.len();
            bad[i] ^= 1 << bit;
            if let Ok(g) = parse(&bad, bad.len() as u64, &Limits::default()) {
                // Whatever it accepted is within the file and the limits.
                let end = g.tensors.last().map_or(g.data_offset, |t| g.data_offset + t.offset + t.bytes);
                prop_assert!(end <= bad.len() as u64);
                prop_assert!(g.context_length <= Limits::default().max_context);
            }
        }
    }
}
