//! The pipe between a node and its engine workers: length-prefixed frames, each one message.
//! I/O-free: [`Request`] and [`Reply`] encode to and decode from byte slices; decoding checks
//! every length against what is left and never panics, whichever side is compromised.
//!
//! A frame is a u32 little-endian payload length (at most [`MAX_FRAME`]) and the payload: a tag
//! byte, then the message's fields. Integers are little-endian; a string is a u32 length and
//! UTF-8 bytes; a byte string a u64 length and the bytes; a tensor its name, its dtype's OIP name,
//! a u32 rank, the u64 dims and its data as a byte string (the [`graph::Tensor`] encoding); a spec
//! its name, dtype and rank, then per dim a 0 and a u64 (fixed) or a 1 and a string (symbolic).

use graph::{DType, Dim, Spec, Tensor};
use llm::{Finish, Message, Prompt, Sampling};

/// The largest frame either side sends or accepts, in bytes (1 GiB: a call's tensors are
/// bounded well below it by the sandbox's input limits).
pub const MAX_FRAME: usize = 1 << 30;

/// Most tensors or specs one message carries.
pub const MAX_TENSORS: usize = 4096;

/// Most dims one tensor or spec has.
pub const MAX_RANK: usize = 64;

/// A node's request to its worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Load this ONNX model (the worker holds one).
    Load {
        /// The model file's bytes.
        model: Vec<u8>,
    },
    /// Run the loaded model on these inputs.
    Run {
        /// The inputs, checked by the node against the model's specs.
        inputs: Vec<Tensor>,
    },
    /// Generate from a language model (a `llama` worker): [`Reply::Token`]s as they are made,
    /// then [`Reply::Generated`] (or [`Reply::Failed`]).
    Generate {
        /// What to continue.
        prompt: Prompt,
        /// How to choose tokens.
        sampling: Sampling,
    },
    /// Stop the generation under way (sent while one runs; the worker checks between tokens
    /// and ends it with [`Finish::Cancelled`]).
    Cancel,
}

/// How a worker's request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The inputs do not fit the model.
    Invalid,
    /// The engine or the model could not be loaded.
    Load,
    /// The model failed while running.
    Run,
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The first frame a worker sends once its engine is up and it is confined.
    Hello {
        /// The engine (`onnxruntime`, `onnxruntime-cuda`, `tract-native`).
        engine: String,
        /// The engine's version.
        version: String,
        /// What confinement the kernel granted, in words.
        confinement: String,
    },
    /// The model loaded.
    Loaded {
        /// Its inputs.
        inputs: Vec<Spec>,
        /// Its outputs.
        outputs: Vec<Spec>,
    },
    /// The model ran.
    Outputs(Vec<Tensor>),
    /// A language model is loaded (a `llama` worker's second frame).
    LanguageModel {
        /// The context it was trained for, in tokens.
        trained_context: u32,
        /// The context this worker allocated, in tokens.
        context: u32,
        /// Tokens in its vocabulary.
        vocab: u32,
        /// Parameters.
        parameters: u64,
    },
    /// A token was made.
    Token {
        /// Its id in the vocabulary.
        id: u32,
        /// The text it releases (whole characters; empty while a character or a possible stop
        /// string is incomplete).
        text: String,
    },
    /// A generation ended.
    Generated {
        /// Tokens of the prompt as the model saw it.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// Why it ended.
        finish: Finish,
        /// Text held back until the end (released now).
        tail: String,
        /// Microseconds spent on the prompt.
        prompt_us: u64,
        /// Microseconds spent generating.
        generate_us: u64,
    },
    /// The request failed (the worker goes on).
    Failed {
        /// How.
        failure: Failure,
        /// Why, for the caller.
        message: String,
    },
}

/// A frame or message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed engine frame: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// The frame header for a payload of `len` bytes, or an error above [`MAX_FRAME`].
pub fn header(len: usize) -> Result<[u8; 4], Malformed> {
    if len > MAX_FRAME {
        return Err(Malformed(format!(
            "a frame of {len} bytes is above the limit of {MAX_FRAME}"
        )));
    }
    Ok((len as u32).to_le_bytes())
}

/// The payload length a frame header announces, checked against [`MAX_FRAME`].
pub fn payload_len(header: [u8; 4]) -> Result<usize, Malformed> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(Malformed(format!(
            "a frame of {len} bytes is above the limit of {MAX_FRAME}"
        )));
    }
    Ok(len)
}

/// A message as a frame: header and the payload `put` appends, in one buffer, for one write
/// on the pipe (the reader, waiting for it, then wakes once).
fn framed(put: impl FnOnce(&mut Vec<u8>)) -> Result<Vec<u8>, Malformed> {
    let mut out = vec![0; 4];
    put(&mut out);
    let header = header(out.len() - 4)?;
    out[..4].copy_from_slice(&header);
    Ok(out)
}

