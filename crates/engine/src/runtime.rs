//! onnxruntime in this process, through the `ort` crate with the shared library loaded at run
//! time (`load-dynamic`: nothing is downloaded or linked at build time). Only workers use it: the
//! node itself never loads a graph into its own address space (see [`crate::isolated`]).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use graph::{DType, Dim, Error, Spec, Tensor};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, ValueType};

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider on this GPU (the CPU provider takes the nodes it lacks).
    Cuda(i32),
}

/// An onnxruntime library, loaded, with the options every session gets.
pub struct Onnxruntime {
    env: Environment,
    threads: usize,
    device: Device,
    version: String,
}

impl Onnxruntime {
    /// Loads the shared library at `library` and starts its environment. Sessions run on
    /// `threads` intra-op threads (one inter-op thread) on `device`. Once per process.
    pub fn start(library: &Path, threads: usize, device: Device) -> Result<Self, Error> {
        let env = ort::init_from(library)
            .map_err(|e| Error::Load(format!("onnxruntime at {}: {e}", library.display())))?
            .with_name("moxnet")
            .with_telemetry(false)
            .build()
            .map_err(|e| Error::Load(format!("onnxruntime environment: {e}")))?;
        let version = version_of(library);
        if let Device::Cuda(id) = device {
            // Registering the provider loads CUDA and the provider's library: a CPU-only
            // wheel, a missing driver or a GPU that is not there fails here, not at a call.
            use ort::ep::ExecutionProvider;
            let mut builder = Session::builder(&env).map_err(|e| Error::Load(e.to_string()))?;
            ort::ep::CUDA::default()
                .with_device_id(id)
                .register(&mut builder)
                .map_err(|e| Error::Load(format!("the CUDA execution provider: {e}")))?;
        }
        Ok(Onnxruntime {
            env,
            threads: threads.max(1),
            device,
            version,
        })
    }

    /// The library's version (e.g. `1.32.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The engine's name: `onnxruntime`, or `onnxruntime-cuda` on a GPU.
    pub fn name(&self) -> &'static str {
        match self.device {
            Device::Cpu => "onnxruntime",
            Device::Cuda(_) => "onnxruntime-cuda",
        }
    }

    /// Loads a model from its bytes, optimised at the `ort` crate's `Level3`, which is
    /// `ORT_ENABLE_LAYOUT`: one level below onnxruntime's own default, `ORT_ENABLE_ALL` (on the
    /// demo model no faster or slower, within this VM's noise).
    pub fn load(&self, model: &[u8]) -> Result<OrtGraph, Error> {
        let load = |e: String| Error::Load(e);
        let mut builder = Session::builder(&self.env)
            .map_err(|e| load(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.to_string()))?
            .with_intra_threads(self.threads)
            .map_err(|e| load(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load(e.to_string()))?;
        if let Device::Cuda(id) = self.device {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| load(format!("the CUDA execution provider: {e}")))?;
        }
        let session = builder
            .commit_from_memory(model)
            .map_err(|e| load(e.to_string()))?;
        let specs = |outlets: &[ort::value::Outlet]| -> Result<Vec<Spec>, Error> {
            outlets.iter().map(|o| spec(o.name(), o.dtype())).collect()
        };
        let inputs = specs(session.inputs())?;
        let outputs = specs(session.outputs())?;
        Ok(OrtGraph {
            session: Mutex::new(session),
            inputs,
            outputs,
        })
    }
}

/// A model onnxruntime loaded.
pub struct OrtGraph {
    session: Mutex<Session>,
    inputs: Vec<Spec>,
    outputs: Vec<Spec>,
}

impl OrtGraph {
    /// Its inputs.
    pub fn inputs(&self) -> &[Spec] {
        &self.inputs
    }

    /// Its outputs.
    pub fn outputs(&self) -> &[Spec] {
        &self.outputs
    }

    /// Runs it on inputs the caller has checked against the specs and limits.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let values = inputs
            .into_iter()
            .map(|t| Ok((t.name.clone(), to_value(t)?)))
            .collect::<Result<Vec<(String, DynValue)>, Error>>()?;
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs = session.run(values).map_err(|e| Error::Run(e.to_string()))?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(spec.name.as_str()).ok_or_else(|| {
                    Error::Run(format!("onnxruntime returned no output {:?}", spec.name))
                })?;
                from_value(&spec.name, value)
            })
            .collect()
    }
}

