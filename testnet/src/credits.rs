//! The credits scenario: providers, honest callers that pay, a caller that never pays, and a
//! freeloader with many fresh identities, all real (nodes are `moxnet` processes; the fresh
//! identities are libp2p peers in this process that sign their own calls and never a cheque).
//!
//! `cargo run -p testnet -- credits [--providers 5 --callers 13 --calls 2000 --fresh 200]`
//!
//! Pass: no honest call is refused for payment (and every honest ledger pair agrees to the
//! credit with its receipts), the non-payer is cut off with its debt within the disconnect
//! threshold, and the fresh identities together get no more than one free allowance (its cap
//! plus its refill over the run).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use protocol::compute::{InferReply, InferResult, InferStatus};
use protocol::{ModelId, Object, SecretKey, Signed};
use serde_json::{Value, json};

use crate::attack::{Target, echo_call, peer, random_seed};
use crate::{Daemon, Testnet};

/// The providers' price: the echo model's calls cost some 50 credits.
const PRICE: u64 = 20_000;
/// The providers' terms: pay at 500 owed (some ten calls), cut off past 2,500; strangers share
/// 3,000 (+ 20/s).
const PAYMENT: u64 = 1_000;
const DISCONNECT: u64 = 2_500;
const FREE_CAP: u64 = 3_000;
const FREE_PER_SEC: u64 = 20;

fn provider_config() -> String {
    format!(
        "[inference]\nmax_concurrent = 2\nmax_queued = 64\n\n\
         [compute]\nserve = true\noffer_interval_secs = 1\nper_peer_concurrent = 16\n\
         price_per_mfuel = {PRICE}\nmax_price_per_mfuel = {PRICE}\n\n\
         [credits]\npayment_threshold = {PAYMENT}\ndisconnect_threshold = {DISCONNECT}\n\
         free_cap = {FREE_CAP}\nfree_per_sec = {FREE_PER_SEC}\n"
    )
}

fn caller_config(spend_limit: Option<u64>) -> String {
    let mut c = format!("[compute]\ncall_timeout_secs = 30\nmax_price_per_mfuel = {PRICE}\n");
    if let Some(limit) = spend_limit {
        c.push_str(&format!("\n[credits]\nspend_limit = {limit}\n"));
    }
    c
}

/// What [`credits`] measured.
#[derive(Debug, Clone)]
pub struct CreditsReport {
    /// Providers.
    pub providers: usize,
    /// Honest callers (nodes).
    pub callers: usize,
    /// Honest calls made.
    pub calls: usize,
    /// Honest calls answered.
    pub ok: usize,
    /// Honest calls refused for payment (the goal: none).
    pub refused: usize,
    /// Credits the honest callers were billed, and paid by cheque.
    pub billed: u64,
    /// What they paid.
    pub paid: u64,
    /// Honest (caller, provider) ledger pairs compared, and how many agreed with their receipts.
    pub pairs: usize,
    /// Pairs that agreed.
    pub agreed: usize,
    /// Calls the non-payer got before it was refused.
    pub nonpayer_calls: usize,
    /// Its debt at the provider when refused.
    pub nonpayer_debt: u64,
    /// Fresh identities.
    pub fresh: usize,
    /// Calls they made, and got answered.
    pub fresh_calls: u64,
    /// Answered.
    pub fresh_ok: u64,
    /// Credits of work they got for free.
    pub fresh_credits: u64,
    /// What one allowance allows over the run: its cap plus its refill.
    pub allowance_bound: u64,
    /// Wall time of the honest calls.
    pub elapsed: Duration,
}

impl CreditsReport {
    /// Whether the scenario's goals hold.
    pub fn passed(&self) -> bool {
        self.refused == 0
            && self.ok == self.calls
            && self.agreed == self.pairs
            && self.nonpayer_calls > 0
            && self.nonpayer_debt <= DISCONNECT
            && self.fresh_credits <= self.allowance_bound
    }
}

