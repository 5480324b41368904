//! Language models in moxnet: what a node reads from, and sends about, a GGUF model.
//!
//! - [`gguf`]: the GGUF header read as attacker input, checked against [`gguf::Limits`]
//!   before anything trusts it; a package's manifest records what it finds (architecture,
//!   context length, quantisation, chat template).
//! - [`params`]: the prompt (text or chat) and sampling parameters, with their bounds.
//! - [`template`]: a chat rendered with the model's own Jinja template, as `transformers` does.
//! - [`text`]: token pieces to visible text (whole characters, cut at stop strings).

pub mod gguf;
pub mod params;
pub mod template;
pub mod text;

pub use params::{Finish, Message, Prompt, Sampling};
