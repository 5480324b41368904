//! Training snapshots: a step of a training run, its metrics and weights, linked by parent hash.

use std::collections::BTreeMap;

use crate::cbor::{MapReader, Value, as_f64, as_list, as_text, as_u64};
use crate::manifest::{FileEntry, MAX_LIST, MAX_SHORT_TEXT, check_files, validate_name};
use crate::{BlobHash, DecodeError, Object, Signable};

/// Largest encoded snapshot body.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024;
/// Snapshot body version this code reads and writes.
pub const SNAPSHOT_VERSION: u64 = 1;
/// Most weight files one snapshot lists.
pub const MAX_SNAPSHOT_WEIGHTS: usize = 1024;

/// One point of a training run. Published as `Signed<Snapshot>`; its id is the hash of the
/// envelope bytes, and `parent` links the previous snapshot of the same run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Name of the package this run trains (see [`crate::validate_name`]).
    pub model: String,
    /// Training step.
    pub step: u64,
    /// Wall-clock time the snapshot was taken, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Metrics by name, e.g. `loss`.
    pub metrics: BTreeMap<String, f64>,
    /// Weight files (a `.safetensors` file is deduplicated tensor by tensor in the store).
    pub weights: Vec<FileEntry>,
    /// The previous snapshot of the run.
    pub parent: Option<BlobHash>,
}

impl Object for Snapshot {
    const WHAT: &'static str = "snapshot";
    const MAX_BYTES: usize = MAX_SNAPSHOT_BYTES;

    fn to_cbor(&self) -> Value {
        let mut entries = vec![
            (Value::text("v"), Value::Uint(SNAPSHOT_VERSION)),
            (Value::text("model"), Value::text(&self.model)),
            (Value::text("step"), Value::Uint(self.step)),
            (Value::text("time_ms"), Value::Uint(self.time_ms)),
            (
                Value::text("metrics"),
                Value::Map(
                    self.metrics
                        .iter()
                        .map(|(k, v)| (Value::text(k), Value::Float(*v)))
                        .collect(),
                ),
            ),
            (
                Value::text("weights"),
                Value::Array(self.weights.iter().map(FileEntry::to_cbor).collect()),
            ),
        ];
        if let Some(parent) = self.parent {
            entries.push((Value::text("parent"), parent.to_cbor()));
        }
        Value::Map(entries)
    }

    fn from_cbor(v: Value) -> Result<Self, DecodeError> {
        let mut m = MapReader::new("snapshot", v)?;
        m.version(SNAPSHOT_VERSION)?;
        let model = as_text("snapshot model", m.required("model")?, MAX_SHORT_TEXT)?;
        validate_name(&model).map_err(|e| DecodeError::invalid("snapshot model", e))?;
        let step = as_u64("snapshot step", m.required("step")?)?;
        let time_ms = as_u64("snapshot time_ms", m.required("time_ms")?)?;
        let metrics = match m.required("metrics")? {
            Value::Map(entries) if entries.len() <= MAX_LIST => entries
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        as_text("metric name", k, MAX_SHORT_TEXT)?,
                        as_f64("metric value", v)?,
                    ))
                })
                .collect::<Result<BTreeMap<_, _>, DecodeError>>()?,
            _ => {
                return Err(DecodeError::invalid(
                    "snapshot metrics",
                    format!("expected a map of at most {MAX_LIST} name → float"),
                ));
            }
        };
        let weights = as_list(
            "snapshot weights",
            m.required("weights")?,
            MAX_SNAPSHOT_WEIGHTS,
            FileEntry::from_cbor,
        )?;
        check_files(&weights).map_err(|e| DecodeError::invalid("snapshot weights", e))?;
        let parent = m
            .optional("parent")
            .map(|v| BlobHash::from_cbor("snapshot parent", v))
            .transpose()?;
        m.finish()?;
        Ok(Snapshot {
            model,
            step,
            time_ms,
            metrics,
            weights,
            parent,
        })
    }
}

impl Signable for Snapshot {
    const DOMAIN: &'static str = crate::DOMAIN_SNAPSHOT;
}
