//! The typed bodies of `/api/v1`: what each route takes and answers. The CLI decodes the same
//! types it renders (`moxnet --json` prints exactly these objects), so the API is the contract
//! between the node and every client. Hashes, ids and peer ids travel as lowercase hex or
//! base58 text, exactly as the CLI prints them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `GET /api/v1/node`: who and where this node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's ed25519 public key (hex).
    pub node_id: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// The addresses it listens on, each ending in `/p2p/<peer id>`.
    pub listen: Vec<String>,
    /// The peers connected now.
    pub peers: Vec<String>,
    /// The limits it runs under, as `[what, value]` pairs in words (for people: the web UI's
    /// node page).
    #[serde(default)]
    pub limits: Vec<(String, String)>,
}

/// `GET /api/v1/models`: the models this node knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// One row per model.
    pub models: Vec<ModelRow>,
}

/// One known model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    /// The model id.
    pub model_id: String,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// The author's node id (the manifest's signer).
    pub author: String,
    /// Number of files.
    pub files: usize,
    /// Total bytes of the files.
    pub bytes: u64,
    /// Whether every file and the guest are on this node (it can run the model).
    pub local: bool,
}

/// `GET /api/v1/blobs`: the blobs in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobList {
    /// One row per blob.
    pub blobs: Vec<BlobRow>,
}

/// One stored blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRow {
    /// Its hash.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// What it holds: `file`, `collection`, `manifest`, `snapshot`, …
    pub kind: String,
    /// Whether a pin keeps it.
    pub pinned: bool,
}

/// `POST /api/v1/blobs`: add a file or folder on this machine to the store, and pin it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddRequest {
    /// An absolute path, read by the node with its user's rights.
    pub path: PathBuf,
}

/// What an add stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    /// The hash of the file, or of the folder's collection.
    pub hash: String,
    /// Bytes of the file or collection.
    pub size: u64,
    /// Whether the store did not have it before.
    pub new: bool,
    /// `file` or `collection`.
    pub kind: String,
}

/// `POST /api/v1/export`: write a blob, folder or model package to a path on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Blob hash or model id.
    pub hash: String,
    /// An absolute path that must not exist yet.
    pub output: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exported {
    /// The hash exported.
    pub hash: String,
    /// `file`, `folder` or `model`.
    pub kind: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Bytes written.
    pub bytes: u64,
}

/// `POST /api/v1/publish`: pack a package folder or a bare `.onnx` file into a signed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// An absolute path to the folder (with `moxnet.toml`) or `.onnx` file.
    pub path: PathBuf,
}

/// A published model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// Its model id.
    pub model_id: String,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Number of files.
    pub files: usize,
    /// Total bytes of the files.
    pub bytes: u64,
    /// Training snapshots linked.
    pub snapshots: usize,
    /// The author's node id.
    pub author: String,
}

/// `GET /api/v1/models/{id}`: a model's manifest, after checking its author's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    /// The model id.
    pub model_id: String,
    /// The author's node id.
    pub author: String,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// What it is.
    pub description: String,
    /// SPDX license expression.
    pub license: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Human authors.
    pub authors: Vec<String>,
    /// Typed inputs and outputs.
    pub interface: InterfaceView,
    /// How it runs.
    pub runtime: RuntimeView,
    /// The package's files.
    pub files: Vec<FileView>,
    /// Datasets it was trained on.
    pub datasets: Vec<DatasetView>,
    /// The model it was derived from.
    pub parent: Option<String>,
    /// The models known here that name it as their parent (fine-tunes of it).
    #[serde(default)]
    pub children: Vec<String>,
    /// Its training snapshots, oldest first.
    pub snapshots: Vec<String>,
    /// The royalty every provider that runs it owes, if any.
    #[serde(default)]
    pub royalty: Option<RoyaltyView>,
    /// Its score as this node weighs the votes, with the breakdown, usage and paying voters
    /// (present when a running node answers; `moxnet show` without one has no trust graph).
    #[serde(default)]
    pub votes: Option<VotesView>,
}

/// A royalty named in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoyaltyView {
    /// Who is paid (a node id).
    pub payee: String,
    /// The share of each call's cost, basis points (1,000 = 10%).
    pub bps: u16,
}

/// A model's typed interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceView {
    /// Inputs.
    pub inputs: Vec<TensorView>,
    /// Outputs.
    pub outputs: Vec<TensorView>,
}

/// One named tensor of an interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorView {
    /// Its name.
    pub name: String,
    /// OIP datatype (`FP32`, `INT64`, `BYTES`, …).
    pub datatype: String,
    /// Its shape: numbers, or names for sizes chosen per call.
    pub shape: Vec<DimView>,
}

