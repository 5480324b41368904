//! Compute sharing: signed compute offers (gossip), and the inference call between peers
//! (`/moxnet/infer/1`): a signed request, the caller's inputs, and the provider's signed result
//! with its outputs. Byte-level spec: `docs/protocol.md` §11.
//!
//! A call binds everything a later receipt needs: the request names the model, the hash of the
//! inputs, the most fuel and the highest price the caller accepts, a fresh nonce, the provider it
//! is addressed to and when it was made; the result names the request (by the hash of its
//! envelope), the hash of the outputs, the fuel used and the price charged. Deterministic guests
//! make the output hash reproducible, so two providers can be compared exactly.

use crate::cbor::{MapReader, Value, as_array, as_list, as_text, as_u64};
use crate::{BlobHash, DecodeError, ModelId, NodeId, Object, Signable};

/// Domain tag of signed compute offers.
pub const DOMAIN_COMPUTE_OFFER: &str = "moxnet/v1/compute-offer";
/// Domain tag of signed inference requests.
pub const DOMAIN_INFER_REQUEST: &str = "moxnet/v1/infer-request";
/// Domain tag of signed inference results.
pub const DOMAIN_INFER_RESULT: &str = "moxnet/v1/infer-result";

/// Version of the compute messages.
pub const COMPUTE_VERSION: u64 = 1;
/// Largest encoded [`ComputeOffer`].
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Most models one offer lists.
pub const MAX_OFFER_MODELS: usize = 1024;
/// Most addresses one offer lists.
pub const MAX_OFFER_ADDRS: usize = 16;
/// Most backends one offer lists.
pub const MAX_OFFER_BACKENDS: usize = 8;
/// Largest inputs of one call (the OIP v2 request JSON).
pub const MAX_INFER_INPUT_BYTES: usize = 16 << 20;
/// Largest outputs of one call (encoded [`Outputs`]).
pub const MAX_INFER_OUTPUT_BYTES: usize = 64 << 20;
/// Largest [`InferRequest`] or [`InferResult`] body.
pub const MAX_INFER_SIGNED_BYTES: usize = 1024;
/// Most output tensors of one call.
pub const MAX_OUTPUT_TENSORS: usize = 256;
/// Most dimensions of an output tensor.
pub const MAX_TENSOR_RANK: usize = 16;
/// Largest message of one provider's error text.
pub const MAX_ERROR_TEXT: usize = 4096;
/// Largest [`InferCall`] frame.
pub const MAX_INFER_CALL_BYTES: usize = MAX_INFER_INPUT_BYTES + 4096;
/// Largest [`InferReply`] frame.
pub const MAX_INFER_REPLY_BYTES: usize = MAX_INFER_OUTPUT_BYTES + 8192;

/// Largest encoded cheque body (`credits::Cheque`), as piggybacked on a call.
pub const MAX_CHEQUE_BYTES: usize = 512;

/// The credit terms a provider states in its signed compute offer (all in credits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditTerms {
    /// A caller pays once it owes half of this.
    pub payment_threshold: u64,
    /// New calls are refused (`PaymentRequired`) from a caller whose unpaid debt plus the worst
    /// case of its calls in flight would pass this; at least `payment_threshold`.
    pub disconnect_threshold: u64,
    /// The free allowance for callers that never paid: at most this much of their debt is
    /// outstanding at once, shared by all of them.
    pub free_cap: u64,
    /// How fast the free allowance forgives that debt, credits per second.
    pub free_per_s: u64,
}

impl Default for CreditTerms {
    fn default() -> Self {
        CreditTerms {
            payment_threshold: 10_000_000,
            disconnect_threshold: 12_500_000,
            free_cap: 2_000_000,
            free_per_s: 10_000,
        }
    }
}

