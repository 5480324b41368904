//! moxnet's catalogue: every model manifest this node knows, verified **once** when it arrives
//! and kept decoded, and which of those models are *local* (callable and servable here).
//!
//! ```
//! # fn main() -> Result<(), catalog::CatalogError> {
//! use std::sync::Arc;
//! let dir = tempfile::tempdir().expect("tempdir");
//! let store = Arc::new(store::Store::open(dir.path())?);
//! let catalog = catalog::Catalog::open(store.clone())?;
//! let key = protocol::SecretKey::from_seed(&[7; 32]);
//! let weights = store.import_bytes(b"weights", "raw", Vec::new())?;
//! let manifest = protocol::Manifest {
//!     name: "demo".into(),
//!     version: "1".into(),
//!     files: vec![protocol::FileEntry { path: "w.bin".into(), hash: weights.hash, size: 7 }],
//!     ..Default::default()
//! };
//! let id = catalog.insert(key.sign(manifest))?;
//! assert!(catalog.is_local(id)); // its only file is here
//! assert_eq!(catalog.get(id).map(|m| m.body().name.clone()), Some("demo".to_string()));
//! # Ok(()) }
//! ```
//!
//! # Concepts
//! - **Verified once.** A manifest enters through [`Catalog::insert`] (a `Signed<Manifest>`
//!   is proof that its signature verified) or [`Catalog::insert_bytes`] (which verifies). It
//!   is stored as a blob (so peers can fetch it) and its envelope in the sled tree `catalog`;
//!   after a restart, [`Catalog::open`] decodes those envelopes with
//!   [`protocol::Signed::from_trusted_bytes`], without checking signatures again. Readers get
//!   an `Arc<Signed<Manifest>>`: no I/O, no verification on any call path.
//! - **Local models.** A model is local when its manifest, its files and its guest are all in
//!   the store ([`protocol::Manifest::runnable_blobs`]). The catalogue keeps, per model, the
//!   blobs it still misses, and updates them as blobs arrive ([`Catalog::blob_added`]) or
//!   leave ([`Catalog::refresh_all`] after a gc), rather than asking the store per call.
//! - **History and lineage.** [`Catalog::snapshot_chain`] walks a training run's snapshots
//!   (each verified once, then cached); [`Catalog::lineage`] follows `parent` links up, and
//!   [`Catalog::derived`] finds the models that name one as their parent.
//!
//! **Invariant:** every manifest the catalogue returns verified against its signer when it
//! first arrived at this node.
//!
//! **Bound:** manifests learnt from peers enter through [`Catalog::insert_learnt`], which holds
//! the catalogue to a [`Quota`]: at most [`Quota::max_models`] models in all (each at most
//! `Signed::<Manifest>::MAX_BYTES`) and [`Quota::max_per_author`] per signer, so that fresh
//! keys cannot fill the disk and one author cannot crowd out the rest. The node's own
//! publishes ([`Catalog::insert`]) are not counted against it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use protocol::{BlobHash, Manifest, ModelId, Signed, Snapshot};
use store::Store;

/// What can go wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store failed (see the inner error for what to do).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The catalogue's index failed: check the disk; `moxnet verify` re-checks the store.
    #[error("the catalogue index: {0}")]
    Index(#[from] sled::Error),
    /// Bytes are not a valid signed object (from a peer: drop them; from the store: the store
    /// is corrupt, run `moxnet verify`).
    #[error("{what} {hash} is not valid: {source}")]
    Invalid {
        /// What it was supposed to be.
        what: &'static str,
        /// Its hash.
        hash: BlobHash,
        /// Why not.
        source: protocol::DecodeError,
    },
    /// A snapshot chain is longer than a manifest may list: a cycle or a forgery; do not
    /// trust it.
    #[error("the snapshot chain from {head} is longer than {max}")]
    ChainTooLong {
        /// Where it started.
        head: BlobHash,
        /// The limit.
        max: usize,
    },
}

/// How many manifests from peers the catalogue takes (see [`Catalog::insert_learnt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Models in the catalogue, in all.
    pub max_models: usize,
    /// Models signed by one author.
    pub max_per_author: usize,
}