impl Request {
    /// The message's payload (without the frame header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.put(&mut out);
        out
    }

    /// The message as a frame: its length (4 bytes, big-endian), then its bytes.
    pub fn frame(&self) -> Result<Vec<u8>, Malformed> {
        framed(|out| self.put(out))
    }

    /// Appends the payload to `out`.
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Request::Load { model } => {
                out.push(1);
                put_bytes(out, model);
            }
            Request::Run { inputs } => {
                out.push(2);
                put_tensors(out, inputs);
            }
            Request::Generate { prompt, sampling } => {
                out.push(3);
                match prompt {
                    Prompt::Text(t) => {
                        out.push(0);
                        put_str(out, t);
                    }
                    Prompt::Chat(messages) => {
                        out.push(1);
                        out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
                        for m in messages {
                            put_str(out, &m.role);
                            put_str(out, &m.content);
                        }
                    }
                }
                out.extend_from_slice(&sampling.max_tokens.to_le_bytes());
                out.extend_from_slice(&sampling.temperature.to_le_bytes());
                out.extend_from_slice(&sampling.top_p.to_le_bytes());
                out.extend_from_slice(&sampling.top_k.to_le_bytes());
                out.extend_from_slice(&sampling.seed.to_le_bytes());
                out.extend_from_slice(&(sampling.stop.len() as u32).to_le_bytes());
                for s in &sampling.stop {
                    put_str(out, s);
                }
            }
            Request::Cancel => out.push(4),
        }
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Request, Malformed> {
        let mut r = Reader(payload);
        let message = match r.u8()? {
            1 => Request::Load {
                model: r.bytes()?.to_vec(),
            },
            2 => Request::Run {
                inputs: r.tensors()?,
            },
            3 => {
                let prompt = match r.u8()? {
                    0 => Prompt::Text(r.str()?),
                    1 => {
                        let n = r.count(llm::params::MAX_MESSAGES, "messages")?;
                        let mut messages = Vec::with_capacity(n.min(64));
                        for _ in 0..n {
                            messages.push(Message {
                                role: r.str()?,
                                content: r.str()?,
                            });
                        }
                        Prompt::Chat(messages)
                    }
                    k => return Err(Malformed(format!("unknown prompt kind {k}"))),
                };
                let max_tokens = r.u32()?;
                let temperature = f32::from_bits(r.u32()?);
                let top_p = f32::from_bits(r.u32()?);
                let top_k = r.u32()?;
                let seed = r.u32()?;
                let n = r.count(llm::params::MAX_STOPS, "stop strings")?;
                let stop = (0..n).map(|_| r.str()).collect::<Result<_, _>>()?;
                Request::Generate {
                    prompt,
                    sampling: Sampling {
                        max_tokens,
                        temperature,
                        top_p,
                        top_k,
                        seed,
                        stop,
                    },
                }
            }
            4 => Request::Cancel,
            t => return Err(Malformed(format!("unknown request tag {t}"))),
        };
        r.end()?;
        Ok(message)
    }
}