impl CreditTerms {
    /// The terms as the CBOR map of an offer's `credit` key.
    pub fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (
                Value::text("payment_threshold"),
                Value::Uint(self.payment_threshold),
            ),
            (
                Value::text("disconnect_threshold"),
                Value::Uint(self.disconnect_threshold),
            ),
            (Value::text("free_cap"), Value::Uint(self.free_cap)),
            (Value::text("free_per_s"), Value::Uint(self.free_per_s)),
        ])
    }

    /// Decodes and checks an offer's `credit` map.
    pub fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("credit terms", v)?;
        let terms = CreditTerms {
            payment_threshold: as_u64("payment_threshold", m.required("payment_threshold")?)?,
            disconnect_threshold: as_u64(
                "disconnect_threshold",
                m.required("disconnect_threshold")?,
            )?,
            free_cap: as_u64("free_cap", m.required("free_cap")?)?,
            free_per_s: as_u64("free_per_s", m.required("free_per_s")?)?,
        };
        m.finish()?;
        if terms.disconnect_threshold < terms.payment_threshold {
            return Err(DecodeError::invalid(
                "credit terms",
                "the disconnect threshold is below the payment threshold",
            ));
        }
        Ok(terms)
    }
}

/// A provider's signed offer of compute, announced on gossip and re-announced periodically.
/// The signer is the provider; its libp2p peer id is derived from the same key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputeOffer {
    /// When it was made, milliseconds since the Unix epoch; a newer offer replaces an older one.
    pub issued_ms: u64,
    /// When it stops being valid, milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// CPU cores.
    pub cores: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// GPUs, described (e.g. `"NVIDIA H200"`), empty if none.
    pub gpus: Vec<String>,
    /// Engines available to guests: always `"wasm"`, plus any host backend (e.g. `"tract"`).
    pub backends: Vec<String>,
    /// Models already on the provider (calls for others fetch them first).
    pub models: Vec<ModelId>,
    /// Calls it runs at once.
    pub max_concurrent: u64,
    /// Price in credits per million fuel units.
    pub price_per_mfuel: u64,
    /// Multiaddresses to reach it (each ending in `/p2p/<peer id>`).
    pub addrs: Vec<String>,
    /// How it extends credit to callers.
    pub credit: CreditTerms,
    /// Its price for generation by language models (`/moxnet/generate/1`), credits per million
    /// tokens (prompt and generated); `None` when it runs no language models for peers.
    pub price_per_mtoken: Option<u64>,
}

fn texts(what: &'static str, v: Value, max: usize, len: usize) -> Result<Vec<String>, DecodeError> {
    as_list(what, v, max, |t| as_text(what, t, len))
}

fn text_array(items: &[String]) -> Value {
    Value::Array(items.iter().map(Value::text).collect())
}

/// Engines that run models on a GPU: an offer that lists one of them in `backends`, and a GPU
/// in `gpus`, can take calls that require a GPU.
pub const GPU_BACKENDS: &[&str] = &["onnxruntime-cuda"];

/// Engines that run language models (generation, §11.3), GPU first: an offer lists the one
/// its generations run on.
pub const GENERATION_BACKENDS: &[&str] = &["llama.cpp-cuda", "llama.cpp"];

/// Engines that run language models on a GPU: an offer that lists one of them, and a GPU in
/// `gpus`, can take generations that require a GPU.
pub const GPU_GENERATION_BACKENDS: &[&str] = &["llama.cpp-cuda"];

/// The engine generations run on, of those `backends` lists (the first of
/// [`GENERATION_BACKENDS`] among them).
pub fn generation_engine(backends: &[String]) -> Option<&'static str> {
    GENERATION_BACKENDS
        .iter()
        .copied()
        .find(|e| backends.iter().any(|b| b == e))
}

impl ComputeOffer {
    /// Whether the provider can run calls on a GPU: it lists a GPU and a GPU engine
    /// ([`GPU_BACKENDS`]).
    pub fn offers_gpu(&self) -> bool {
        !self.gpus.is_empty()
            && self
                .backends
                .iter()
                .any(|b| GPU_BACKENDS.contains(&b.as_str()))
    }

    /// Whether the provider can run generations on a GPU: it lists a GPU and a GPU engine for
    /// language models ([`GPU_GENERATION_BACKENDS`]).
    pub fn offers_gpu_generation(&self) -> bool {
        !self.gpus.is_empty()
            && self
                .backends
                .iter()
                .any(|b| GPU_GENERATION_BACKENDS.contains(&b.as_str()))
    }
}