impl Default for Quota {
    /// 100,000 models (at most 100 GiB of manifests at 1 MiB each, typically a few hundred
    /// MiB) and 1,000 per author.
    fn default() -> Quota {
        Quota {
            max_models: 100_000,
            max_per_author: 1_000,
        }
    }
}

/// Why a manifest from a peer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The catalogue holds [`Quota::max_models`] models.
    #[error("the catalogue is full ({0} models)")]
    Full(usize),
    /// Its author signed [`Quota::max_per_author`] models already.
    #[error("its author has {0} models here already")]
    AuthorQuota(usize),
}

impl Refused {
    /// A short label for metrics: `catalogue_full` or `author_quota`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Full(_) => "catalogue_full",
            Refused::AuthorQuota(_) => "author_quota",
        }
    }
}

/// A result of the catalogue.
pub type Result<T> = std::result::Result<T, CatalogError>;

/// A model the catalogue knows.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its id.
    pub id: ModelId,
    /// Its manifest (verified when it arrived).
    pub manifest: Arc<Signed<Manifest>>,
    /// Whether its files and guest are all here.
    pub local: bool,
}

#[derive(Default)]
struct State {
    models: BTreeMap<ModelId, Arc<Signed<Manifest>>>,
    /// Blobs each model still needs to be local (absent: none).
    missing: HashMap<ModelId, HashSet<BlobHash>>,
    /// The models waiting for each missing blob.
    waiting: HashMap<BlobHash, HashSet<ModelId>>,
    /// Snapshots verified so far.
    snapshots: HashMap<BlobHash, Arc<Signed<Snapshot>>>,
    /// Models per signer.
    by_author: HashMap<protocol::NodeId, usize>,
    /// Bumped whenever a model is added or removed.
    generation: u64,
}

impl State {
    fn add(&mut self, id: ModelId, manifest: Arc<Signed<Manifest>>) {
        self.generation += 1;
        *self.by_author.entry(manifest.signer()).or_default() += 1;
        self.models.insert(id, manifest);
    }

    fn remove(&mut self, id: ModelId) {
        self.generation += 1;
        self.untrack(id);
        if let Some(m) = self.models.remove(&id)
            && let Some(n) = self.by_author.get_mut(&m.signer())
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_author.remove(&m.signer());
            }
        }
    }

    /// Records what `id` still misses, given what the store has.
    fn track(&mut self, store: &Store, id: ModelId, manifest: &Manifest) -> Result<()> {
        self.untrack(id);
        let mut missing = HashSet::new();
        for hash in manifest.runnable_blobs() {
            if !store.has(hash)? {
                missing.insert(hash);
            }
        }
        for hash in &missing {
            self.waiting.entry(*hash).or_default().insert(id);
        }
        if !missing.is_empty() {
            self.missing.insert(id, missing);
        }
        Ok(())
    }

    fn untrack(&mut self, id: ModelId) {
        if let Some(old) = self.missing.remove(&id) {
            for hash in old {
                if let Some(w) = self.waiting.get_mut(&hash) {
                    w.remove(&id);
                    if w.is_empty() {
                        self.waiting.remove(&hash);
                    }
                }
            }
        }
    }
}

/// The catalogue. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Catalog {
    store: Arc<Store>,
    tree: sled::Tree,
    state: RwLock<State>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("models", &self.len())
            .finish()
    }
}

