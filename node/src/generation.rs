//! Generation between peers, wired (`/moxnet/generate/1`): a node serves generations by its
//! language models for peers, and sends a generation by a model it does not hold to a provider
//! that offers generation, streaming the text back as the provider makes it.
//!
//! It is the inference call's protocol with tokens as the unit (`protocol::generate`): the
//! same signed request (its `max_fuel` the most tokens paid for, the model's context length;
//! its price per million tokens, from the provider's offer), the same checks, nonce window,
//! per-caller slots and credit admission on the provider ([`Remote::admit`]), the same booking
//! ([`Remote::book`]: the receipt is on disk before the result leaves), the same payment
//! retries and provider ranking on the caller. What differs is the answer: text frames as the
//! tokens come, then the signed result over the whole output (text, finish, token counts);
//! the caller checks it against the text it streamed ([`compute::check_generation`]).
//!
//! - **Provider** ([`Remote::serve_generation`]): fetches the model if a peer's call needs it
//!   (as for inference: announced, at most `max_fetch_mib`, kept by the call cache), runs it in
//!   the node's llama.cpp workers (`LanguageModels`, with their queue and timeout), forwards
//!   each piece of text, and stops the generation when the caller goes away (booked for what
//!   ran, finished `cancelled`: the caller learns of it when it settles).
//! - **Caller** ([`Remote::generate`]): tries providers best first until one starts streaming
//!   (busy ones again with backoff, until the call timeout); after the first frame the
//!   provider is kept, and a failure ends the generation. `verify` runs the generation on a
//!   second provider too (one that offers the same engine: GPU and CPU sum in other orders)
//!   and compares the two signed output hashes at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::ApiError;
use api::openai::{Done, GenerationEvent};
use axum::http::StatusCode;
use compute::{Outcome, ReplyError, VerifiedGeneration};
use credits::PayWhen;
use net::libp2p::PeerId;
use net::{GenerateResponder, GenerateStream};
use protocol::compute::{InferReply, InferRequest, InferStatus};
use protocol::generate::{
    ChatMessage, GenerateFinish, GenerateFrame, GenerateInput, GenerateOutput, GeneratePrompt,
    MAX_GENERATED_BYTES, Timings,
};
use protocol::{ModelId, Object, Signed};
use serde_json::json;
use store::Holder;
use tokio::sync::mpsc;

use crate::compute::now_ms;
use crate::inference::CallError;
use crate::language::{KIND, LanguageModels};
use crate::metrics::{self, Place};
use crate::remote::{CallOptions, Failure, Remote, Target};