impl Object for ComputeOffer {
    const WHAT: &'static str = "compute offer";
    const MAX_BYTES: usize = MAX_OFFER_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(COMPUTE_VERSION)),
            (Value::text("issued_ms"), Value::Uint(self.issued_ms)),
            (Value::text("expires_ms"), Value::Uint(self.expires_ms)),
            (Value::text("cores"), Value::Uint(self.cores)),
            (Value::text("memory_mib"), Value::Uint(self.memory_mib)),
            (Value::text("gpus"), text_array(&self.gpus)),
            (Value::text("backends"), text_array(&self.backends)),
            (
                Value::text("models"),
                Value::Array(self.models.iter().map(|m| m.blob().to_cbor()).collect()),
            ),
            (
                Value::text("max_concurrent"),
                Value::Uint(self.max_concurrent),
            ),
            (
                Value::text("price_per_mfuel"),
                Value::Uint(self.price_per_mfuel),
            ),
            (Value::text("addrs"), text_array(&self.addrs)),
            (Value::text("credit"), self.credit.to_cbor()),
        ];
        if let Some(p) = self.price_per_mtoken {
            entries.push((Value::text("price_per_mtoken"), Value::Uint(p)));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("compute offer", v)?;
        m.version(COMPUTE_VERSION)?;
        let offer = ComputeOffer {
            issued_ms: as_u64("offer issued_ms", m.required("issued_ms")?)?,
            expires_ms: as_u64("offer expires_ms", m.required("expires_ms")?)?,
            cores: as_u64("offer cores", m.required("cores")?)?,
            memory_mib: as_u64("offer memory_mib", m.required("memory_mib")?)?,
            gpus: texts("offer gpus", m.required("gpus")?, 16, 256)?,
            backends: texts(
                "offer backends",
                m.required("backends")?,
                MAX_OFFER_BACKENDS,
                64,
            )?,
            models: as_list(
                "offer models",
                m.required("models")?,
                MAX_OFFER_MODELS,
                |v| BlobHash::from_cbor("offer model", v).map(ModelId),
            )?,
            max_concurrent: as_u64("offer max_concurrent", m.required("max_concurrent")?)?,
            price_per_mfuel: as_u64("offer price_per_mfuel", m.required("price_per_mfuel")?)?,
            addrs: texts("offer addrs", m.required("addrs")?, MAX_OFFER_ADDRS, 256)?,
            credit: CreditTerms::from_cbor(m.required("credit")?)?,
            price_per_mtoken: m
                .optional("price_per_mtoken")
                .map(|v| as_u64("offer price_per_mtoken", v))
                .transpose()?,
        };
        m.finish()?;
        if offer.expires_ms <= offer.issued_ms {
            return Err(DecodeError::invalid(
                "compute offer",
                "it expires before it was issued",
            ));
        }
        Ok(offer)
    }
}

impl Signable for ComputeOffer {
    const DOMAIN: &'static str = DOMAIN_COMPUTE_OFFER;
}

/// A caller's signed request to run one call on one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferRequest {
    /// The model.
    pub model: ModelId,
    /// BLAKE3 of the inputs (the OIP v2 request JSON bytes sent with it).
    pub input_hash: BlobHash,
    /// The most fuel the call may use.
    pub max_fuel: u64,
    /// The highest price per million fuel units the caller accepts.
    pub max_price_per_mfuel: u64,
    /// Fresh random bytes: a provider runs a request once.
    pub nonce: [u8; 16],
    /// When it was made, milliseconds since the Unix epoch (providers refuse stale requests).
    pub issued_ms: u64,
    /// The provider it is addressed to (no other provider accepts it).
    pub provider: NodeId,
}

