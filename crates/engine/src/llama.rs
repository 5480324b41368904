//! llama.cpp in a worker: one GGUF language model, one context, generations one at a time.
//!
//! The worker is confined before llama.cpp opens the file (the model file is the one path it
//! may read besides the system's libraries), loads it (memory-mapped, read-only), then serves
//! [`Request::Generate`]: the prompt (a chat is rendered with the model's own template by
//! llama.cpp's built-in template engine, which runs no code from the file), the prompt's
//! tokens decoded in batches, then one token at a time sampled as asked, each sent as a
//! [`Reply::Token`] at once with the text it releases ([`llm::text::Visible`]: whole characters,
//! stop strings withheld). Between tokens the worker looks, without waiting, for a
//! [`Request::Cancel`] on its pipe.

use std::io::Write;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llm::template::TemplateError;
use llm::text::Visible;
use llm::{Finish, Prompt, Sampling};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::pipe::{read_frame, send};
use crate::wire::{Failure, Reply, Request};

/// Tokens decoded at once while reading the prompt.
const BATCH: usize = 512;

/// The engine's name in hellos, offers and signed results.
pub const ENGINE: &str = "llama.cpp";
/// Its name when the model's layers run on a GPU (CUDA).
pub const ENGINE_GPU: &str = "llama.cpp-cuda";
/// Whether this build's llama.cpp has a GPU backend (the `cuda` feature).
pub const GPU_BUILD: bool = cfg!(feature = "cuda");
/// Its version: the llama.cpp the `llama-cpp-2` crate vendors.
pub const VERSION: &str = "llama-cpp-2 0.1.160";

/// A loaded model, and the backend it needs alive.
pub struct Llama {
    backend: LlamaBackend,
    model: LlamaModel,
    threads: i32,
    context: u32,
    /// Layers on a GPU (0: all on the CPU).
    offloaded: u32,
}

impl Llama {
    /// Starts llama.cpp and loads `path`, with a context of at most `context` tokens (and at
    /// most what the model was trained for), and up to `gpu_layers` of its layers on a GPU when
    /// this build has a GPU backend and llama.cpp finds a GPU (else all on the CPU).
    pub fn load(
        path: &Path,
        context: u32,
        threads: usize,
        gpu_layers: u32,
    ) -> Result<Llama, String> {
        let backend = LlamaBackend::init().map_err(|e| format!("starting llama.cpp: {e}"))?;
        let gpu = gpu_layers > 0 && backend.supports_gpu_offload() && has_gpu();
        let params =
            LlamaModelParams::default().with_n_gpu_layers(if gpu { gpu_layers } else { 0 });
        let model = LlamaModel::load_from_file(&backend, path, &params)
            .map_err(|e| format!("llama.cpp could not load the model: {e}"))?;
        let trained = model.n_ctx_train().max(1);
        // Every repeating layer, and the output layer, can go to the GPU.
        let offloaded = if gpu {
            gpu_layers.min(model.n_layer().saturating_add(1))
        } else {
            0
        };
        Ok(Llama {
            backend,
            model,
            threads: i32::try_from(threads.max(1)).unwrap_or(1),
            context: context.clamp(16, trained.max(16)),
            offloaded,
        })
    }

