//! The call cache: models this node fetched to answer peers' calls, kept under a byte budget.
//!
//! A provider fetches a model a peer calls (see `remote`), and such a model must not stay
//! forever: a stream of calls naming ever new models would fill the disk. Those models are
//! pinned by [`Holder::CallCache`], not by the user, and the cache keeps at most
//! `[compute] cache_mib` of their files: beyond it, the least recently called ones lose the
//! cache's pin and a gc frees their files (their manifests stay in the catalogue, so the next
//! call fetches them again). The model being called is never evicted for itself.
//!
//! A model the user pinned (published, added, fetched on purpose) is not the cache's: it is
//! neither counted nor evicted, and a user's `fetch` of a cached model pins it for the user too.
//! The cache's entries survive a restart (the pins are in the store); their order of use does
//! not (after a restart, the oldest pins go first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use catalog::Catalog;
use protocol::ModelId;
use store::{Holder, Store};

/// What [`CallCache::admit`] and [`CallCache::evict`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// Models that lost the cache's pin.
    pub models: Vec<ModelId>,
    /// Bytes of files the gc that followed freed.
    pub bytes_freed: u64,
}

#[derive(Default)]
struct State {
    /// Cached model → (when last used, bytes of its files).
    entries: HashMap<ModelId, (u64, u64)>,
    /// Sum of the entries' bytes.
    bytes: u64,
    /// A counter standing for time: each use takes the next value.
    tick: u64,
}

/// The cache of models fetched for peers' calls. Cheap to share behind an `Arc`.
pub struct CallCache {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    budget: u64,
    state: Mutex<State>,
    /// Held while evicting (one eviction and gc at a time).
    evicting: Mutex<()>,
}

impl CallCache {
    /// The cache over what `store` holds for [`Holder::CallCache`], with `budget` bytes.
    pub fn open(store: Arc<Store>, catalog: Arc<Catalog>, budget: u64) -> store::Result<CallCache> {
        let mut state = State::default();
        for hash in store.pinned_by(Holder::CallCache)? {
            let id = ModelId(hash);
            let bytes = model_bytes(&catalog, id);
            state.tick += 1;
            state.entries.insert(id, (state.tick, bytes));
            state.bytes = state.bytes.saturating_add(bytes);
        }
        Ok(CallCache {
            store,
            catalog,
            budget,
            state: Mutex::new(state),
            evicting: Mutex::new(()),
        })
    }

    /// Bytes of files the cache holds now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Models the cache holds now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Notes a call of `id` for a peer, in memory, when `id` is the cache's already; returns
    /// whether it was (otherwise call [`CallCache::admit`], which does I/O).
    pub fn touch(&self, id: ModelId) -> bool {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        match state.entries.get_mut(&id) {
            Some(entry) => {
                entry.0 = tick;
                true
            }
            None => false,
        }
    }

    /// Takes `id`, just used for a peer's call, into the cache unless the user pinned it;
    /// returns whether the cache is now over its budget (then call [`CallCache::evict`]).
    /// Blocking (a pin is written and flushed).
    pub fn admit(&self, id: ModelId) -> store::Result<bool> {
        if self.touch(id) {
            return Ok(self.over_budget());
        }
        if self.store.is_pinned_by(id.blob(), Holder::User)? {
            return Ok(false);
        }
        // A model here but no one's (the cache let it go and no gc ran since, or the fetch
        // for this call pinned it for the cache already): the cache holds it again.
        self.store.pin_for(id.blob(), Holder::CallCache)?;
        let bytes = model_bytes(&self.catalog, id);
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        if state.entries.insert(id, (tick, bytes)).is_none() {
            state.bytes = state.bytes.saturating_add(bytes);
        }
        Ok(state.bytes > self.budget)
    }

    fn over_budget(&self) -> bool {
        self.lock().bytes > self.budget
    }

