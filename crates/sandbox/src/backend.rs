//! Host graph backends: where a guest's heavy graph runs when the node operator offers a faster
//! engine than wasm. Native tract is built in; an onnxruntime or GPU backend implements
//! [`Backend`] the same way.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// An engine that loads graphs for guests.
pub trait Backend: Send + Sync {
    /// Its name, shown to guests and callers (e.g. `tract-native`).
    fn name(&self) -> &str;
    /// Loads a graph from a model file's bytes.
    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedGraph>, graph::Error>;
}

/// A graph a backend loaded.
pub trait LoadedGraph: Send + Sync {
    /// Its inputs.
    fn inputs(&self) -> &[graph::Spec];
    /// Its outputs.
    fn outputs(&self) -> &[graph::Spec];
    /// Runs it. Implementations must check every input against `limits` and the specs: the
    /// inputs come from an untrusted guest.
    fn run(
        &self,
        inputs: Vec<graph::Tensor>,
        limits: &graph::Limits,
    ) -> Result<Vec<graph::Tensor>, graph::Error>;
}

/// Work the host did for one call, metered apart from the guest's fuel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostWork {
    /// Graph runs.
    pub calls: u64,
    /// Tensor bytes in and out of the host (deterministic).
    pub bytes: u64,
    /// Time the host spent running graphs (not deterministic).
    pub time: Duration,
}

/// tract, compiled natively into the node.
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeTract;

impl Backend for NativeTract {
    fn name(&self) -> &str {
        "tract-native"
    }

    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedGraph>, graph::Error> {
        Ok(Arc::new(graph::Graph::load(bytes)?))
    }
}

impl LoadedGraph for graph::Graph {
    fn inputs(&self) -> &[graph::Spec] {
        graph::Graph::inputs(self)
    }

    fn outputs(&self) -> &[graph::Spec] {
        graph::Graph::outputs(self)
    }

    fn run(
        &self,
        inputs: Vec<graph::Tensor>,
        limits: &graph::Limits,
    ) -> Result<Vec<graph::Tensor>, graph::Error> {
        self.run_with(inputs, limits)
    }
}

/// Most graphs one model loads on the host backend (each may cost the engine a worker
/// process per call running on it).
pub const MAX_GRAPHS_PER_MODEL: usize = 8;

/// The graphs a model's calls loaded, by package path: each is loaded once per model.
#[derive(Clone, Default)]
pub(crate) struct GraphCache(Arc<Mutex<HashMap<String, Arc<dyn LoadedGraph>>>>);

impl GraphCache {
    pub(crate) fn load(
        &self,
        backend: &dyn Backend,
        dir: &Path,
        path: &str,
    ) -> Result<Arc<dyn LoadedGraph>, String> {
        let relative = Path::new(path);
        if path.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(format!("{path:?} is not a path inside the package"));
        }
        let mut graphs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = graphs.get(path) {
            return Ok(g.clone());
        }
        if graphs.len() >= MAX_GRAPHS_PER_MODEL {
            return Err(format!(
                "a model may load at most {MAX_GRAPHS_PER_MODEL} graphs on the host"
            ));
        }
        let bytes = std::fs::read(dir.join(relative)).map_err(|e| format!("{path}: {e}"))?;
        let graph = backend.load(&bytes).map_err(|e| e.to_string())?;
        graphs.insert(path.to_string(), graph.clone());
        Ok(graph)
    }
}
