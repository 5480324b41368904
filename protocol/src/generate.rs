//! Generation between peers (`/moxnet/generate/1`): a caller asks a provider to run a language
//! model and the text streams back as it is made. Byte-level spec: `docs/protocol.md` §11.5.
//!
//! The call reuses the inference call's signed messages, with tokens as the unit of account:
//! the caller sends an [`InferCall`](crate::compute::InferCall) whose `input` is an encoded
//! [`GenerateInput`] and whose signed request's `max_fuel` is the most tokens (prompt and
//! generated) it pays for, and `max_price_per_mfuel` the highest price per million tokens. The
//! provider answers with [`GenerateFrame::Text`] frames as tokens come, then one
//! [`GenerateFrame::End`] that carries an [`InferReply`]: with status ok, a signed
//! [`InferResult`](crate::compute::InferResult) whose `output_hash` is the BLAKE3 of the
//! encoded [`GenerateOutput`] sent beside it (the whole text, why it ended, and the prompt and
//! generated token counts: the signature covers them through the hash), whose `fuel` is the sum
//! of the two counts and whose `backend` is the engine (`llama.cpp`). With a fixed seed and the same engine the output is
//! the same, so two providers' output hashes can be compared exactly.

use crate::DecodeError;
use crate::Object;
use crate::cbor::{MapReader, Value, as_f64, as_list, as_text, as_u64};
use crate::compute::{InferReply, MAX_INFER_OUTPUT_BYTES};

/// Version of the generation messages.
pub const GENERATE_VERSION: u64 = 1;
/// The most bytes of prompt text, or of all messages together.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// The most chat messages.
pub const MAX_MESSAGES: usize = 1024;
/// The most stop strings.
pub const MAX_STOPS: usize = 4;
/// The most bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 256;
/// Largest encoded [`GenerateInput`].
pub const MAX_GENERATE_INPUT_BYTES: usize = MAX_PROMPT_BYTES + 64 * 1024;
/// The most bytes of text one [`GenerateFrame::Text`] carries.
pub const MAX_TEXT_FRAME_BYTES: usize = 64 * 1024;
/// The most bytes of generated text (the whole output).
pub const MAX_GENERATED_BYTES: usize = 16 << 20;
/// Largest encoded [`GenerateOutput`].
pub const MAX_GENERATE_OUTPUT_BYTES: usize = MAX_GENERATED_BYTES + 1024;
/// Largest [`GenerateFrame`].
pub const MAX_GENERATE_FRAME_BYTES: usize = MAX_GENERATE_OUTPUT_BYTES + 16 * 1024;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What it says.
    pub content: String,
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratePrompt {
    /// Raw text (key `prompt`).
    Text(String),
    /// A conversation the model's chat template renders (key `messages`).
    Chat(Vec<ChatMessage>),
}

/// What a generation call asks for (the call's `input`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateInput {
    /// The prompt.
    pub prompt: GeneratePrompt,
    /// The most tokens to generate (at least 1).
    pub max_tokens: u32,
    /// 0 (greedy) to 2.
    pub temperature: f32,
    /// Over 0, at most 1.
    pub top_p: f32,
    /// 0: all tokens.
    pub top_k: u32,
    /// The random seed.
    pub seed: u32,
    /// Generation ends before the first of these.
    pub stop: Vec<String>,
}

fn u32_of(what: &'static str, v: Value) -> Result<u32, DecodeError> {
    u32::try_from(as_u64(what, v)?).map_err(|_| DecodeError::invalid(what, "over 2^32 - 1"))
}

fn f32_of(what: &'static str, v: Value) -> Result<f32, DecodeError> {
    let x = as_f64(what, v)?;
    let narrow = x as f32;
    if f64::from(narrow) != x || !x.is_finite() {
        return Err(DecodeError::invalid(
            what,
            "expected a finite single-precision value",
        ));
    }
    Ok(narrow)
}