/// The wire form of a generation request.
pub fn input_of(prompt: &llm::Prompt, sampling: &llm::Sampling) -> GenerateInput {
    GenerateInput {
        prompt: match prompt {
            llm::Prompt::Text(t) => GeneratePrompt::Text(t.clone()),
            llm::Prompt::Chat(messages) => GeneratePrompt::Chat(
                messages
                    .iter()
                    .map(|m| ChatMessage {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect(),
            ),
        },
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        top_k: sampling.top_k,
        seed: sampling.seed,
        stop: sampling.stop.clone(),
    }
}

/// A peer's generation request as the engine takes it, checked against the engine's bounds.
fn llm_of(input: GenerateInput) -> Result<(llm::Prompt, llm::Sampling), String> {
    let prompt = match input.prompt {
        GeneratePrompt::Text(t) => llm::Prompt::Text(t),
        GeneratePrompt::Chat(messages) => llm::Prompt::Chat(
            messages
                .into_iter()
                .map(|m| llm::Message {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        ),
    };
    let sampling = llm::Sampling {
        max_tokens: input.max_tokens,
        temperature: input.temperature,
        top_p: input.top_p,
        top_k: input.top_k,
        seed: input.seed,
        stop: input.stop,
    };
    prompt.check()?;
    sampling.check()?;
    Ok((prompt, sampling))
}

fn finish_of(f: llm::Finish) -> GenerateFinish {
    match f {
        llm::Finish::Stop => GenerateFinish::Stop,
        llm::Finish::Length => GenerateFinish::Length,
        llm::Finish::Cancelled => GenerateFinish::Cancelled,
    }
}

fn llm_finish(f: GenerateFinish) -> llm::Finish {
    match f {
        GenerateFinish::Stop => llm::Finish::Stop,
        GenerateFinish::Length => llm::Finish::Length,
        GenerateFinish::Cancelled => llm::Finish::Cancelled,
    }
}

fn api_error(e: CallError) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        message: e.message,
        details: e.details,
    }
}

/// The wire status for a local generation error.
fn status_of(e: &ApiError) -> InferStatus {
    match e.status.as_u16() {
        400 | 413 => InferStatus::BadRequest,
        404 => InferStatus::NotFound,
        422 => InferStatus::Failed,
        503 => InferStatus::Busy,
        _ => InferStatus::Internal,
    }
}

impl Remote {
    /// Serves one generation for a peer (see the module docs) and counts it.
    pub async fn serve_generation(
        &self,
        language: &Arc<LanguageModels>,
        from: PeerId,
        call: Vec<u8>,
        mut responder: Box<GenerateResponder>,
    ) {
        let (reply, timings) = self
            .run_for_peer(language, from, call, &mut responder)
            .await;
        let outcome = metrics::Outcome::of_reply(reply.status);
        self.metrics.call(Place::Served, outcome);
        if outcome != metrics::Outcome::Ok {
            tracing::debug!(peer = %from, status = ?reply.status, "refused or failed a generation for a peer: {}", reply.message.as_deref().unwrap_or(""));
        }
        if let Err(e) = responder.end(reply, timings).await {
            tracing::debug!(peer = %from, "ending a generation: {e}");
        }
    }

    async fn run_for_peer(
        &self,
        language: &Arc<LanguageModels>,
        from: PeerId,
        call: Vec<u8>,
        responder: &mut GenerateResponder,
    ) -> (InferReply, Timings) {
        let refuse =
            |status, message: String| (InferReply::error(status, message), Timings::default());
        let price = self.compute.config.price_per_mtoken;
        let mut call = match self
            .compute
            .check_priced(self.key.node_id(), &from, &call, price)
        {
            Ok(c) => c,
            Err(e) => return refuse(e.status(), e.to_string()),
        };
        let _slot = match self.compute.slots.take(call.caller()) {
            Ok(slot) => slot,
            Err(busy) => return refuse(InferStatus::Busy, busy.to_string()),
        };
        let admitted = match self.admit(from, &mut call, price) {
            Ok(a) => a,
            Err(refusal) => return (refusal, Timings::default()),
        };
        let (prompt, sampling) = match GenerateInput::from_bytes(&call.input)
            .map_err(|e| e.to_string())
            .and_then(llm_of)
        {
            Ok(p) => p,
            Err(e) => return refuse(InferStatus::BadRequest, format!("generation input: {e}")),
        };
        let r = call.request.body().clone();
        match self.catalog.get(r.model) {
            Some(m) if m.body().runtime.kind != KIND => {
                return refuse(
                    InferStatus::BadRequest,
                    format!("model {} is not a language model", r.model),
                );
            }
            _ => {}
        }
        if let Err((status, why)) = self.may_fetch_for(r.model, false) {
            return refuse(status, why);
        }
        if let Err(e) = self.runtime.ensure_local(r.model, Holder::CallCache).await {
            return refuse(InferStatus::NotFound, e.message);
        }
        self.cache_used(r.model);
        let cancel = Arc::new(AtomicBool::new(false));
        let mut events = match language
            .run(r.model, prompt, sampling, Some(r.max_fuel), cancel.clone())
            .await
        {
            Ok(rx) => rx,
            Err(e) => return refuse(status_of(&e), e.message),
        };
        let mut text = String::new();
        let (mut gone, mut truncated) = (false, false);
        let done = loop {
            match events.recv().await {
                Some(GenerationEvent::Text(t)) => {
                    if gone || truncated {
                        continue;
                    }
                    if text.len() + t.len() > MAX_GENERATED_BYTES {
                        truncated = true;
                        cancel.store(true, Ordering::Relaxed);
                        continue;
                    }
                    text.push_str(&t);
                    if let Err(e) = responder.text(&t).await {
                        tracing::debug!(peer = %from, "stopping a generation: {e}");
                        gone = true;
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                Some(GenerationEvent::Done(done)) => break done,
                Some(GenerationEvent::Failed(e)) => return refuse(status_of(&e), e.message),
                None => {
                    return refuse(
                        InferStatus::Internal,
                        "the generation ended without an answer".into(),
                    );
                }
            }
        };
        let output = GenerateOutput {
            text,
            finish: if truncated {
                GenerateFinish::Length
            } else {
                finish_of(done.finish)
            },
            prompt_tokens: u64::from(done.prompt_tokens),
            generated_tokens: u64::from(done.completion_tokens),
        };
        let tokens = u64::from(done.prompt_tokens) + u64::from(done.completion_tokens);
        if tokens > r.max_fuel {
            return refuse(
                InferStatus::Internal,
                format!(
                    "the generation took {tokens} tokens, over the {} the request pays for",
                    r.max_fuel
                ),
            );
        }
        let bytes = output.to_bytes();
        let result = self
            .key
            .sign(call.result(&bytes, tokens, price, done.engine.clone()));
        if let Err(refusal) = self.book(from, admitted, &call, &result) {
            return (refusal, Timings::default());
        }
        self.metrics.tokens.inc_by(tokens);
        (
            InferReply {
                status: InferStatus::Ok,
                result: Some(result.to_bytes()),
                output: Some(bytes),
                message: None,
                cheque: None,
            },
            Timings {
                prompt_ms: done.prompt_ms,
                generate_ms: done.generate_ms,
            },
        )
    }
}

/// A generation stream a provider started answering.
struct Opened {
    to: Target,
    request: Signed<InferRequest>,
    stream: GenerateStream,
    first: GenerateFrame,
    started: Instant,
}

/// A generation a provider finished, verified and booked.
struct Finished {
    peer: PeerId,
    node: protocol::NodeId,
    verified: VerifiedGeneration,
    timings: Timings,
    cost: u64,
    account: credits::Account,
}

/// Why draining a stream stopped.
enum Drained {
    /// Whoever read the text went away (the stream is dropped: the provider stops).
    Cancelled,
    /// The generation failed (the provider's reason, or what it did wrong).
    Failed(CallError),
}

impl Remote {
    /// Runs a generation by `model` on a provider that offers generation and returns its
    /// events as they come (see the module docs). An error before the first token is the
    /// answer; dropping the receiver cancels the generation.
    pub async fn generate(
        self: &Arc<Self>,
        model: ModelId,
        input: GenerateInput,
        options: &CallOptions,
    ) -> Result<mpsc::Receiver<GenerationEvent>, CallError> {
        let manifest = self.catalog.get(model).ok_or_else(|| {
            CallError::new(
                404,
                format!("model {model} is unknown here (not announced to this node)"),
            )
        })?;
        let context = match (
            &manifest.body().runtime.language_model,
            manifest.body().runtime.kind == KIND,
        ) {
            (Some(lm), true) => lm.context_length,
            _ => {
                return Err(CallError::new(
                    400,
                    format!("model {model} is not a language model"),
                ));
            }
        };
        let max_price = self.compute.config.max_price_per_mtoken;
        let needs = compute::Needs {
            gpu: options.gpu,
            tokens: true,
        };
        let mut order = self.providers(model, options, needs, max_price)?;
        let bytes = input.to_bytes();
        let second = if options.verify {
            // Outputs are compared bit for bit, so both providers run the same engine (a
            // GPU's kernels sum in other orders than the CPU's): the best-ranked engine that
            // two providers offer.
            let engine = |t: &Target| protocol::compute::generation_engine(&t.backends);
            let shared = order
                .iter()
                .map(engine)
                .find(|e| order.iter().filter(|t| engine(t) == *e).count() >= 2);
            let Some(shared) = shared else {
                return Err(CallError::new(
                    503,
                    if order.len() < 2 {
                        "--verify needs two providers; this node knows one".to_string()
                    } else {
                        format!(
                            "--verify needs two providers on the same engine; these {} run different ones",
                            order.len()
                        )
                    },
                ));
            };
            order.retain(|t| engine(t) == shared);
            let others = order.split_off(1);
            let (me, bytes) = (self.clone(), bytes.clone());
            Some(tokio::spawn(async move {
                let opened = me
                    .open_first(others, model, &bytes, max_price, context)
                    .await?;
                match me.drain(opened, None).await {
                    Ok(f) => Ok(f),
                    Err(Drained::Failed(e)) => Err(e),
                    Err(Drained::Cancelled) => Err(CallError::new(500, "cancelled")),
                }
            }))
        } else {
            None
        };
        let opened = match self
            .open_first(order, model, &bytes, max_price, context)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if let Some(second) = second {
                    second.abort();
                }
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let seed = input.seed;
        tokio::spawn(async move {
            let event = match me.drain(opened, Some(&tx)).await {
                Err(Drained::Cancelled) => {
                    if let Some(second) = second {
                        second.abort();
                    }
                    return;
                }
                Err(Drained::Failed(e)) => {
                    if let Some(second) = second {
                        second.abort();
                    }
                    GenerationEvent::Failed(api_error(e))
                }
                Ok(first) => match second {
                    None => GenerationEvent::Done(done(model, seed, &first, None)),
                    Some(second) => match second.await {
                        Ok(Ok(other)) => compare(model, seed, &first, &other),
                        Ok(Err(e)) => GenerationEvent::Failed(api_error(CallError::new(
                            e.status,
                            format!("the second provider, for --verify: {}", e.message),
                        ))),
                        Err(e) => GenerationEvent::Failed(ApiError::internal(format!(
                            "the second provider's generation: {e}"
                        ))),
                    },
                },
            };
            let _ = tx.send(event).await;
        });
        Ok(rx)
    }

    /// Opens the generation on providers in `order`, at most `attempts` of them per round,
    /// until one starts answering; busy ones get more rounds with backoff until the call
    /// timeout (as [`Remote::call`] does).
    async fn open_first(
        &self,
        mut order: Vec<Target>,
        model: ModelId,
        input: &[u8],
        max_price: u64,
        context: u64,
    ) -> Result<Opened, CallError> {
        let attempts = self.compute.config.attempts;
        let deadline = Instant::now() + self.compute.config.call_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut reasons = Vec::new();
            let (mut any_busy, mut any_payment) = (false, false);
            let mut gone = std::collections::HashSet::new();
            for to in order.iter().take(attempts) {
                self.compute.offers().started(&to.node);
                let opened = match self
                    .open_on(to, model, input, max_price, context, PayWhen::Due)
                    .await
                {
                    Err(Failure::Payment(_, kept)) => {
                        self.before_paying_in_full(to, kept).await;
                        self.open_on(to, model, input, max_price, context, PayWhen::Now)
                            .await
                    }
                    other => other,
                };
                let why = match opened {
                    Ok(o) => return Ok(o),
                    Err(Failure::Final(e)) => {
                        self.compute
                            .offers()
                            .finished(&to.node, Outcome::Failed, now_ms());
                        return Err(e);
                    }
                    Err(Failure::Payment(why, _)) => {
                        self.metrics.refused_for_payment("used");
                        self.compute
                            .offers()
                            .finished(&to.node, Outcome::Busy, now_ms());
                        any_payment = true;
                        gone.insert(to.node);
                        why
                    }
                    Err(Failure::Retry(outcome, why)) => {
                        self.compute.offers().finished(&to.node, outcome, now_ms());
                        any_busy |= outcome == Outcome::Busy;
                        if outcome != Outcome::Busy {
                            gone.insert(to.node);
                        }
                        why
                    }
                };
                reasons.push(format!("{}: {why}", to.peer));
            }
            if !(any_busy && Instant::now() + backoff < deadline) {
                return Err(self.no_provider(&reasons, any_payment, any_busy, "generation"));
            }
            let mut jitter = [0u8; 1];
            getrandom::fill(&mut jitter).unwrap_or_default();
            tokio::time::sleep(backoff + backoff * u32::from(jitter[0]) / 255).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            order.retain(|c| !gone.contains(&c.node));
        }
    }

    /// Opens the generation on one provider and waits for its first frame.
    async fn open_on(
        &self,
        to: &Target,
        model: ModelId,
        input: &[u8],
        max_price: u64,
        context: u64,
        pay: PayWhen,
    ) -> Result<Opened, Failure> {
        // The most tokens a generation takes is the model's context.
        let (request, call) = self.signed_call(to, model, input, (max_price, context), pay)?;
        let started = Instant::now();
        self.net.reach(to.peer, &to.addrs).await;
        let timeout = self.compute.config.call_timeout;
        let mut stream = self
            .net
            .generate(to.peer, &call)
            .await
            .map_err(|e| Failure::Retry(Outcome::Unavailable, e.to_string()))?;
        let first = match tokio::time::timeout(timeout, stream.next()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e @ net::NetError::PeerMisbehaved { .. })) => {
                return Err(Failure::Retry(Outcome::Misbehaved, e.to_string()));
            }
            Ok(Err(e)) => return Err(Failure::Retry(Outcome::Unavailable, e.to_string())),
            Err(_) => {
                return Err(Failure::Retry(
                    Outcome::Unavailable,
                    format!("no answer within {} s", timeout.as_secs()),
                ));
            }
        };
        if let GenerateFrame::End(reply, _) = &first
            && reply.status != InferStatus::Ok
        {
            let e = compute::check_generation(reply.clone(), &request, "")
                .err()
                .unwrap_or_else(|| ReplyError::Unavailable("a refusal".into()));
            return Err(match e {
                ReplyError::BadRequest(message) => Failure::Final(CallError::new(400, message)),
                ReplyError::Failed(message) => Failure::Final(CallError::new(500, message)),
                ReplyError::PaymentRequired { message, cheque } => {
                    Failure::Payment(message, cheque)
                }
                e => Failure::Retry(e.outcome(), e.to_string()),
            });
        }
        Ok(Opened {
            to: to.clone(),
            request,
            stream,
            first,
            started,
        })
    }

    /// Reads a started generation to its end, sending its text to `tx` (if any), then checks
    /// the signed result against the text and books it.
    async fn drain(
        &self,
        opened: Opened,
        tx: Option<&mpsc::Sender<GenerationEvent>>,
    ) -> Result<Finished, Drained> {
        let Opened {
            to,
            request,
            mut stream,
            first,
            started,
        } = opened;
        let timeout = self.compute.config.call_timeout;
        let fail = |outcome: Outcome, e: CallError| {
            self.compute.offers().finished(&to.node, outcome, now_ms());
            Drained::Failed(e)
        };
        let mut text = String::new();
        let mut frame = first;
        let (reply, timings) = loop {
            match frame {
                GenerateFrame::Text(t) => {
                    if text.len() + t.len() > MAX_GENERATED_BYTES {
                        return Err(fail(
                            Outcome::Misbehaved,
                            CallError::new(
                                502,
                                format!(
                                    "provider {} sent more than {MAX_GENERATED_BYTES} bytes of text",
                                    to.peer
                                ),
                            ),
                        ));
                    }
                    text.push_str(&t);
                    if let Some(tx) = tx
                        && tx.send(GenerationEvent::Text(t)).await.is_err()
                    {
                        // Dropping the stream tells the provider to stop.
                        self.compute.offers().finished(
                            &to.node,
                            Outcome::Ok(started.elapsed()),
                            now_ms(),
                        );
                        return Err(Drained::Cancelled);
                    }
                }
                GenerateFrame::End(reply, timings) => break (reply, timings),
            }
            frame = match tokio::time::timeout(timeout, stream.next()).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    let outcome = match e {
                        net::NetError::PeerMisbehaved { .. } => Outcome::Misbehaved,
                        _ => Outcome::Unavailable,
                    };
                    return Err(fail(
                        outcome,
                        CallError::new(502, format!("the generation on {}: {e}", to.peer)),
                    ));
                }
                Err(_) => {
                    return Err(fail(
                        Outcome::Unavailable,
                        CallError::new(
                            504,
                            format!(
                                "provider {} sent nothing for {} s",
                                to.peer,
                                timeout.as_secs()
                            ),
                        ),
                    ));
                }
            };
        };
        let verified = match compute::check_generation(reply, &request, &text) {
            Ok(v) => v,
            Err(e) => {
                let status = match e {
                    ReplyError::BadRequest(_) => 400,
                    ReplyError::Busy(_) | ReplyError::PaymentRequired { .. } => 503,
                    ReplyError::Misbehaved(_) => 502,
                    _ => 500,
                };
                return Err(fail(
                    e.outcome(),
                    CallError::new(status, format!("the generation on {} failed: {e}", to.peer)),
                ));
            }
        };
        self.compute
            .offers()
            .finished(&to.node, Outcome::Ok(started.elapsed()), now_ms());
        // Booked before the end is handed on; a failure here under-counts what this node
        // owes (the provider holds the receipt), so it is logged, not hidden.
        let credits = self.credits();
        let cost = match credits.record_used(&request, &verified.result) {
            Ok(receipt) => {
                self.metrics.billed("used", receipt.cost);
                receipt.cost
            }
            Err(e) => {
                tracing::error!(provider = %to.peer, "credits: booking a generation a peer served: {e}");
                protocol::credits::cost(
                    verified.result.body().fuel,
                    verified.result.body().price_per_mfuel,
                )
            }
        };
        self.metrics.call(Place::Remote, metrics::Outcome::Ok);
        self.prepare_cheque(&to);
        Ok(Finished {
            peer: to.peer,
            node: to.node,
            verified,
            timings,
            cost,
            account: credits.balance(&to.node).account,
        })
    }
}