    /// The engine the model runs on: [`ENGINE_GPU`] with layers on a GPU, else [`ENGINE`].
    pub fn engine(&self) -> &'static str {
        if self.offloaded > 0 {
            ENGINE_GPU
        } else {
            ENGINE
        }
    }

    /// What the worker says about the model once it is loaded, with the context it made
    /// (llama.cpp rounds the one asked for up to a multiple of 256).
    fn describe(&self, context: u32) -> Reply {
        Reply::LanguageModel {
            trained_context: self.model.n_ctx_train(),
            context,
            vocab: u32::try_from(self.model.n_vocab()).unwrap_or(0),
            parameters: self.model.n_params(),
        }
    }

    /// Makes the context, sends `hello` and what the model is (or why the context cannot be
    /// made), then serves generations until the pipe closes.
    pub fn serve(&self, hello: &Reply, out: &mut impl Write) -> std::process::ExitCode {
        use std::process::ExitCode;
        // Unbuffered, so that polling the descriptor tells whether a frame waits.
        let mut input = match std::io::stdin().as_fd().try_clone_to_owned() {
            Ok(fd) => std::fs::File::from(fd),
            Err(_) => return ExitCode::from(5),
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context))
            .with_n_batch(BATCH.min(self.context as usize) as u32)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            // Flash attention off (llama.cpp's LLAMA_FLASH_ATTN_TYPE_DISABLED), as in
            // llama-cpp-python: the same kernels, so the same tokens as llama.cpp used there.
            .with_flash_attention_policy(0);
        let mut ctx = match self.model.new_context(&self.backend, params) {
            Ok(c) => c,
            Err(e) => {
                let _ = send(
                    out,
                    &Reply::Failed {
                        failure: Failure::Load,
                        message: format!("llama.cpp could not make a context: {e}"),
                    },
                );
                return ExitCode::from(3);
            }
        };
        if send(out, hello).is_err() || send(out, &self.describe(ctx.n_ctx())).is_err() {
            return ExitCode::from(4);
        }
        loop {
            let request = match read_frame(&mut input) {
                Ok(Some(r)) => r,
                Ok(None) => return ExitCode::SUCCESS,
                Err(bad) => return ExitCode::from(bad.code()),
            };
            let reply = match request {
                Request::Generate { prompt, sampling } => {
                    match self.generate(&mut ctx, &prompt, &sampling, out, &mut input) {
                        Ok(done) => done,
                        Err(Stop::Pipe) => return ExitCode::from(4),
                        Err(Stop::Fail(failure, message)) => Reply::Failed { failure, message },
                    }
                }
                // A cancel that arrives after its generation ended.
                Request::Cancel => continue,
                Request::Load { .. } | Request::Run { .. } => Reply::Failed {
                    failure: Failure::Invalid,
                    message: "this worker runs a language model: it only generates".into(),
                },
            };
            if send(out, &reply).is_err() {
                return ExitCode::from(4);
            }
        }
    }

    fn generate(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: &Prompt,
        sampling: &Sampling,
        out: &mut impl Write,
        input: &mut std::fs::File,
    ) -> Result<Reply, Stop> {
        let invalid = |m: String| Stop::Fail(Failure::Invalid, m);
        prompt.check().map_err(invalid)?;
        sampling.check().map_err(invalid)?;
        let text = match prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(messages) => self.render(messages)?,
        };
        let started = Instant::now();
        let tokens = self.model.vocab().tokenize(text.as_bytes(), true, true);
        let n_ctx = ctx.n_ctx() as usize;
        if tokens.is_empty() {
            return Err(invalid("the prompt has no tokens".into()));
        }
        if tokens.len() >= n_ctx {
            return Err(invalid(format!(
                "the prompt is {} tokens; this model's context here is {n_ctx}",
                tokens.len()
            )));
        }
        ctx.clear_kv_cache();
        let run = |m: String| Stop::Fail(Failure::Run, m);
        // llama.cpp decodes at most its batch size at once (at most the context).
        let n_batch = (ctx.n_batch() as usize).clamp(1, BATCH);
        let mut batch = LlamaBatch::new(n_batch, 1);
        for (chunk_at, chunk) in tokens.chunks(n_batch).enumerate() {
            batch.clear();
            for (i, t) in chunk.iter().enumerate() {
                let pos = chunk_at * n_batch + i;
                let last = pos + 1 == tokens.len();
                batch
                    .add(*t, pos as i32, &[0], last)
                    .map_err(|e| run(e.to_string()))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| run(format!("decoding the prompt: {e}")))?;
        }
        let prompt_us = started.elapsed().as_micros() as u64;
        let generating = Instant::now();
        let mut sampler = sampler(sampling);
        let mut visible = Visible::new(&sampling.stop);
        let mut position = tokens.len();
        let mut made = 0u32;
        let vocab = self.model.vocab();
        let finish = loop {
            if made >= sampling.max_tokens || position >= n_ctx {
                break Finish::Length;
            }
            let token: LlamaToken = sampler.sample(ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break Finish::Stop;
            }
            made += 1;
            let piece = vocab.token_to_piece(token, false, None);
            let text = visible.push(&piece);
            send(
                out,
                &Reply::Token {
                    id: u32::try_from(token.0).unwrap_or(u32::MAX),
                    text,
                },
            )
            .map_err(|_| Stop::Pipe)?;
            if visible.stopped() {
                break Finish::Stop;
            }
            if cancelled(input)? {
                break Finish::Cancelled;
            }
            batch.clear();
            batch
                .add(token, position as i32, &[0], true)
                .map_err(|e| run(e.to_string()))?;
            ctx.decode(&mut batch)
                .map_err(|e| run(format!("decoding: {e}")))?;
            position += 1;
        };
        Ok(Reply::Generated {
            prompt_tokens: tokens.len() as u32,
            completion_tokens: made,
            finish,
            tail: visible.finish(),
            prompt_us,
            generate_us: generating.elapsed().as_micros() as u64,
        })
    }

    /// A chat as the model's template renders it, the assistant's turn opened: the template
    /// itself, run by [`llm::template`] as `transformers` runs it; where that cannot render it
    /// (a function it lacks), llama.cpp's built-in copy of the template's family.
    fn render(&self, messages: &[llm::Message]) -> Result<String, Stop> {
        let template = self.model.chat_template(None).map_err(|e| {
            Stop::Fail(
                Failure::Invalid,
                format!("this model has no chat template ({e}); send a plain prompt"),
            )
        })?;
        if let Ok(source) = template.to_str() {
            let vocab = self.model.vocab();
            let text = |token: LlamaToken| {
                if token.0 < 0 {
                    return String::new();
                }
                String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
            };
            let bos = text(vocab.bos());
            match llm::template::render(source, messages, &bos, &text(vocab.eos())) {
                // `generate` tokenizes with the model's own BOS.
                Ok(chat) => {
                    return Ok(
                        llm::template::without_bos(&chat, &bos, vocab.should_add_bos()).to_string(),
                    );
                }
                Err(e @ TemplateError::Refused(_)) => {
                    return Err(Stop::Fail(Failure::Invalid, e.to_string()));
                }
                // Logged by the node (the worker's stderr, at debug level).
                Err(e) => eprintln!("{e}; rendering with llama.cpp's engine"),
            }
        }
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Stop::Fail(Failure::Invalid, format!("a message: {e}")))?;
        self.model
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| {
                Stop::Fail(
                    Failure::Invalid,
                    format!("llama.cpp cannot render this model's chat template: {e}"),
                )
            })
    }
}

