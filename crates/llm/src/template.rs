//! Chat templates as their authors wrote them: the Jinja template a GGUF file carries
//! (`tokenizer.chat_template`), rendered the way Hugging Face's `transformers` and
//! llama-cpp-python render it.
//!
//! llama.cpp's own template engine recognises a template by its markers and renders a built-in
//! copy of that family, so what a template says beyond the markers is lost: SmolLM2's, for one,
//! opens every chat without a system message with its default one, and llama.cpp's `chatml`
//! leaves it out. This renders the template itself with minijinja:
//!
//! - the environment `transformers` uses: blocks trimmed (`trim_blocks`, `lstrip_blocks`),
//!   `messages`, `add_generation_prompt`, `bos_token` and `eos_token` in the context, and
//!   `raise_exception(message)`;
//! - the Python string and dict methods templates call (`strip`, `startswith`, `split`, `items`,
//!   `get`, … see [`python_method`]);
//! - the template is attacker input: minijinja has no I/O and runs no host code, and a render
//!   stops after [`FUEL`] instructions or once its output passes [`MAX_OUTPUT`] bytes (one
//!   value it builds along the way is at most minijinja's own bound, 100 MB for a repeated
//!   string; the worker's memory limit is the last word).
//!
//! A template that refuses the chat (`raise_exception`) is [`TemplateError::Refused`]; one
//! this cannot render (a function or method it lacks, out of fuel) is
//! [`TemplateError::Failed`], and the caller falls back to llama.cpp's engine.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, context};
use std::sync::{Arc, Mutex, PoisonError};

use crate::Message;

/// The most template instructions one render runs (a chat of 100 messages takes about 10,000).
pub const FUEL: u64 = 1_000_000;

/// The longest rendered chat, in bytes (the context bounds the prompt long before this).
pub const MAX_OUTPUT: usize = 4 << 20;

/// Why a chat was not rendered.
#[derive(Debug)]
pub enum TemplateError {
    /// The template refused the chat (`raise_exception`, e.g. roles out of order): the model's
    /// authors say it is not a chat this model takes.
    Refused(String),
    /// The template could not be rendered here: a syntax error, a function or method this does
    /// not have, out of fuel, too long.
    Failed(Error),
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Refused(m) => write!(f, "the chat template refuses this chat: {m}"),
            TemplateError::Failed(e) => write!(f, "cannot render the chat template: {e:#}"),
        }
    }
}

impl std::error::Error for TemplateError {}

impl From<Error> for TemplateError {
    fn from(e: Error) -> TemplateError {
        TemplateError::Failed(e)
    }
}

/// Renders `messages` with `template`, the assistant's turn opened.
pub fn render(
    template: &str,
    messages: &[Message],
    bos: &str,
    eos: &str,
) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(python_method);
    let raised = Arc::new(Mutex::new(None));
    let said = raised.clone();
    env.add_function(
        "raise_exception",
        move |message: String| -> Result<Value, Error> {
            let error = Error::new(ErrorKind::InvalidOperation, message.clone());
            *said.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
            Err(error)
        },
    );
    let template = env.template_from_str(template)?;
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| context! { role => m.role, content => m.content })
        .collect();
    let mut out = Bounded(Vec::new());
    let context = context! {
        messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    };
    if let Err(e) = template.render_captured_to(context, &mut out) {
        if let Some(message) = raised.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(TemplateError::Refused(message));
        }
        return Err(TemplateError::Failed(match e.kind() {
            ErrorKind::WriteFailure => Error::new(
                ErrorKind::InvalidOperation,
                format!("the rendered chat passes {MAX_OUTPUT} bytes"),
            ),
            _ => e,
        }));
    }
    String::from_utf8(out.0).map_err(|_| {
        TemplateError::Failed(Error::new(
            ErrorKind::InvalidOperation,
            "the rendered chat is not UTF-8",
        ))
    })
}

/// A rendered chat to hand to a tokenizer that adds the model's BOS token itself (when
/// `tokenizer_adds_bos`): without the `bos` a template wrote first (Llama 3's and Mistral's
/// start with `{{ bos_token }}`), so that the prompt holds it once, as `transformers` tokenizes
/// a rendered chat.
pub fn without_bos<'c>(chat: &'c str, bos: &str, tokenizer_adds_bos: bool) -> &'c str {
    match chat.strip_prefix(bos) {
        Some(rest) if tokenizer_adds_bos && !bos.is_empty() => rest,
        _ => chat,
    }
}

