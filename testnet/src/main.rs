//! `testnet`: runs scenarios with many real `moxnet node` processes on loopback (and the `liar`
//! where a peer must misbehave) and prints a report per scenario. Exit status 1 if any scenario
//! fails.
//!
//! ```text
//! cargo build -p node -p testnet && cargo run -p testnet -- all [--nodes 6] [--mib 256]
//! cargo run -p testnet -- fetch-many|byzantine|kill-provider|partition [--nodes N] [--mib M]
//! cargo run -p testnet -- compute [--calls 200]
//! cargo run -p testnet -- churn [--mib M] [--departed 2]
//! cargo run -p testnet -- scale [--nodes 20] [--idle-secs 60] [--max-connections 40]
//! cargo run -p testnet -- slow-providers [--mib 64] [--rate 4]
//! cargo run -p testnet -- swarm [--nodes 51] [--mib 64] [--rate 4]
//! cargo run -p testnet -- simulate [--nodes 10000] [--seed 1] [--lookups 1000] [--offline 0.1]
//! cargo run -p testnet -- credits [--providers 5] [--callers 13] [--calls 2000] [--fresh 200]
//! cargo run -p testnet -- votes [--nodes 20]
//! cargo run -p testnet -- attack [--mib 16] [--fetches 4] [--call-secs 15] [--call-rate 100]
//!     [--identities 300] [--max-connections N] [--only NAME]…
//! ```

use std::process::ExitCode;

use testnet::scenario;

