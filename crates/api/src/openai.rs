//! The OpenAI-compatible routes for language models: `POST /v1/completions` and
//! `POST /v1/chat/completions`, answered whole or streamed as server-sent events (as Ollama,
//! vLLM and llama.cpp's server do), and `GET /v1/models`.
//!
//! Requests are decoded leniently where clients differ (a `prompt` or `stop` may be a string or
//! a list of one; a message's `content` a string or a list of text parts; fields this node does
//! not use, such as `user` or `presence_penalty`, are ignored) and strictly where it matters:
//! `n` other than 1, bad roles, out-of-range sampling values and over-long prompts get 400.
//! Answers carry the usual fields plus a `moxnet` object: the model id, the engine, where it
//! ran, the seed used and the time spent on the prompt and on generating.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;

/// A generation as the node runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The `model` field: a model id, or the name of a language model this node holds.
    pub model: String,
    /// What to continue.
    pub prompt: llm::Prompt,
    /// How to choose tokens (`seed` is filled in by the node when absent).
    pub sampling: llm::Sampling,
    /// The seed the caller asked for, if any.
    pub seed: Option<u32>,
    /// A chat completion (else a text completion).
    pub chat: bool,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Streamed: send a last chunk with the token counts (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Where it runs (the body's `moxnet` object: `on`, `verify`, `gpu`, as the query of
    /// `/v2/models/{id}/infer`).
    pub placement: crate::dto::InferQuery,
}

/// What a generation sends its HTTP route, in order: tokens, then one end.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// Text released by the next token(s) (whole characters; may be empty).
    Text(String),
    /// The generation ended.
    Done(Done),
    /// The generation failed after it began.
    Failed(ApiError),
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The model that ran.
    pub model_id: String,
    /// Prompt tokens as the model saw them.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Why it ended.
    pub finish: llm::Finish,
    /// The engine (`llama.cpp`).
    pub engine: String,
    /// The node that ran it (this node's id, or a provider's).
    pub ran_on: String,
    /// The seed used.
    pub seed: u32,
    /// Milliseconds on the prompt.
    pub prompt_ms: f64,
    /// Milliseconds generating.
    pub generate_ms: f64,
    /// Ran on a peer: the provider's signed account (`provider`, `result`, `output_hash`,
    /// `cost`, …), merged into the answer's `moxnet` object.
    pub remote: Option<serde_json::Map<String, Value>>,
}

impl Done {
    /// The `usage` object.
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// The `moxnet` object: where and how it ran.
    pub fn moxnet(&self) -> Value {
        let mut v = json!({
            "model_id": self.model_id,
            "engine": self.engine,
            "ran_on": self.ran_on,
            "seed": self.seed,
            "prompt_ms": self.prompt_ms,
            "generate_ms": self.generate_ms,
        });
        if let (Some(remote), Value::Object(out)) = (&self.remote, &mut v) {
            out.extend(remote.clone());
        }
        v
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct RawRequest {
    model: String,
    #[serde(default)]
    prompt: Option<OneOrMany>,
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    moxnet: Option<crate::dto::InferQuery>,
}

/// Decodes and checks a `/v1/completions` (`chat` false) or `/v1/chat/completions` body.
pub fn parse_request(body: &[u8], chat: bool) -> Result<Generation, ApiError> {
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body: {e}")))?;
    if raw.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n: one choice per request"));
    }
    let prompt = if chat {
        let messages = raw
            .messages
            .ok_or_else(|| ApiError::bad_request("messages: a chat needs its messages"))?;
        let messages = messages
            .into_iter()
            .map(|m| {
                let content = match m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t,
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            if p.kind != "text" {
                                return Err(ApiError::bad_request(format!(
                                    "messages: content of type {:?} (this node takes text)",
                                    p.kind
                                )));
                            }
                            text.push_str(&p.text.unwrap_or_default());
                        }
                        text
                    }
                };
                Ok(llm::Message {
                    role: m.role,
                    content,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        llm::Prompt::Chat(messages)
    } else {
        match raw.prompt {
            Some(OneOrMany::One(p)) => llm::Prompt::Text(p),
            Some(OneOrMany::Many(mut list)) if list.len() == 1 => {
                llm::Prompt::Text(list.pop().unwrap_or_default())
            }
            Some(OneOrMany::Many(_)) => {
                return Err(ApiError::bad_request("prompt: one prompt per request"));
            }
            None => return Err(ApiError::bad_request("prompt: a completion needs a prompt")),
        }
    };
    prompt.check().map_err(ApiError::bad_request)?;
    let defaults = llm::Sampling::default();
    let seed = raw
        .seed
        .map(|s| u32::try_from(s).map_err(|_| ApiError::bad_request("seed: 0 to 4294967295")))
        .transpose()?;
    let sampling = llm::Sampling {
        max_tokens: raw
            .max_completion_tokens
            .or(raw.max_tokens)
            .unwrap_or(llm::params::MAX_TOKENS),
        temperature: raw.temperature.unwrap_or(defaults.temperature),
        top_p: raw.top_p.unwrap_or(defaults.top_p),
        top_k: raw.top_k.unwrap_or(defaults.top_k),
        seed: seed.unwrap_or(0),
        stop: match raw.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(list)) => list,
        },
    };
    sampling.check().map_err(ApiError::bad_request)?;
    Ok(Generation {
        model: raw.model,
        prompt,
        sampling,
        seed,
        chat,
        stream: raw.stream,
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
        placement: raw.moxnet.unwrap_or_default(),
    })
}

