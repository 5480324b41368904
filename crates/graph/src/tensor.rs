//! The tensor encoding every moxnet part shares, and its checks.

use crate::Error;

/// Element types, named as in the Open Inference Protocol v2 (`FP32`, `INT64`, `BYTES`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `BOOL`: one byte per element, 0 or 1.
    Bool,
    /// `UINT8`.
    U8,
    /// `UINT16`.
    U16,
    /// `UINT32`.
    U32,
    /// `UINT64`.
    U64,
    /// `INT8`.
    I8,
    /// `INT16`.
    I16,
    /// `INT32`.
    I32,
    /// `INT64`.
    I64,
    /// `FP16`: IEEE 754 half precision.
    F16,
    /// `FP32`.
    F32,
    /// `FP64`.
    F64,
    /// `BYTES`: variable-length byte strings (text for text models).
    Bytes,
}

impl DType {
    /// Every dtype, in the order of the WIT `dtype` enum.
    pub const ALL: [DType; 13] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bytes,
    ];

    /// Bytes per element, or `None` for `BYTES`.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// The OIP v2 datatype name.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    /// Parses an OIP v2 datatype name.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A size the caller chooses, named after the graph's symbol (e.g. `batch`).
    Symbolic(String),
}

impl Dim {
    /// The OIP v2 form: the size, or -1 for a size the caller chooses.
    pub fn oip(&self) -> i64 {
        match self {
            Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
            Dim::Symbolic(_) => -1,
        }
    }
}

/// A named input or output of a model and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<Dim>,
}

impl Spec {
    /// Checks that `shape` fits this spec: same rank, equal fixed dims, and one size per symbol.
    pub fn accepts(&self, dtype: DType, shape: &[u64]) -> Result<(), Error> {
        if dtype != self.dtype {
            return Err(Error::Invalid(format!(
                "input {:?} must be {}, not {dtype}",
                self.name, self.dtype
            )));
        }
        if shape.len() != self.shape.len() {
            return Err(Error::Invalid(format!(
                "input {:?} must have rank {} (shape {}), not {}",
                self.name,
                self.shape.len(),
                self.shape_text(),
                shape.len()
            )));
        }
        let mut symbols: Vec<(&str, u64)> = Vec::new();
        for (dim, &got) in self.shape.iter().zip(shape) {
            match dim {
                Dim::Fixed(want) if *want != got => {
                    return Err(Error::Invalid(format!(
                        "input {:?} must have shape {}, not {shape:?}",
                        self.name,
                        self.shape_text()
                    )));
                }
                Dim::Fixed(_) => {}
                Dim::Symbolic(s) => match symbols.iter().find(|(name, _)| name == s) {
                    Some((_, seen)) if *seen != got => {
                        return Err(Error::Invalid(format!(
                            "input {:?}: dimension {s} is both {seen} and {got}",
                            self.name
                        )));
                    }
                    Some(_) => {}
                    None => symbols.push((s, got)),
                },
            }
        }
        Ok(())
    }

    /// The shape as text, e.g. `[batch, 4]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => n.to_string(),
                Dim::Symbolic(s) => s.clone(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// Limits on a tensor that arrives from outside (a caller, a guest, a peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most dimensions.
    pub max_rank: usize,
    /// Most elements.
    pub max_elements: u64,
    /// Most data bytes.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rank: 8,
            max_elements: 64 << 20,
            max_bytes: 256 << 20,
        }
    }
}

/// A concrete named tensor in the shared encoding (see the crate docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its elements, encoded.
    pub data: Vec<u8>,
}

impl Tensor {
    /// An `FP32` tensor.
    pub fn from_f32(name: &str, shape: Vec<u64>, values: &[f32]) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An `INT64` tensor.
    pub fn from_i64(name: &str, shape: Vec<u64>, values: &[i64]) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: DType::I64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A `BYTES` tensor.
    pub fn from_bytes<B: AsRef<[u8]>>(name: &str, shape: Vec<u64>, values: &[B]) -> Tensor {
        let mut data = Vec::new();
        for v in values {
            let v = v.as_ref();
            data.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(v);
        }
        Tensor {
            name: name.to_string(),
            dtype: DType::Bytes,
            shape,
            data,
        }
    }

    /// The number of elements the shape declares, if it fits in a u64.
    pub fn elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// Checks the tensor against `limits` and its own shape: the data length must be exactly what
    /// the shape and dtype need (for `BYTES`, the length prefixes must tile the data exactly).
    /// Returns the element count.
    pub fn check(&self, limits: &Limits) -> Result<u64, Error> {
        let invalid = |m: String| Err(Error::Invalid(format!("tensor {:?}: {m}", self.name)));
        if self.shape.len() > limits.max_rank {
            return invalid(format!(
                "rank {} is above the limit of {}",
                self.shape.len(),
                limits.max_rank
            ));
        }
        let Some(n) = self.elements().filter(|&n| n <= limits.max_elements) else {
            return invalid(format!(
                "shape {:?} has more than {} elements",
                self.shape, limits.max_elements
            ));
        };
        if self.data.len() > limits.max_bytes {
            return invalid(format!(
                "{} bytes of data is above the limit of {}",
                self.data.len(),
                limits.max_bytes
            ));
        }
        match self.dtype.size() {
            Some(size) => {
                let want = n as usize * size;
                if self.data.len() != want {
                    return invalid(format!(
                        "shape {:?} of {} needs {want} bytes, got {}",
                        self.shape,
                        self.dtype,
                        self.data.len()
                    ));
                }
                if self.dtype == DType::Bool && self.data.iter().any(|&b| b > 1) {
                    return invalid("BOOL elements must be 0 or 1".into());
                }
            }
            None => {
                let count = self.byte_elements()?.len() as u64;
                if count != n {
                    return invalid(format!(
                        "shape {:?} needs {n} BYTES elements, got {count}",
                        self.shape
                    ));
                }
            }
        }
        Ok(n)
    }

