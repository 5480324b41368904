//! Tensors and ONNX graphs, shared by the node (host) and the built-in runner guest (wasm).
//!
//! ```no_run
//! use graph::{DType, Graph, Tensor};
//! let graph = Graph::load(&std::fs::read("model.onnx")?)?;
//! let x = Tensor::from_f32("x", vec![1, 4], &[5.1, 3.5, 1.4, 0.2]);
//! let outputs = graph.run(vec![x])?;
//! assert_eq!(outputs[0].dtype, DType::F32);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`Tensor`]: a named tensor in the wire encoding every moxnet part uses (the WIT `tensor`
//!   record, OIP v2 binary data): row-major, little-endian, packed; `BYTES` elements are each a
//!   u32 little-endian length and the bytes. [`Tensor::check`] validates one against limits
//!   before anything allocates for it.
//! - [`Graph`]: an ONNX graph loaded and optimised by tract, with its interface as [`Spec`]s.
//!   [`Graph::run`] matches inputs by name and checks dtype and shape against the graph.
//! - [`wordpiece`]: the BERT WordPiece tokenizer that text models need, so that a package can
//!   take `BYTES` text and tokenize inside the sandbox.

pub mod wordpiece;

mod rewrite;
mod tensor;
mod tract;

pub use tensor::{DType, Dim, Limits, Spec, Tensor, match_inputs};
pub use tract::Graph;

/// Why a tensor or graph operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The caller's tensors do not fit: wrong name, dtype, shape or size. Fix the request.
    Invalid(String),
    /// The graph could not be loaded: the model file is malformed or uses what tract lacks.
    Load(String),
    /// The graph failed while running.
    Run(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid input: {m}"),
            Error::Load(m) => write!(f, "cannot load graph: {m}"),
            Error::Run(m) => write!(f, "graph failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}