impl Object for InferRequest {
    const WHAT: &'static str = "infer request";
    const MAX_BYTES: usize = MAX_INFER_SIGNED_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(COMPUTE_VERSION)),
            (Value::text("model"), self.model.blob().to_cbor()),
            (Value::text("input_hash"), self.input_hash.to_cbor()),
            (Value::text("max_fuel"), Value::Uint(self.max_fuel)),
            (
                Value::text("max_price_per_mfuel"),
                Value::Uint(self.max_price_per_mfuel),
            ),
            (Value::text("nonce"), Value::Bytes(self.nonce.to_vec())),
            (Value::text("issued_ms"), Value::Uint(self.issued_ms)),
            (
                Value::text("provider"),
                Value::Bytes(self.provider.as_bytes().to_vec()),
            ),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("infer request", v)?;
        m.version(COMPUTE_VERSION)?;
        let request = InferRequest {
            model: ModelId(BlobHash::from_cbor("request model", m.required("model")?)?),
            input_hash: BlobHash::from_cbor("request input_hash", m.required("input_hash")?)?,
            max_fuel: as_u64("request max_fuel", m.required("max_fuel")?)?,
            max_price_per_mfuel: as_u64(
                "request max_price_per_mfuel",
                m.required("max_price_per_mfuel")?,
            )?,
            nonce: as_array("request nonce", m.required("nonce")?)?,
            issued_ms: as_u64("request issued_ms", m.required("issued_ms")?)?,
            provider: NodeId::from_bytes(as_array("request provider", m.required("provider")?)?)?,
        };
        m.finish()?;
        Ok(request)
    }
}

impl Signable for InferRequest {
    const DOMAIN: &'static str = DOMAIN_INFER_REQUEST;
}

/// A provider's signed account of one call it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferResult {
    /// BLAKE3 of the signed request envelope this answers.
    pub request: BlobHash,
    /// The model run.
    pub model: ModelId,
    /// BLAKE3 of the outputs (encoded [`Outputs`]) sent with it.
    pub output_hash: BlobHash,
    /// Fuel the call used (deterministic for a given model and inputs).
    pub fuel: u64,
    /// The price per million fuel units charged (at most the request's).
    pub price_per_mfuel: u64,
    /// The engine that ran the graph: `"wasm"` or a host backend's name.
    pub backend: String,
}

impl Object for InferResult {
    const WHAT: &'static str = "infer result";
    const MAX_BYTES: usize = MAX_INFER_SIGNED_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(COMPUTE_VERSION)),
            (Value::text("request"), self.request.to_cbor()),
            (Value::text("model"), self.model.blob().to_cbor()),
            (Value::text("output_hash"), self.output_hash.to_cbor()),
            (Value::text("fuel"), Value::Uint(self.fuel)),
            (
                Value::text("price_per_mfuel"),
                Value::Uint(self.price_per_mfuel),
            ),
            (Value::text("backend"), Value::text(&self.backend)),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("infer result", v)?;
        m.version(COMPUTE_VERSION)?;
        let result = InferResult {
            request: BlobHash::from_cbor("result request", m.required("request")?)?,
            model: ModelId(BlobHash::from_cbor("result model", m.required("model")?)?),
            output_hash: BlobHash::from_cbor("result output_hash", m.required("output_hash")?)?,
            fuel: as_u64("result fuel", m.required("fuel")?)?,
            price_per_mfuel: as_u64("result price_per_mfuel", m.required("price_per_mfuel")?)?,
            backend: as_text("result backend", m.required("backend")?, 64)?,
        };
        m.finish()?;
        Ok(result)
    }
}

impl Signable for InferResult {
    const DOMAIN: &'static str = DOMAIN_INFER_RESULT;
}

/// One output tensor: elements little-endian, `BYTES` elements each a 4-byte little-endian
/// length and the bytes (the layout of the WIT world's tensors, `docs/protocol.md` §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireTensor {
    /// Its name.
    pub name: String,
    /// Its OIP datatype name (`FP32`, `INT64`, `BYTES`, …).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its encoded elements.
    pub data: Vec<u8>,
}

/// The outputs of one call, in the guest's order; their BLAKE3 is the result's `output_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outputs {
    /// The tensors.
    pub tensors: Vec<WireTensor>,
}