    /// The elements of a `BYTES` tensor.
    pub fn byte_elements(&self) -> Result<Vec<&[u8]>, Error> {
        if self.dtype != DType::Bytes {
            return Err(Error::Invalid(format!(
                "tensor {:?} is {}, not BYTES",
                self.name, self.dtype
            )));
        }
        let mut out = Vec::new();
        let mut rest = &self.data[..];
        while !rest.is_empty() {
            let (len, tail) = rest.split_at_checked(4).ok_or_else(|| {
                Error::Invalid(format!("tensor {:?}: truncated BYTES length", self.name))
            })?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (value, tail) = tail.split_at_checked(len).ok_or_else(|| {
                Error::Invalid(format!("tensor {:?}: truncated BYTES element", self.name))
            })?;
            out.push(value);
            rest = tail;
        }
        Ok(out)
    }

    /// The elements of an `FP32` tensor.
    pub fn f32s(&self) -> Result<Vec<f32>, Error> {
        self.fixed::<4, f32>(DType::F32, f32::from_le_bytes)
    }

    /// The elements of an `INT64` tensor.
    pub fn i64s(&self) -> Result<Vec<i64>, Error> {
        self.fixed::<8, i64>(DType::I64, i64::from_le_bytes)
    }

    fn fixed<const N: usize, T>(&self, dtype: DType, f: fn([u8; N]) -> T) -> Result<Vec<T>, Error> {
        if self.dtype != dtype || !self.data.len().is_multiple_of(N) {
            return Err(Error::Invalid(format!(
                "tensor {:?} is {}, not {dtype}",
                self.name, self.dtype
            )));
        }
        Ok(self
            .data
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
}

/// Matches `inputs` to a graph's `specs` by name, each spec exactly once, and returns them in
/// the specs' order, each checked against `limits` and its spec: what every engine does before
/// a graph sees a caller's tensors.
pub fn match_inputs(
    specs: &[Spec],
    mut inputs: Vec<Tensor>,
    limits: &Limits,
) -> Result<Vec<Tensor>, Error> {
    if let Some(extra) = inputs
        .iter()
        .find(|t| !specs.iter().any(|s| s.name == t.name))
    {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::Invalid(format!(
            "the model has no input {:?} (inputs: {})",
            extra.name,
            names.join(", ")
        )));
    }
    let mut ordered = Vec::with_capacity(specs.len());
    for spec in specs {
        let at = inputs
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| Error::Invalid(format!("missing input {:?}", spec.name)))?;
        let tensor = inputs.swap_remove(at);
        if inputs.iter().any(|t| t.name == spec.name) {
            return Err(Error::Invalid(format!("input {:?} given twice", spec.name)));
        }
        tensor.check(limits)?;
        spec.accepts(tensor.dtype, &tensor.shape)?;
        ordered.push(tensor);
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_inconsistent_tensors() {
        let limits = Limits::default();
        let ok = Tensor::from_f32("x", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(ok.check(&limits), Ok(4));
        let mut short = ok.clone();
        short.data.pop();
        assert!(matches!(short.check(&limits), Err(Error::Invalid(_))));
        let huge = Tensor {
            shape: vec![u64::MAX, 2],
            ..ok.clone()
        };
        assert!(matches!(huge.check(&limits), Err(Error::Invalid(_))));
        let deep = Tensor {
            shape: vec![1; 9],
            ..ok.clone()
        };
        assert!(matches!(deep.check(&limits), Err(Error::Invalid(_))));
        let text = Tensor::from_bytes("t", vec![2], &["hello", ""]);
        assert_eq!(text.check(&limits), Ok(2));
        assert_eq!(
            text.byte_elements().map(|v| v.len()),
            Ok(2),
            "an empty string is an element"
        );
        let mut cut = text.clone();
        cut.data.truncate(6);
        assert!(matches!(cut.check(&limits), Err(Error::Invalid(_))));
        let bad_bool = Tensor {
            name: "b".into(),
            dtype: DType::Bool,
            shape: vec![1],
            data: vec![2],
        };
        assert!(matches!(bad_bool.check(&limits), Err(Error::Invalid(_))));
    }

    #[test]
    fn spec_binds_symbols_consistently() {
        let spec = Spec {
            name: "ids".into(),
            dtype: DType::I64,
            shape: vec![
                Dim::Symbolic("n".into()),
                Dim::Symbolic("n".into()),
                Dim::Fixed(3),
            ],
        };
        assert!(spec.accepts(DType::I64, &[2, 2, 3]).is_ok());
        assert!(spec.accepts(DType::I64, &[2, 5, 3]).is_err());
        assert!(spec.accepts(DType::I64, &[2, 2, 4]).is_err());
        assert!(spec.accepts(DType::F32, &[2, 2, 3]).is_err());
        assert!(spec.accepts(DType::I64, &[2, 2]).is_err());
    }

    #[test]
    fn oip_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("FP8"), None);
    }
}