/// The library's version from its file name (`libonnxruntime.so.1.32.0`, or what a
/// `libonnxruntime.so` link points to), else the build's git commit.
fn version_of(library: &Path) -> String {
    let from_name = |p: &Path| {
        p.file_name()?
            .to_str()?
            .strip_prefix("libonnxruntime.so.")
            .map(str::to_string)
    };
    from_name(library)
        .or_else(|| {
            std::fs::canonicalize(library)
                .ok()
                .and_then(|p| from_name(&p))
        })
        .unwrap_or_else(|| {
            let info = ort::info();
            let commit = info
                .split(',')
                .find_map(|part| part.trim().strip_prefix("git-commit-id="))
                .unwrap_or("unknown");
            format!("git {commit}")
        })
}

fn dtype(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Bool => DType::Bool,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Uint16 => DType::U16,
        TensorElementType::Uint32 => DType::U32,
        TensorElementType::Uint64 => DType::U64,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::String => DType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType) -> Result<Spec, Error> {
    let ValueType::Tensor {
        ty,
        shape,
        dimension_symbols,
    } = ty
    else {
        return Err(Error::Load(format!(
            "{name:?} is a {ty}, not a tensor: only tensors cross the sandbox"
        )));
    };
    let dtype = dtype(*ty)
        .ok_or_else(|| Error::Load(format!("{name:?} has element type {ty}, unsupported")))?;
    let shape = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match u64::try_from(d) {
            Ok(n) => Dim::Fixed(n),
            Err(_) => Dim::Symbolic(
                dimension_symbols
                    .get(i)
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .unwrap_or_else(|| format!("d{i}")),
            ),
        })
        .collect();
    Ok(Spec {
        name: name.to_string(),
        dtype,
        shape,
    })
}

fn le<const N: usize, T>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut a = [0; N];
            a.copy_from_slice(c);
            from(a)
        })
        .collect()
}

fn to_value(t: Tensor) -> Result<DynValue, Error> {
    let shape: Vec<i64> = t
        .shape
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Invalid(format!("tensor {:?}: a dim above i64", t.name)))?;
    let bad = |e: ort::Error| Error::Invalid(format!("tensor {:?}: {e}", t.name));
    macro_rules! typed {
        ($n:literal, $ty:ty) => {
            ort::value::Tensor::<$ty>::from_array((
                shape,
                le::<$n, $ty>(&t.data, <$ty>::from_le_bytes),
            ))
            .map_err(bad)?
            .into_dyn()
        };
    }
    Ok(match t.dtype {
        DType::Bool => ort::value::Tensor::<bool>::from_array((
            shape,
            t.data.iter().map(|&b| b != 0).collect::<Vec<bool>>(),
        ))
        .map_err(bad)?
        .into_dyn(),
        DType::U8 => typed!(1, u8),
        DType::U16 => typed!(2, u16),
        DType::U32 => typed!(4, u32),
        DType::U64 => typed!(8, u64),
        DType::I8 => typed!(1, i8),
        DType::I16 => typed!(2, i16),
        DType::I32 => typed!(4, i32),
        DType::I64 => typed!(8, i64),
        DType::F16 => typed!(2, half::f16),
        DType::F32 => typed!(4, f32),
        DType::F64 => typed!(8, f64),
        DType::Bytes => {
            let strings = t
                .byte_elements()?
                .into_iter()
                .map(|b| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        Error::Invalid(format!(
                            "tensor {:?}: onnxruntime takes UTF-8 strings only",
                            t.name
                        ))
                    })
                })
                .collect::<Result<Vec<String>, Error>>()?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map_err(bad)?
                .into_dyn()
        }
    })
}

fn from_value(name: &str, value: &DynValue) -> Result<Tensor, Error> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(Error::Run(format!("output {name:?} is not a tensor")));
    };
    let dtype = dtype(*ty).ok_or_else(|| {
        Error::Run(format!(
            "output {name:?} has element type {ty}, unsupported"
        ))
    })?;
    let failed = |e: ort::Error| Error::Run(format!("output {name:?}: {e}"));
    let dims = |shape: &[i64]| -> Vec<u64> { shape.iter().map(|&d| d.max(0) as u64).collect() };
    macro_rules! typed {
        ($ty:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>().map_err(failed)?;
            (
                dims(shape),
                data.iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )
        }};
    }
    let (shape, data) = match dtype {
        DType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(failed)?;
            (dims(shape), data.iter().map(|&b| u8::from(b)).collect())
        }
        DType::U8 => typed!(u8),
        DType::U16 => typed!(u16),
        DType::U32 => typed!(u32),
        DType::U64 => typed!(u64),
        DType::I8 => typed!(i8),
        DType::I16 => typed!(i16),
        DType::I32 => typed!(i32),
        DType::I64 => typed!(i64),
        DType::F16 => typed!(half::f16),
        DType::F32 => typed!(f32),
        DType::F64 => typed!(f64),
        DType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(failed)?;
            let t = Tensor::from_bytes(name, dims(shape), &strings);
            return Ok(t);
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}