impl fmt::Display for CreditsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "credits        {} providers, {} honest callers: {} calls, {} ok, {} refused for payment, {:.2} s ({:.0} calls/s); billed {} credits, paid {} by cheque ({:.0}%); ledgers agree with the receipts: {}/{} pairs",
            self.providers,
            self.callers,
            self.calls,
            self.ok,
            self.refused,
            self.elapsed.as_secs_f64(),
            self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.billed,
            self.paid,
            100.0 * self.paid as f64 / self.billed.max(1) as f64,
            self.agreed,
            self.pairs
        )?;
        writeln!(
            f,
            "               non-payer: {} calls, then refused owing {} (payment threshold {PAYMENT}, disconnect threshold {DISCONNECT})",
            self.nonpayer_calls, self.nonpayer_debt
        )?;
        write!(
            f,
            "               {} fresh identities: {} calls, {} answered, {} credits free in all; one allowance over the run: {} (cap {FREE_CAP} + {FREE_PER_SEC}/s)",
            self.fresh, self.fresh_calls, self.fresh_ok, self.fresh_credits, self.allowance_bound
        )
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn infer(api: &str, id: &str, on: &str) -> Result<(u16, Value)> {
    crate::http(
        api,
        "POST",
        &format!("/v2/models/{id}/infer?on={on}"),
        Some(
            &json!({ "inputs": [{ "name": "mode", "datatype": "BYTES", "shape": [1], "data": ["echo"] }] })
                .to_string(),
        ),
        Duration::from_secs(120),
    )
}

