//! Model packages on disk: a folder with `moxnet.toml` and its files, or a bare `.onnx` or
//! `.gguf` file (a language model: runtime `gguf`).
//!
//! ```toml
//! [package]
//! name = "minilm-l6"
//! version = "1.0.0"
//! description = "Sentence embeddings"
//! license = "Apache-2.0"
//! tags = ["text", "embeddings"]
//! authors = ["Ada Lovelace"]
//! # parent = "<model id this was fine-tuned from>"
//!
//! [runtime]
//! kind = "onnx"
//! entry = "model.onnx"
//! memory_mib = 512
//!
//! [[interface.inputs]]
//! name = "text"
//! dtype = "BYTES"
//! shape = ["batch"]
//!
//! [[interface.outputs]]
//! name = "embedding"
//! dtype = "FP32"
//! shape = ["batch", 384]
//!
//! [[datasets]]
//! hash = "<blob hash>"
//! description = "What it is"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protocol::credits::Royalty;
use protocol::{
    BlobHash, DType, DatasetRef, Dim, FileEntry, Interface, Manifest, ModelId, NodeId, Runtime,
    TensorSpec,
};
use serde::Deserialize;

/// The package description file's name.
pub const PACKAGE_FILE: &str = "moxnet.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageToml {
    package: PackageSection,
    #[serde(default)]
    runtime: Option<RuntimeSection>,
    #[serde(default)]
    interface: InterfaceSection,
    #[serde(default)]
    datasets: Vec<DatasetSection>,
    #[serde(default)]
    royalty: Option<RoyaltySection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoyaltySection {
    /// The share of every call's cost, in percent (0.01 to 100, two decimals at most).
    percent: f64,
    /// Who is paid: a node id (hex) or peer id; the publishing node if left out.
    #[serde(default)]
    payee: Option<String>,
}

/// A royalty as `moxnet.toml` states it: the payee may be left to the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoyaltySpec {
    /// Who is paid; `None`: the node that publishes.
    pub payee: Option<NodeId>,
    /// The share, basis points.
    pub bps: u16,
}

impl RoyaltySpec {
    /// The manifest's royalty, with the publisher `me` as the payee if none was named.
    pub fn resolve(self, me: NodeId) -> Royalty {
        Royalty {
            payee: self.payee.unwrap_or(me),
            bps: self.bps,
        }
    }
}