impl Reply {
    /// The message's payload (without the frame header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.put(&mut out);
        out
    }

    /// The message as a frame: its length (4 bytes, big-endian), then its bytes.
    pub fn frame(&self) -> Result<Vec<u8>, Malformed> {
        framed(|out| self.put(out))
    }

    /// Appends the payload to `out`.
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Hello {
                engine,
                version,
                confinement,
            } => {
                out.push(1);
                put_str(out, engine);
                put_str(out, version);
                put_str(out, confinement);
            }
            Reply::Loaded { inputs, outputs } => {
                out.push(2);
                put_specs(out, inputs);
                put_specs(out, outputs);
            }
            Reply::Outputs(tensors) => {
                out.push(3);
                put_tensors(out, tensors);
            }
            Reply::LanguageModel {
                trained_context,
                context,
                vocab,
                parameters,
            } => {
                out.push(5);
                out.extend_from_slice(&trained_context.to_le_bytes());
                out.extend_from_slice(&context.to_le_bytes());
                out.extend_from_slice(&vocab.to_le_bytes());
                out.extend_from_slice(&parameters.to_le_bytes());
            }
            Reply::Token { id, text } => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(out, text);
            }
            Reply::Generated {
                prompt_tokens,
                completion_tokens,
                finish,
                tail,
                prompt_us,
                generate_us,
            } => {
                out.push(7);
                out.extend_from_slice(&prompt_tokens.to_le_bytes());
                out.extend_from_slice(&completion_tokens.to_le_bytes());
                out.push(match finish {
                    Finish::Stop => 0,
                    Finish::Length => 1,
                    Finish::Cancelled => 2,
                });
                put_str(out, tail);
                out.extend_from_slice(&prompt_us.to_le_bytes());
                out.extend_from_slice(&generate_us.to_le_bytes());
            }
            Reply::Failed { failure, message } => {
                out.push(4);
                out.push(match failure {
                    Failure::Invalid => 0,
                    Failure::Load => 1,
                    Failure::Run => 2,
                });
                put_str(out, message);
            }
        }
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Reply, Malformed> {
        let mut r = Reader(payload);
        let message = match r.u8()? {
            1 => Reply::Hello {
                engine: r.str()?,
                version: r.str()?,
                confinement: r.str()?,
            },
            2 => Reply::Loaded {
                inputs: r.specs()?,
                outputs: r.specs()?,
            },
            3 => Reply::Outputs(r.tensors()?),
            4 => Reply::Failed {
                failure: match r.u8()? {
                    0 => Failure::Invalid,
                    1 => Failure::Load,
                    2 => Failure::Run,
                    k => return Err(Malformed(format!("unknown failure kind {k}"))),
                },
                message: r.str()?,
            },
            5 => Reply::LanguageModel {
                trained_context: r.u32()?,
                context: r.u32()?,
                vocab: r.u32()?,
                parameters: r.u64()?,
            },
            6 => Reply::Token {
                id: r.u32()?,
                text: r.str()?,
            },
            7 => Reply::Generated {
                prompt_tokens: r.u32()?,
                completion_tokens: r.u32()?,
                finish: match r.u8()? {
                    0 => Finish::Stop,
                    1 => Finish::Length,
                    2 => Finish::Cancelled,
                    k => return Err(Malformed(format!("unknown finish {k}"))),
                },
                tail: r.str()?,
                prompt_us: r.u64()?,
                generate_us: r.u64()?,
            },
            t => return Err(Malformed(format!("unknown reply tag {t}"))),
        };
        r.end()?;
        Ok(message)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_tensors(out: &mut Vec<u8>, tensors: &[Tensor]) {
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for t in tensors {
        put_str(out, &t.name);
        put_str(out, t.dtype.name());
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        put_bytes(out, &t.data);
    }
}

fn put_specs(out: &mut Vec<u8>, specs: &[Spec]) {
    out.extend_from_slice(&(specs.len() as u32).to_le_bytes());
    for s in specs {
        put_str(out, &s.name);
        put_str(out, s.dtype.name());
        out.extend_from_slice(&(s.shape.len() as u32).to_le_bytes());
        for d in &s.shape {
            match d {
                Dim::Fixed(n) => {
                    out.push(0);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Dim::Symbolic(name) => {
                    out.push(1);
                    put_str(out, name);
                }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| Malformed(format!("{n} bytes wanted, {} left", self.0.len())))?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("a string is not UTF-8".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(self.u64()?)
            .map_err(|_| Malformed("a byte string longer than memory".into()))?;
        self.take(n)
    }

    fn count(&mut self, max: usize, what: &str) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(Malformed(format!("{n} {what}, above the limit of {max}")));
        }
        Ok(n)
    }

    fn dtype(&mut self) -> Result<DType, Malformed> {
        let name = self.str()?;
        DType::from_name(&name).ok_or_else(|| Malformed(format!("unknown dtype {name:?}")))
    }

    fn tensors(&mut self) -> Result<Vec<Tensor>, Malformed> {
        let n = self.count(MAX_TENSORS, "tensors")?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = self.str()?;
            let dtype = self.dtype()?;
            let rank = self.count(MAX_RANK, "dims")?;
            let shape = (0..rank).map(|_| self.u64()).collect::<Result<_, _>>()?;
            let data = self.bytes()?.to_vec();
            out.push(Tensor {
                name,
                dtype,
                shape,
                data,
            });
        }
        Ok(out)
    }

    fn specs(&mut self) -> Result<Vec<Spec>, Malformed> {
        let n = self.count(MAX_TENSORS, "specs")?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = self.str()?;
            let dtype = self.dtype()?;
            let rank = self.count(MAX_RANK, "dims")?;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(match self.u8()? {
                    0 => Dim::Fixed(self.u64()?),
                    1 => Dim::Symbolic(self.str()?),
                    k => return Err(Malformed(format!("unknown dim kind {k}"))),
                });
            }
            out.push(Spec { name, dtype, shape });
        }
        Ok(out)
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed(format!(
                "{} bytes after the message",
                self.0.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tensor() -> impl Strategy<Value = Tensor> {
        (
            "[a-z_]{0,12}",
            prop::sample::select(vec![DType::F32, DType::I64, DType::Bytes, DType::Bool]),
            prop::collection::vec(0u64..1 << 40, 0..5),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(name, dtype, shape, data)| Tensor {
                name,
                dtype,
                shape,
                data,
            })
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            "[a-z_]{0,12}",
            prop::collection::vec(
                prop_oneof![
                    any::<u64>().prop_map(Dim::Fixed),
                    "[a-z]{0,6}".prop_map(Dim::Symbolic)
                ],
                0..5,
            ),
        )
            .prop_map(|(name, shape)| Spec {
                name,
                dtype: DType::F16,
                shape,
            })
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            ("\\PC{0,8}", "\\PC{0,8}", "\\PC{0,8}").prop_map(|(engine, version, confinement)| {
                Reply::Hello {
                    engine,
                    version,
                    confinement,
                }
            }),
            (
                prop::collection::vec(spec(), 0..4),
                prop::collection::vec(spec(), 0..4)
            )
                .prop_map(|(inputs, outputs)| Reply::Loaded { inputs, outputs }),
            prop::collection::vec(tensor(), 0..4).prop_map(Reply::Outputs),
            (
                prop::sample::select(vec![Failure::Invalid, Failure::Load, Failure::Run]),
                "\\PC{0,16}"
            )
                .prop_map(|(failure, message)| Reply::Failed { failure, message }),
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
                |(trained_context, context, vocab, parameters)| Reply::LanguageModel {
                    trained_context,
                    context,
                    vocab,
                    parameters,
                }
            ),
            (any::<u32>(), "\\PC{0,8}").prop_map(|(id, text)| Reply::Token { id, text }),
            (
                any::<u32>(),
                any::<u32>(),
                prop::sample::select(vec![Finish::Stop, Finish::Length, Finish::Cancelled]),
                "\\PC{0,8}",
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(
                    |(prompt_tokens, completion_tokens, finish, tail, prompt_us, generate_us)| {
                        Reply::Generated {
                            prompt_tokens,
                            completion_tokens,
                            finish,
                            tail,
                            prompt_us,
                            generate_us,
                        }
                    }
                ),
        ]
    }

    fn generate() -> impl Strategy<Value = Request> {
        (
            prop_oneof![
                "\\PC{0,16}".prop_map(Prompt::Text),
                prop::collection::vec(("[a-z]{0,9}", "\\PC{0,16}"), 0..4).prop_map(|m| {
                    Prompt::Chat(
                        m.into_iter()
                            .map(|(role, content)| Message { role, content })
                            .collect(),
                    )
                }),
            ],
            (
                any::<u32>(),
                any::<f32>(),
                any::<f32>(),
                any::<u32>(),
                any::<u32>(),
            ),
            prop::collection::vec("\\PC{0,6}", 0..4),
        )
            .prop_map(
                |(prompt, (max_tokens, temperature, top_p, top_k, seed), stop)| Request::Generate {
                    prompt,
                    sampling: Sampling {
                        max_tokens,
                        temperature,
                        top_p,
                        top_k,
                        seed,
                        stop,
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn replies_round_trip(r in reply()) {
            let framed = r.frame().expect("a small frame");
            prop_assert_eq!(payload_len(framed[..4].try_into().expect("4 bytes")), Ok(framed.len() - 4));
            prop_assert_eq!(Reply::decode(&framed[4..]), Ok(r));
        }

        #[test]
        fn requests_round_trip(inputs in prop::collection::vec(tensor(), 0..4), model in prop::collection::vec(any::<u8>(), 0..64)) {
            let run = Request::Run { inputs };
            let framed = run.frame().expect("a small frame");
            prop_assert_eq!(&framed[4..], &run.encode()[..]);
            prop_assert_eq!(Request::decode(&run.encode()), Ok(run));
            prop_assert_eq!(payload_len(framed[..4].try_into().expect("4 bytes")), Ok(framed.len() - 4));
            let load = Request::Load { model };
            prop_assert_eq!(Request::decode(&load.encode()), Ok(load));
            prop_assert_eq!(Request::decode(&Request::Cancel.encode()), Ok(Request::Cancel));
        }

        #[test]
        fn generation_requests_round_trip_bit_for_bit(g in generate(), cut in any::<prop::sample::Index>()) {
            let bytes = g.encode();
            // Compared as bytes: a NaN temperature is not equal to itself.
            let back = Request::decode(&bytes).map(|r| r.encode());
            prop_assert_eq!(back, Ok(bytes.clone()));
            prop_assert!(Request::decode(&bytes[..cut.index(bytes.len())]).is_err());
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Reply::decode(&bytes);
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn every_truncation_and_extension_is_refused(r in reply(), cut in any::<prop::sample::Index>()) {
            let bytes = r.encode();
            let at = cut.index(bytes.len());
            prop_assert!(Reply::decode(&bytes[..at]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(Reply::decode(&longer).is_err());
        }
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut payload = vec![3];
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Reply::decode(&payload).is_err());
        let mut payload = vec![1];
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Request::decode(&payload).is_err());
        assert!(payload_len([0xff; 4]).is_err());
        assert_eq!(payload_len(header(12).expect("small")), Ok(12));
    }
}