/// Builds the JSON bodies of one generation's answer (whole or chunked).
#[derive(Debug, Clone)]
pub struct Answer {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl Answer {
    /// An answer to `g`, named `id`, made at `created` (Unix seconds).
    pub fn new(g: &Generation, id: String, created: u64) -> Answer {
        Answer {
            id: if g.chat {
                format!("chatcmpl-{id}")
            } else {
                format!("cmpl-{id}")
            },
            created,
            model: g.model.clone(),
            chat: g.chat,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    /// The whole answer.
    pub fn whole(&self, text: &str, done: &Done) -> Value {
        let choice = if self.chat {
            json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": done.finish.name(),
                "logprobs": null,
            })
        } else {
            json!({
                "index": 0,
                "text": text,
                "finish_reason": done.finish.name(),
                "logprobs": null,
            })
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": done.usage(),
            "moxnet": done.moxnet(),
        })
    }

    /// A chunk of streamed text (`first`: a chat's first chunk also names the role).
    pub fn chunk(&self, text: &str, first: bool) -> Value {
        let choice = if self.chat {
            let delta = if first {
                json!({ "role": "assistant", "content": text })
            } else {
                json!({ "content": text })
            };
            json!({ "index": 0, "delta": delta, "finish_reason": null, "logprobs": null })
        } else {
            json!({ "index": 0, "text": text, "finish_reason": null, "logprobs": null })
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The last streamed chunk: why it ended (and the usage, when asked for or always in the
    /// `moxnet` object).
    pub fn last_chunk(&self, done: &Done, include_usage: bool) -> Value {
        let choice = if self.chat {
            json!({ "index": 0, "delta": {}, "finish_reason": done.finish.name(), "logprobs": null })
        } else {
            json!({ "index": 0, "text": "", "finish_reason": done.finish.name(), "logprobs": null })
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "moxnet": done.moxnet(),
        });
        if include_usage {
            v["usage"] = done.usage();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_various_shapes_decode() -> Result<(), ApiError> {
        let g = parse_request(
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0,"seed":7,"stop":"\n","stream":true,"stream_options":{"include_usage":true},"user":"ignored","presence_penalty":0}"#,
            true,
        )?;
        assert_eq!(
            g.prompt,
            llm::Prompt::Chat(vec![
                llm::Message {
                    role: "system".into(),
                    content: "be brief".into()
                },
                llm::Message {
                    role: "user".into(),
                    content: "hi".into()
                },
            ])
        );
        assert!(g.sampling.is_greedy() && g.stream && g.include_usage);
        assert_eq!(
            (g.seed, g.sampling.stop.clone()),
            (Some(7), vec!["\n".to_string()])
        );
        let g = parse_request(br#"{"model":"m","prompt":["Once"],"max_tokens":5}"#, false)?;
        assert_eq!(g.prompt, llm::Prompt::Text("Once".into()));
        assert_eq!(g.sampling.max_tokens, 5);
        Ok(())
    }

    #[test]
    fn what_cannot_be_served_is_a_bad_request() {
        for (body, chat, says) in [
            (r#"{"model":"m","prompt":"x","n":2}"#, false, "n:"),
            (r#"{"model":"m","prompt":["a","b"]}"#, false, "one prompt"),
            (r#"{"model":"m"}"#, false, "needs a prompt"),
            (
                r#"{"model":"m","messages":[]}"#,
                true,
                "at least one message",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                true,
                "role",
            ),
            (
                r#"{"model":"m","prompt":"x","temperature":9}"#,
                false,
                "temperature",
            ),
            (r#"{"model":"m","prompt":"x","top_p":0}"#, false, "top_p"),
            (
                r#"{"model":"m","prompt":"x","max_tokens":0}"#,
                false,
                "max_tokens",
            ),
            (r#"{"model":"m","prompt":"x","seed":-1}"#, false, "seed"),
            (
                r#"{"model":"m","prompt":"x","stop":["a","b","c","d","e"]}"#,
                false,
                "stop",
            ),
            (r#"{"prompt":"x"}"#, false, "model"),
        ] {
            let e = parse_request(body.as_bytes(), chat).err();
            assert!(
                e.as_ref()
                    .is_some_and(|e| e.status.as_u16() == 400 && e.message.contains(says)),
                "{body}: {e:?}"
            );
        }
    }
}
