//! Real libp2p swarms on loopback TCP, each with a real store on disk: DHT provider records,
//! gossip announcements, catalogue sync for a late joiner, verified blob transfer, and a
//! Byzantine provider whose bad bytes never reach the store; compute offers on gossip and
//! inference calls over request-response; generation streams.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use net::libp2p::{Multiaddr, PeerId};
use net::{Client, NetConfig, NetEvent, Provider};
use protocol::wire::{BlobRequest, MAX_CATALOG_PAGE};
use protocol::{BlobHash, FileEntry, Manifest, ModelId, SecretKey};
use store::{IngestError, Store};
use tokio::sync::mpsc;

/// Serves a store; optionally corrupts what it sends (a Byzantine peer).
struct StoreProvider {
    store: Arc<Store>,
    manifests: Mutex<BTreeMap<ModelId, Vec<u8>>>,
    votes: Mutex<BTreeMap<BlobHash, Vec<u8>>>,
    corrupt_at: Option<usize>,
}

struct Corrupting<'a> {
    inner: &'a mut dyn Write,
    at: usize,
    written: usize,
}

impl Write for Corrupting<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut data = data.to_vec();
        if self.at >= self.written && self.at < self.written + data.len() {
            data[self.at - self.written] ^= 0x55;
        }
        self.written += data.len();
        self.inner.write_all(&data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Provider for StoreProvider {
    fn blob_size(&self, hash: BlobHash) -> Option<u64> {
        self.store.record(hash).ok().flatten().map(|r| r.size)
    }

    fn serve(
        &self,
        hash: BlobHash,
        groups: &[(u64, u64)],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let ranges = store::chunk_ranges(groups);
        let result = match self.corrupt_at {
            Some(at) => self.store.read_ranges(
                hash,
                &ranges,
                Corrupting {
                    inner: out,
                    at,
                    written: 0,
                },
            ),
            None => self.store.read_ranges(hash, &ranges, out),
        };
        result.map_err(std::io::Error::other)
    }

    fn catalog_ids(&self, after: Option<ModelId>, max: usize) -> Vec<ModelId> {
        let manifests = self.manifests.lock().expect("lock");
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        manifests
            .range((start, Bound::Unbounded))
            .take(max)
            .map(|(id, _)| *id)
            .collect()
    }

    fn manifest(&self, id: ModelId) -> Option<Vec<u8>> {
        self.manifests.lock().expect("lock").get(&id).cloned()
    }

    fn vote_ids(&self, after: Option<BlobHash>, max: usize) -> Vec<BlobHash> {
        let votes = self.votes.lock().expect("lock");
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        votes
            .range((start, Bound::Unbounded))
            .take(max)
            .map(|(id, _)| *id)
            .collect()
    }

    fn vote(&self, id: BlobHash) -> Option<Vec<u8>> {
        self.votes.lock().expect("lock").get(&id).cloned()
    }
}

struct TestNode {
    client: Client,
    events: mpsc::Receiver<NetEvent>,
    provider: Arc<StoreProvider>,
    addr: Multiaddr,
    _dir: tempfile::TempDir,
}

async fn node(seed: u8, corrupt_at: Option<usize>) -> TestNode {
    node_on(seed, corrupt_at, "/ip4/127.0.0.1/tcp/0").await
}

async fn node_with(seed: u8, serve: net::ServeLimits) -> TestNode {
    node_config(seed, None, "/ip4/127.0.0.1/tcp/0", |c| c.serve = serve).await
}

async fn node_on(seed: u8, corrupt_at: Option<usize>, listen: &str) -> TestNode {
    node_config(seed, corrupt_at, listen, |_| {}).await
}

async fn node_config(
    seed: u8,
    corrupt_at: Option<usize>,
    listen: &str,
    tweak: impl FnOnce(&mut NetConfig),
) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let provider = Arc::new(StoreProvider {
        store,
        manifests: Mutex::default(),
        votes: Mutex::default(),
        corrupt_at,
    });
    let mut config = NetConfig {
        seed: [seed; 32],
        listen: vec![listen.parse().expect("addr")],
        ..NetConfig::default()
    };
    tweak(&mut config);
    let (client, mut events) = net::spawn(config, provider.clone()).await.expect("spawn");
    let addr = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(NetEvent::Listening(a))) => break a,
            Ok(Some(_)) => continue,
            other => panic!("no listen address: {other:?}"),
        }
    };
    let addr = addr.with(net::libp2p::multiaddr::Protocol::P2p(client.peer_id()));
    TestNode {
        client,
        events,
        provider,
        addr,
        _dir: dir,
    }
}

async fn wait_for_manifest(node: &mut TestNode, name: &str) -> PeerId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, node.events.recv()).await {
            Ok(Some(NetEvent::Manifest { from, manifest })) if manifest.body().name == name => {
                return from;
            }
            Ok(Some(_)) => continue,
            other => panic!("manifest {name} never arrived: {other:?}"),
        }
    }
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(i as u8 >> 3))
        .collect()
}

/// Stores `data` on `node` as a raw blob; its hash.
fn import(node: &TestNode, data: &[u8]) -> BlobHash {
    node.provider
        .store
        .import_bytes(data, "raw", vec![])
        .expect("import")
        .hash
}

