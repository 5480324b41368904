//! What a generation is asked for: the prompt (text, or chat messages the model's template
//! turns into text) and the sampling parameters, with the bounds every entry point checks.

/// The most bytes of prompt text, or of all messages together: 1 MiB.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// The most messages in a chat.
pub const MAX_MESSAGES: usize = 1024;
/// The most stop strings (as OpenAI's API).
pub const MAX_STOPS: usize = 4;
/// The most bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 256;
/// The most tokens one generation may ask for.
pub const MAX_TOKENS: u32 = 1 << 20;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What it says.
    pub content: String,
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Raw text, tokenised as it is (with the model's beginning-of-text token).
    Text(String),
    /// A conversation, rendered with the model's chat template, ending with the assistant's
    /// turn opened.
    Chat(Vec<Message>),
}

impl Prompt {
    /// Checks the prompt against the bounds above.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Prompt::Text(t) if t.len() > MAX_PROMPT_BYTES => Err(format!(
                "the prompt is {} bytes, over the {MAX_PROMPT_BYTES}-byte limit",
                t.len()
            )),
            Prompt::Text(_) => Ok(()),
            Prompt::Chat(m) if m.is_empty() => Err("a chat needs at least one message".into()),
            Prompt::Chat(m) if m.len() > MAX_MESSAGES => Err(format!(
                "{} messages, over the limit of {MAX_MESSAGES}",
                m.len()
            )),
            Prompt::Chat(m) => {
                let bytes: usize = m.iter().map(|m| m.role.len() + m.content.len()).sum();
                if bytes > MAX_PROMPT_BYTES {
                    return Err(format!(
                        "the messages are {bytes} bytes, over the {MAX_PROMPT_BYTES}-byte limit"
                    ));
                }
                match m
                    .iter()
                    .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
                {
                    Some(bad) => Err(format!(
                        "message role {:?} (use system, user or assistant)",
                        bad.role
                    )),
                    None => Ok(()),
                }
            }
        }
    }
}

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// The most tokens to generate.
    pub max_tokens: u32,
    /// 0 picks the likeliest token every time (greedy); up to 2.
    pub temperature: f32,
    /// Nucleus sampling: keep the likeliest tokens whose probabilities add up to this (0 to 1].
    pub top_p: f32,
    /// Keep only the `top_k` likeliest tokens (0: all).
    pub top_k: u32,
    /// The random seed: with the same seed, engine and model, the same output.
    pub seed: u32,
    /// Generation ends before the first of these (not shown).
    pub stop: Vec<String>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_tokens: 256,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl Sampling {
    /// Checks the parameters against the bounds above.
    pub fn check(&self) -> Result<(), String> {
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS {
            return Err(format!("max_tokens is 1 to {MAX_TOKENS}"));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("temperature is 0 to 2".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p is over 0 and at most 1".into());
        }
        if self.stop.len() > MAX_STOPS {
            return Err(format!("at most {MAX_STOPS} stop strings"));
        }
        if self.stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(format!("a stop string is at most {MAX_STOP_BYTES} bytes"));
        }
        Ok(())
    }

    /// Whether every step takes the likeliest token (so the seed does not matter).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn, or a stop string was met.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// The caller went away.
    Cancelled,
}

impl Finish {
    /// The name OpenAI's API uses (`finish_reason`).
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}