/// A dimension: fixed or symbolic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimView {
    /// A fixed size.
    Fixed(u64),
    /// A size named in the graph, chosen per call.
    Symbolic(String),
}

/// How a model runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeView {
    /// `onnx`, `wasm`, `gguf` or `files`.
    pub kind: String,
    /// The entry file, if any.
    pub entry: Option<String>,
    /// The guest module's blob hash.
    pub guest: Option<String>,
    /// Memory it asks for, MiB.
    pub memory_mib: Option<u64>,
    /// A language model's facts, as its GGUF header gave them at publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_model: Option<LanguageModelView>,
}

/// What a language model's GGUF header says (protocol `LanguageModel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageModelView {
    /// e.g. `llama`.
    pub architecture: String,
    /// The context it was trained for, in tokens.
    pub context_length: u64,
    /// e.g. `Q4_1`.
    pub quantisation: String,
    /// Parameters.
    pub parameters: u64,
    /// Its chat template, if any.
    pub chat_template: Option<String>,
}

/// A file of a package or snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileView {
    /// Relative path.
    pub path: String,
    /// Blob hash.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
}

/// A dataset reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetView {
    /// The dataset's hash.
    pub hash: String,
    /// What it is.
    pub description: String,
}

/// `POST /api/v1/snapshots`: record a training snapshot of the run `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The training run: the package name from its `moxnet.toml`.
    pub model: String,
    /// Training step.
    pub step: u64,
    /// Metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Weight files: (path inside the package, absolute path on this machine).
    pub weights: Vec<(String, PathBuf)>,
}

/// A recorded snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotAdded {
    /// Its hash.
    pub snapshot: String,
    /// The training run.
    pub model: String,
    /// Training step.
    pub step: u64,
    /// The previous snapshot of the run.
    pub parent: Option<String>,
}

/// `GET /api/v1/models/{id}/history` or `GET /api/v1/runs/{name}/history`: a training
/// history, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The snapshots, oldest first.
    pub snapshots: Vec<SnapshotView>,
}

/// One snapshot of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// Its hash.
    pub snapshot: String,
    /// Training step.
    pub step: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub time_ms: u64,
    /// Metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Its weight files.
    pub weights: Vec<FileView>,
    /// The previous snapshot.
    pub parent: Option<String>,
}

/// `PUT /api/v1/pins/{hash}` and `DELETE /api/v1/pins/{hash}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinChange {
    /// The blob.
    pub hash: String,
    /// Whether it is pinned now.
    pub pinned: bool,
    /// Whether it was pinned before.
    pub was_pinned: bool,
}

/// `POST /api/v1/gc`: what garbage collection removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Blob files the index does not name, left in place (`moxnet reindex` adopts them).
    #[serde(default)]
    pub orphans: u64,
    /// Partial blobs no fetch wrote to for a day, removed.
    #[serde(default)]
    pub partials_removed: u64,
}

/// `POST /api/v1/reindex`: what re-indexing the store's unindexed blob files did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReindexReport {
    /// Files whose bytes matched their name: indexed again and pinned.
    pub adopted: u64,
    /// Their bytes.
    pub adopted_bytes: u64,
    /// Files whose bytes did not: removed.
    pub removed: u64,
    /// Models whose manifests were among them, back in the catalogue.
    pub models: u64,
}

/// `POST /api/v1/verify`: which blobs to re-hash.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Only this blob; every blob when absent.
    #[serde(default)]
    pub hash: Option<String>,
}

/// What a verify found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blobs checked.
    pub checked: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Whether every blob is intact.
    pub ok: bool,
    /// Each corrupt or missing blob.
    pub problems: Vec<Problem>,
}

/// One blob that failed verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The blob.
    pub hash: String,
    /// What is wrong.
    pub problem: String,
}

/// The state of a fetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetchState {
    /// Still fetching.
    #[default]
    Running,
    /// Everything is here, verified and pinned.
    Complete,
    /// It stopped; `error` says why. Starting it again resumes.
    Failed,
}

/// `GET /api/v1/fetch`: the fetches this node remembers (running, and the newest finished),
/// newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchList {
    /// Each fetch's progress.
    pub fetches: Vec<FetchProgress>,
}

/// `POST /api/v1/fetch/{id}` and `GET /api/v1/fetch/{id}`: a fetch's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchProgress {
    /// What is fetched.
    pub id: String,
    /// Where it is.
    pub state: FetchState,
    /// Bytes to fetch, once known.
    pub bytes_total: u64,
    /// Bytes present.
    pub bytes_done: u64,
    /// Bytes received and verified by this fetch (less than the total when resuming).
    pub bytes_fetched: u64,
    /// Peers that delivered verified data.
    pub peers_used: usize,
    /// Peers banned for sending bad bytes.
    pub peers_banned: usize,
    /// Milliseconds since the fetch started, as the node measured it; frozen when it ends.
    pub elapsed_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// `GET /api/v1/offers`: the compute offers this node has heard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferList {
    /// Whether this node serves calls for peers.
    pub serving: bool,
    /// One per provider.
    pub offers: Vec<OfferView>,
}