impl Object for Outputs {
    const WHAT: &'static str = "outputs";
    const MAX_BYTES: usize = MAX_INFER_OUTPUT_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(COMPUTE_VERSION)),
            (
                Value::text("tensors"),
                Value::Array(
                    self.tensors
                        .iter()
                        .map(|t| {
                            Value::Map(vec![
                                (Value::text("name"), Value::text(&t.name)),
                                (Value::text("dtype"), Value::text(&t.dtype)),
                                (
                                    Value::text("shape"),
                                    Value::Array(t.shape.iter().map(|d| Value::Uint(*d)).collect()),
                                ),
                                (Value::text("data"), Value::Bytes(t.data.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("outputs", v)?;
        m.version(COMPUTE_VERSION)?;
        let tensors = as_list(
            "output tensors",
            m.required("tensors")?,
            MAX_OUTPUT_TENSORS,
            |v| {
                let mut t = MapReader::new("output tensor", v)?;
                let tensor = WireTensor {
                    name: as_text("tensor name", t.required("name")?, 256)?,
                    dtype: as_text("tensor dtype", t.required("dtype")?, 16)?,
                    shape: as_list("tensor shape", t.required("shape")?, MAX_TENSOR_RANK, |d| {
                        as_u64("tensor dimension", d)
                    })?,
                    data: match t.required("data")? {
                        Value::Bytes(b) => b,
                        _ => return Err(DecodeError::invalid("tensor data", "expected bytes")),
                    },
                };
                t.finish()?;
                Ok(tensor)
            },
        )?;
        m.finish()?;
        Ok(Outputs { tensors })
    }
}

/// What a caller sends on `/moxnet/infer/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferCall {
    /// The `Signed<InferRequest>` envelope.
    pub request: Vec<u8>,
    /// The inputs: an OIP v2 inference request, JSON (UTF-8).
    pub input: Vec<u8>,
    /// A payment to the provider, piggybacked: a `Signed<Cheque>` envelope.
    pub cheque: Option<Vec<u8>>,
}

impl Object for InferCall {
    const WHAT: &'static str = "infer call";
    const MAX_BYTES: usize = MAX_INFER_CALL_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(COMPUTE_VERSION)),
            (Value::text("request"), Value::Bytes(self.request.clone())),
            (Value::text("input"), Value::Bytes(self.input.clone())),
        ];
        if let Some(c) = &self.cheque {
            entries.push((Value::text("cheque"), Value::Bytes(c.clone())));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("infer call", v)?;
        m.version(COMPUTE_VERSION)?;
        let bytes = |what: &'static str, v: Value, max: usize| match v {
            Value::Bytes(b) if b.len() <= max => Ok(b),
            Value::Bytes(b) => Err(DecodeError::TooLarge {
                limit: max,
                actual: b.len(),
            }),
            _ => Err(DecodeError::invalid(what, "expected bytes")),
        };
        let call = InferCall {
            request: bytes(
                "call request",
                m.required("request")?,
                MAX_INFER_SIGNED_BYTES + crate::ENVELOPE_OVERHEAD,
            )?,
            input: bytes("call input", m.required("input")?, MAX_INFER_INPUT_BYTES)?,
            cheque: m
                .optional("cheque")
                .map(|v| {
                    bytes(
                        "call cheque",
                        v,
                        MAX_CHEQUE_BYTES + crate::ENVELOPE_OVERHEAD,
                    )
                })
                .transpose()?,
        };
        m.finish()?;
        Ok(call)
    }
}

/// How a provider answered a call. Discriminants are wire values and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum InferStatus {
    /// The call ran: a signed result and the outputs follow.
    Ok = 0,
    /// At capacity (globally or for this caller): try later or elsewhere.
    Busy = 1,
    /// The inputs do not fit the model; the same call fails everywhere.
    BadRequest = 2,
    /// The provider cannot get the model.
    NotFound = 3,
    /// The guest failed (out of fuel, trapped, …); deterministic, so it fails everywhere.
    Failed = 4,
    /// The request was refused: bad signature, replayed nonce, stale, addressed to another
    /// provider, or a price below the provider's.
    Refused = 5,
    /// The provider failed locally.
    Internal = 6,
    /// The caller owes too much: it must pay (a cheque with its next call) before more calls
    /// run. The message says how much.
    PaymentRequired = 7,
}

impl InferStatus {
    fn from_u64(n: u64) -> Result<Self, DecodeError> {
        Ok(match n {
            0 => InferStatus::Ok,
            1 => InferStatus::Busy,
            2 => InferStatus::BadRequest,
            3 => InferStatus::NotFound,
            4 => InferStatus::Failed,
            5 => InferStatus::Refused,
            6 => InferStatus::Internal,
            7 => InferStatus::PaymentRequired,
            _ => return Err(DecodeError::invalid("infer status", format!("unknown {n}"))),
        })
    }
}

/// What a provider answers on `/moxnet/infer/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferReply {
    /// The outcome.
    pub status: InferStatus,
    /// With [`InferStatus::Ok`]: the `Signed<InferResult>` envelope.
    pub result: Option<Vec<u8>>,
    /// With [`InferStatus::Ok`]: the encoded [`Outputs`].
    pub output: Option<Vec<u8>>,
    /// Otherwise: why.
    pub message: Option<String>,
    /// With [`InferStatus::PaymentRequired`]: the newest cheque from the caller the provider
    /// holds (a `Signed<Cheque>` envelope), so that a caller that lost its own copy goes on
    /// from it.
    pub cheque: Option<Vec<u8>>,
}