/// A node id written as hex (as `moxnet` shows authors) or as a libp2p peer id.
pub fn parse_node_id(s: &str) -> Result<NodeId> {
    if s.len() == 64 {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| anyhow::anyhow!("{s:?} is not a node id: {e}"))?;
        return NodeId::from_bytes(bytes).map_err(|e| anyhow::anyhow!("{s:?}: {e}"));
    }
    let peer: net::libp2p::PeerId = s.parse().map_err(|e| {
        anyhow::anyhow!("{s:?} is neither a node id (64 hex digits) nor a peer id: {e}")
    })?;
    net::node_id_of(&peer).ok_or_else(|| anyhow::anyhow!("peer id {s} has no ed25519 key in it"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageSection {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    license: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    parent: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeSection {
    kind: String,
    #[serde(default)]
    entry: Option<String>,
    #[serde(default)]
    guest: Option<String>,
    #[serde(default)]
    memory_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceSection {
    #[serde(default)]
    inputs: Vec<TensorSection>,
    #[serde(default)]
    outputs: Vec<TensorSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorSection {
    name: String,
    dtype: String,
    shape: Vec<DimSection>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DimSection {
    Fixed(u64),
    Named(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetSection {
    hash: String,
    description: String,
}

/// A package read from disk, before its files are imported.
#[derive(Debug)]
pub struct Package {
    /// The files to include: (relative path, full path).
    pub files: Vec<(String, PathBuf)>,
    /// The manifest, with `files` and `snapshots` still empty.
    pub manifest: Manifest,
    /// The royalty asked for, resolved at publish (the payee may be the publisher).
    pub royalty: Option<RoyaltySpec>,
}

/// Reads a package folder or a bare `.onnx` or `.gguf` file.
pub fn read(path: &Path) -> Result<Package> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
    if meta.is_file() {
        return read_bare(path);
    }
    let toml_path = path.join(PACKAGE_FILE);
    let text = std::fs::read_to_string(&toml_path).with_context(|| {
        format!(
            "{} has no {PACKAGE_FILE}; a package folder needs one (see `docs/cli.md`)",
            path.display()
        )
    })?;
    let (manifest, royalty) =
        parse(&text).with_context(|| format!("in {}", toml_path.display()))?;
    let files = store::walk(path)
        .with_context(|| format!("listing {}", path.display()))?
        .into_iter()
        .filter(|(rel, _)| !rel.split('/').any(|c| c.starts_with('.')))
        .collect::<Vec<_>>();
    if let Some(entry) = &manifest.runtime.entry
        && !files.iter().any(|(rel, _)| rel == entry)
    {
        bail!(
            "runtime entry {entry:?} named in {} is not a file of the package",
            toml_path.display()
        );
    }
    Ok(Package {
        files,
        manifest,
        royalty,
    })
}

/// Parses `moxnet.toml` text into a manifest (without files). Errors point at the line.
pub fn parse_toml(text: &str) -> Result<Manifest> {
    parse(text).map(|(manifest, _)| manifest)
}

/// Parses `moxnet.toml` text into a manifest (without files) and the royalty it asks for.
pub fn parse(text: &str) -> Result<(Manifest, Option<RoyaltySpec>)> {
    let raw: PackageToml = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let royalty = raw
        .royalty
        .map(|r| {
            let bps = r.percent * 100.0;
            if !(1.0..=10_000.0).contains(&bps) || (bps - bps.round()).abs() > 1e-6 {
                bail!(
                    "royalty.percent {} must be within 0.01 and 100, with two decimals at most",
                    r.percent
                );
            }
            let payee = r
                .payee
                .map(|p| parse_node_id(&p).context("royalty.payee"))
                .transpose()?;
            Ok(RoyaltySpec {
                payee,
                bps: bps.round() as u16,
            })
        })
        .transpose()?;
    let p = raw.package;
    protocol::validate_name(&p.name)
        .map_err(|e| anyhow::anyhow!("package.name {:?}: {e}", p.name))?;
    let parent = p
        .parent
        .map(|s| {
            s.parse::<ModelId>()
                .map_err(|e| anyhow::anyhow!("package.parent {s:?}: {e}"))
        })
        .transpose()?;
    let runtime = match raw.runtime {
        None => Runtime::default(),
        Some(r) => Runtime {
            kind: r.kind,
            entry: r.entry,
            guest: r
                .guest
                .map(|g| {
                    g.parse::<BlobHash>()
                        .map_err(|e| anyhow::anyhow!("runtime.guest {g:?}: {e}"))
                })
                .transpose()?,
            memory_mib: r.memory_mib,
            language_model: None,
        },
    };
    if let Some(entry) = &runtime.entry {
        protocol::validate_path(entry).map_err(|e| anyhow::anyhow!("runtime.entry: {e}"))?;
    }
    let specs = |side: &str, list: Vec<TensorSection>| -> Result<Vec<TensorSpec>> {
        list.into_iter()
            .map(|t| {
                let dtype = DType::parse(&t.dtype).ok_or_else(|| {
                    anyhow::anyhow!(
                        "interface.{side} {:?}: unknown dtype {:?} (use FP32, FP16, INT64, INT32, UINT8, BOOL, BYTES, …)",
                        t.name,
                        t.dtype
                    )
                })?;
                let shape = t
                    .shape
                    .into_iter()
                    .map(|d| match d {
                        DimSection::Fixed(n) => Dim::Fixed(n),
                        DimSection::Named(s) => Dim::Symbolic(s),
                    })
                    .collect();
                Ok(TensorSpec {
                    name: t.name,
                    dtype,
                    shape,
                })
            })
            .collect()
    };
    let interface = Interface {
        inputs: specs("inputs", raw.interface.inputs)?,
        outputs: specs("outputs", raw.interface.outputs)?,
    };
    let datasets = raw
        .datasets
        .into_iter()
        .map(|d| {
            Ok(DatasetRef {
                hash: d
                    .hash
                    .parse()
                    .map_err(|e| anyhow::anyhow!("datasets.hash {:?}: {e}", d.hash))?,
                description: d.description,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Manifest {
        name: p.name,
        version: p.version,
        description: p.description,
        license: p.license,
        tags: p.tags,
        authors: p.authors,
        interface,
        runtime,
        files: Vec::<FileEntry>::new(),
        datasets,
        parent,
        snapshots: Vec::new(),
        royalty: None,
    })
    .map(|m| (m, royalty))
}

fn read_bare(path: &Path) -> Result<Package> {
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => "onnx",
        Some("gguf") => "gguf",
        _ => bail!(
            "{} is a file but not an .onnx or .gguf model; publish a folder with a {PACKAGE_FILE} instead",
            path.display()
        ),
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the model's file name is not UTF-8")?
        .to_string();
    let stem: String = path
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = stem.trim_start_matches(['.', '-']).to_string();
    let name = if name.is_empty() {
        "model".to_string()
    } else {
        name
    };
    Ok(Package {
        royalty: None,
        files: vec![(file_name.clone(), path.to_path_buf())],
        manifest: Manifest {
            name,
            version: "0.0.0".into(),
            runtime: Runtime {
                kind: kind.into(),
                entry: Some(file_name),
                guest: None,
                memory_mib: None,
                language_model: None,
            },
            ..Manifest::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_toml_points_at_the_line() {
        let text = "[package]\nname = \"ok\"\nversion = 1.0.0\n";
        let err = format!("{:#}", parse_toml(text).expect_err("malformed"));
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        let typo = "[package]\nname = \"ok\"\nversoin = \"1\"\n";
        let err = format!("{:#}", parse_toml(typo).expect_err("typo"));
        assert!(err.contains("versoin"), "{err}");
        let bad = "[package]\nname = \"../evil\"\nversion = \"1\"\n";
        assert!(parse_toml(bad).is_err());
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
[package]
name = "org/minilm-l6"
version = "1.0.0"
tags = ["text"]

[runtime]
kind = "onnx"
entry = "model.onnx"

[[interface.inputs]]
name = "text"
dtype = "BYTES"
shape = ["batch"]

[[interface.outputs]]
name = "embedding"
dtype = "fp32"
shape = ["batch", 384]
"#;
        let m = parse_toml(text).expect("parses");
        assert_eq!(m.interface.outputs[0].dtype, DType::F32);
        assert_eq!(m.interface.outputs[0].shape[1], Dim::Fixed(384));
    }
}