/// A provider's offer and what this node measured of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferView {
    /// The provider's node id.
    pub node_id: String,
    /// Its peer id.
    pub peer_id: String,
    /// CPU cores.
    pub cores: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpus: Vec<String>,
    /// Engines for guests (`wasm`, plus host backends).
    pub backends: Vec<String>,
    /// Models it holds.
    pub models: Vec<String>,
    /// Calls it runs at once.
    pub max_concurrent: u64,
    /// Price per million fuel units.
    pub price_per_mfuel: u64,
    /// Price per million tokens of generation by language models, if it serves them.
    #[serde(default)]
    pub price_per_mtoken: Option<u64>,
    /// Seconds until the offer expires.
    pub expires_in_s: u64,
    /// Smoothed latency of calls from here, once measured.
    pub latency_ms: Option<f64>,
    /// Calls from here running there now.
    pub in_flight: u32,
    /// Failures since the last success.
    pub failures: u32,
}

/// Query of `POST /v2/models/{id}/infer`: where the call runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferQuery {
    /// Run on this peer only (a peer id).
    #[serde(default)]
    pub on: Option<String>,
    /// Run on two providers and compare their signed output hashes.
    #[serde(default)]
    pub verify: bool,
    /// Run only on a provider that offers a GPU and an engine that uses it.
    #[serde(default)]
    pub gpu: bool,
}

/// Query of `GET /api/v1/search`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Words (empty: every model).
    #[serde(default)]
    pub q: String,
    /// `relevance` (the default), `score`, `usage` or `new`.
    #[serde(default)]
    pub sort: Option<String>,
    /// Tags every hit must carry, comma-separated.
    #[serde(default)]
    pub tags: Option<String>,
    /// Hits to return (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Hits to skip.
    #[serde(default)]
    pub offset: Option<usize>,
}

/// `GET /api/v1/search`: a page of models matching a query, ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// The query's words.
    pub query: String,
    /// The order used.
    pub sort: String,
    /// Models that matched, before paging.
    pub total: usize,
    /// The page.
    pub hits: Vec<SearchHit>,
}

/// One model found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The model id.
    pub model_id: String,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// What it is.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The signing node.
    pub author: String,
    /// Its score as this node weighs the votes.
    pub score: f64,
    /// Voters whose vote weighs something here.
    pub paying_voters: u64,
    /// Credits paid for its calls on trusted providers.
    pub usage: u64,
    /// Text relevance (BM25; 1 for an empty query).
    pub relevance: f32,
    /// The key it was ranked by.
    pub rank: f64,
    /// Whether its files are all on this node.
    pub local: bool,
    /// The size of its files, bytes.
    #[serde(default)]
    pub bytes: u64,
}

/// `GET /api/v1/credits`: this node's ledger with every peer it has called or served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsView {
    /// This node's id.
    pub node_id: String,
    /// The terms it extends to callers (in its offer), credits.
    pub payment_threshold: u64,
    /// Beyond this a caller's calls are refused for payment.
    pub disconnect_threshold: u64,
    /// The shared free allowance for callers without a ledger here: its cap…
    pub free_cap: u64,
    /// …its refill, credits a second…
    pub free_per_sec: u64,
    /// …and what it can still cover now.
    pub free_left: u64,
    /// The most this node pays one peer beyond what that peer's calls here cost.
    pub spend_limit: u64,
    /// One per peer, by node id.
    pub peers: Vec<PeerCredits>,
}

/// The account with one peer. "Served": calls this node ran for the peer; "used": calls the
/// peer ran for this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCredits {
    /// The peer's node id.
    pub node_id: String,
    /// Its peer id.
    pub peer_id: String,
    /// Calls served.
    pub served_calls: u64,
    /// Their cost, credits (the peer owes it).
    pub served: u64,
    /// Of that, what the free allowance forgave.
    pub forgiven: u64,
    /// Calls used.
    pub used_calls: u64,
    /// Their cost (this node owes it).
    pub used: u64,
    /// What the peer has paid this node for calls (its newest cheque).
    pub paid_in: u64,
    /// What this node has paid the peer for calls.
    pub paid_out: u64,
    /// The balance after netting: positive when the peer owes this node.
    pub net: i64,
    /// Reserved for the peer's calls running here now.
    pub in_flight: u64,
    /// Royalties this node owes the peer (as payee of models this node served)…
    pub royalties_owed: u64,
    /// …from this many calls…
    pub royalty_calls: u64,
    /// …of which paid.
    pub royalties_paid: u64,
    /// Royalties the peer has paid this node.
    pub royalties_received: u64,
    /// The sequence number of the newest cheque from the peer.
    pub cheque_in_seq: Option<u64>,
    /// The sequence number of the newest cheque to the peer.
    pub cheque_out_seq: Option<u64>,
}