impl Catalog {
    /// Opens the catalogue of `store`: decodes the manifests it kept (no signature checks),
    /// adopts (verifying them once) manifests the store indexes that it does not know yet, and
    /// computes which models are local.
    pub fn open(store: Arc<Store>) -> Result<Catalog> {
        let tree = store.open_tree("catalog")?;
        let catalog = Catalog {
            store,
            tree,
            state: RwLock::new(State::default()),
        };
        let mut state = State::default();
        for kv in catalog.tree.iter() {
            let (k, v) = kv?;
            let Ok(key) = <[u8; 32]>::try_from(k.as_ref()) else {
                tracing::warn!("catalogue: skipping a malformed key");
                continue;
            };
            let id = ModelId(BlobHash::from_bytes(key));
            match Signed::<Manifest>::from_trusted_bytes(&v) {
                Ok(m) => state.add(id, Arc::new(m)),
                Err(e) => {
                    tracing::warn!(model = %id, "catalogue: dropping an undecodable entry: {e}")
                }
            }
        }
        // Manifests indexed by the store but not (yet) here: stores from before the
        // catalogue, or an entry dropped above. Verified once, then kept.
        for id in catalog.store.manifests()? {
            if state.models.contains_key(&id) {
                continue;
            }
            match catalog.read_manifest(id) {
                Ok(m) => {
                    catalog.tree.insert(id.blob().as_bytes(), m.to_bytes())?;
                    state.add(id, Arc::new(m));
                }
                Err(e) => tracing::warn!(model = %id, "catalogue: skipping a manifest: {e}"),
            }
        }
        let models: Vec<(ModelId, Arc<Signed<Manifest>>)> =
            state.models.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, m) in models {
            state.track(&catalog.store, id, m.body())?;
        }
        catalog.tree.flush()?;
        *catalog.write() = state;
        Ok(catalog)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads and verifies a manifest from the store.
    fn read_manifest(&self, id: ModelId) -> Result<Signed<Manifest>> {
        let bytes = self
            .store
            .read_bytes(id.blob(), Signed::<Manifest>::MAX_BYTES as u64)?;
        Signed::<Manifest>::from_bytes(&bytes).map_err(|source| CatalogError::Invalid {
            what: "manifest",
            hash: id.blob(),
            source,
        })
    }

    /// Adds a verified manifest: stores it as a blob (if new) so peers can fetch it, indexes
    /// it, and tracks what it misses. Returns its id. Adding one again does nothing new.
    pub fn insert(&self, manifest: Signed<Manifest>) -> Result<ModelId> {
        let bytes = manifest.to_bytes();
        let id = protocol::model_id(&bytes);
        if self.read().models.contains_key(&id) {
            return Ok(id);
        }
        self.store
            .import_manifests(&[(&bytes, manifest.body().referenced_blobs())])?;
        self.tree.insert(id.blob().as_bytes(), bytes)?;
        self.tree.flush()?;
        let mut state = self.write();
        state.track(&self.store, id, manifest.body())?;
        state.add(id, Arc::new(manifest));
        Ok(id)
    }

    /// Whether a manifest from a peer signed by `author` would be taken under `quota` now.
    pub fn admits(
        &self,
        author: protocol::NodeId,
        quota: Quota,
    ) -> std::result::Result<(), Refused> {
        let state = self.read();
        if state.models.len() >= quota.max_models {
            return Err(Refused::Full(state.models.len()));
        }
        let mine = state.by_author.get(&author).copied().unwrap_or(0);
        if mine >= quota.max_per_author {
            return Err(Refused::AuthorQuota(mine));
        }
        Ok(())
    }

    /// Adds a manifest learnt from a peer if `quota` admits it (see [`Catalog::admits`]); one
    /// already here is fine. `Ok(Err(_))` says why it was refused.
    pub fn insert_learnt(
        &self,
        manifest: Signed<Manifest>,
        quota: Quota,
    ) -> Result<std::result::Result<ModelId, Refused>> {
        let mut results = self.insert_learnt_many(vec![manifest], quota)?;
        Ok(results.pop().unwrap_or(Err(Refused::Full(0))))
    }

