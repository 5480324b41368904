//! The running node's shared state: its home, network client, sandbox, compute-sharing state,
//! metrics, and the bookkeeping of fetches and announcements. Services receive an
//! `Arc<Node>`; this module holds data only and imports no service.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use api::dto::FetchState;
use net::libp2p::{Multiaddr, PeerId};
use protocol::{BlobHash, ModelId};

use crate::compute::Compute;
use crate::home::Home;
use crate::inference::Inference;
use crate::metrics::Metrics;

/// Manifests learnt from peers being stored at once; more are dropped (and logged).
pub const MAX_MANIFEST_IMPORTS: usize = 256;

/// What the node shares between its tasks.
pub struct Node {
    /// The home: identity and store.
    pub home: Arc<Home>,
    /// The network.
    pub net: net::Client,
    /// Addresses we listen on (with our `/p2p/` suffix).
    pub(crate) listening: Mutex<Vec<Multiaddr>>,
    /// One lock per model being fetched for a call.
    pub(crate) fetch_locks: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
    /// Fetches started through the API, by root hash.
    pub fetches: Mutex<HashMap<BlobHash, Arc<Mutex<Progress>>>>,
    /// Peers that announced or synced each model to us: likely providers.
    pub announcers: Mutex<HashMap<BlobHash, HashSet<PeerId>>>,
    /// The node's metrics (`GET /metrics`).
    pub metrics: Metrics,
    /// Bounds the manifests being stored at once (see [`MAX_MANIFEST_IMPORTS`]).
    pub(crate) manifest_imports: Arc<tokio::sync::Semaphore>,
    /// Models already announced and provided by this node.
    pub(crate) announced: Mutex<HashSet<ModelId>>,
    /// The sandbox and the models loaded in it.
    pub inference: Arc<Inference>,
    /// Compute sharing: offers heard, calls served for peers.
    pub compute: Compute,
}

impl Node {
    /// The addresses this node listens on, as text.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| a.to_string())
            .collect()
    }
}

/// What a fetch has done so far.
#[derive(Debug, Default)]
pub struct Progress {
    /// Running, complete or failed.
    pub state: FetchState,
    /// Bytes to fetch, once known.
    pub bytes_total: u64,
    /// Bytes present.
    pub bytes_done: u64,
    /// Bytes received and verified by this fetch (less than the total when resuming).
    pub bytes_fetched: u64,
    /// Peers that delivered verified data.
    pub peers_used: HashSet<PeerId>,
    /// Peers banned for sending bad bytes.
    pub peers_banned: HashSet<PeerId>,
    /// Why it failed.
    pub error: Option<String>,
}