impl Object for GenerateInput {
    const WHAT: &'static str = "generate input";
    const MAX_BYTES: usize = MAX_GENERATE_INPUT_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(GENERATE_VERSION)),
            (
                Value::text("max_tokens"),
                Value::Uint(u64::from(self.max_tokens)),
            ),
            (
                Value::text("temperature"),
                Value::Float(f64::from(self.temperature)),
            ),
            (Value::text("top_p"), Value::Float(f64::from(self.top_p))),
            (Value::text("top_k"), Value::Uint(u64::from(self.top_k))),
            (Value::text("seed"), Value::Uint(u64::from(self.seed))),
            (
                Value::text("stop"),
                Value::Array(self.stop.iter().map(Value::text).collect()),
            ),
        ];
        entries.push(match &self.prompt {
            GeneratePrompt::Text(t) => (Value::text("prompt"), Value::text(t)),
            GeneratePrompt::Chat(messages) => (
                Value::text("messages"),
                Value::Array(
                    messages
                        .iter()
                        .map(|m| {
                            Value::Map(vec![
                                (Value::text("role"), Value::text(&m.role)),
                                (Value::text("content"), Value::text(&m.content)),
                            ])
                        })
                        .collect(),
                ),
            ),
        });
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("generate input", v)?;
        m.version(GENERATE_VERSION)?;
        let prompt = match (m.optional("prompt"), m.optional("messages")) {
            (Some(t), None) => GeneratePrompt::Text(as_text("prompt", t, MAX_PROMPT_BYTES)?),
            (None, Some(list)) => {
                let mut bytes = 0usize;
                let messages = as_list("messages", list, MAX_MESSAGES, |v| {
                    let mut m = MapReader::new("message", v)?;
                    let message = ChatMessage {
                        role: as_text("message role", m.required("role")?, 16)?,
                        content: as_text(
                            "message content",
                            m.required("content")?,
                            MAX_PROMPT_BYTES,
                        )?,
                    };
                    m.finish()?;
                    if !matches!(message.role.as_str(), "system" | "user" | "assistant") {
                        return Err(DecodeError::invalid(
                            "message role",
                            "expected system, user or assistant",
                        ));
                    }
                    bytes += message.role.len() + message.content.len();
                    Ok(message)
                })?;
                if messages.is_empty() {
                    return Err(DecodeError::invalid("messages", "a chat needs a message"));
                }
                if bytes > MAX_PROMPT_BYTES {
                    return Err(DecodeError::TooLarge {
                        limit: MAX_PROMPT_BYTES,
                        actual: bytes,
                    });
                }
                GeneratePrompt::Chat(messages)
            }
            _ => {
                return Err(DecodeError::invalid(
                    "generate input",
                    "exactly one of `prompt` and `messages`",
                ));
            }
        };
        let input = GenerateInput {
            prompt,
            max_tokens: u32_of("max_tokens", m.required("max_tokens")?)?,
            temperature: f32_of("temperature", m.required("temperature")?)?,
            top_p: f32_of("top_p", m.required("top_p")?)?,
            top_k: u32_of("top_k", m.required("top_k")?)?,
            seed: u32_of("seed", m.required("seed")?)?,
            stop: as_list("stop", m.required("stop")?, MAX_STOPS, |s| {
                as_text("stop string", s, MAX_STOP_BYTES)
            })?,
        };
        m.finish()?;
        if input.max_tokens == 0 {
            return Err(DecodeError::invalid("max_tokens", "at least 1"));
        }
        if !(0.0..=2.0).contains(&input.temperature) {
            return Err(DecodeError::invalid("temperature", "0 to 2"));
        }
        if !(input.top_p > 0.0 && input.top_p <= 1.0) {
            return Err(DecodeError::invalid("top_p", "over 0 and at most 1"));
        }
        Ok(input)
    }
}

/// Why a generation ended, as its output states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateFinish {
    /// The model ended its turn, or a stop string was met (`"stop"`).
    Stop,
    /// `max_tokens`, the request's tokens or the context was reached (`"length"`).
    Length,
    /// The caller went away (`"cancelled"`); still booked for what ran.
    Cancelled,
}

impl GenerateFinish {
    /// Its wire name.
    pub fn name(self) -> &'static str {
        match self {
            GenerateFinish::Stop => "stop",
            GenerateFinish::Length => "length",
            GenerateFinish::Cancelled => "cancelled",
        }
    }

    fn from_name(s: &str) -> Result<Self, DecodeError> {
        Ok(match s {
            "stop" => GenerateFinish::Stop,
            "length" => GenerateFinish::Length,
            "cancelled" => GenerateFinish::Cancelled,
            other => return Err(DecodeError::invalid("finish", format!("unknown {other:?}"))),
        })
    }
}