    /// Lets the least recently called models go until the cache fits its budget (never
    /// `keep`, the model being called), then runs a gc so that their files are freed. A model
    /// the user pinned meanwhile loses only the cache's pin. Blocking.
    pub fn evict(&self, keep: ModelId) -> store::Result<Evicted> {
        let _one = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = Evicted::default();
        loop {
            let victim = {
                let state = self.lock();
                if state.bytes <= self.budget {
                    break;
                }
                state
                    .entries
                    .iter()
                    .filter(|(id, _)| **id != keep)
                    .min_by_key(|(_, (tick, _))| *tick)
                    .map(|(id, (_, bytes))| (*id, *bytes))
            };
            let Some((id, bytes)) = victim else { break };
            self.store.unpin_for(id.blob(), Holder::CallCache)?;
            let mut state = self.lock();
            if state.entries.remove(&id).is_some() {
                state.bytes = state.bytes.saturating_sub(bytes);
            }
            evicted.models.push(id);
        }
        if !evicted.models.is_empty() {
            let report = self.store.gc()?;
            evicted.bytes_freed = report.bytes_freed;
            if report.blobs_removed > 0
                && let Err(e) = self.catalog.refresh_all()
            {
                tracing::warn!("refreshing the catalogue after the call cache's gc: {e:#}");
            }
        }
        Ok(evicted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes of a model's files, as its manifest states them (0 when the catalogue lacks it).
fn model_bytes(catalog: &Catalog, id: ModelId) -> u64 {
    catalog.get(id).map_or(0, |m| {
        m.body()
            .files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BlobHash, FileEntry, Manifest, Runtime, SecretKey};

    /// A model with one file of `size` bytes, stored and catalogued, pinned for `holder`.
    fn model(store: &Store, catalog: &Catalog, name: &str, size: usize, holder: Holder) -> ModelId {
        let bytes: Vec<u8> = name.bytes().cycle().take(size).collect();
        let file = store.import_bytes(&bytes, "raw", Vec::new()).expect("file");
        let manifest = Manifest {
            name: name.into(),
            version: "1".into(),
            runtime: Runtime {
                kind: "onnx".into(),
                entry: None,
                guest: None,
                memory_mib: None,
                language_model: None,
            },
            files: vec![FileEntry {
                path: "w.bin".into(),
                hash: BlobHash::of(&bytes),
                size: size as u64,
            }],
            ..Default::default()
        };
        assert_eq!(file.hash, BlobHash::of(&bytes));
        let id = catalog
            .insert(SecretKey::from_seed(&[3; 32]).sign(manifest))
            .expect("catalogue");
        store.pin_for(id.blob(), holder).expect("pin");
        id
    }

    fn open(dir: &std::path::Path) -> (Arc<Store>, Arc<Catalog>) {
        let store = Arc::new(Store::open(dir).expect("store"));
        let catalog = Arc::new(Catalog::open(store.clone()).expect("catalog"));
        (store, catalog)
    }

    #[test]
    fn the_least_recently_called_models_go_beyond_the_budget_and_their_files_are_freed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, catalog) = open(dir.path());
        let cache = CallCache::open(store.clone(), catalog.clone(), 25_000).expect("cache");
        let a = model(&store, &catalog, "a", 10_000, Holder::CallCache);
        let b = model(&store, &catalog, "b", 10_000, Holder::CallCache);
        let mine = model(&store, &catalog, "mine", 10_000, Holder::User);
        assert!(!cache.admit(a).expect("admit"));
        assert!(!cache.admit(b).expect("admit"));
        assert!(
            !cache.admit(mine).expect("admit"),
            "the user's model is not the cache's"
        );
        assert_eq!((cache.len(), cache.bytes()), (2, 20_000));
        // a is called again: b is now the least recently called.
        assert!(cache.touch(a));
        let c = model(&store, &catalog, "c", 10_000, Holder::CallCache);
        assert!(cache.admit(c).expect("admit"), "30 000 bytes: over budget");
        let evicted = cache.evict(c).expect("evict");
        assert_eq!(evicted.models, vec![b]);
        assert_eq!(evicted.bytes_freed, 10_000);
        assert_eq!((cache.len(), cache.bytes()), (2, 20_000));
        // b's files are gone, its manifest is still known; the others are local.
        assert!(!catalog.is_local(b));
        assert!(catalog.get(b).is_some());
        for id in [a, c, mine] {
            assert!(catalog.is_local(id), "{id}");
        }
        // The user's pin is never the cache's to take, even when the cache holds it too.
        store.pin_for(mine.blob(), Holder::CallCache).expect("pin");
        store.pin(a.blob()).expect("the user pins a");
        let cache = CallCache::open(store.clone(), catalog.clone(), 0).expect("reopen");
        assert_eq!(cache.len(), 3, "entries survive a restart");
        let evicted = cache.evict(c).expect("evict");
        assert_eq!(evicted.models.len(), 2);
        assert!(catalog.is_local(mine) && catalog.is_local(a) && catalog.is_local(c));
        assert!(store.is_pinned_by(a.blob(), Holder::User).expect("held"));
        assert_eq!(cache.len(), 1, "only the model being called stays");
    }

    #[test]
    fn a_model_under_budget_is_kept_and_one_larger_than_the_budget_stays_while_called() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, catalog) = open(dir.path());
        let cache = CallCache::open(store.clone(), catalog.clone(), 5_000).expect("cache");
        let big = model(&store, &catalog, "big", 20_000, Holder::CallCache);
        assert!(cache.admit(big).expect("admit"));
        assert_eq!(cache.evict(big).expect("evict"), Evicted::default());
        assert!(catalog.is_local(big));
        // The next model called pushes it out.
        let small = model(&store, &catalog, "small", 1_000, Holder::CallCache);
        assert!(cache.admit(small).expect("admit"));
        assert_eq!(cache.evict(small).expect("evict").models, vec![big]);
        assert!(!catalog.is_local(big));
        assert!(!cache.admit(small).expect("admit again"));
    }
}