/// A named scenario, ready to run; it returns its report line.
type Run = (&'static str, Box<dyn Fn() -> anyhow::Result<String>>);

/// `testnet attack`: the baseline, then each attack's report; fails if any attack does.
fn attack(args: &[String], flag: impl Fn(&str, u64) -> u64) -> ExitCode {
    let full = testnet::attack::Sizes::full();
    let sizes = testnet::attack::Sizes {
        mib: flag("--mib", full.mib),
        fetches: flag("--fetches", full.fetches as u64) as usize,
        call_secs: flag("--call-secs", full.call_secs),
        call_rate: flag("--call-rate", full.call_rate),
        identities: flag("--identities", full.identities as u64) as usize,
        max_connections: args
            .iter()
            .any(|a| a == "--max-connections")
            .then(|| flag("--max-connections", 40) as u32),
        ..full
    };
    let only: Vec<String> = args
        .windows(2)
        .filter(|w| w[0] == "--only")
        .map(|w| w[1].clone())
        .collect();
    // No --only: every attack, then churn. Otherwise the attacks named (and churn if named).
    let churn_too = only.is_empty() || only.iter().any(|o| o == "churn");
    let named: Vec<String> = only.iter().filter(|o| *o != "churn").cloned().collect();
    let attacks = if !only.is_empty() && named.is_empty() {
        Ok((None, Vec::new()))
    } else {
        testnet::attack::run(sizes.clone(), &named).map(|(b, r)| (Some(b), r))
    };
    match attacks {
        Ok((baseline, reports)) => {
            if let Some(baseline) = baseline {
                println!("      {baseline}");
            }
            let mut failed = 0;
            for r in &reports {
                let verdict = if r.passed() { "ok  " } else { "FAIL" };
                failed += usize::from(!r.passed());
                println!("{verdict}  {r}");
            }
            if churn_too {
                // Providers that left: the fetch must take at most 1.5x its time without them.
                match testnet::scenario::churn(sizes.mib.max(256), 2) {
                    Ok(c) if c.ratio() <= 1.5 => println!("ok    {c}"),
                    Ok(c) => {
                        failed += 1;
                        println!("FAIL  {c} (goal: ratio at most 1.5)");
                    }
                    Err(e) => {
                        failed += 1;
                        println!("FAIL  churn: {e:#}");
                    }
                }
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            println!("FAIL  attack: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Prints a scenario's report, `ok` when `passed` holds for it (else `FAIL` and `goal`), and
/// the exit status that goes with it.
fn verdict<R: std::fmt::Display>(
    name: &str,
    result: anyhow::Result<R>,
    passed: impl Fn(&R) -> bool,
    goal: &str,
) -> ExitCode {
    match result {
        Ok(r) if passed(&r) => {
            println!("ok    {r}");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!("FAIL  {r}{goal}");
            ExitCode::from(1)
        }
        Err(e) => {
            println!("FAIL  {name}: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let flag = |name: &str, default: u64| -> u64 {
        args.windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(default)
    };
    if which == "attack" {
        return attack(&args, flag);
    }
    let rate = args
        .windows(2)
        .find(|w| w[0] == "--rate")
        .and_then(|w| w[1].parse::<f64>().ok())
        .unwrap_or(4.0);
    if which == "swarm" {
        let fetchers = flag("--nodes", 51).saturating_sub(1);
        let result = scenario::swarm(fetchers as usize + 1, flag("--mib", 64), rate);
        return verdict(
            "swarm",
            result,
            move |r| r.completed as u64 == fetchers && r.publisher_copies() <= 3.0,
            " (goal: every fetch completes, the publisher sends at most 3 copies)",
        );
    }
    if which == "slow-providers" {
        let result = scenario::slow_providers(flag("--mib", 64), rate);
        return verdict(
            "slow-providers",
            result,
            |r| r.ratio() <= 0.4,
            " (goal: ratio at most 0.4)",
        );
    }
    if which == "simulate" {
        let text = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
        let config = testnet::sim::SimConfig {
            nodes: flag("--nodes", 10_000) as usize,
            seed: flag("--seed", 1),
            lookups: flag("--lookups", 1000) as usize,
            offline: text("--offline")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        };
        let result = testnet::sim::simulate(config);
        return verdict(
            "simulate",
            result,
            |r| r.reached == r.online && r.failed_lookups == 0,
            "",
        );
    }
    if which == "credits" {
        let result = testnet::credits::credits(
            flag("--providers", 5) as usize,
            flag("--callers", 13) as usize,
            flag("--calls", 2000) as usize,
            flag("--fresh", 200) as usize,
        );
        return verdict("credits", result, |r| r.passed(), "");
    }
    if which == "votes" {
        let result = testnet::votes::votes(flag("--nodes", 20) as usize);
        return verdict(
            "votes",
            result,
            |r| r.quantile(0.99) <= std::time::Duration::from_secs(1),
            " (goal: p99 propagation at most 1 s)",
        );
    }
    if which == "scale" {
        let nodes = flag("--nodes", 20) as usize;
        let idle = std::time::Duration::from_secs(flag("--idle-secs", 60));
        let high = args
            .iter()
            .any(|a| a == "--max-connections")
            .then(|| flag("--max-connections", 40) as u32);
        let result = scenario::scale(nodes, idle, high);
        return verdict("scale", result, |r| r.seen == r.nodes, "");
    }
    let nodes = flag("--nodes", 6) as usize;
    let mib = flag("--mib", 256);
    let calls = flag("--calls", 200) as usize;
    let departed = flag("--departed", 2) as usize;
    let runs: Vec<Run> = vec![
        (
            "fetch-many",
            Box::new(move || scenario::fetch_many(nodes, mib).map(|r| r.to_string())),
        ),
        (
            "byzantine",
            Box::new(move || scenario::byzantine(mib).map(|r| r.to_string())),
        ),
        (
            "kill-provider",
            Box::new(move || scenario::kill_provider(mib).map(|r| r.to_string())),
        ),
        (
            "partition",
            Box::new(move || scenario::partition(mib).map(|r| r.to_string())),
        ),
        (
            "compute",
            Box::new(move || scenario::compute(calls).map(|r| r.to_string())),
        ),
        (
            "churn",
            Box::new(move || {
                let report = scenario::churn(mib, departed)?;
                anyhow::ensure!(
                    report.ratio() <= 1.5,
                    "departed providers slow the fetch {:.2}x (goal: at most 1.5x): {report}",
                    report.ratio()
                );
                Ok(report.to_string())
            }),
        ),
    ];
    let selected: Vec<_> = runs
        .iter()
        .filter(|(name, _)| which == "all" || which == *name)
        .collect();
    if selected.is_empty() {
        eprintln!(
            "unknown scenario {which:?}; use all, fetch-many, byzantine, kill-provider, partition, compute, churn, scale, slow-providers, swarm, simulate, credits, votes or attack"
        );
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for (name, run) in selected {
        match run() {
            Ok(report) => println!("ok    {report}"),
            Err(e) => {
                failed += 1;
                println!("FAIL  {name}: {e:#}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