/// What a generation produced: its BLAKE3 (encoded) is the signed result's `output_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOutput {
    /// The whole generated text, as streamed.
    pub text: String,
    /// Why it ended.
    pub finish: GenerateFinish,
    /// Tokens of the prompt as the model saw them (after its chat template).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
}

impl GenerateOutput {
    /// The fuel a generation's signed result states: prompt and generated tokens together
    /// (`None` on overflow, which no honest provider reaches).
    pub fn tokens(&self) -> Option<u64> {
        self.prompt_tokens.checked_add(self.generated_tokens)
    }
}

impl Object for GenerateOutput {
    const WHAT: &'static str = "generate output";
    const MAX_BYTES: usize = MAX_GENERATE_OUTPUT_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(GENERATE_VERSION)),
            (Value::text("text"), Value::text(&self.text)),
            (Value::text("finish"), Value::text(self.finish.name())),
            (
                Value::text("prompt_tokens"),
                Value::Uint(self.prompt_tokens),
            ),
            (
                Value::text("generated_tokens"),
                Value::Uint(self.generated_tokens),
            ),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("generate output", v)?;
        m.version(GENERATE_VERSION)?;
        let out = GenerateOutput {
            text: as_text("output text", m.required("text")?, MAX_GENERATED_BYTES)?,
            finish: GenerateFinish::from_name(&as_text("finish", m.required("finish")?, 16)?)?,
            prompt_tokens: as_u64("prompt_tokens", m.required("prompt_tokens")?)?,
            generated_tokens: as_u64("generated_tokens", m.required("generated_tokens")?)?,
        };
        m.finish()?;
        Ok(out)
    }
}

/// How long a provider took, reported beside the signed reply (not signed: timings differ from
/// run to run, the output does not).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Milliseconds on the prompt.
    pub prompt_ms: f64,
    /// Milliseconds generating.
    pub generate_ms: f64,
}

/// One frame a provider sends on a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateFrame {
    /// Text the next token(s) released (`{"v": 1, "text": …}`): whole UTF-8 characters, never
    /// a stop string.
    Text(String),
    /// The last frame (`{"v": 1, "reply": <InferReply map>, "prompt_ms", "generate_ms"}`): the
    /// provider's reply (with status ok, its `output` is the encoded [`GenerateOutput`], whose
    /// text is exactly the concatenated text frames) and its timings.
    End(InferReply, Timings),
}

impl Object for GenerateFrame {
    const WHAT: &'static str = "generate frame";
    const MAX_BYTES: usize = MAX_GENERATE_FRAME_BYTES;

    fn to_cbor(&self) -> Value {
        match self {
            GenerateFrame::Text(t) => Value::Map(vec![
                (Value::text("v"), Value::Uint(GENERATE_VERSION)),
                (Value::text("text"), Value::text(t)),
            ]),
            GenerateFrame::End(reply, t) => Value::Map(vec![
                (Value::text("v"), Value::Uint(GENERATE_VERSION)),
                (Value::text("reply"), reply.to_cbor()),
                (Value::text("prompt_ms"), Value::Float(t.prompt_ms)),
                (Value::text("generate_ms"), Value::Float(t.generate_ms)),
            ]),
        }
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("generate frame", v)?;
        m.version(GENERATE_VERSION)?;
        let frame = match m.optional("text") {
            Some(t) => GenerateFrame::Text(as_text("text frame", t, MAX_TEXT_FRAME_BYTES)?),
            None => {
                let reply = InferReply::from_cbor(m.required("reply")?)?;
                if reply
                    .output
                    .as_ref()
                    .is_some_and(|o| o.len() > MAX_GENERATE_OUTPUT_BYTES)
                {
                    return Err(DecodeError::TooLarge {
                        limit: MAX_GENERATE_OUTPUT_BYTES,
                        actual: reply.output.as_ref().map_or(0, Vec::len),
                    });
                }
                let ms = |what: &'static str, v: Value| {
                    let x = as_f64(what, v)?;
                    if x.is_finite() && x >= 0.0 {
                        Ok(x)
                    } else {
                        Err(DecodeError::invalid(
                            what,
                            "a time is finite and not negative",
                        ))
                    }
                };
                let timings = Timings {
                    prompt_ms: ms("prompt_ms", m.required("prompt_ms")?)?,
                    generate_ms: ms("generate_ms", m.required("generate_ms")?)?,
                };
                GenerateFrame::End(reply, timings)
            }
        };
        m.finish()?;
        Ok(frame)
    }
}