    /// [`Catalog::insert_learnt`] for many manifests at once, with one store commit and one
    /// index flush for all (learnt manifests come in floods: a sync, or spam). The quota counts
    /// the batch's own manifests as they are admitted. One result per manifest, in order.
    pub fn insert_learnt_many(
        &self,
        manifests: Vec<Signed<Manifest>>,
        quota: Quota,
    ) -> Result<Vec<std::result::Result<ModelId, Refused>>> {
        let mut results = Vec::with_capacity(manifests.len());
        let mut admitted: Vec<(ModelId, Vec<u8>, Signed<Manifest>)> = Vec::new();
        {
            let state = self.read();
            let mut total = state.models.len();
            let mut extra: HashMap<protocol::NodeId, usize> = HashMap::new();
            for manifest in manifests {
                let bytes = manifest.to_bytes();
                let id = protocol::model_id(&bytes);
                if state.models.contains_key(&id) || admitted.iter().any(|(a, ..)| *a == id) {
                    results.push(Ok(id));
                    continue;
                }
                let author = manifest.signer();
                let mine = state.by_author.get(&author).copied().unwrap_or(0)
                    + extra.get(&author).copied().unwrap_or(0);
                if total >= quota.max_models {
                    results.push(Err(Refused::Full(total)));
                } else if mine >= quota.max_per_author {
                    results.push(Err(Refused::AuthorQuota(mine)));
                } else {
                    total += 1;
                    *extra.entry(author).or_default() += 1;
                    results.push(Ok(id));
                    admitted.push((id, bytes, manifest));
                }
            }
        }
        if admitted.is_empty() {
            return Ok(results);
        }
        let to_import: Vec<(&[u8], Vec<BlobHash>)> = admitted
            .iter()
            .map(|(_, bytes, manifest)| (bytes.as_slice(), manifest.body().referenced_blobs()))
            .collect();
        self.store.import_manifests(&to_import)?;
        let mut batch = sled::Batch::default();
        for (id, bytes, _) in &admitted {
            batch.insert(id.blob().as_bytes(), bytes.as_slice());
        }
        // No flush: sled flushes within half a second, and a manifest lost to a crash comes
        // back with the next sync.
        self.tree.apply_batch(batch)?;
        let mut state = self.write();
        for (id, _, manifest) in admitted {
            if state.models.contains_key(&id) {
                continue;
            }
            state.track(&self.store, id, manifest.body())?;
            state.add(id, Arc::new(manifest));
        }
        Ok(results)
    }

    /// Verifies an envelope (from a peer or a fetch) and adds it.
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<ModelId> {
        let manifest =
            Signed::<Manifest>::from_bytes(bytes).map_err(|source| CatalogError::Invalid {
                what: "manifest",
                hash: BlobHash::of(bytes),
                source,
            })?;
        self.insert(manifest)
    }

    /// The ids of the models whose id is greater than `after`, in id order, at most `max`
    /// (what a peer reconciling its catalogue walks).
    pub fn ids(&self, after: Option<ModelId>, max: usize) -> Vec<ModelId> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.read()
            .models
            .range((start, Bound::Unbounded))
            .take(max)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A counter bumped whenever a model is added or removed: a reader that saw the same
    /// value before has nothing new to look at.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Whether the catalogue knows the model.
    pub fn contains(&self, id: ModelId) -> bool {
        self.read().models.contains_key(&id)
    }

    /// A model's manifest, if the catalogue knows it.
    pub fn get(&self, id: ModelId) -> Option<Arc<Signed<Manifest>>> {
        self.read().models.get(&id).cloned()
    }

    /// Whether the model is known and its files and guest are all here.
    pub fn is_local(&self, id: ModelId) -> bool {
        let state = self.read();
        state.models.contains_key(&id) && !state.missing.contains_key(&id)
    }

    /// The blobs a known model still needs to be local (empty when it is local).
    pub fn missing(&self, id: ModelId) -> Vec<BlobHash> {
        let mut list: Vec<BlobHash> = self
            .read()
            .missing
            .get(&id)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default();
        list.sort();
        list
    }

    /// Every known model, by id.
    pub fn entries(&self) -> Vec<Entry> {
        let state = self.read();
        state
            .models
            .iter()
            .map(|(id, m)| Entry {
                id: *id,
                manifest: m.clone(),
                local: !state.missing.contains_key(id),
            })
            .collect()
    }

    /// The ids of the local models.
    pub fn local_models(&self) -> Vec<ModelId> {
        let state = self.read();
        state
            .models
            .keys()
            .filter(|id| !state.missing.contains_key(id))
            .copied()
            .collect()
    }