/// Fetches every group of `hash` from `peer` into `into`'s store.
async fn fetch(
    into: &TestNode,
    peer: PeerId,
    hash: BlobHash,
    size: u64,
) -> Result<(), IngestError> {
    fetch_groups(into, peer, hash, size, vec![(0, store::groups(size))]).await
}

/// Fetches `groups` of `hash` from `peer` into `into`'s store.
async fn fetch_groups(
    into: &TestNode,
    peer: PeerId,
    hash: BlobHash,
    size: u64,
    groups: Vec<(u64, u64)>,
) -> Result<(), IngestError> {
    let response = into
        .client
        .request_blob(
            peer,
            &BlobRequest {
                hash,
                groups: groups.clone(),
            },
        )
        .await
        .expect("request");
    assert_eq!(response.size, size);
    let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
    let store = into.provider.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .ingest(hash, size, &store::chunk_ranges(&groups), reader)
            .map(|_| ())
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_find_fetch_and_hear_announcements() {
    let a = node(1, None).await;
    let mut b = node(2, None).await;
    let mut c = node(3, None).await;
    b.client.dial(a.addr.clone()).await.expect("b dials a");
    c.client.dial(b.addr.clone()).await.expect("c dials b");

    // A stores and provides a blob; C finds A through the DHT (it only knows B) and fetches.
    let data = blob(700_000, 7);
    let imported = a
        .provider
        .store
        .import_bytes(&data, "raw", vec![])
        .expect("import");
    a.client.provide(imported.hash).await.expect("provide");
    let mut providers = Vec::new();
    for _ in 0..50 {
        providers = c.client.find_providers(imported.hash).await.expect("find");
        if providers.contains(&a.client.peer_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        providers.contains(&a.client.peer_id()),
        "providers: {providers:?}"
    );
    fetch(&c, a.client.peer_id(), imported.hash, data.len() as u64)
        .await
        .expect("verified fetch");
    let mut out = Vec::new();
    c.provider
        .store
        .read_to(imported.hash, &mut out)
        .expect("read");
    assert_eq!(out, data);

    // A announces a signed manifest; B and C hear it by gossip.
    let key = SecretKey::from_seed(&[1; 32]);
    let envelope = key
        .sign(Manifest {
            name: "announced".into(),
            version: "1".into(),
            ..Manifest::default()
        })
        .to_bytes();
    a.provider
        .manifests
        .lock()
        .expect("lock")
        .insert(protocol::model_id(&envelope), envelope.clone());
    // Gossipsub needs a heartbeat or two to build its mesh; republishing is idempotent.
    let announcer = a.client.clone();
    let republish = tokio::spawn(async move {
        for _ in 0..20 {
            let _ = announcer.announce(envelope.clone()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    wait_for_manifest(&mut b, "announced").await;
    wait_for_manifest(&mut c, "announced").await;
    republish.abort();

    // D joins late and learns the manifest from A's catalogue on connect.
    let mut d = node(4, None).await;
    d.client.dial(a.addr.clone()).await.expect("d dials a");
    let from = wait_for_manifest(&mut d, "announced").await;
    assert_eq!(from, a.client.peer_id());
    // The catalogue can also be asked for explicitly.
    let listed = d.client.catalog(a.client.peer_id()).await.expect("catalog");
    assert_eq!(listed.len(), 1);
}

/// A catalogue bigger than one response (18 manifests of nearly 1 MiB, which overflowed the old
/// single 16 MiB answer, and more manifests than one page holds) reaches a late joiner whole,
/// a page at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_bigger_than_one_answer_syncs_in_pages() {
    let a = node(8, None).await;
    let key = SecretKey::from_seed(&[2; 32]);
    let mut expected = BTreeSet::new();
    let mut add = |manifest: Manifest| {
        let envelope = key.sign(manifest).to_bytes();
        let id = protocol::model_id(&envelope);
        expected.insert(id);
        a.provider
            .manifests
            .lock()
            .expect("lock")
            .insert(id, envelope);
    };
    for big in 0..18u64 {
        let files = (0..900u64)
            .map(|i| FileEntry {
                path: format!("{big:02}/{i:04}/{}", "x".repeat(990)),
                hash: BlobHash::of(&i.to_le_bytes()),
                size: i,
            })
            .collect();
        add(Manifest {
            name: format!("big-{big}"),
            version: "1".into(),
            files,
            ..Manifest::default()
        });
    }
    for small in 0..(MAX_CATALOG_PAGE + 300) {
        add(Manifest {
            name: format!("small-{small}"),
            version: "1".into(),
            ..Manifest::default()
        });
    }
    let big = a
        .provider
        .manifests
        .lock()
        .expect("lock")
        .values()
        .map(Vec::len)
        .sum::<usize>();
    assert!(
        big > 16 << 20,
        "the catalogue must not fit one old answer: {big} bytes"
    );

    let mut d = node(9, None).await;
    d.client.dial(a.addr.clone()).await.expect("d dials a");
    let mut heard = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while heard.len() < expected.len() {
        match tokio::time::timeout_at(deadline, d.events.recv()).await {
            Ok(Some(NetEvent::Manifest { from, manifest })) => {
                assert_eq!(from, a.client.peer_id());
                heard.insert(protocol::model_id(&manifest.to_bytes()));
            }
            Ok(Some(_)) => continue,
            other => panic!(
                "sync stopped at {} of {} manifests: {other:?}",
                heard.len(),
                expected.len()
            ),
        }
    }
    assert_eq!(heard, expected);
    let listed = d.client.catalog(a.client.peer_id()).await.expect("catalog");
    assert_eq!(listed.len(), expected.len());
}

/// A node joining a network reconciles its catalogue with a few peers (`net::SYNC_PEERS`), not
/// with every connection, and by id: it asks only for the manifests it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_reconciles_by_id_with_a_few_peers() {
    let key = SecretKey::from_seed(&[4; 32]);
    let envelope = |name: String| {
        let bytes = key
            .sign(Manifest {
                name,
                version: "1".into(),
                ..Manifest::default()
            })
            .to_bytes();
        (protocol::model_id(&bytes), bytes)
    };
    let shared = envelope("known-to-all".into());
    let mut peers = Vec::new();
    for i in 0..5u8 {
        let p = node(30 + i, None).await;
        let mut manifests = p.provider.manifests.lock().expect("lock");
        manifests.insert(shared.0, shared.1.clone());
        for k in 0..2 {
            let (id, bytes) = envelope(format!("peer-{i}-model-{k}"));
            manifests.insert(id, bytes);
        }
        drop(manifests);
        peers.push(p);
    }
    let mut joiner = node(40, None).await;
    joiner
        .provider
        .manifests
        .lock()
        .expect("lock")
        .insert(shared.0, shared.1.clone());
    for p in &peers {
        joiner.client.dial(p.addr.clone()).await.expect("dial");
    }
    let mut heard: BTreeMap<ModelId, PeerId> = BTreeMap::new();
    // Six manifests from three peers, then nothing more for a while.
    let quiet = Duration::from_secs(3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let wait = if heard.len() >= 2 * net::SYNC_PEERS {
            tokio::time::Instant::now() + quiet
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait, joiner.events.recv()).await {
            Ok(Some(NetEvent::Manifest { from, manifest })) => {
                let id = protocol::model_id(&manifest.to_bytes());
                assert_ne!(id, shared.0, "asked for a manifest it already knew");
                assert!(heard.insert(id, from).is_none(), "heard a manifest twice");
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the network stopped"),
            Err(_) => break,
        }
    }
    let from: BTreeSet<PeerId> = heard.values().copied().collect();
    assert_eq!(from.len(), net::SYNC_PEERS, "synced with {from:?}");
    assert_eq!(heard.len(), 2 * net::SYNC_PEERS);
}

/// A vote envelope by `key` on a model named by `seed`, issued `age_ms` ago, and its id.
fn vote(key: &SecretKey, seed: u8, age_ms: u64) -> (BlobHash, Vec<u8>) {
    use protocol::vote::{Choice, Vote};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let bytes = key
        .sign(Vote {
            model: ModelId(BlobHash::of(&[seed])),
            choice: Choice::Up,
            clock: 1,
            issued_ms: now_ms - age_ms,
            receipts: Vec::new(),
        })
        .to_bytes();
    (BlobHash::of(&bytes), bytes)
}

/// The ids of the votes `node` hears within `wait` of quiet (from sync or gossip).
async fn votes_heard(node: &mut TestNode, wait: Duration) -> BTreeSet<BlobHash> {
    let mut heard = BTreeSet::new();
    loop {
        match tokio::time::timeout(wait, node.events.recv()).await {
            Ok(Some(NetEvent::Vote { vote, envelope, .. })) => {
                assert_eq!(vote.id(), BlobHash::of(&envelope));
                heard.insert(vote.id());
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the network stopped"),
            Err(_) => return heard,
        }
    }
}

/// Votes are reconciled by id when peers connect, asking only for what is missing; a recent
/// vote the peer lacked is gossiped to it even when that peer does not sync back (it had
/// synced with its [`net::SYNC_PEERS`] already), and an old one is left to its own syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_reconcile_by_id_and_recent_ones_are_pushed() {
    let keys: Vec<SecretKey> = (0..5u8)
        .map(|i| SecretKey::from_seed(&[60 + i; 32]))
        .collect();
    let shared = vote(&keys[0], 1, 0);
    let a_old = vote(&keys[1], 2, 3_600_000);
    let a_new = vote(&keys[2], 3, 0);
    let b_new = vote(&keys[3], 4, 0);
    let b_old = vote(&keys[4], 5, 3_600_000);
    let mut a = node(70, None).await;
    a.provider
        .votes
        .lock()
        .expect("lock")
        .extend([shared.clone(), a_old.clone(), a_new.clone()]);
    // A syncs with these first, and then with nobody else for a while.
    let mut others = Vec::new();
    for i in 0..net::SYNC_PEERS as u8 {
        let mut d = node(73 + i, None).await;
        d.client.dial(a.addr.clone()).await.expect("dial");
        let heard = votes_heard(&mut d, Duration::from_secs(2)).await;
        assert_eq!(heard, BTreeSet::from([shared.0, a_old.0, a_new.0]));
        others.push(d);
    }
    let mut b = node(71, None).await;
    b.provider
        .votes
        .lock()
        .expect("lock")
        .extend([shared.clone(), b_new.clone(), b_old.clone()]);
    let _ = votes_heard(&mut a, Duration::from_millis(10)).await;
    b.client.dial(a.addr.clone()).await.expect("dial");
    let (at_a, at_b) = tokio::join!(
        votes_heard(&mut a, Duration::from_secs(5)),
        votes_heard(&mut b, Duration::from_secs(5)),
    );
    // B pulled what it lacked (and may hear the shared vote again as gossip).
    assert!(
        at_b.is_superset(&BTreeSet::from([a_old.0, a_new.0])),
        "{at_b:?}"
    );
    assert!(at_b.is_subset(&BTreeSet::from([a_old.0, a_new.0, shared.0])));
    // A got B's recent vote by B's push, and not its old one (nobody keeps what they hear
    // here, and A does not sync with B).
    assert!(at_a.contains(&b_new.0), "{at_a:?}");
    assert!(!at_a.contains(&b_old.0), "an old vote was pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_from_a_byzantine_provider_never_reach_the_store() {
    let evil = node(5, Some(150_000)).await;
    let honest = node(6, None).await;
    let victim = node(7, None).await;
    let data = blob(600_000, 11);
    for n in [&evil, &honest] {
        n.provider
            .store
            .import_bytes(&data, "raw", vec![])
            .expect("import");
    }
    let hash = BlobHash::of(&data);
    victim
        .client
        .dial(evil.addr.clone())
        .await
        .expect("dial evil");
    victim
        .client
        .dial(honest.addr.clone())
        .await
        .expect("dial honest");

    // The size first, proven by one peer's last group (as the node's fetcher does).
    let size = data.len() as u64;
    let last = store::groups(size) - 1;
    fetch_groups(
        &victim,
        honest.client.peer_id(),
        hash,
        size,
        vec![(last, last + 1)],
    )
    .await
    .expect("the last group proves the size");
    let err = fetch(&victim, evil.client.peer_id(), hash, size)
        .await
        .expect_err("corrupt data must be rejected");
    let IngestError::PeerMisbehaved { outcome, .. } = err else {
        panic!("expected PeerMisbehaved, got {err:?}");
    };
    assert!(!outcome.complete);
    assert!(!victim.provider.store.has(hash).expect("has"));
    // The honest provider completes what is missing, re-sending nothing already verified.
    let missing = victim
        .provider
        .store
        .missing(hash, data.len() as u64)
        .expect("missing");
    let groups = store::group_ranges(&missing, data.len() as u64);
    assert!(groups.iter().map(|(s, e)| e - s).sum::<u64>() < store::groups(data.len() as u64));
    let response = victim
        .client
        .request_blob(
            honest.client.peer_id(),
            &BlobRequest {
                hash,
                groups: groups.clone(),
            },
        )
        .await
        .expect("request");
    let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
    let st = victim.provider.store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        st.ingest(hash, size, &store::chunk_ranges(&groups), reader)
    })
    .await
    .expect("join")
    .expect("honest ingest");
    assert!(outcome.complete);
    assert!(victim.provider.store.verify(None).expect("verify").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_to_a_peer_nobody_can_reach_fails_at_once() {
    // No address of the peer is known: the dial fails at once, and so does the request (not
    // after the dial timeout).
    let a = node(72, None).await;
    let stranger = node(73, None).await.client.peer_id();
    let start = tokio::time::Instant::now();
    let err = a
        .client
        .request_blob(
            stranger,
            &BlobRequest {
                hash: BlobHash::of(b"anything"),
                groups: vec![(0, 1)],
            },
        )
        .await
        .expect_err("unreachable");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}: {err}",
        start.elapsed()
    );
    assert!(err.to_string().contains("unavailable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blobs_and_bad_ranges_get_clear_answers() {
    let a = node(8, None).await;
    let b = node(9, None).await;
    b.client.dial(a.addr.clone()).await.expect("dial");
    let missing = BlobHash::of(b"nobody has this");
    let err = b
        .client
        .request_blob(
            a.client.peer_id(),
            &BlobRequest {
                hash: missing,
                groups: vec![(0, 1)],
            },
        )
        .await
        .expect_err("not found");
    assert!(err.to_string().contains("NotFound"), "{err}");
    let small = a
        .provider
        .store
        .import_bytes(b"tiny", "raw", vec![])
        .expect("import");
    let err = b
        .client
        .request_blob(
            a.client.peer_id(),
            &BlobRequest {
                hash: small.hash,
                groups: vec![(0, 5)],
            },
        )
        .await
        .expect_err("out of range");
    assert!(err.to_string().contains("BadRequest"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_streams_is_answered_and_none_is_dropped() {
    // Streams negotiated together wait in the provider's accept queue (64) for its accept
    // loop; `libp2p-stream` held one and reset the rest, which requesters took for a peer that
    // could not serve.
    let limits = net::ServeLimits {
        per_peer: 64,
        ..net::ServeLimits::default()
    };
    let a = node_with(70, limits).await;
    let b = node(71, None).await;
    b.client.dial(a.addr.clone()).await.expect("dial");
    let data = blob(1 << 20, 17);
    let hash = import(&a, &data);
    let burst = net::streams::ACCEPT_QUEUE - 16;
    for round in 0..3 {
        let requests = (0..burst as u64).map(|i| {
            let client = b.client.clone();
            let peer = a.client.peer_id();
            async move {
                client
                    .request_blob(
                        peer,
                        &BlobRequest {
                            hash,
                            groups: vec![(i, i + 1)],
                        },
                    )
                    .await
            }
        });
        let answers = futures::future::join_all(requests).await;
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|a| a.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of {burst} requests failed: {failed:?}",
            failed.len()
        );
        assert!(
            answers
                .iter()
                .flatten()
                .all(|r| r.size == data.len() as u64)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_move_over_quic_too() {
    let a = node_on(10, None, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let b = node_on(11, None, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    assert!(a.addr.to_string().contains("quic-v1"), "{}", a.addr);
    b.client.dial(a.addr.clone()).await.expect("dial over QUIC");
    let data = blob(2_000_000, 13);
    let imported = a
        .provider
        .store
        .import_bytes(&data, "raw", vec![])
        .expect("import");
    fetch(&b, a.client.peer_id(), imported.hash, data.len() as u64)
        .await
        .expect("verified fetch over QUIC");
    let mut out = Vec::new();
    b.provider
        .store
        .read_to(imported.hash, &mut out)
        .expect("read");
    assert_eq!(out, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_gossip_and_inference_calls_round_trip() {
    use protocol::Object;
    use protocol::compute::{ComputeOffer, InferReply, InferStatus};
    let mut a = node(21, None).await;
    let mut b = node(22, None).await;
    b.client.dial(a.addr.clone()).await.expect("dial");
    let key = SecretKey::from_seed(&[22; 32]);
    assert_eq!(net::peer_id_of(&key.node_id()), Some(b.client.peer_id()));
    assert_eq!(net::node_id_of(&b.client.peer_id()), Some(key.node_id()));
    assert_eq!(net::node_id_of(&PeerId::random()), None);
    let offer = key
        .sign(ComputeOffer {
            issued_ms: 1,
            expires_ms: u64::MAX,
            cores: 2,
            backends: vec!["wasm".into()],
            max_concurrent: 2,
            price_per_mfuel: 7,
            ..ComputeOffer::default()
        })
        .to_bytes();
    // Gossip needs a mesh; re-announce until the offer arrives, as providers do (until the
    // peers' subscriptions are known, nobody hears it and the announcement says so).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let heard = loop {
        let _ = b.client.announce_offer(offer.clone()).await;
        match tokio::time::timeout(Duration::from_millis(500), a.events.recv()).await {
            Ok(Some(NetEvent::Offer { offer, .. })) => break offer,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("network stopped"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no offer heard");
    };
    assert_eq!(heard.body().price_per_mfuel, 7);
    assert_eq!(net::peer_id_of(&heard.signer()), Some(b.client.peer_id()));

    // b answers calls by echoing their length; a's call sees the reply bytes.
    tokio::spawn(async move {
        while let Some(event) = b.events.recv().await {
            if let NetEvent::InferCall { call, reply, .. } = event {
                let answer = InferReply::error(InferStatus::Busy, format!("{} bytes", call.len()));
                reply.send(answer.to_bytes());
            }
        }
    });
    let b_peer = net::peer_id_of(&key.node_id()).expect("peer id");
    let reply = a
        .client
        .infer(b_peer, vec![0u8; 1000])
        .await
        .expect("reply");
    let reply = InferReply::from_bytes(&reply).expect("decodes");
    assert_eq!(reply.status, InferStatus::Busy);
    assert_eq!(reply.message.as_deref(), Some("1000 bytes"));
    // A call larger than the protocol allows never reaches the provider.
    let too_big = vec![0u8; protocol::compute::MAX_INFER_CALL_BYTES + 1];
    assert!(a.client.infer(b_peer, too_big).await.is_err());
}

/// A peer that keeps sending gossip that fails verification is scored down and then ignored:
/// what it sends next is dropped before it is verified, even a genuine manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_invalid_gossip_is_graylisted() {
    let a = node(14, None).await;
    let mut b = node(15, None).await;
    b.client.dial(a.addr.clone()).await.expect("b dials a");
    let key = SecretKey::from_seed(&[6; 32]);
    let manifest = |name: &str| {
        key.sign(Manifest {
            name: name.into(),
            version: "1".into(),
            ..Manifest::default()
        })
        .to_bytes()
    };
    // Wait for the mesh: a genuine manifest from A arrives.
    let first = manifest("first");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = a.client.announce(first.clone()).await;
        match tokio::time::timeout(Duration::from_millis(500), b.events.recv()).await {
            Ok(Some(NetEvent::Manifest { manifest, .. })) if manifest.body().name == "first" => {
                break;
            }
            _ => assert!(tokio::time::Instant::now() < deadline, "no mesh"),
        }
    }
    // Ten forgeries, each a distinct message. B verifies and rejects them (five are enough to
    // graylist A whatever credit it earned); the verdicts may lag under load, so B is given
    // time, and then a moment for the last verdicts to land.
    let mut rejected = 0;
    for i in 0..10 {
        let mut forged = manifest(&format!("forged-{i}"));
        let last = forged.len() - 1;
        forged[last] ^= 1;
        a.client.announce(forged).await.expect("publish");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rejected < 5 {
        match tokio::time::timeout_at(deadline, b.events.recv()).await {
            Ok(Some(NetEvent::Rejected { .. })) => rejected += 1,
            Ok(Some(_)) => {}
            other => panic!("B rejected only {rejected} forgeries: {other:?}"),
        }
    }
    let settle = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(_)) = tokio::time::timeout_at(settle, b.events.recv()).await {}
    // Now A's genuine manifests are ignored too.
    let later = manifest("later");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let _ = a.client.announce(later.clone()).await;
        match tokio::time::timeout_at(deadline, b.events.recv()).await {
            Ok(Some(NetEvent::Manifest { manifest, .. })) => {
                panic!("B took {} from a graylisted peer", manifest.body().name)
            }
            Ok(Some(_)) => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_is_forwarded_only_after_it_verifies() {
    // A line: A - B - C; A publishes a forgery and a genuine manifest, over and over.
    let a = node(11, None).await;
    let mut b = node(12, None).await;
    let mut c = node(13, None).await;
    b.client.dial(a.addr.clone()).await.expect("b dials a");
    c.client.dial(b.addr.clone()).await.expect("c dials b");
    let key = SecretKey::from_seed(&[5; 32]);
    let manifest = |name: &str| {
        key.sign(Manifest {
            name: name.into(),
            version: "1".into(),
            ..Manifest::default()
        })
        .to_bytes()
    };
    let genuine = manifest("genuine");
    let mut forged = manifest("forged");
    let last = forged.len() - 1;
    forged[last] ^= 1; // the signature's last byte
    let announcer = a.client.clone();
    let republish = tokio::spawn(async move {
        for _ in 0..20 {
            let _ = announcer.announce(forged.clone()).await;
            let _ = announcer.announce(genuine.clone()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // B verifies both: the forgery is rejected (and not forwarded), the genuine one arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut rejected, mut heard) = (false, false);
    while !(rejected && heard) {
        match tokio::time::timeout_at(deadline, b.events.recv()).await {
            Ok(Some(NetEvent::Rejected { from, reason })) => {
                assert_eq!(from, a.client.peer_id());
                assert!(reason.contains("signature"), "{reason}");
                rejected = true;
            }
            Ok(Some(NetEvent::Manifest { manifest, .. })) => {
                assert_eq!(manifest.body().name, "genuine");
                heard = true;
            }
            Ok(Some(_)) => {}
            other => panic!("B: rejected {rejected}, heard {heard}: {other:?}"),
        }
    }
    // C may connect to A too (the DHT introduces them), and then hears A itself. But B, having
    // rejected the forgery, never forwards it: nothing forged reaches C from B.
    let b_id = b.client.peer_id();
    let check = |event: &NetEvent| {
        if let NetEvent::Rejected { from, reason } = event {
            assert_ne!(*from, b_id, "B forwarded a forgery to C: {reason}");
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Ok(Some(NetEvent::Manifest { manifest, .. })) => {
                assert_eq!(manifest.body().name, "genuine");
                break;
            }
            Ok(Some(event)) => check(&event),
            other => panic!("C never heard the genuine manifest: {other:?}"),
        }
    }
    // A few more rounds of republishing give a forwarded forgery every chance to show up.
    let more = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(event)) = tokio::time::timeout_at(more, c.events.recv()).await {
        check(&event);
    }
    republish.abort();
}

/// A provider (seed `seed`) holding a 4 MiB blob, and fresh peers (the next seeds), each
/// opening as many streams of the whole blob as a peer may and never reading them, until every
/// one of the provider's slots is held.
struct FullProvider {
    provider: TestNode,
    /// The blob's size in bytes.
    size: u64,
    whole: BlobRequest,
    attackers: Vec<TestNode>,
    held: Vec<net::BlobResponse>,
}

async fn full_provider(limits: &net::ServeLimits, seed: u8) -> FullProvider {
    let provider = node_with(seed, limits.clone()).await;
    let data = blob(4 << 20, seed);
    let hash = import(&provider, &data);
    let size = data.len() as u64;
    let whole = BlobRequest {
        hash,
        groups: vec![(0, store::groups(size))],
    };
    let mut attackers = Vec::new();
    let mut held = Vec::new();
    for i in 0..limits.total / limits.per_peer {
        let attacker = node_with(seed + 1 + i as u8, limits.clone()).await;
        attacker
            .client
            .dial(provider.addr.clone())
            .await
            .expect("dial");
        for _ in 0..limits.per_peer {
            match attacker
                .client
                .request_blob(provider.client.peer_id(), &whole)
                .await
            {
                Ok(response) => held.push(response),
                Err(e) => panic!("the provider refused an attacker with free slots: {e}"),
            }
        }
        attackers.push(attacker);
    }
    assert_eq!(held.len(), limits.total);
    FullProvider {
        provider,
        size,
        whole,
        attackers,
        held,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_read_cannot_keep_an_honest_requester_out() {
    let limits = net::ServeLimits {
        evict_after: Duration::from_millis(300),
        ..net::ServeLimits::default()
    };
    let FullProvider {
        provider: a,
        size,
        whole,
        attackers,
        mut held,
    } = full_provider(&limits, 60).await;
    let hash = whole.hash;

    // The first attacker lets two of its streams go and a fresh one takes both slots: the
    // provider is full, and the first attacker is under its per-peer limit while it holds six
    // streams it never reads. It takes no one else's slot (it would churn the attackers' slots
    // among themselves); a peer with nothing stalled there may.
    held.drain(..2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = node_with(70, limits.clone()).await;
    fresh.client.dial(a.addr.clone()).await.expect("dial");
    for _ in 0..2 {
        match fresh.client.request_blob(a.client.peer_id(), &whole).await {
            Ok(r) => held.push(r),
            Err(e) => panic!("a peer with nothing stalled was refused: {e}"),
        }
    }
    tokio::time::sleep(limits.evict_after + Duration::from_millis(200)).await;
    for peer in [&attackers[0], &fresh] {
        match peer.client.request_blob(a.client.peer_id(), &whole).await {
            Err(net::NetError::Busy { .. }) => {}
            Ok(_) => panic!("a peer holding stalled streams took another peer's slot"),
            Err(e) => panic!("expected Busy: {e}"),
        }
    }

    // An honest peer asks, as a fetcher would: Busy means try again shortly.
    let honest = node_with(90, limits).await;
    honest.client.dial(a.addr.clone()).await.expect("dial");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut busy = 0;
    let response = loop {
        match honest.client.request_blob(a.client.peer_id(), &whole).await {
            Ok(r) => break r,
            Err(net::NetError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("honest request never served ({busy} busy answers): {e}"),
        }
    };
    let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
    let st = honest.provider.store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        st.ingest(hash, size, &store::chunk_ranges(&whole.groups), reader)
    })
    .await
    .expect("join")
    .expect("honest ingest");
    assert!(outcome.complete);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_is_served_at_once_from_peers_holding_more_than_their_share() {
    // No stream stalls long enough to be ended for that within the test: only the fair share
    // can make room.
    let limits = net::ServeLimits {
        evict_after: Duration::from_secs(600),
        ..net::ServeLimits::default()
    };
    let FullProvider {
        provider: a,
        size,
        whole,
        attackers,
        held,
    } = full_provider(&limits, 100).await;
    let hash = whole.hash;

    // Every slot is held by streams a moment old. A newcomer's requests, four at once as a
    // fetcher pipelines them, are all served on the first try: its share is 64 / 9 = 7.
    let honest = node_with(120, limits.clone()).await;
    honest.client.dial(a.addr.clone()).await.expect("dial");
    let asked = (0..4).map(|_| honest.client.request_blob(a.client.peer_id(), &whole));
    let mut responses = Vec::new();
    for r in futures::future::join_all(asked).await {
        match r {
            Ok(r) => responses.push(r),
            Err(e) => panic!("a peer under its share was refused: {e}"),
        }
    }

    // The attackers now hold 60 streams, each at least its share of 7: none may take another's
    // slot or the newcomer's.
    for (i, attacker) in attackers.iter().enumerate() {
        match attacker
            .client
            .request_blob(a.client.peer_id(), &whole)
            .await
        {
            Err(net::NetError::Busy { .. }) => {}
            Ok(_) => panic!("attacker {i}, at or over its share, took a slot"),
            Err(e) => panic!("expected Busy: {e}"),
        }
    }

    // What the newcomer was sent is the whole blob, verified.
    for response in responses {
        let reader = response.into_blocking_reader(tokio::runtime::Handle::current());
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Store::open(dir.path()).expect("store");
        let groups = whole.groups.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            st.ingest(hash, size, &store::chunk_ranges(&groups), reader)
        })
        .await
        .expect("join")
        .expect("honest ingest");
        assert!(outcome.complete);
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_high_watermark_idle_connections_give_way_and_useful_peers_stay() {
    let limits = net::ConnectionLimits {
        target_connections: 4,
        max_connections: 4,
        ..net::ConnectionLimits::default()
    };
    let a = node_config(100, None, "/ip4/127.0.0.1/tcp/0", |c| {
        c.connections = limits
    })
    .await;
    let data = blob(64 << 10, 3);
    let hash = import(&a, &data);
    // Idle strangers (light nodes: they do not even sync the catalogue) fill every inbound slot.
    let idle = |seed| node_config(seed, None, "/ip4/127.0.0.1/tcp/0", |c| c.light = true);
    let mut strangers = Vec::new();
    for i in 0..4 {
        let peer = idle(101 + i).await;
        peer.client.dial(a.addr.clone()).await.expect("dial");
        strangers.push(peer);
    }
    let connected = || async { a.client.peers().await.expect("peers") };
    // The dialer may see its connection before the listener does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connected().await.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the strangers never all got in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An honest newcomer still gets in (an idle stranger gives way) and fetches.
    let honest = node(90, None).await;
    honest.client.dial(a.addr.clone()).await.expect("dial");
    fetch(&honest, a.client.peer_id(), hash, data.len() as u64)
        .await
        .expect("the newcomer fetches");
    let settled = || async {
        // The door (4 + 1 + 1) holds for inbound connections at once, the hard bound (5)
        // once the closes are done; newcomers may stay above the high watermark for their
        // grace (10 s), until the next check (every 10 s). (Outbound ones pass the door: the
        // DHT's lookups while its table is small dial peers the node pruned, and the prune
        // closes them again.)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
        loop {
            let (inbound, _) = a.client.connections().await.expect("connections");
            assert!(
                inbound <= 6,
                "{inbound} inbound connections, at most 6 get in"
            );
            let now = connected().await;
            if now.len() <= 4 {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never back at 4: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let now = settled().await;
    assert!(now.contains(&honest.client.peer_id()));
    // A stranger gave way (the one that did least: the node synced its catalogue from the
    // first three, whose answers count as use).
    let gone = strangers
        .iter()
        .filter(|s| !now.contains(&s.client.peer_id()))
        .count();
    assert_eq!(gone, 1, "one idle stranger gave way");
    // More strangers come: each takes an idle one's place, never the peer that did something.
    for i in 0..6 {
        let peer = idle(110 + i).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), peer.client.dial(a.addr.clone())).await;
        settled().await;
        strangers.push(peer);
    }
    assert!(connected().await.contains(&honest.client.peer_id()));
    fetch(&honest, a.client.peer_id(), hash, data.len() as u64)
        .await
        .expect("the honest peer still fetches");
    // The node's own dials are not refused (an idle connection gives way instead).
    let other = node(120, None).await;
    a.client
        .dial(other.addr.clone())
        .await
        .expect("an outbound dial");
}

/// A generation stream: the caller's call reaches the provider whole, text frames arrive one by
/// one while the provider is still writing (each is flushed), then the end; a caller that drops
/// the stream makes the provider's next write fail (it stops generating); a call larger than the
/// protocol allows never reaches the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_frames_stream_as_written_and_a_caller_that_leaves_stops_the_provider() {
    use protocol::compute::{InferReply, InferStatus};
    use protocol::generate::{GenerateFrame, Timings};
    let a = node(31, None).await;
    let mut b = node(32, None).await;
    a.client.dial(b.addr.clone()).await.expect("dial");
    let b_peer = b.client.peer_id();
    let (released_tx, mut released) = mpsc::channel::<()>(1);
    let (write_failed_tx, mut write_failed) = mpsc::channel::<bool>(1);
    tokio::spawn(async move {
        let mut calls = 0;
        while let Some(event) = b.events.recv().await {
            let NetEvent::GenerateCall {
                call,
                mut responder,
                ..
            } = event
            else {
                continue;
            };
            calls += 1;
            if calls == 1 {
                // Two words, the second only once the caller saw the first.
                assert_eq!(call, b"the call".to_vec());
                responder.text("Hello").await.expect("text");
                released.recv().await;
                responder.text(", world").await.expect("text");
                let end = InferReply::error(InferStatus::Failed, "done");
                responder.end(end, Timings::default()).await.expect("end");
            } else {
                // The caller goes away after the first word: writing on fails soon.
                responder.text("one").await.expect("text");
                let mut failed = false;
                for _ in 0..200 {
                    if responder.text("more ").await.is_err() {
                        failed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = write_failed_tx.send(failed).await;
            }
        }
    });
    let mut stream = a
        .client
        .generate(b_peer, b"the call")
        .await
        .expect("stream");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("in time")
        .expect("a frame");
    assert_eq!(first, GenerateFrame::Text("Hello".into()));
    released_tx.send(()).await.expect("release");
    assert_eq!(
        stream.next().await.expect("a frame"),
        GenerateFrame::Text(", world".into())
    );
    match stream.next().await.expect("the end") {
        GenerateFrame::End(reply, _) => assert_eq!(reply.message.as_deref(), Some("done")),
        other => panic!("expected the end, got {other:?}"),
    }
    assert!(stream.next().await.is_err(), "nothing after the end");

    let mut leaving = a.client.generate(b_peer, b"again").await.expect("stream");
    assert_eq!(
        leaving.next().await.expect("a frame"),
        GenerateFrame::Text("one".into())
    );
    drop(leaving);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), write_failed.recv())
            .await
            .expect("in time"),
        Some(true),
        "the provider's writes go on failing to notice the caller left"
    );

    let too_big = vec![0u8; protocol::compute::MAX_INFER_CALL_BYTES + 1];
    // Refused as soon as its length is read: the stream is reset while the caller writes, or
    // right after.
    if let Ok(mut refused) = a.client.generate(b_peer, &too_big).await {
        assert!(
            tokio::time::timeout(Duration::from_secs(15), refused.next())
                .await
                .expect("in time")
                .is_err(),
            "an oversized call is dropped"
        );
    }
}