impl InferReply {
    /// A refusal or failure with a reason.
    pub fn error(status: InferStatus, message: impl Into<String>) -> InferReply {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        InferReply {
            status,
            result: None,
            output: None,
            message: Some(message),
            cheque: None,
        }
    }
}

impl Object for InferReply {
    const WHAT: &'static str = "infer reply";
    const MAX_BYTES: usize = MAX_INFER_REPLY_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(COMPUTE_VERSION)),
            (
                Value::text("status"),
                Value::Uint(self.status as u16 as u64),
            ),
        ];
        if let Some(r) = &self.result {
            entries.push((Value::text("result"), Value::Bytes(r.clone())));
        }
        if let Some(o) = &self.output {
            entries.push((Value::text("output"), Value::Bytes(o.clone())));
        }
        if let Some(msg) = &self.message {
            entries.push((Value::text("message"), Value::text(msg)));
        }
        if let Some(c) = &self.cheque {
            entries.push((Value::text("cheque"), Value::Bytes(c.clone())));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("infer reply", v)?;
        m.version(COMPUTE_VERSION)?;
        let status = InferStatus::from_u64(as_u64("infer status", m.required("status")?)?)?;
        let bytes = |what: &'static str, v: Value| match v {
            Value::Bytes(b) => Ok(b),
            _ => Err(DecodeError::invalid(what, "expected bytes")),
        };
        let result = m
            .optional("result")
            .map(|v| bytes("reply result", v))
            .transpose()?;
        let output = m
            .optional("output")
            .map(|v| bytes("reply output", v))
            .transpose()?;
        let message = m
            .optional("message")
            .map(|v| as_text("reply message", v, MAX_ERROR_TEXT))
            .transpose()?;
        let cheque = m
            .optional("cheque")
            .map(|v| match v {
                Value::Bytes(b) if b.len() <= MAX_CHEQUE_BYTES + crate::ENVELOPE_OVERHEAD => Ok(b),
                _ => Err(DecodeError::invalid(
                    "reply cheque",
                    "expected a cheque envelope's bytes",
                )),
            })
            .transpose()?;
        m.finish()?;
        if cheque.is_some() && status != InferStatus::PaymentRequired {
            return Err(DecodeError::invalid(
                "infer reply",
                "a cheque comes only with status payment-required",
            ));
        }
        let ok = status == InferStatus::Ok;
        if ok != result.is_some() || ok != output.is_some() || ok == message.is_some() {
            return Err(DecodeError::invalid(
                "infer reply",
                "a result and outputs come exactly with status ok, a message exactly without",
            ));
        }
        Ok(InferReply {
            status,
            result,
            output,
            message,
            cheque,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SecretKey, Signed};
    use proptest::prelude::*;

    fn request(provider: NodeId) -> InferRequest {
        InferRequest {
            model: ModelId(BlobHash::of(b"model")),
            input_hash: BlobHash::of(b"{}"),
            max_fuel: 1_000_000,
            max_price_per_mfuel: 5,
            nonce: [9; 16],
            issued_ms: 1_700_000_000_000,
            provider,
        }
    }

    #[test]
    fn signed_messages_round_trip_and_do_not_cross_domains() {
        let caller = SecretKey::from_seed(&[1; 32]);
        let provider = SecretKey::from_seed(&[2; 32]);
        let signed = caller.sign(request(provider.node_id()));
        let bytes = signed.to_bytes();
        let back = Signed::<InferRequest>::from_bytes(&bytes).expect("request");
        assert_eq!(back.body(), signed.body());
        assert_eq!(back.signer(), caller.node_id());
        // A request's signature never verifies as a result or an offer.
        assert!(matches!(
            Signed::<InferResult>::from_bytes(&bytes),
            Err(DecodeError::WrongDomain { .. })
        ));
        assert!(matches!(
            Signed::<ComputeOffer>::from_bytes(&bytes),
            Err(DecodeError::WrongDomain { .. })
        ));
        let result = provider.sign(InferResult {
            request: BlobHash::of(&bytes),
            model: signed.body().model,
            output_hash: BlobHash::of(b"out"),
            fuel: 1234,
            price_per_mfuel: 3,
            backend: "wasm".into(),
        });
        let r = Signed::<InferResult>::from_bytes(&result.to_bytes()).expect("result");
        assert_eq!(r.body().fuel, 1234);
        let offer = provider.sign(ComputeOffer {
            issued_ms: 1,
            expires_ms: 2,
            cores: 2,
            memory_mib: 1024,
            gpus: vec![],
            backends: vec!["wasm".into()],
            models: vec![signed.body().model],
            max_concurrent: 2,
            price_per_mfuel: 3,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            credit: CreditTerms::default(),
            price_per_mtoken: None,
        });
        let o = Signed::<ComputeOffer>::from_bytes(&offer.to_bytes()).expect("offer");
        assert_eq!(o.body(), offer.body());
    }

    #[test]
    fn a_tampered_request_does_not_verify() {
        let caller = SecretKey::from_seed(&[1; 32]);
        let provider = SecretKey::from_seed(&[2; 32]);
        let bytes = caller.sign(request(provider.node_id())).to_bytes();
        let mut flips = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                Signed::<InferRequest>::from_bytes(&bad).is_err(),
                "byte {i}"
            );
            flips += 1;
        }
        assert_eq!(flips, bytes.len());
    }

    #[test]
    fn replies_are_ok_with_a_result_or_an_error_with_a_message() {
        let ok = InferReply {
            status: InferStatus::Ok,
            result: Some(vec![1]),
            output: Some(vec![2]),
            message: None,
            cheque: None,
        };
        assert_eq!(InferReply::from_bytes(&ok.to_bytes()), Ok(ok));
        let busy = InferReply::error(InferStatus::Busy, "x".repeat(10_000));
        let back = InferReply::from_bytes(&busy.to_bytes()).expect("busy");
        assert_eq!(back.message.map(|m| m.len()), Some(MAX_ERROR_TEXT));
        let inconsistent = InferReply {
            status: InferStatus::Busy,
            result: Some(vec![1]),
            output: None,
            message: Some("busy".into()),
            cheque: None,
        };
        assert!(InferReply::from_bytes(&inconsistent.to_bytes()).is_err());
    }

    #[test]
    fn an_offer_that_expires_before_it_starts_is_refused() {
        let offer = ComputeOffer {
            issued_ms: 10,
            expires_ms: 10,
            ..ComputeOffer::default()
        };
        assert!(ComputeOffer::from_bytes(&offer.to_bytes()).is_err());
    }

    fn arb_tensor() -> impl Strategy<Value = WireTensor> {
        (
            "[a-z_]{1,12}",
            prop::sample::select(vec!["FP32", "INT64", "BYTES", "BOOL"]),
            prop::collection::vec(0u64..1000, 0..5),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(name, dtype, shape, data)| WireTensor {
                name,
                dtype: dtype.into(),
                shape,
                data,
            })
    }

    proptest! {
        #[test]
        fn outputs_round_trip(tensors in prop::collection::vec(arb_tensor(), 0..6)) {
            let outputs = Outputs { tensors };
            let bytes = outputs.to_bytes();
            prop_assert_eq!(Outputs::from_bytes(&bytes), Ok(outputs));
        }

        #[test]
        fn calls_and_replies_never_panic_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = InferCall::from_bytes(&bytes);
            let _ = InferReply::from_bytes(&bytes);
            let _ = Outputs::from_bytes(&bytes);
            let _ = Signed::<ComputeOffer>::from_bytes(&bytes);
        }

        #[test]
        fn calls_round_trip(request in prop::collection::vec(any::<u8>(), 0..300), input in prop::collection::vec(any::<u8>(), 0..300)) {
            let call = InferCall { request, input, cheque: None };
            prop_assert_eq!(InferCall::from_bytes(&call.to_bytes()), Ok(call));
        }
    }
}