    /// The local models this node *holds*: their manifest is pinned in the store (published
    /// here, or fetched on purpose). Only these are announced, provided in the DHT and listed in
    /// a compute offer: a manifest learnt from a peer that happens to need no blobs is local, but
    /// a peer must not be able to make this node advertise whatever it sends.
    pub fn held_models(&self) -> Vec<ModelId> {
        self.local_models()
            .into_iter()
            .filter(|id| self.store.is_pinned(id.blob()).unwrap_or(false))
            .collect()
    }

    /// How many models are known, and how many of them are local.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.read();
        (state.models.len(), state.models.len() - state.missing.len())
    }

    /// How many models are known.
    pub fn len(&self) -> usize {
        self.read().models.len()
    }

    /// Whether no model is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A blob became complete in the store: models waiting only for it become local. Returns
    /// the models that became local.
    pub fn blob_added(&self, hash: BlobHash) -> Vec<ModelId> {
        let mut state = self.write();
        let Some(models) = state.waiting.remove(&hash) else {
            return Vec::new();
        };
        let mut now_local = Vec::new();
        for id in models {
            if let Some(m) = state.missing.get_mut(&id) {
                m.remove(&hash);
                if m.is_empty() {
                    state.missing.remove(&id);
                    now_local.push(id);
                }
            }
        }
        now_local.sort();
        now_local
    }

    /// Re-reads from the store what every model misses (after blobs were removed by a gc, or
    /// added behind the catalogue's back). Models whose manifest left the store are forgotten.
    pub fn refresh_all(&self) -> Result<()> {
        let mut state = self.write();
        let ids: Vec<ModelId> = state.models.keys().copied().collect();
        for id in ids {
            if !self.store.has(id.blob())? {
                state.remove(id);
                self.tree.remove(id.blob().as_bytes())?;
                continue;
            }
            if let Some(m) = state.models.get(&id).cloned() {
                state.track(&self.store, id, m.body())?;
            }
        }
        self.tree.flush()?;
        Ok(())
    }

    /// The snapshot chain ending at `head`, oldest first; each snapshot verified the first
    /// time it is read, then cached.
    pub fn snapshot_chain(
        &self,
        head: Option<BlobHash>,
    ) -> Result<Vec<(BlobHash, Arc<Signed<Snapshot>>)>> {
        let mut chain = Vec::new();
        let mut next = head;
        while let Some(h) = next {
            if chain.len() >= protocol::MAX_SNAPSHOTS {
                return Err(CatalogError::ChainTooLong {
                    head: head.unwrap_or(h),
                    max: protocol::MAX_SNAPSHOTS,
                });
            }
            let cached = self.read().snapshots.get(&h).cloned();
            let snapshot = match cached {
                Some(s) => s,
                None => {
                    let bytes = self
                        .store
                        .read_bytes(h, Signed::<Snapshot>::MAX_BYTES as u64)?;
                    let s = Arc::new(Signed::<Snapshot>::from_bytes(&bytes).map_err(|source| {
                        CatalogError::Invalid {
                            what: "snapshot",
                            hash: h,
                            source,
                        }
                    })?);
                    self.write().snapshots.insert(h, s.clone());
                    s
                }
            };
            next = snapshot.body().parent;
            chain.push((h, snapshot));
        }
        chain.reverse();
        Ok(chain)
    }

    /// The models `id` derives from: its parent, the parent's parent, … as far as they are
    /// known here (and at most `protocol::MAX_SNAPSHOTS` deep, against cycles).
    pub fn lineage(&self, id: ModelId) -> Vec<ModelId> {
        let state = self.read();
        let mut out = Vec::new();
        let mut seen = HashSet::from([id]);
        let mut next = state.models.get(&id).and_then(|m| m.body().parent);
        while let Some(p) = next {
            if !seen.insert(p) || out.len() >= protocol::MAX_SNAPSHOTS {
                break;
            }
            out.push(p);
            next = state.models.get(&p).and_then(|m| m.body().parent);
        }
        out
    }

    /// The known models that name `id` as their parent (fine-tunes of it).
    pub fn derived(&self, id: ModelId) -> Vec<ModelId> {
        self.read()
            .models
            .iter()
            .filter(|(_, m)| m.body().parent == Some(id))
            .map(|(k, _)| *k)
            .collect()
    }
}