/// `GET /api/v1/credits/{peer}/receipts`: the receipts behind an account, and the newest
/// cheques both ways, each as its signed bytes (hex) so that anyone can check them with the
/// two public keys alone (`docs/protocol.md` §12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptList {
    /// The account.
    pub account: PeerCredits,
    /// Calls this node served the peer, oldest first.
    pub served: Vec<ReceiptView>,
    /// Calls the peer served this node, oldest first.
    pub used: Vec<ReceiptView>,
    /// The newest cheque from the peer (a `Signed<Cheque>` envelope, hex).
    pub cheque_in: Option<String>,
    /// The newest cheque to the peer.
    pub cheque_out: Option<String>,
}

/// One receipt: what it says, and its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptView {
    /// Its id: BLAKE3 of the result envelope.
    pub id: String,
    /// The caller's node id.
    pub caller: String,
    /// The provider's node id.
    pub provider: String,
    /// The model.
    pub model: String,
    /// Fuel used.
    pub fuel: u64,
    /// Price per million fuel units.
    pub price_per_mfuel: u64,
    /// Cost, credits.
    pub cost: u64,
    /// When the request was made, ms since the Unix epoch.
    pub issued_ms: u64,
    /// The receipt (CBOR `{v, request, result}`), hex.
    pub receipt: String,
}

/// `GET /api/v1/credits/{peer}/royalties`: an audit of the royalties a provider owes this node,
/// from the provider's own receipts, each checked here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoyaltyAudit {
    /// The provider.
    pub peer_id: String,
    /// Calls of this node's models the provider says it ran.
    pub claimed_calls: u64,
    /// Receipts that checked out.
    pub receipts: u64,
    /// Receipts refused (bad signatures, another provider's, a model with no royalty to this
    /// node), with why.
    pub rejected: u64,
    /// Why, one line each.
    pub problems: Vec<String>,
    /// Models of this node's the receipts were for.
    pub audited_models: u64,
    /// What those calls cost.
    pub billed: u64,
    /// The royalties they make: each receipt's cost × the manifest's share, rounded down.
    pub due: u64,
    /// What the provider has paid in royalties (its newest cheque here).
    pub paid: u64,
}

/// Body of `POST /api/v1/models/{id}/vote`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// `up`, `down` or `retract`.
    pub choice: String,
}

/// Body of `POST /api/v1/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why, for people (at most 256 bytes).
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/revoke`: this node's key is revoked (protocol §13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeView {
    /// The node whose key is revoked (this one).
    pub node_id: String,
    /// The revocation's id.
    pub revocation_id: String,
    /// This node's standing votes it dropped here.
    pub dropped_votes: usize,
}

/// One voter's standing vote on a model, as this node weighs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoterView {
    /// The voter's node id.
    pub node_id: String,
    /// `up`, `down` or `retract`.
    pub choice: String,
    /// The vote's clock.
    pub clock: u64,
    /// Its id (BLAKE3 of the envelope).
    pub vote_id: String,
    /// What this node trusts the voter (a share of 1).
    pub trust: f64,
    /// What the vote weighs here: trust × min(1, usage / usage_full).
    pub weight: f64,
    /// Credits the voter paid for calls of the model on providers this node trusts.
    pub usage: u64,
    /// Receipts in the vote.
    pub receipts: u64,
}

/// `GET /api/v1/models/{id}/votes` (and the answer to a vote): the model's score as this node
/// sees it, and its breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VotesView {
    /// The model.
    pub model: String,
    /// Weighted votes up minus down.
    pub score: f64,
    /// The weight of the votes up.
    pub up_weight: f64,
    /// The weight of the votes down.
    pub down_weight: f64,
    /// Standing votes up, down and retracted, one per voter, whatever their weight.
    pub up: u64,
    /// See `up`.
    pub down: u64,
    /// See `up`.
    pub retracted: u64,
    /// Voters whose vote weighs something here.
    pub paying_voters: u64,
    /// Credits those voters paid for calls of the model on trusted providers.
    pub usage: u64,
    /// Usage at which a vote weighs its voter's whole trust.
    pub usage_full: u64,
    /// The standing votes, heaviest first (at most 100).
    pub voters: Vec<VoterView>,
}

/// `GET`, `PUT` and `DELETE /api/v1/follows[/{node}]`: the nodes this node follows (their
/// trust, and so their votes' weight, comes from this node directly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowList {
    /// Node ids, in byte order.
    pub follows: Vec<String>,
}
