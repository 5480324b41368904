//! The GGUF reader on the demo language model, SmolLM2-135M-Instruct Q4_1
//! (`python3 examples/smollm2/fetch.py` puts it in place; `scripts/test.sh` runs it).

use std::io::Read;
use std::path::PathBuf;

use llm::gguf::{self, Limits};

fn smollm2() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `python3 examples/smollm2/fetch.py`",
        path.display()
    );
    path
}

#[test]
fn the_demo_models_header_reads_as_llama_q4_1_with_a_chatml_template()
-> Result<(), Box<dyn std::error::Error>> {
    let path = smollm2();
    let len = std::fs::metadata(&path)?.len();
    let limits = Limits::default();
    let mut prefix = Vec::new();
    std::fs::File::open(&path)?
        .take(limits.max_header_bytes)
        .read_to_end(&mut prefix)?;
    let g = gguf::parse(&prefix, len, &limits)?;
    assert_eq!(g.architecture, "llama");
    assert_eq!(g.quantisation, "Q4_1");
    assert_eq!(g.context_length, 8192);
    assert_eq!(g.vocab_size, Some(49152));
    assert!(
        g.chat_template
            .as_deref()
            .is_some_and(|t| t.contains("<|im_start|>")),
        "{:?}",
        g.chat_template
    );
    // 135M parameters, give or take the tied embeddings.
    assert!(
        (100_000_000..200_000_000).contains(&g.parameters),
        "{}",
        g.parameters
    );
    let end = g.tensors.last().map(|t| g.data_offset + t.offset + t.bytes);
    assert!(end.is_some_and(|e| e <= len && len - e < 64));
    Ok(())
}

#[test]
fn the_demo_model_cut_short_is_refused_as_truncated() -> Result<(), Box<dyn std::error::Error>> {
    let path = smollm2();
    let mut prefix = Vec::new();
    std::fs::File::open(&path)?
        .take(8 << 20)
        .read_to_end(&mut prefix)?;
    // The whole header, but the file ends 1 MiB into the data.
    let e = gguf::parse(&prefix, 8 << 20, &Limits::default());
    assert!(
        e.as_ref()
            .is_err_and(|e| e.to_string().contains("lies about sizes")),
        "{e:?}"
    );
    // The file ends inside the header.
    let e = gguf::parse(&prefix[..100_000], 100_000, &Limits::default());
    assert!(matches!(e, Err(gguf::Error::Truncated { .. })), "{e:?}");
    Ok(())
}
