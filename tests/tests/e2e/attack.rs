//! The attack suite at CI size: every attack of `cargo run -p testnet -- attack` against three
//! real nodes while an honest workload runs. No honest node may go down, all honest work must
//! complete, and honest throughput under each attack must stay at least half of the baseline.

use testnet::attack::{self, Sizes};

#[test]
fn honest_work_goes_on_under_every_attack() {
    let (baseline, reports) = attack::run(Sizes::ci(), &[]).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{baseline}");
    for r in &reports {
        eprintln!("{} {r}", if r.passed() { "ok  " } else { "FAIL" });
    }
    assert_eq!(reports.len(), attack::ATTACKS.len());
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "attacks that hurt honest work:\n{}",
        failed.join("\n")
    );
}