// A generation's output is one kind of a call's output: it fits the same bound.
const _: () = assert!(MAX_GENERATE_OUTPUT_BYTES <= MAX_INFER_OUTPUT_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::InferStatus;
    use proptest::prelude::*;

    fn input(prompt: GeneratePrompt) -> GenerateInput {
        GenerateInput {
            prompt,
            max_tokens: 64,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            seed: 7,
            stop: vec!["\n\n".into()],
        }
    }

    #[test]
    fn inputs_round_trip_and_keep_single_precision_exactly() {
        for prompt in [
            GeneratePrompt::Text("Once upon a time".into()),
            GeneratePrompt::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "Hi".into(),
                },
            ]),
        ] {
            let i = input(prompt);
            assert_eq!(GenerateInput::from_bytes(&i.to_bytes()), Ok(i));
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut no_tokens = input(GeneratePrompt::Text("x".into()));
        no_tokens.max_tokens = 0;
        let mut hot = input(GeneratePrompt::Text("x".into()));
        hot.temperature = 3.0;
        let mut zero_p = input(GeneratePrompt::Text("x".into()));
        zero_p.top_p = 0.0;
        let empty_chat = input(GeneratePrompt::Chat(vec![]));
        let bad_role = input(GeneratePrompt::Chat(vec![ChatMessage {
            role: "root".into(),
            content: "x".into(),
        }]));
        let mut stops = input(GeneratePrompt::Text("x".into()));
        stops.stop = vec!["a".into(); MAX_STOPS + 1];
        for bad in [no_tokens, hot, zero_p, empty_chat, bad_role, stops] {
            assert!(
                GenerateInput::from_bytes(&bad.to_bytes()).is_err(),
                "{bad:?}"
            );
        }
        // Both a prompt and messages, or neither.
        let mut both = input(GeneratePrompt::Text("x".into())).to_cbor();
        if let Value::Map(entries) = &mut both {
            entries.push((Value::text("messages"), Value::Array(vec![])));
        }
        assert!(GenerateInput::from_cbor(both).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let text = GenerateFrame::Text("Hello".into());
        assert_eq!(GenerateFrame::from_bytes(&text.to_bytes()), Ok(text));
        let out = GenerateOutput {
            text: "Hello".into(),
            finish: GenerateFinish::Length,
            prompt_tokens: 3,
            generated_tokens: 1,
        };
        let end = GenerateFrame::End(
            InferReply {
                status: InferStatus::Ok,
                result: Some(vec![1, 2]),
                output: Some(out.to_bytes()),
                message: None,
                cheque: None,
            },
            Timings {
                prompt_ms: 1.5,
                generate_ms: 20.25,
            },
        );
        assert_eq!(GenerateFrame::from_bytes(&end.to_bytes()), Ok(end));
        let busy = GenerateFrame::End(
            InferReply::error(InferStatus::Busy, "busy"),
            Timings::default(),
        );
        assert_eq!(GenerateFrame::from_bytes(&busy.to_bytes()), Ok(busy));
        assert_eq!(GenerateOutput::from_bytes(&out.to_bytes()), Ok(out));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = GenerateInput::from_bytes(&bytes);
            let _ = GenerateFrame::from_bytes(&bytes);
            let _ = GenerateOutput::from_bytes(&bytes);
        }

        #[test]
        fn any_text_frame_round_trips(text in ".{0,200}") {
            let frame = GenerateFrame::Text(text);
            prop_assert_eq!(GenerateFrame::from_bytes(&frame.to_bytes()), Ok(frame));
        }
    }
}
