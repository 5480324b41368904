//! Language models on this node: GGUF packages run by llama.cpp in confined workers
//! (`engine::LanguageModelWorkers`, one generation per worker), behind the OpenAI-compatible
//! routes and `moxnet chat`.
//!
//! A model is found by id or by the name of a language model this node holds. Before any
//! worker sees the file, the node reads its GGUF header itself (`llm::gguf`, checked against
//! limits; the manifest's copy is never trusted); the worker maps the store's own data file
//! read-only (no copy) and may read nothing else of the home. Generations run at most
//! `[llm] concurrent` at once across models, `max_queued` more wait, beyond that the answer is
//! 503; each is killed at `timeout_secs`. At most `loaded` models keep their workers.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use api::openai::{Done, Generation, GenerationEvent};
use api::{ApiError, ApiResult};
use axum::http::StatusCode;
use catalog::Catalog;
use engine::worker::{EngineKind, Options};
use engine::{LanguageModelWorkers, WorkerCommand};
use protocol::{BlobHash, Manifest, ModelId};
use store::Store;

use crate::config::LlmSection;

/// The runtime kind of language-model packages.
pub const KIND: &str = "gguf";

/// Language models this node runs.
pub struct LanguageModels {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    node_id: String,
    program: PathBuf,
    threads: usize,
    context: u32,
    timeout: Duration,
    memory_mib: u64,
    max_loaded: usize,
    max_queued: usize,
    /// Layers a worker puts on the GPU (0 when the build or the machine has none).
    gpu_layers: u32,
    loaded: Mutex<HashMap<ModelId, (Arc<LanguageModelWorkers>, u64)>>,
    uses: AtomicU64,
    /// One lock per model being loaded (two calls never start the same model twice).
    loading: Mutex<HashMap<ModelId, Arc<Mutex<()>>>>,
    slots: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

impl LanguageModels {
    /// Language models from `store` and `catalog`, run as the `[llm]` settings say.
    pub fn new(
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        node_id: String,
        section: &LlmSection,
    ) -> Result<LanguageModels> {
        let program = std::env::current_exe()
            .context("finding this program to run language-model workers")?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(LanguageModels {
            store,
            catalog,
            node_id,
            program,
            threads: section.threads.unwrap_or(cores).max(1),
            context: section.context.unwrap_or(4096).max(16),
            timeout: Duration::from_secs(section.timeout_secs.unwrap_or(600).max(1)),
            memory_mib: section.memory_mib.unwrap_or(2048),
            max_loaded: section.loaded.unwrap_or(4).max(1),
            max_queued: section.max_queued.unwrap_or(16),
            gpu_layers: if engine::llama::GPU_BUILD && !crate::remote::gpus().is_empty() {
                section.gpu_layers.unwrap_or(999)
            } else {
                0
            },
            loaded: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
            loading: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(
                section.concurrent.unwrap_or(2).max(1),
            )),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The engine generations run on here, as offered: llama.cpp on the GPU when the build
    /// has a GPU backend, the machine a GPU and `[llm] gpu_layers` is not 0. (A worker that
    /// finds no GPU after all says so in its hello, and its signed results name the CPU
    /// engine.)
    pub fn engine(&self) -> &'static str {
        if self.gpu_layers > 0 {
            engine::llama::ENGINE_GPU
        } else {
            engine::llama::ENGINE
        }
    }

    /// The model a request's `model` field names: a model id, or the name of the one language
    /// model of that name whose files are here, else of the one this node knows of (several:
    /// the answer lists their ids).
    pub fn resolve(&self, model: &str) -> ApiResult<ModelId> {
        if let Ok(hash) = model.parse::<BlobHash>() {
            return Ok(ModelId(hash));
        }
        let mut named: Vec<ModelId> = self
            .list()
            .into_iter()
            .filter(|(_, m)| m.name == model)
            .map(|(id, _)| id)
            .collect();
        if named.is_empty() {
            // Arc clones of every manifest known, once per request by name (by id is the way
            // for a busy caller).
            named = self
                .catalog
                .entries()
                .into_iter()
                .filter(|e| {
                    let m = e.manifest.body();
                    m.name == model && m.runtime.kind == KIND
                })
                .map(|e| e.id)
                .collect();
        }
        match named.as_slice() {
            [one] => Ok(*one),
            [] => Err(err(
                StatusCode::NOT_FOUND,
                format!(
                    "no language model {model:?} here: name a model id, or the name of a GGUF \
                     model this node holds (GET /v1/models lists them)"
                ),
            )),
            several => Err(err(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} language models are named {model:?} here; name one by id: {}",
                    several.len(),
                    several
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The language models whose files are here, with their manifests.
    pub fn list(&self) -> Vec<(ModelId, Manifest)> {
        self.catalog
            .local_models()
            .into_iter()
            .filter_map(|id| {
                let m = self.catalog.get(id)?.body().clone();
                (m.runtime.kind == KIND).then_some((id, m))
            })
            .collect()
    }

    /// The model's workers, started if they are not (blocking: reads the header, starts a
    /// worker that loads the model).
    pub fn load(&self, id: ModelId) -> ApiResult<Arc<LanguageModelWorkers>> {
        if let Some(w) = self.get(id) {
            return Ok(w);
        }
        let this_model = lock(&self.loading).entry(id).or_default().clone();
        let loaded = {
            let _one = lock(&this_model);
            match self.get(id) {
                Some(w) => Ok(w),
                None => self.start(id),
            }
        };
        let mut loading = lock(&self.loading);
        if Arc::strong_count(&this_model) == 2 {
            loading.remove(&id);
        }
        loaded
    }

    fn get(&self, id: ModelId) -> Option<Arc<LanguageModelWorkers>> {
        let mut loaded = lock(&self.loaded);
        let (w, last) = loaded.get_mut(&id)?;
        *last = self.uses.fetch_add(1, Ordering::Relaxed);
        Some(w.clone())
    }

    fn start(&self, id: ModelId) -> ApiResult<Arc<LanguageModelWorkers>> {
        let signed = self
            .catalog
            .get(id)
            .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no model {id} here")))?;
        let m = signed.body();
        if m.runtime.kind != KIND {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!(
                    "model {id} ({}) is not a language model (runtime {:?}); call it at /v2/models/{id}/infer",
                    m.name, m.runtime.kind
                ),
            ));
        }
        if !self.catalog.is_local(id) {
            return Err(err(
                StatusCode::NOT_FOUND,
                format!("model {id} is known here but its files are not (moxnet fetch {id})"),
            ));
        }
        let entry = m.runtime.entry.as_deref().unwrap_or_default();
        let file = m.files.iter().find(|f| f.path == entry).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                format!("model {id} names no GGUF file as its runtime entry"),
            )
        })?;
        let path = self
            .store
            .data_file(file.hash)
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?
            .ok_or_else(|| {
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the GGUF file of {id} is stored in parts and cannot be mapped"),
                )
            })?;
        let header = read_header(&path, file.size).map_err(|e| {
            err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("model {id} ({}): {e}", m.name),
            )
        })?;
        let command = WorkerCommand {
            program: self.program.clone(),
            prefix: vec!["engine-worker".into()],
            options: Options {
                engine: EngineKind::Llama {
                    model: path,
                    context: self.context,
                    gpu_layers: self.gpu_layers,
                },
                threads: self.threads,
                // The file is mapped (address space, not memory); the rest is the context,
                // the compute buffers and the runtime.
                memory_mib: (file.size >> 20) + self.memory_mib,
            },
            run_timeout: self.timeout,
            load_timeout: Duration::from_secs(300),
        };
        let workers = LanguageModelWorkers::start(command).map_err(|e| {
            err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("model {id} ({}) does not load: {e}", m.name),
            )
        })?;
        tracing::info!(
            model = %id,
            name = %m.name,
            architecture = %header.architecture,
            quantisation = %header.quantisation,
            context = workers.info().context,
            engine = %workers.hello().engine,
            confinement = %workers.hello().confinement,
            "language model loaded"
        );
        let workers = Arc::new(workers);
        let mut all = lock(&self.loaded);
        while all.len() >= self.max_loaded {
            let Some(stalest) = all.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) else {
                break;
            };
            all.remove(&stalest);
        }
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        all.insert(id, (workers.clone(), now));
        Ok(workers)
    }

    /// Whether the files of language model `id` are here (it runs here).
    pub fn is_here(&self, id: ModelId) -> bool {
        self.catalog.is_local(id)
            && self
                .catalog
                .get(id)
                .is_some_and(|m| m.body().runtime.kind == KIND)
    }

    /// Starts a generation here for an API request (the model named by id or name, a random
    /// seed if it names none); see [`LanguageModels::run`].
    pub async fn generate(
        self: &Arc<Self>,
        g: Generation,
    ) -> ApiResult<tokio::sync::mpsc::Receiver<GenerationEvent>> {
        let id = self.resolve(&g.model)?;
        let mut sampling = g.sampling.clone();
        sampling.seed = g.seed.unwrap_or_else(rand_seed);
        self.run(id, g.prompt, sampling, None, Arc::default()).await
    }

    /// Starts a generation of model `id`: waits for a slot (or answers 503 when too many wait),
    /// loads the model, then streams events. Dropping the receiver, or setting `cancel`, cancels
    /// the generation (with `cancel`, its end still comes, finished `cancelled`). With
    /// `max_context`, a model whose context here is larger is refused (a peer's request pays
    /// for at most that many tokens, and prompt and generation never pass the context).
    pub async fn run(
        self: &Arc<Self>,
        id: ModelId,
        prompt: llm::Prompt,
        sampling: llm::Sampling,
        max_context: Option<u64>,
        cancel: Arc<AtomicBool>,
    ) -> ApiResult<tokio::sync::mpsc::Receiver<GenerationEvent>> {
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Uncount(self.waiting.clone());
        if waiting >= self.max_queued && self.slots.available_permits() == 0 {
            return Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy: {waiting} generations are waiting here already; try again later"),
            ));
        }
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"))?;
        drop(_counted);
        let me = self.clone();
        let workers = tokio::task::spawn_blocking(move || me.load(id))
            .await
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("loading: {e}")))??;
        let context = u64::from(workers.info().context);
        if let Some(max) = max_context.filter(|max| context > *max) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!(
                    "model {id} runs here with a context of {context} tokens; the request pays for at most {max}"
                ),
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let seed = sampling.seed;
        let engine_name = workers.hello().engine.clone();
        let node_id = self.node_id.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut on_token = |_id: u32, text: &str| {
                !cancel.load(Ordering::Relaxed)
                    && (text.is_empty()
                        || tx
                            .blocking_send(GenerationEvent::Text(text.to_string()))
                            .is_ok())
            };
            let event = match workers.generate(&prompt, &sampling, &mut on_token) {
                Ok((done, tail)) => {
                    if !tail.is_empty() {
                        let _ = tx.blocking_send(GenerationEvent::Text(tail));
                    }
                    GenerationEvent::Done(Done {
                        model_id: id.to_string(),
                        prompt_tokens: done.prompt_tokens,
                        completion_tokens: done.completion_tokens,
                        finish: done.finish,
                        engine: engine_name,
                        ran_on: node_id,
                        seed,
                        prompt_ms: done.prompt_time.as_secs_f64() * 1e3,
                        generate_ms: done.generate_time.as_secs_f64() * 1e3,
                        remote: None,
                    })
                }
                Err(e) => {
                    let status = match e {
                        graph::Error::Invalid(_) => StatusCode::BAD_REQUEST,
                        graph::Error::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
                        graph::Error::Run(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    GenerationEvent::Failed(err(status, e.to_string()))
                }
            };
            let _ = tx.blocking_send(event);
        });
        Ok(rx)
    }
}

/// Takes one off a waiting count when dropped.
struct Uncount(Arc<AtomicUsize>);

impl Drop for Uncount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A random seed for a generation that named none (reported back, so it can be repeated).
pub(crate) fn rand_seed() -> u32 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    }
}

/// Reads and checks a GGUF file's header (at most the limit's bytes of it).
pub fn read_header(path: &std::path::Path, size: u64) -> Result<llm::gguf::Gguf> {
    let limits = llm::gguf::Limits::default();
    let mut prefix = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(limits.max_header_bytes)
        .read_to_end(&mut prefix)
        .with_context(|| format!("reading {}", path.display()))?;
    llm::gguf::parse(&prefix, size, &limits).map_err(anyhow::Error::from)
}