/// The end of a generation that ran on a provider, as the API reports it.
fn done(model: ModelId, seed: u32, f: &Finished, verified_by: Option<[String; 2]>) -> Done {
    let r = f.verified.result.body();
    let o = &f.verified.output;
    let mut remote = serde_json::Map::new();
    remote.insert("provider".into(), json!(f.peer.to_string()));
    remote.insert("price_per_mtoken".into(), json!(r.price_per_mfuel));
    remote.insert("tokens".into(), json!(r.fuel));
    remote.insert("cost".into(), json!(f.cost));
    remote.insert("output_hash".into(), json!(r.output_hash.to_string()));
    remote.insert(
        "result".into(),
        json!(hex::encode(f.verified.result.to_bytes())),
    );
    remote.insert(
        "credits".into(),
        json!({
            "paid": f.account.paid_out(),
            "owed": u64::try_from((-f.account.net()).max(0)).unwrap_or(u64::MAX),
            "cheque_seq": f.account.cheque_out.as_ref().map(|c| c.seq),
        }),
    );
    if let Some(by) = verified_by {
        remote.insert("verified_by".into(), json!(by));
        remote.insert("verified".into(), json!("bit for bit"));
    }
    Done {
        model_id: model.to_string(),
        prompt_tokens: u32::try_from(o.prompt_tokens).unwrap_or(u32::MAX),
        completion_tokens: u32::try_from(o.generated_tokens).unwrap_or(u32::MAX),
        finish: llm_finish(o.finish),
        engine: r.backend.clone(),
        ran_on: f.node.to_string(),
        seed,
        prompt_ms: f.timings.prompt_ms,
        generate_ms: f.timings.generate_ms,
        remote: Some(remote),
    }
}

