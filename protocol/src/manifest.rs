//! Model packages: [`Manifest`] (signed by the author), its [`Interface`], [`Runtime`],
//! [`FileEntry`]s and [`DatasetRef`]s, and [`Collection`], the listing of a plain folder.

use std::collections::BTreeSet;

use crate::cbor::{MapReader, Value, as_list, as_text, as_u64};
use crate::{BlobHash, DecodeError, ModelId, Object, Signable};

/// Largest encoded manifest body.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Largest encoded collection (folder listing).
pub const MAX_COLLECTION_BYTES: usize = 16 << 20;
/// Most files a manifest or collection lists.
pub const MAX_FILES: usize = 100_000;
/// Longest relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest short text field (name, version, license, tag, author, tensor name).
pub const MAX_SHORT_TEXT: usize = 256;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 16 * 1024;
/// Most tags, authors, datasets, tensors per side of the interface, or dimensions.
pub const MAX_LIST: usize = 256;
/// Most snapshots a manifest links.
pub const MAX_SNAPSHOTS: usize = 10_000;
/// Largest blob this protocol handles: 1 TiB. A file, weight or folder entry stating more, or a
/// provider claiming more, is refused before anything is allocated for it. With at most
/// [`MAX_FILES`] entries, sums of sizes cannot overflow a `u64`.
pub const MAX_BLOB_BYTES: u64 = 1 << 40;

/// Manifest body version this code reads and writes.
pub const MANIFEST_VERSION: u64 = 1;
/// Collection version this code reads and writes.
pub const COLLECTION_VERSION: u64 = 1;

/// Element type of a tensor. Names are the Open Inference Protocol v2 datatype names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
    /// Variable-length byte strings (text).
    Bytes,
}

impl DType {
    const ALL: [(DType, &'static str); 14] = [
        (DType::Bool, "BOOL"),
        (DType::U8, "UINT8"),
        (DType::U16, "UINT16"),
        (DType::U32, "UINT32"),
        (DType::U64, "UINT64"),
        (DType::I8, "INT8"),
        (DType::I16, "INT16"),
        (DType::I32, "INT32"),
        (DType::I64, "INT64"),
        (DType::F16, "FP16"),
        (DType::Bf16, "BF16"),
        (DType::F32, "FP32"),
        (DType::F64, "FP64"),
        (DType::Bytes, "BYTES"),
    ];

    /// Every element type, in the order of the OIP v2 table.
    pub fn all() -> impl Iterator<Item = DType> {
        Self::ALL.iter().map(|(d, _)| *d)
    }

    /// The OIP v2 name, e.g. `FP32`.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(d, _)| *d == self)
            .map(|(_, n)| *n)
            .unwrap_or("BYTES")
    }

    /// Parses an OIP v2 name exactly as the protocol spells it (`FP32`, not `f32`).
    pub fn from_name(name: &str) -> Option<DType> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(d, _)| *d)
    }

    /// Bytes per element in the raw little-endian layout, or `None` for `BYTES` (each element
    /// there is a `u32` length and the bytes).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::Bf16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// Parses an OIP v2 name; also accepts common lowercase aliases (`f32`, `float32`, `int64`).
    pub fn parse(s: &str) -> Option<DType> {
        let upper = s.to_ascii_uppercase();
        let canonical = match upper.as_str() {
            "F16" | "FLOAT16" | "HALF" => "FP16",
            "F32" | "FLOAT32" | "FLOAT" => "FP32",
            "F64" | "FLOAT64" | "DOUBLE" => "FP64",
            "I8" => "INT8",
            "I16" => "INT16",
            "I32" => "INT32",
            "I64" => "INT64",
            "U8" => "UINT8",
            "U16" => "UINT16",
            "U32" => "UINT32",
            "U64" => "UINT64",
            "STRING" | "STR" | "TEXT" => "BYTES",
            other => other,
        };
        Self::ALL
            .iter()
            .find(|(_, n)| *n == canonical)
            .map(|(d, _)| *d)
    }
}

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A size chosen per call, named (e.g. `batch`, `sequence`).
    Symbolic(String),
}

/// A named input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, unique on its side of the interface.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; symbolic dimensions are bound per call.
    pub shape: Vec<Dim>,
}

