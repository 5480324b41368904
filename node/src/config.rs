//! The node's configuration: embedded defaults, then `config.toml` in the home, then flags.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use net::libp2p::Multiaddr;
use serde::Deserialize;

use crate::cli::NodeArgs;

/// The defaults, as shipped.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<Vec<String>>,
    bootstrap: Option<Vec<String>>,
    api: Option<String>,
    mdns: Option<bool>,
    target_connections: Option<u32>,
    max_connections: Option<u32>,
    max_per_ip: Option<u32>,
    upload_mib_per_sec: Option<f64>,
    upload_mib_per_sec_per_peer: Option<f64>,
    inference: Option<InferenceSection>,
    llm: Option<LlmSection>,
    compute: Option<ComputeSection>,
    catalog: Option<CatalogSection>,
    credits: Option<CreditsSection>,
}

/// `[credits]`: the terms this node extends to callers, and what it pays. Any key left out
/// keeps its default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsSection {
    payment_threshold: Option<u64>,
    disconnect_threshold: Option<u64>,
    free_cap: Option<u64>,
    free_per_sec: Option<u64>,
    spend_limit: Option<u64>,
    settle_every_secs: Option<u64>,
}

/// The credit settings, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditsConfig {
    /// The terms extended to callers (in the offer).
    pub terms: protocol::credits::CreditTerms,
    /// The most paid any one peer for calls beyond what its calls here cost.
    pub spend_limit: u64,
    /// How often the node settles with connected peers it owes royalties to.
    pub settle_every: std::time::Duration,
}

/// `[catalog]`: how many manifests from peers the node keeps. Any key left out keeps its
/// default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// Models in the catalogue, in all.
    pub max_models: Option<usize>,
    /// Models signed by one author.
    pub max_per_author: Option<usize>,
}

impl CatalogSection {
    /// The catalogue's quota.
    pub fn quota(&self) -> catalog::Quota {
        let d = catalog::Quota::default();
        catalog::Quota {
            max_models: self.max_models.unwrap_or(d.max_models),
            max_per_author: self.max_per_author.unwrap_or(d.max_per_author),
        }
    }
}

/// `[compute]`: serving calls for peers, and calling peers. Any key left out keeps its default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSection {
    /// Serve inference calls for peers and announce a compute offer.
    pub serve: Option<bool>,
    /// The price this node charges, credits per million fuel units.
    pub price_per_mfuel: Option<u64>,
    /// Seconds between re-announcements of the offer.
    pub offer_interval_secs: Option<u64>,
    /// Seconds an offer stays valid.
    pub offer_ttl_secs: Option<u64>,
    /// Calls one peer may have running or queued here at once; beyond it, busy.
    pub per_peer_concurrent: Option<usize>,
    /// The highest price this node pays when it calls a peer, per million fuel units.
    pub max_price_per_mfuel: Option<u64>,
    /// The price this node charges for generation by language models, credits per million
    /// tokens (prompt and generated).
    pub price_per_mtoken: Option<u64>,
    /// The highest price this node pays for generation on a peer, per million tokens.
    pub max_price_per_mtoken: Option<u64>,
    /// Seconds a remote call may take before it moves to another provider.
    pub call_timeout_secs: Option<u64>,
    /// Providers tried for one call before giving up.
    pub attempts: Option<usize>,
    /// The largest model (MiB of files) this node fetches to serve a peer's call.
    pub max_fetch_mib: Option<u64>,
    /// MiB of files of models fetched for peers' calls kept (the least recently called go).
    pub cache_mib: Option<u64>,
}

impl ComputeSection {
    fn or(self, d: ComputeSection) -> ComputeSection {
        ComputeSection {
            serve: self.serve.or(d.serve),
            price_per_mfuel: self.price_per_mfuel.or(d.price_per_mfuel),
            offer_interval_secs: self.offer_interval_secs.or(d.offer_interval_secs),
            offer_ttl_secs: self.offer_ttl_secs.or(d.offer_ttl_secs),
            per_peer_concurrent: self.per_peer_concurrent.or(d.per_peer_concurrent),
            max_price_per_mfuel: self.max_price_per_mfuel.or(d.max_price_per_mfuel),
            price_per_mtoken: self.price_per_mtoken.or(d.price_per_mtoken),
            max_price_per_mtoken: self.max_price_per_mtoken.or(d.max_price_per_mtoken),
            call_timeout_secs: self.call_timeout_secs.or(d.call_timeout_secs),
            attempts: self.attempts.or(d.attempts),
            max_fetch_mib: self.max_fetch_mib.or(d.max_fetch_mib),
            cache_mib: self.cache_mib.or(d.cache_mib),
        }
    }
}