/// Why a generation stopped early.
enum Stop {
    /// The pipe to the node is gone.
    Pipe,
    /// The request failed; the worker goes on.
    Fail(Failure, String),
}

/// The sampler chain for `s`: greedy at temperature 0, else top-k, top-p, temperature and a
/// seeded draw.
fn sampler(s: &Sampling) -> LlamaSampler {
    if s.is_greedy() {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::new();
    if s.top_k > 0 {
        chain.push(LlamaSampler::top_k(
            i32::try_from(s.top_k).unwrap_or(i32::MAX),
        ));
    }
    if s.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(s.top_p, 1));
    }
    chain.push(LlamaSampler::temp(s.temperature));
    chain.push(LlamaSampler::dist(s.seed));
    LlamaSampler::chain_simple(chain)
}

/// Whether a [`Request::Cancel`] waits on the pipe (without waiting for one). Anything else
/// there is a protocol error: the node sends nothing else during a generation.
fn cancelled(input: &mut std::fs::File) -> Result<bool, Stop> {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(&*input, PollFlags::IN)];
    match poll(&mut fds, Some(&zero)) {
        Ok(0) | Err(rustix::io::Errno::INTR) => return Ok(false),
        Ok(_) => {}
        Err(_) => return Err(Stop::Pipe),
    }
    match read_frame(input) {
        Ok(Some(Request::Cancel)) => Ok(true),
        // The node closed the pipe: it is gone, and so is the caller.
        Ok(None) => Err(Stop::Pipe),
        Ok(Some(_)) | Err(_) => Err(Stop::Pipe),
    }
}

/// Whether llama.cpp finds a GPU (a device of a GPU backend compiled in: never without `cuda`).
pub(crate) fn has_gpu() -> bool {
    use llama_cpp_2::LlamaBackendDeviceType;
    llama_cpp_2::list_llama_ggml_backend_devices()
        .iter()
        .any(|d| matches!(d.device_type, LlamaBackendDeviceType::Gpu))
}