/// The rendered chat, refusing to grow past [`MAX_OUTPUT`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("the rendered chat is too long"));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Python methods chat templates call on strings (`strip`, `lstrip`, `rstrip`, `startswith`,
/// `endswith`, `split`, `replace`, `upper`, `lower`, `title`, `capitalize`) and on maps
/// (`items`, `keys`, `values`, `get`), as Python defines them.
pub fn python_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let unknown = || Error::from(ErrorKind::UnknownMethod);
    if let Some(s) = value.as_str() {
        let arg = |i: usize| -> Result<Option<&str>, Error> {
            match args.get(i) {
                None => Ok(None),
                Some(v) if v.is_none() => Ok(None),
                Some(v) => v.as_str().map(Some).ok_or_else(|| {
                    Error::new(ErrorKind::InvalidOperation, "expected a string argument")
                }),
            }
        };
        let chars =
            |set: Option<&str>| -> Vec<char> { set.map_or(vec![], |c| c.chars().collect()) };
        let strip = |c: char, set: &[char]| {
            if set.is_empty() {
                c.is_whitespace()
            } else {
                set.contains(&c)
            }
        };
        return Ok(match method {
            "strip" => {
                let set = chars(arg(0)?);
                Value::from(s.trim_matches(|c| strip(c, &set)))
            }
            "lstrip" => {
                let set = chars(arg(0)?);
                Value::from(s.trim_start_matches(|c| strip(c, &set)))
            }
            "rstrip" => {
                let set = chars(arg(0)?);
                Value::from(s.trim_end_matches(|c| strip(c, &set)))
            }
            "startswith" => Value::from(arg(0)?.is_some_and(|p| s.starts_with(p))),
            "endswith" => Value::from(arg(0)?.is_some_and(|p| s.ends_with(p))),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "title" => Value::from(title(s)),
            "capitalize" => {
                let mut chars = s.chars();
                Value::from(match chars.next() {
                    Some(first) => first
                        .to_uppercase()
                        .chain(chars.flat_map(char::to_lowercase))
                        .collect(),
                    None => String::new(),
                })
            }
            "replace" => match (arg(0)?, arg(1)?) {
                (Some(from), Some(to)) => Value::from(s.replace(from, to)),
                _ => return Err(Error::new(ErrorKind::MissingArgument, "replace(old, new)")),
            },
            "split" => Value::from(match arg(0)? {
                Some("") => {
                    return Err(Error::new(ErrorKind::InvalidOperation, "empty separator"));
                }
                Some(sep) => s.split(sep).map(Value::from).collect::<Vec<_>>(),
                None => s.split_whitespace().map(Value::from).collect::<Vec<_>>(),
            }),
            _ => return Err(unknown()),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => Ok(Value::from(
                value
                    .try_iter()?
                    .map(|k| {
                        let v = value.get_item(&k)?;
                        Ok(Value::from(vec![k, v]))
                    })
                    .collect::<Result<Vec<_>, Error>>()?,
            )),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => Ok(Value::from(
                value
                    .try_iter()?
                    .map(|k| value.get_item(&k))
                    .collect::<Result<Vec<_>, Error>>()?,
            )),
            "get" => {
                let key = args
                    .first()
                    .ok_or_else(|| Error::from(ErrorKind::MissingArgument))?;
                let found = value.get_item(key)?;
                Ok(if found.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    found
                })
            }
            _ => Err(unknown()),
        };
    }
    Err(unknown())
}

/// Python's `str.title`: each run of letters starts upper case, the rest lower case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_word = false;
    for c in s.chars() {
        if in_word {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        in_word = c.is_alphabetic();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF file carries it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn user(content: &str) -> Message {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }

    #[test]
    fn smollm2_opens_a_chat_without_a_system_message_with_its_default_one() {
        // What llama-cpp-python's Jinja2ChatFormatter renders for the same chat.
        assert_eq!(
            render(SMOLLM2, &[user("What is 2+2?")], "", "<|im_end|>").expect("render"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let system = Message {
            role: "system".into(),
            content: "Be brief.".into(),
        };
        assert_eq!(
            render(SMOLLM2, &[system, user("Hi")], "", "").expect("render"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    /// Expected outputs are Python jinja2's (`ImmutableSandboxedEnvironment(trim_blocks=True,
    /// lstrip_blocks=True)`, as `transformers` and llama-cpp-python set it up).
    #[test]
    fn blocks_are_trimmed_and_python_methods_work_as_in_transformers() {
        let template = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.content.strip().startswith('x') %}\n[{{ m.role.upper() }}:{{ m.content.strip() | length }}]\n  {% endif %}\n{% endfor %}\n{{ 'a, b ,c'.split(',') | map('trim') | join('|') }}{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 7) }}";
        assert_eq!(
            render(template, &[user("  xyz "), user("no")], "<s>", "").expect("render"),
            "<s>\n[USER:3]\na|b|c17"
        );
        assert_eq!(
            render(
                "{{ 'hello  world'.title() }}|{{ 'ab'.capitalize() }}|{{ '--a--'.strip('-') }}",
                &[],
                "",
                ""
            )
            .expect("render"),
            "Hello  World|Ab|a"
        );
    }

    #[test]
    fn a_bos_the_template_writes_is_left_to_a_tokenizer_that_adds_it() {
        let chat = render(
            "{{ bos_token }}[{{ messages[0].content }}]",
            &[user("hi")],
            "<s>",
            "",
        )
        .expect("render");
        assert_eq!(without_bos(&chat, "<s>", true), "[hi]");
        assert_eq!(without_bos(&chat, "<s>", false), "<s>[hi]");
        assert_eq!(without_bos("[hi]", "<s>", true), "[hi]");
        assert_eq!(without_bos("[hi]", "", true), "[hi]");
    }

    #[test]
    fn a_hostile_template_is_stopped_and_a_template_that_raises_is_an_error() {
        let endless =
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}";
        let e = render(endless, &[], "", "").expect_err("endless");
        assert!(
            matches!(&e, TemplateError::Failed(e) if e.kind() == ErrorKind::OutOfFuel),
            "{e}"
        );
        let huge = "{% for i in range(100) %}{{ 'x' * 100000 }}{% endfor %}";
        let e = render(huge, &[], "", "").expect_err("huge");
        assert!(e.to_string().contains("passes"), "{e}");
        assert_eq!(
            render(
                "{% for i in range(10) %}{{ 'x' * 100000 }}{% endfor %}",
                &[],
                "",
                ""
            )
            .expect("under the bound")
            .len(),
            1_000_000
        );
        let raises = "{{ raise_exception('roles must alternate') }}";
        let e = render(raises, &[user("hi")], "", "").expect_err("raises");
        assert!(
            matches!(&e, TemplateError::Refused(m) if m == "roles must alternate"),
            "{e}"
        );
        let e = render("{{ messages[0].content.zfill(3) }}", &[user("1")], "", "")
            .expect_err("a method it lacks");
        assert!(matches!(e, TemplateError::Failed(_)), "{e}");
    }
}