/// `[llm]`: language models (GGUF, run by llama.cpp in confined workers). Any key left out
/// keeps its default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// Threads one generation runs on (default: every core).
    pub threads: Option<usize>,
    /// The most context a worker allocates, in tokens (and at most what the model was trained
    /// for).
    pub context: Option<u32>,
    /// Generations running at once, across models; more wait (up to `max_queued`).
    pub concurrent: Option<usize>,
    /// Generations waiting for a slot; beyond, the node answers busy (HTTP 503).
    pub max_queued: Option<usize>,
    /// Wall-clock limit of one generation, seconds.
    pub timeout_secs: Option<u64>,
    /// Memory a worker may use beyond its model file, MiB.
    pub memory_mib: Option<u64>,
    /// Language models kept loaded (their workers kept); the least recently used gives way.
    pub loaded: Option<usize>,
    /// Layers of a model put on the GPU (when the build has a GPU backend and the machine a
    /// GPU); 0 keeps models on the CPU.
    pub gpu_layers: Option<u32>,
}

impl LlmSection {
    fn or(self, d: LlmSection) -> LlmSection {
        LlmSection {
            threads: self.threads.or(d.threads),
            context: self.context.or(d.context),
            concurrent: self.concurrent.or(d.concurrent),
            max_queued: self.max_queued.or(d.max_queued),
            timeout_secs: self.timeout_secs.or(d.timeout_secs),
            memory_mib: self.memory_mib.or(d.memory_mib),
            loaded: self.loaded.or(d.loaded),
            gpu_layers: self.gpu_layers.or(d.gpu_layers),
        }
    }
}

/// `[inference]`: the sandbox's limits. Any key left out keeps its default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSection {
    /// Calls running at once.
    pub max_concurrent: Option<usize>,
    /// Calls waiting for a slot before the node answers busy (HTTP 503).
    pub max_queued: Option<usize>,
    /// Spare initialised instances kept ready, across models.
    pub warm_instances: Option<usize>,
    /// Whether guests may run their graphs on the host's native engine.
    pub host_backend: Option<bool>,
    /// The host engine: `auto`, `onnxruntime-cuda`, `onnxruntime`, `tract` or `off` (see
    /// `engines`).
    pub engine: Option<String>,
    /// onnxruntime's shared library (default: found, see `engine::find_onnxruntime`).
    pub onnxruntime: Option<std::path::PathBuf>,
    /// Memory limit of one engine worker, MiB.
    pub engine_memory_mib: Option<u64>,
    /// Intra-op threads of one engine worker.
    pub engine_threads: Option<usize>,
    /// Memory cap per call, MiB.
    pub memory_mib: Option<u64>,
    /// Fuel per call.
    pub fuel: Option<u64>,
    /// Wall-clock deadline per call, seconds.
    pub timeout_secs: Option<u64>,
    /// Threads one compile runs on (default: a quarter of the cores, at least one).
    pub compile_threads: Option<usize>,
    /// Seconds a model's instances spend in `init`, in all, before its guest is snapshotted
    /// (`sandbox::SandboxConfig::snapshot_after`); negative: never.
    pub snapshot_after_secs: Option<f64>,
}

impl InferenceSection {
    /// The sandbox configuration and per-call limits these settings give.
    pub fn sandbox(&self) -> (sandbox::SandboxConfig, sandbox::CallLimits) {
        let mut config = sandbox::SandboxConfig::default();
        let mut limits = sandbox::CallLimits::default();
        if let Some(n) = self.max_concurrent {
            config.max_concurrent = n.max(1);
        }
        if let Some(n) = self.max_queued {
            config.max_queued = n;
        }
        if let Some(n) = self.warm_instances {
            config.warm_instances = n;
        }
        if let Some(n) = self.compile_threads {
            config.compile_threads = n.max(1);
        }
        if let Some(secs) = self.snapshot_after_secs {
            config.snapshot_after = std::time::Duration::try_from_secs_f64(secs).ok();
        }
        if let Some(b) = self.host_backend {
            config.host_backend = b;
        }
        if let Some(m) = self.memory_mib {
            limits.memory_mib = m;
            config.max_memory_mib = config.max_memory_mib.max(m);
        }
        if let Some(f) = self.fuel {
            limits.fuel = f;
        }
        if let Some(t) = self.timeout_secs {
            limits.timeout = std::time::Duration::from_secs(t.max(1));
        }
        (config, limits)
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers.
    pub bootstrap: Vec<Multiaddr>,
    /// HTTP API address (loopback).
    pub api: SocketAddr,
    /// mDNS discovery.
    pub mdns: bool,
    /// Connections kept, and the limits on who may open them (see `net::conns`).
    pub connections: net::ConnectionLimits,
    /// Upload limits for serving blobs, bytes a second: all peers together, and each peer
    /// (`None`: unlimited).
    pub upload: (Option<u64>, Option<u64>),
    /// Sandbox limits.
    pub inference: InferenceSection,
    /// Language models.
    pub llm: LlmSection,
    /// Compute sharing.
    pub compute: ComputeSection,
    /// The catalogue's quota for manifests from peers.
    pub catalog: catalog::Quota,
    /// Credits.
    pub credits: CreditsConfig,
}

fn parse_file(text: &str, what: &str) -> Result<ConfigFile> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn addrs(list: &[String], key: &str) -> Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .map_err(|e| anyhow::anyhow!("{key}: {a:?} is not a multiaddr: {e}"))
        })
        .collect()
}