/// The end of a verified generation: the two providers' signed outputs must be the same (same
/// seed, same engine: the same text and token counts).
fn compare(model: ModelId, seed: u32, a: &Finished, b: &Finished) -> GenerationEvent {
    let (ra, rb) = (a.verified.result.body(), b.verified.result.body());
    if ra.output_hash == rb.output_hash && ra.backend == rb.backend {
        return GenerationEvent::Done(done(
            model,
            seed,
            a,
            Some([a.peer.to_string(), b.peer.to_string()]),
        ));
    }
    let evidence = |x: &Finished| {
        json!({
            "provider": x.peer.to_string(),
            "output_hash": x.verified.result.body().output_hash.to_string(),
            "tokens": x.verified.result.body().fuel,
            "engine": x.verified.result.body().backend,
            "result": hex::encode(x.verified.result.to_bytes()),
        })
    };
    let mut e = ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "providers disagree: {} ({}) generated output {} in {} tokens, {} ({}) output {} in {} tokens",
            a.peer,
            ra.backend,
            ra.output_hash,
            ra.fuel,
            b.peer,
            rb.backend,
            rb.output_hash,
            rb.fuel
        ),
    );
    e.details = Some(json!({ "results": [evidence(a), evidence(b)] }));
    GenerationEvent::Failed(e)
}