/// What a model takes and gives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// Inputs, in the order the model expects them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order the model produces them.
    pub outputs: Vec<TensorSpec>,
}

/// Which guest runs the model, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The guest kind, e.g. `onnx` or `wasm`.
    pub kind: String,
    /// The package file the guest loads first, e.g. `model.onnx`.
    pub entry: Option<String>,
    /// The guest module, itself a content-addressed blob, when not built in.
    pub guest: Option<BlobHash>,
    /// Memory the model needs, in MiB.
    pub memory_mib: Option<u64>,
    /// For `kind = "gguf"`: what the publisher's node read from the GGUF header. A node that
    /// runs the model reads the header again and trusts only what it reads.
    pub language_model: Option<LanguageModel>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            kind: "files".into(),
            entry: None,
            guest: None,
            memory_mib: None,
            language_model: None,
        }
    }
}

/// The most bytes of a chat template a manifest carries (32 KiB).
pub const MAX_CHAT_TEMPLATE: usize = 32 * 1024;

/// A language model's facts, read from its GGUF header at publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageModel {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// The context length it was trained for, in tokens.
    pub context_length: u64,
    /// The quantisation, e.g. `Q4_1`.
    pub quantisation: String,
    /// Parameters (elements of every tensor).
    pub parameters: u64,
    /// `tokenizer.chat_template`, when the file has one (at most [`MAX_CHAT_TEMPLATE`] bytes).
    pub chat_template: Option<String>,
}

impl LanguageModel {
    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("architecture"), Value::text(&self.architecture)),
            (
                Value::text("context_length"),
                Value::Uint(self.context_length),
            ),
            (Value::text("quantisation"), Value::text(&self.quantisation)),
            (Value::text("parameters"), Value::Uint(self.parameters)),
        ];
        if let Some(t) = &self.chat_template {
            entries.push((Value::text("chat_template"), Value::text(t)));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("language model", v)?;
        let architecture = as_text(
            "language model architecture",
            m.required("architecture")?,
            MAX_SHORT_TEXT,
        )?;
        let context_length = as_u64(
            "language model context_length",
            m.required("context_length")?,
        )?;
        let quantisation = as_text(
            "language model quantisation",
            m.required("quantisation")?,
            MAX_SHORT_TEXT,
        )?;
        let parameters = as_u64("language model parameters", m.required("parameters")?)?;
        let chat_template = m
            .optional("chat_template")
            .map(|v| as_text("language model chat_template", v, MAX_CHAT_TEMPLATE))
            .transpose()?;
        m.finish()?;
        Ok(LanguageModel {
            architecture,
            context_length,
            quantisation,
            parameters,
            chat_template,
        })
    }
}

/// A file of a package or folder: where it goes and which blob holds its bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileEntry {
    /// Relative path with `/` separators; see [`validate_path`].
    pub path: String,
    /// The blob holding the bytes.
    pub hash: BlobHash,
    /// Length in bytes.
    pub size: u64,
}

/// A dataset the model was trained or evaluated on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    /// The dataset's blob (or collection) hash.
    pub hash: BlobHash,
    /// What it is.
    pub description: String,
}

/// A model package's manifest; published signed as `Signed<Manifest>`, named by [`ModelId`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    /// Package name, e.g. `minilm-l6` or `org/minilm-l6`; see [`validate_name`].
    pub name: String,
    /// Free-form version, e.g. `1.0.0`.
    pub version: String,
    /// What the model does.
    pub description: String,
    /// SPDX licence expression.
    pub license: String,
    /// Search tags.
    pub tags: Vec<String>,
    /// Human authors (the signing key is the publisher).
    pub authors: Vec<String>,
    /// Typed inputs and outputs.
    pub interface: Interface,
    /// How to run it.
    pub runtime: Runtime,
    /// Files, sorted by path, paths unique.
    pub files: Vec<FileEntry>,
    /// Datasets by hash.
    pub datasets: Vec<DatasetRef>,
    /// The model this one was fine-tuned from.
    pub parent: Option<ModelId>,
    /// Training snapshots (ids of `Signed<Snapshot>` blobs), oldest first.
    pub snapshots: Vec<BlobHash>,
    /// A share of every call's cost owed to a payee by the provider that ran it.
    pub royalty: Option<crate::credits::Royalty>,
}

