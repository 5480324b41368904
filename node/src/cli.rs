//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

    /// How logs (on stderr) are written: `text` for people, `json` (one object per line) for
    /// log collectors. `RUST_LOG` chooses what is logged.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MOXNET_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands. While a node runs on the home, store commands are sent to it over its HTTP
/// API (it holds the store).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a home: an identity key (mode 0600) and an empty store.
    Init,
    /// Run the node: join the network, serve blobs and models, offer the HTTP API.
    Node(NodeArgs),
    /// Fetch a model (manifest, files, snapshots) or a blob by hash from the network, verified,
    /// resumable. Needs a running node.
    Fetch {
        /// Model id or blob hash.
        id: String,
    },
    /// List the models this node knows (published here, announced, or synced from peers).
    Models,
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
    /// Pack a package folder (with moxnet.toml) or a bare .onnx or .gguf file into a signed
    /// model; prints its model id.
    Publish {
        /// Package folder, .onnx or .gguf file.
        path: PathBuf,
    },
    /// Run a model and print its outputs: on this node, in the sandbox, when the model is here;
    /// else on a peer that offers compute; else after fetching it (those need a running node).
    Call {
        /// Model id.
        id: String,
        /// The input: JSON, or @FILE to read it from a file (@- for stdin). Either an OIP v2
        /// request ({"inputs": [{"name", "datatype", "shape", "data"}]}) or the shorthand
        /// {"NAME": nested data, …}, e.g. {"text": ["a sentence"]}.
        #[arg(long)]
        input: String,
        /// Run the call on this peer (a peer id), which must serve calls.
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
        /// Run the call on two providers and compare their signed output hashes.
        #[arg(long)]
        verify: bool,
        /// Run the call only on a provider that offers a GPU and an engine that uses it.
        #[arg(long)]
        gpu: bool,
    },
    /// Chat with a language model on the running node: its answer streams as it is written and
    /// the conversation is kept. Reads one message per line (an empty line or the end of input
    /// ends the chat), or answers `--message` and exits.
    Chat {
        /// Model id, or the name of a language model this node holds.
        model: String,
        /// Answer this one message and exit.
        #[arg(long, short)]
        message: Option<String>,
        /// A system prompt for the conversation.
        #[arg(long)]
        system: Option<String>,
        /// Sampling temperature, 0 to 2 (0: always the likeliest token).
        #[arg(long)]
        temperature: Option<f32>,
        /// Seed for sampling (each answer reports the one it used).
        #[arg(long)]
        seed: Option<u32>,
        /// The most tokens of one answer.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Generate on this peer (a peer id), which must serve calls; paid per token.
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
        /// Generate on two providers and compare their signed outputs (same seed, same
        /// engine: the same text).
        #[arg(long)]
        verify: bool,
        /// Generate only on a provider whose offer lists a GPU and llama.cpp on it
        /// (`llama.cpp-cuda`).
        #[arg(long)]
        gpu: bool,
    },
    /// List the compute offers the running node has heard (providers, prices, measured latency).
    Offers,
    /// Vote on a model: signed by this node with the receipts of its paid calls of the model
    /// (at most 8, the newest), kept and gossiped. A later vote replaces the earlier one.
    Vote {
        /// Model id.
        id: String,
        /// `up`, `down` or `retract`.
        #[arg(value_parser = ["up", "down", "retract"])]
        choice: String,
    },
    /// Revoke this node's key for votes (protocol §13), for a key that leaked or a node that
    /// retires: every vote it signed stops counting on every node, receipts of calls it served
    /// prove no usage, and it can vote no more. Cannot be undone: vote from a new home after.
    Revoke {
        /// Why, for people (at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
        /// Yes, revoke this key for good.
        #[arg(long)]
        yes: bool,
    },
    /// Follow a node: its trust (and its votes' weight) comes from this node directly.
    /// Prints the nodes followed.
    Follow {
        /// A node id or peer id.
        node: String,
        /// Stop following it.
        #[arg(long)]
        undo: bool,
    },
    /// Search the catalogue: names, descriptions, tags, authors, the signing node and the
    /// interface, ranked by relevance combined with the running node's vote scores and usage
    /// (without a running node: relevance only).
    Search {
        /// Words (none: every model).
        query: Vec<String>,
        /// The order: relevance (the default: text relevance x votes and usage), score,
        /// usage or new (first seen here).
        #[arg(long, value_parser = ["relevance", "score", "usage", "new"])]
        sort: Option<String>,
        /// Only models with this tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Hits to show (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Hits to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// A model's score as the running node weighs it: each voter's trust, usage and weight.
    Votes {
        /// Model id.
        id: String,
    },
    /// Show the credit ledger: per peer, calls both ways, billed, paid, owed, limits, the free
    /// allowance, royalties. With a peer: that account; `--receipts` lists the signed receipts
    /// and cheques behind it, each checked here with the two public keys.
    Credits {
        /// A peer (peer id or node id).
        peer: Option<String>,
        /// List the receipts and cheques behind the account.
        #[arg(long, requires = "peer")]
        receipts: bool,
        /// Audit the royalties the peer owes this node: its receipts of calls of this node's
        /// models, checked here, summed, against what it paid.
        #[arg(long, requires = "peer", conflicts_with = "receipts")]
        audit: bool,
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
    /// Delete every blob that no pin reaches, and partial blobs abandoned for a day.
    Gc,
    /// Adopt blob files the store's index does not name (after the index was lost): those
    /// whose bytes match their name are indexed again and pinned, the others removed.
    Reindex,
    /// Re-hash stored blobs and report any corrupt or missing one (exit status 1 if any).
    Verify {
        /// Only this blob.
        hash: Option<String>,
    },
}

/// `moxnet node …`
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// Listen address (repeatable), e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to connect to at start, ending in /p2p/PEER_ID (repeatable).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// HTTP API address (localhost only), e.g. 127.0.0.1:5080; port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve inference calls for peers and announce a compute offer (`[compute] serve`).
    #[arg(long)]
    pub serve: bool,
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