/// Loads the configuration for the home `dir` with `args` applied.
pub fn load(dir: &Path, args: &NodeArgs) -> Result<NodeConfig> {
    let defaults = parse_file(DEFAULT_CONFIG, "embedded default config")?;
    let path = dir.join("config.toml");
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&text, &path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let pick = |flag: &Vec<String>, file: &Option<Vec<String>>, default: &Option<Vec<String>>| {
        if !flag.is_empty() {
            flag.clone()
        } else {
            file.clone().or_else(|| default.clone()).unwrap_or_default()
        }
    };
    let listen = addrs(
        &pick(&args.listen, &file.listen, &defaults.listen),
        "listen",
    )?;
    let bootstrap = addrs(
        &pick(&args.bootstrap, &file.bootstrap, &defaults.bootstrap),
        "bootstrap",
    )?;
    let api_text = args
        .api
        .clone()
        .or(file.api)
        .or(defaults.api)
        .unwrap_or_else(|| "127.0.0.1:5080".into());
    let api: SocketAddr = api_text
        .parse()
        .map_err(|e| anyhow::anyhow!("api: {api_text:?} is not an address: {e}"))?;
    if !api.ip().is_loopback() {
        bail!("api: {api} is not a loopback address; the HTTP API only listens on localhost");
    }
    let mdns = !args.no_mdns && file.mdns.or(defaults.mdns).unwrap_or(true);
    let base = net::ConnectionLimits::default();
    let connections = net::ConnectionLimits {
        target_connections: file
            .target_connections
            .or(defaults.target_connections)
            .unwrap_or(base.target_connections),
        max_connections: file
            .max_connections
            .or(defaults.max_connections)
            .unwrap_or(base.max_connections),
        max_per_ip: file
            .max_per_ip
            .or(defaults.max_per_ip)
            .unwrap_or(base.max_per_ip),
        ..base
    };
    if connections.max_connections == 0 || connections.max_per_ip == 0 {
        bail!("max_connections and max_per_ip must be at least 1");
    }
    let rate = |key: &str, v: Option<f64>| -> Result<Option<u64>> {
        match v {
            None => Ok(None),
            Some(0.0) => Ok(None),
            Some(r) if r.is_finite() && r > 0.0 && r < 1e6 => Ok(Some((r * 1048576.0) as u64)),
            Some(r) => bail!("{key}: {r} is not a rate in MiB/s (0 for unlimited)"),
        }
    };
    let upload = (
        rate(
            "upload_mib_per_sec",
            file.upload_mib_per_sec.or(defaults.upload_mib_per_sec),
        )?,
        rate(
            "upload_mib_per_sec_per_peer",
            file.upload_mib_per_sec_per_peer
                .or(defaults.upload_mib_per_sec_per_peer),
        )?,
    );
    if connections.target_connections > connections.max_connections {
        bail!(
            "target_connections ({}) is above max_connections ({}): the node keeps between the two",
            connections.target_connections,
            connections.max_connections
        );
    }
    let d = defaults.inference.unwrap_or_default();
    let f = file.inference.unwrap_or_default();
    let inference = InferenceSection {
        max_concurrent: f.max_concurrent.or(d.max_concurrent),
        max_queued: f.max_queued.or(d.max_queued),
        warm_instances: f.warm_instances.or(d.warm_instances),
        host_backend: f.host_backend.or(d.host_backend),
        engine: f.engine.or(d.engine),
        onnxruntime: f.onnxruntime.or(d.onnxruntime),
        engine_memory_mib: f.engine_memory_mib.or(d.engine_memory_mib),
        engine_threads: f.engine_threads.or(d.engine_threads),
        memory_mib: f.memory_mib.or(d.memory_mib),
        fuel: f.fuel.or(d.fuel),
        timeout_secs: f.timeout_secs.or(d.timeout_secs),
        compile_threads: f.compile_threads.or(d.compile_threads),
        snapshot_after_secs: f.snapshot_after_secs.or(d.snapshot_after_secs),
    };
    let llm = file
        .llm
        .unwrap_or_default()
        .or(defaults.llm.unwrap_or_default());
    let mut compute = file
        .compute
        .unwrap_or_default()
        .or(defaults.compute.unwrap_or_default());
    if args.serve {
        compute.serve = Some(true);
    }
    let (fc, dc) = (
        file.catalog.unwrap_or_default(),
        defaults.catalog.unwrap_or_default(),
    );
    let catalog = CatalogSection {
        max_models: fc.max_models.or(dc.max_models),
        max_per_author: fc.max_per_author.or(dc.max_per_author),
    }
    .quota();
    let (fc, dc) = (
        file.credits.unwrap_or_default(),
        defaults.credits.unwrap_or_default(),
    );
    let base = protocol::credits::CreditTerms::default();
    let terms = protocol::credits::CreditTerms {
        payment_threshold: fc
            .payment_threshold
            .or(dc.payment_threshold)
            .unwrap_or(base.payment_threshold),
        disconnect_threshold: fc
            .disconnect_threshold
            .or(dc.disconnect_threshold)
            .unwrap_or(base.disconnect_threshold),
        free_cap: fc.free_cap.or(dc.free_cap).unwrap_or(base.free_cap),
        free_per_s: fc
            .free_per_sec
            .or(dc.free_per_sec)
            .unwrap_or(base.free_per_s),
    };
    if terms.disconnect_threshold < terms.payment_threshold {
        bail!(
            "credits: disconnect_threshold ({}) is below payment_threshold ({})",
            terms.disconnect_threshold,
            terms.payment_threshold
        );
    }
    let credits = CreditsConfig {
        terms,
        spend_limit: fc.spend_limit.or(dc.spend_limit).unwrap_or(1_000_000_000),
        settle_every: std::time::Duration::from_secs(
            fc.settle_every_secs
                .or(dc.settle_every_secs)
                .unwrap_or(60)
                .clamp(1, 86_400),
        ),
    };
    Ok(NodeConfig {
        listen,
        bootstrap,
        api,
        mdns,
        connections,
        upload,
        inference,
        llm,
        compute,
        catalog,
        credits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = load(dir.path(), &NodeArgs::default()).expect("defaults");
        assert_eq!(c.listen.len(), 2);
        assert!(c.mdns);
        std::fs::write(
            dir.path().join("config.toml"),
            "mdns = false\napi = \"127.0.0.1:6000\"\n",
        )
        .expect("write");
        let args = NodeArgs {
            api: Some("127.0.0.1:0".into()),
            ..NodeArgs::default()
        };
        let c = load(dir.path(), &args).expect("file + flags");
        assert!(!c.mdns);
        assert_eq!(c.api.port(), 0);
        std::fs::write(dir.path().join("config.toml"), "api = \"0.0.0.0:80\"\n").expect("write");
        assert!(
            load(dir.path(), &NodeArgs::default()).is_err(),
            "non-loopback API refused"
        );
        std::fs::write(dir.path().join("config.toml"), "lisen = []\n").expect("write");
        assert!(
            load(dir.path(), &NodeArgs::default()).is_err(),
            "typos refused"
        );
    }

    #[test]
    fn connection_watermarks_and_upload_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = load(dir.path(), &NodeArgs::default()).expect("defaults");
        assert_eq!(
            (
                c.connections.target_connections,
                c.connections.max_connections,
                c.connections.max_per_ip
            ),
            (32, 40, 8)
        );
        assert_eq!(c.upload, (None, None), "unlimited by default");
        let write = |text: &str| std::fs::write(dir.path().join("config.toml"), text);
        write("max_connections = 12\ntarget_connections = 8\nupload_mib_per_sec = 2.5\nupload_mib_per_sec_per_peer = 1\n")
            .expect("write");
        let c = load(dir.path(), &NodeArgs::default()).expect("limits");
        assert_eq!(c.connections.max_connections, 12);
        assert_eq!(c.upload, (Some(2_621_440), Some(1_048_576)));
        for bad in [
            "target_connections = 50\nmax_connections = 40\n",
            "max_connections = 0\n",
            "upload_mib_per_sec = -1\n",
        ] {
            write(bad).expect("write");
            let err = load(dir.path(), &NodeArgs::default()).expect_err(bad);
            assert!(!err.to_string().is_empty());
        }
    }
}