/// `fresh` identities, each calling `target` `per_id` times without ever paying; returns
/// (calls, answered, credits of work got).
fn freeload(target: &Daemon, id: ModelId, fresh: usize, per_id: usize) -> Result<(u64, u64, u64)> {
    let to = Target {
        peer: target.peer_id.parse().context("provider peer id")?,
        addr: target.addr().parse().context("provider address")?,
    };
    let provider = to.node()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (calls, ok, credits) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..fresh {
            let seed = random_seed();
            let client = peer(Some(seed), Default::default(), std::slice::from_ref(&to)).await?;
            let (calls, ok, credits, peer_id) =
                (calls.clone(), ok.clone(), credits.clone(), to.peer);
            tasks.push(tokio::spawn(async move {
                let key = SecretKey::from_seed(&seed);
                for _ in 0..per_id {
                    calls.fetch_add(1, Ordering::Relaxed);
                    // Worst case 1,000 credits at the price: within the allowance, so that it
                    // is the allowance, not the call's size, that stops them.
                    let call = echo_call(&key, id, provider, 1_000 * 1_000_000 / PRICE, PRICE);
                    let reply =
                        tokio::time::timeout(Duration::from_secs(30), client.infer(peer_id, call))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .and_then(|b| InferReply::from_bytes(&b).ok());
                    if let Some(r) = reply
                        && r.status == InferStatus::Ok
                        && let Some(result) = r.result.as_deref()
                        && let Ok(signed) = Signed::<InferResult>::from_bytes(result)
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let b = signed.body();
                        credits.fetch_add(
                            protocol::credits::cost(b.fuel, b.price_per_mfuel),
                            Ordering::Relaxed,
                        );
                    }
                }
                drop(client);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    Ok((
        calls.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed),
        credits.load(Ordering::Relaxed),
    ))
}

/// `providers` serving nodes (the first publishes the echo model), `callers` honest callers
/// making `calls` calls in all (each to the providers in turn), a non-payer (`spend_limit = 0`)
/// calling one provider until refused, and `fresh` identities freeloading on another.
pub fn credits(
    providers: usize,
    callers: usize,
    calls: usize,
    fresh: usize,
) -> Result<CreditsReport> {
    ensure!(
        providers >= 2 && callers >= 1,
        "at least 2 providers and 1 caller"
    );
    let net = Testnet::new()?;
    // Before any provider starts: each provider's allowance starts full and refills from its
    // start, so this bounds what it can have forgiven by any later moment.
    let providers_started = Instant::now();
    let mut provider_nodes: Vec<Daemon> = Vec::new();
    let mut id = String::new();
    for i in 0..providers {
        let home = net.home(&format!("provider{i}"));
        home.ok(&["init"]);
        std::fs::write(home.home.join("config.toml"), provider_config())?;
        if i == 0 {
            let pkg = crate::echo_package(net.path())?;
            id = home.ok(&["publish", pkg.to_str().context("utf8 path")?]);
        }
        let boot: Vec<&str> = provider_nodes
            .first()
            .map(|p| p.addr())
            .into_iter()
            .collect();
        provider_nodes.push(home.start(&boot));
    }
    let boot = provider_nodes[0].addr().to_string();
    let mut caller_nodes = Vec::new();
    for i in 0..callers {
        let home = net.home(&format!("caller{i}"));
        home.ok(&["init"]);
        std::fs::write(home.home.join("config.toml"), caller_config(None))?;
        caller_nodes.push(home.start(&[&boot]));
    }
    let nonpayer_home = net.home("nonpayer");
    nonpayer_home.ok(&["init"]);
    std::fs::write(
        nonpayer_home.home.join("config.toml"),
        caller_config(Some(0)),
    )?;
    let nonpayer = nonpayer_home.start(&[&boot]);
    let provider_ids: Vec<String> = provider_nodes.iter().map(|p| p.peer_id.clone()).collect();
    let wanted: Vec<&str> = provider_ids.iter().map(String::as_str).collect();
    for c in caller_nodes.iter().chain(std::iter::once(&nonpayer)) {
        crate::wait_for_offers(c, &wanted)?;
    }

    // Honest calls: every caller at once, each to the providers in turn.
    let per_caller = calls.div_ceil(callers);
    let start = Instant::now();
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let workers: Vec<_> = caller_nodes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (id, provider_ids) = (&id, &provider_ids);
                s.spawn(move || {
                    let (mut ok, mut refused) = (0, 0);
                    let mine = per_caller.min(calls.saturating_sub(i * per_caller));
                    for k in 0..mine {
                        let on = &provider_ids[(i + k) % provider_ids.len()];
                        // Busy is not a refusal: the node retries within its call timeout.
                        match infer(&c.api, id, on) {
                            Ok((200, _)) => ok += 1,
                            Ok((402, v)) => {
                                eprintln!("an honest call was refused for payment: {v}");
                                refused += 1;
                            }
                            Ok((status, v)) => {
                                eprintln!("an honest call failed (HTTP {status}): {v}")
                            }
                            Err(e) => eprintln!("an honest call failed: {e:#}"),
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((0, 0)))
            .collect()
    });
    let elapsed = start.elapsed();
    let ok = results.iter().map(|r| r.0).sum();
    let refused = results.iter().map(|r| r.1).sum();

    // The non-payer calls provider 0 until it is refused.
    let mut nonpayer_calls = 0;
    let mut cut_off = false;
    for _ in 0..(DISCONNECT / 10) {
        let (status, v) = infer(&nonpayer.api, &id, &provider_ids[0])?;
        match status {
            200 => nonpayer_calls += 1,
            402 => {
                cut_off = true;
                break;
            }
            _ => eprintln!("a non-payer's call failed (HTTP {status}): {v}"),
        }
    }
    ensure!(cut_off, "the non-payer was never refused");
    let (status, at_provider) =
        provider_nodes[0].api_get(&format!("/api/v1/credits/{}/receipts", nonpayer.peer_id))?;
    ensure!(status == 200, "{at_provider}");
    let nonpayer_debt = u(&at_provider["account"]["net"]);

    // Fresh identities freeload on provider 1.
    let (fresh_calls, fresh_ok, fresh_credits) =
        freeload(&provider_nodes[1], id.parse()?, fresh, 5)?;
    let allowance_bound = FREE_CAP + FREE_PER_SEC * (providers_started.elapsed().as_secs() + 1);

    // Every honest (caller, provider) pair: both ledgers agree with each other and the receipts.
    let (mut pairs, mut agreed, mut billed, mut paid) = (0, 0, 0, 0);
    for c in &caller_nodes {
        for p in &provider_nodes {
            let (s1, at_p) = p.api_get(&format!("/api/v1/credits/{}/receipts", c.peer_id))?;
            let (s2, at_c) = c.api_get(&format!("/api/v1/credits/{}/receipts", p.peer_id))?;
            ensure!(s1 == 200 && s2 == 200, "{at_p} {at_c}");
            let (ap, ac) = (&at_p["account"], &at_c["account"]);
            pairs += 1;
            let sum = |list: &Value| -> u64 {
                list.as_array()
                    .map(|l| l.iter().map(|r| u(&r["cost"])).sum())
                    .unwrap_or(0)
            };
            if ap["served"] == ac["used"]
                && sum(&at_p["served"]) == u(&ap["served"])
                && sum(&at_c["used"]) == u(&ac["used"])
                && ap["paid_in"] == ac["paid_out"]
            {
                agreed += 1;
            } else {
                eprintln!("ledgers disagree: provider {ap} / caller {ac}");
            }
            billed += u(&ac["used"]);
            paid += u(&ac["paid_out"]);
        }
    }
    drop((caller_nodes, nonpayer, provider_nodes));
    Ok(CreditsReport {
        providers,
        callers,
        calls,
        ok,
        refused,
        billed,
        paid,
        pairs,
        agreed,
        nonpayer_calls,
        nonpayer_debt,
        fresh,
        fresh_calls,
        fresh_ok,
        fresh_credits,
        allowance_bound,
        elapsed,
    })
}