/// Checks a package name: 1–128 bytes of ASCII letters, digits, `-`, `_`, `.`, and at most one
/// `/` (a namespace), not starting with `.`, `-` or `/`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("a name is 1 to 128 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(format!(
            "character {c:?} is not allowed in a name (use a-z, 0-9, - _ . /)"
        ));
    }
    if name.starts_with(['.', '-', '/']) || name.ends_with('/') {
        return Err("a name starts and ends with a letter or digit".into());
    }
    if name.matches('/').count() > 1 {
        return Err("a name has at most one `/` (namespace/name)".into());
    }
    Ok(())
}

/// Checks a relative path from an untrusted manifest or collection before anything is written
/// under it: `/`-separated, no empty, `.` or `..` components, no leading `/`, no `\` or NUL.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("a path is 1 to {MAX_PATH_BYTES} bytes"));
    }
    if path.contains(['\\', '\0']) {
        return Err(format!("path {path:?} contains a backslash or NUL"));
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(format!(
                "path {path:?} must be relative, without empty, `.` or `..` components"
            ));
        }
    }
    Ok(())
}

impl FileEntry {
    pub(crate) fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("path"), Value::text(&self.path)),
            (Value::text("hash"), self.hash.to_cbor()),
            (Value::text("size"), Value::Uint(self.size)),
        ])
    }

    pub(crate) fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("file entry", v)?;
        let path = as_text("file path", m.required("path")?, MAX_PATH_BYTES)?;
        validate_path(&path).map_err(|e| DecodeError::invalid("file path", e))?;
        let hash = BlobHash::from_cbor("file hash", m.required("hash")?)?;
        let size = as_u64("file size", m.required("size")?)?;
        if size > MAX_BLOB_BYTES {
            return Err(DecodeError::invalid(
                "file size",
                format!("{size} bytes is over the {MAX_BLOB_BYTES}-byte limit"),
            ));
        }
        m.finish()?;
        Ok(FileEntry { path, hash, size })
    }
}

fn files_to_cbor(files: &[FileEntry]) -> Value {
    Value::Array(files.iter().map(FileEntry::to_cbor).collect())
}

/// Decodes a file list, requiring paths strictly sorted (so unique) and no file also used as a
/// folder (`a` and `a/b`), since such a list cannot be exported.
fn files_from_cbor(v: Value) -> Result<Vec<FileEntry>, DecodeError> {
    let files = as_list("files", v, MAX_FILES, FileEntry::from_cbor)?;
    check_files(&files).map_err(|e| DecodeError::invalid("files", e))?;
    Ok(files)
}

/// Checks that `files` is sorted by path, paths unique, and no path is a prefix folder of another.
pub fn check_files(files: &[FileEntry]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for pair in files.windows(2) {
        if pair[0].path >= pair[1].path {
            return Err(format!(
                "paths must be sorted and unique: {:?} then {:?}",
                pair[0].path, pair[1].path
            ));
        }
    }
    for f in files {
        seen.insert(f.path.as_str());
    }
    for f in files {
        let mut prefix = f.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if seen.contains(parent) {
                return Err(format!("{parent:?} is both a file and a folder"));
            }
            prefix = parent;
        }
    }
    Ok(())
}

fn texts_to_cbor(items: &[String]) -> Value {
    Value::Array(items.iter().map(Value::text).collect())
}

fn texts_from_cbor(what: &'static str, v: Value) -> Result<Vec<String>, DecodeError> {
    as_list(what, v, MAX_LIST, |v| as_text(what, v, MAX_SHORT_TEXT))
}

