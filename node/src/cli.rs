//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// moxnet: share AI models peer to peer. A model goes live the moment it is published.
#[derive(Debug, Parser)]
#[command(name = "moxnet", version, about, propagate_version = true)]
pub struct Cli {
    /// The moxnet home (identity key and store). Default: $XDG_DATA_HOME/moxnet.
    #[arg(long, global = true, env = "MOXNET_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print one JSON object per command on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a home: an identity key (mode 0600) and an empty store.
    Init,
    /// Add a file or folder to the store and pin it; prints its hash.
    Add {
        /// File or folder to add.
        path: PathBuf,
    },
    /// Export a blob, folder or model package by hash.
    Get {
        /// Blob hash or model id (64 hex characters).
        hash: String,
        /// Where to write (must not exist).
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
    },
    /// List the blobs in the store.
    Ls,
    /// Pack a package folder (with moxnet.toml) or a bare .onnx file into a signed model; prints
    /// its model id.
    Publish {
        /// Package folder or .onnx file.
        path: PathBuf,
    },
    /// Show a model's manifest (after checking its author's signature).
    Show {
        /// Model id.
        id: String,
    },
    /// Training snapshots.
    Snapshot {
        /// What to do with snapshots.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Show the training history of a model (by id) or of a package folder.
    History {
        /// Model id or package folder.
        target: String,
    },
    /// Pin a blob so that gc keeps it.
    Pin {
        /// Blob hash.
        hash: String,
    },
    /// Unpin a blob.
    Unpin {
        /// Blob hash.
        hash: String,
    },
    /// Delete every blob that no pin reaches.
    Gc,
    /// Re-hash stored blobs and report any corrupt or missing one (exit status 1 if any).
    Verify {
        /// Only this blob.
        hash: Option<String>,
    },
}

/// `moxnet snapshot …`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Record a training snapshot of a package: step, metrics, weight files. The next
    /// `publish` of the package links every snapshot recorded so far.
    Add {
        /// The package folder (its moxnet.toml names the model).
        package: PathBuf,
        /// Training step.
        #[arg(long)]
        step: u64,
        /// A metric, as NAME=VALUE (repeatable), e.g. --metric loss=0.31.
        #[arg(long = "metric", value_name = "NAME=VALUE")]
        metrics: Vec<String>,
        /// A weights file (repeatable); .safetensors files are deduplicated tensor by tensor.
        #[arg(long = "weights", value_name = "FILE")]
        weights: Vec<PathBuf>,
    },
}