impl TensorSpec {
    fn to_cbor(&self) -> Value {
        let shape = self
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Value::Uint(*n),
                Dim::Symbolic(s) => Value::text(s),
            })
            .collect();
        Value::Map(vec![
            (Value::text("name"), Value::text(&self.name)),
            (Value::text("dtype"), Value::text(self.dtype.name())),
            (Value::text("shape"), Value::Array(shape)),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("tensor spec", v)?;
        let name = as_text("tensor name", m.required("name")?, MAX_SHORT_TEXT)?;
        let dtype_name = as_text("tensor dtype", m.required("dtype")?, 16)?;
        let dtype = DType::parse(&dtype_name)
            .filter(|d| d.name() == dtype_name)
            .ok_or_else(|| {
                DecodeError::invalid("tensor dtype", format!("unknown {dtype_name:?}"))
            })?;
        let shape = as_list(
            "tensor shape",
            m.required("shape")?,
            MAX_LIST,
            |d| match d {
                Value::Uint(n) => Ok(Dim::Fixed(n)),
                Value::Text(s) if !s.is_empty() && s.len() <= MAX_SHORT_TEXT => {
                    Ok(Dim::Symbolic(s))
                }
                _ => Err(DecodeError::invalid(
                    "tensor shape",
                    "a dimension is a size or a non-empty name",
                )),
            },
        )?;
        m.finish()?;
        Ok(TensorSpec { name, dtype, shape })
    }
}

fn specs_from_cbor(what: &'static str, v: Value) -> Result<Vec<TensorSpec>, DecodeError> {
    let specs = as_list(what, v, MAX_LIST, TensorSpec::from_cbor)?;
    let mut names = BTreeSet::new();
    for s in &specs {
        if !names.insert(s.name.as_str()) {
            return Err(DecodeError::invalid(
                what,
                format!("duplicate tensor {:?}", s.name),
            ));
        }
    }
    Ok(specs)
}

impl Interface {
    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (
                Value::text("inputs"),
                Value::Array(self.inputs.iter().map(TensorSpec::to_cbor).collect()),
            ),
            (
                Value::text("outputs"),
                Value::Array(self.outputs.iter().map(TensorSpec::to_cbor).collect()),
            ),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("interface", v)?;
        let inputs = specs_from_cbor("interface inputs", m.required("inputs")?)?;
        let outputs = specs_from_cbor("interface outputs", m.required("outputs")?)?;
        m.finish()?;
        Ok(Interface { inputs, outputs })
    }
}

impl Runtime {
    fn to_cbor(&self) -> Value {
        let mut entries = vec![(Value::text("kind"), Value::text(&self.kind))];
        if let Some(entry) = &self.entry {
            entries.push((Value::text("entry"), Value::text(entry)));
        }
        if let Some(guest) = self.guest {
            entries.push((Value::text("guest"), guest.to_cbor()));
        }
        if let Some(mib) = self.memory_mib {
            entries.push((Value::text("memory_mib"), Value::Uint(mib)));
        }
        if let Some(lm) = &self.language_model {
            entries.push((Value::text("language_model"), lm.to_cbor()));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("runtime", v)?;
        let kind = as_text("runtime kind", m.required("kind")?, MAX_SHORT_TEXT)?;
        let entry = m
            .optional("entry")
            .map(|v| {
                let p = as_text("runtime entry", v, MAX_PATH_BYTES)?;
                validate_path(&p).map_err(|e| DecodeError::invalid("runtime entry", e))?;
                Ok(p)
            })
            .transpose()?;
        let guest = m
            .optional("guest")
            .map(|v| BlobHash::from_cbor("runtime guest", v))
            .transpose()?;
        let memory_mib = m
            .optional("memory_mib")
            .map(|v| as_u64("runtime memory_mib", v))
            .transpose()?;
        let language_model = m
            .optional("language_model")
            .map(LanguageModel::from_cbor)
            .transpose()?;
        m.finish()?;
        Ok(Runtime {
            kind,
            entry,
            guest,
            memory_mib,
            language_model,
        })
    }
}

impl Manifest {
    /// Every blob this manifest references directly (files, snapshots, guest, datasets are
    /// *not* included: a dataset is referenced, not shipped).
    pub fn referenced_blobs(&self) -> Vec<BlobHash> {
        let mut out: Vec<BlobHash> = self.files.iter().map(|f| f.hash).collect();
        out.extend(self.snapshots.iter().copied());
        out.extend(self.runtime.guest);
        out
    }

    /// The blobs a node needs to run the model: its files and its guest module. A model is
    /// *local* (callable here, servable to peers) when all of them are in the store.
    pub fn runnable_blobs(&self) -> impl Iterator<Item = BlobHash> + '_ {
        self.files.iter().map(|f| f.hash).chain(self.runtime.guest)
    }

    /// Total bytes of the package's files.
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }
}

impl Object for Manifest {
    const WHAT: &'static str = "manifest";
    const MAX_BYTES: usize = MAX_MANIFEST_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(MANIFEST_VERSION)),
            (Value::text("name"), Value::text(&self.name)),
            (Value::text("version"), Value::text(&self.version)),
            (Value::text("description"), Value::text(&self.description)),
            (Value::text("license"), Value::text(&self.license)),
            (Value::text("tags"), texts_to_cbor(&self.tags)),
            (Value::text("authors"), texts_to_cbor(&self.authors)),
            (Value::text("interface"), self.interface.to_cbor()),
            (Value::text("runtime"), self.runtime.to_cbor()),
            (Value::text("files"), files_to_cbor(&self.files)),
            (
                Value::text("datasets"),
                Value::Array(
                    self.datasets
                        .iter()
                        .map(|d| {
                            Value::Map(vec![
                                (Value::text("hash"), d.hash.to_cbor()),
                                (Value::text("description"), Value::text(&d.description)),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                Value::text("snapshots"),
                Value::Array(self.snapshots.iter().map(|h| h.to_cbor()).collect()),
            ),
        ];
        if let Some(parent) = self.parent {
            entries.push((Value::text("parent"), parent.0.to_cbor()));
        }
        if let Some(royalty) = &self.royalty {
            entries.push((Value::text("royalty"), royalty.to_cbor()));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("manifest", v)?;
        m.version(MANIFEST_VERSION)?;
        let name = as_text("manifest name", m.required("name")?, MAX_SHORT_TEXT)?;
        validate_name(&name).map_err(|e| DecodeError::invalid("manifest name", e))?;
        let manifest = Manifest {
            name,
            version: as_text("manifest version", m.required("version")?, MAX_SHORT_TEXT)?,
            description: as_text(
                "manifest description",
                m.required("description")?,
                MAX_DESCRIPTION,
            )?,
            license: as_text("manifest license", m.required("license")?, MAX_SHORT_TEXT)?,
            tags: texts_from_cbor("manifest tags", m.required("tags")?)?,
            authors: texts_from_cbor("manifest authors", m.required("authors")?)?,
            interface: Interface::from_cbor(m.required("interface")?)?,
            runtime: Runtime::from_cbor(m.required("runtime")?)?,
            files: files_from_cbor(m.required("files")?)?,
            datasets: as_list("datasets", m.required("datasets")?, MAX_LIST, |v| {
                let mut d = MapReader::new("dataset", v)?;
                let hash = BlobHash::from_cbor("dataset hash", d.required("hash")?)?;
                let description = as_text(
                    "dataset description",
                    d.required("description")?,
                    MAX_DESCRIPTION,
                )?;
                d.finish()?;
                Ok(DatasetRef { hash, description })
            })?,
            snapshots: as_list("snapshots", m.required("snapshots")?, MAX_SNAPSHOTS, |v| {
                BlobHash::from_cbor("snapshot id", v)
            })?,
            parent: m
                .optional("parent")
                .map(|v| BlobHash::from_cbor("parent model", v).map(ModelId))
                .transpose()?,
            royalty: m
                .optional("royalty")
                .map(crate::credits::Royalty::from_cbor)
                .transpose()?,
        };
        m.finish()?;
        Ok(manifest)
    }
}

impl Signable for Manifest {
    const DOMAIN: &'static str = crate::DOMAIN_MANIFEST;
}

/// The listing of a plain folder added with `moxnet add DIR`: its files by relative path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collection {
    /// Files, sorted by path, paths unique.
    pub entries: Vec<FileEntry>,
}

impl Object for Collection {
    const WHAT: &'static str = "collection";
    const MAX_BYTES: usize = MAX_COLLECTION_BYTES;

    fn to_cbor(&self) -> Value {
        Value::Map(vec![
            (Value::text("v"), Value::Uint(COLLECTION_VERSION)),
            (Value::text("entries"), files_to_cbor(&self.entries)),
        ])
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("collection", v)?;
        m.version(COLLECTION_VERSION)?;
        let entries = files_from_cbor(m.required("entries")?)?;
        m.finish()?;
        Ok(Collection { entries })
    }
}
