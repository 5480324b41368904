//! Credits between real nodes: A publishes a model with a 10% royalty, B serves it, C calls it
//! many times and pays with cheques as it goes; both ledgers agree with each other and with
//! the receipts, B owes A exactly the royalty on them, and `moxnet credits PEER --receipts`
//! checks out with the public keys alone. A caller that will not pay (spend limit 0) is
//! refused with 402 past the provider's limit, and calls the provider makes on it net its debt
//! down until it may call again.

use std::time::Duration;

use serde_json::Value;
use testnet::{Daemon, Testnet};

use super::inference::{http, mode};

/// Echo costs some 50 credits a call here (its fuel × 20,000 / 10^6); a caller pays once it
/// owes 200 and is refused past 500.
const PROVIDER: &str = "[inference]\nfuel = 1000000000\ntimeout_secs = 5\nmax_concurrent = 4\n\n\
                        [compute]\nserve = true\noffer_interval_secs = 1\nprice_per_mfuel = 20000\n\
                        max_price_per_mfuel = 50000\n\n\
                                                [credits]\npayment_threshold = 400\ndisconnect_threshold = 500\n\
                        settle_every_secs = 1\n";
const CALLER: &str = "[compute]\ncall_timeout_secs = 10\nmax_price_per_mfuel = 50000\n";

fn receipts(node: &Daemon, peer: &str) -> Value {
    let (status, list) = node
        .api_get(&format!("/api/v1/credits/{peer}/receipts"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{list}");
    list
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn call(node: &Daemon, id: &str, on: &str) -> (u16, Value) {
    http(
        &node.api,
        "POST",
        &format!("/v2/models/{id}/infer?on={on}"),
        Some(&mode("echo")),
    )
}

#[test]
fn calls_are_paid_with_cheques_and_both_ledgers_agree_with_the_receipts() {
    let net = Testnet::new().expect("testnet");
    let a = net.init("a", "");
    let pkg = testnet::echo_package(net.path()).expect("package");
    let toml = pkg.join("moxnet.toml");
    let text = std::fs::read_to_string(&toml).expect("toml");
    std::fs::write(&toml, format!("{text}\n[royalty]\npercent = 10\n")).expect("royalty");
    let id = a.ok(&["publish", pkg.to_str().expect("utf8")]);
    let a_node = a.start(&[]);
    let b = net.init("b", PROVIDER);
    let b_node = b.start(&[a_node.addr()]);
    let c = net.init("c", CALLER);
    let c_node = c.start(&[a_node.addr()]);
    testnet::wait_for_offers(&c_node, &[&b_node.peer_id]).unwrap_or_else(|e| panic!("{e:#}"));

    // The manifest names A as the royalty payee, signed with it.
    let shown = a.json(&["show", &id]);
    assert!(shown.to_string().contains("royalty"), "{shown}");

    let calls = 100;
    let mut costs = Vec::new();
    for i in 0..calls {
        let (status, answer) = call(&c_node, &id, &b_node.peer_id);
        assert_eq!(status, 200, "call {i}: {answer}");
        let p = &answer["parameters"];
        costs.push(u(&p["cost"]));
        assert!(p["credits"]["owed"].as_u64().is_some(), "{p}");
    }
    let total: u64 = costs.iter().sum();
    assert!(costs.iter().all(|c| *c > 0), "{costs:?}");
    assert!(
        total > 400,
        "the calls cost {total}: too little to need a cheque"
    );

    // Both ledgers, and the receipts behind them. B takes the cheque that came with a call
    // beside the call (after the reply): the last one lands a moment after the last answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (at_b, at_c) = loop {
        let at_b = receipts(&b_node, &c_node.peer_id);
        let at_c = receipts(&c_node, &b_node.peer_id);
        if at_b["cheque_in"] == at_c["cheque_out"] || std::time::Instant::now() > deadline {
            break (at_b, at_c);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (b_acct, c_acct) = (&at_b["account"], &at_c["account"]);
    assert_eq!(u(&b_acct["served_calls"]), calls as u64, "{b_acct}");
    assert_eq!(u(&c_acct["used_calls"]), calls as u64, "{c_acct}");
    assert_eq!(u(&b_acct["served"]), total);
    assert_eq!(u(&c_acct["used"]), total);
    let sum = |list: &Value| -> u64 {
        list.as_array()
            .expect("receipts")
            .iter()
            .map(|r| u(&r["cost"]))
            .sum()
    };
    assert_eq!(sum(&at_b["served"]), total);
    assert_eq!(sum(&at_c["used"]), total);
    assert_eq!(
        at_b["served"], at_c["used"],
        "the same receipts on both sides"
    );
    // C paid as it went: at most half the payment threshold is left unpaid.
    let paid = u(&c_acct["paid_out"]);
    assert_eq!(
        paid,
        u(&b_acct["paid_in"]),
        "both hold the same newest cheque"
    );
    assert_eq!(at_b["cheque_in"], at_c["cheque_out"]);
    // C signed most cheques after the call before (off the next call's path).
    let (_, metrics) = testnet::http_text(
        &c_node.api,
        "GET",
        "/metrics",
        &[],
        None,
        Duration::from_secs(10),
    )
    .expect("metrics");
    let prepared = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"moxnet_cheques_total{direction="sent",outcome="prepared"} "#)
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(prepared >= 1.0, "no prepared cheque was sent: {metrics}");
    let most = costs.iter().max().copied().unwrap_or(0);
    assert!(
        paid > 0 && total - paid < 200 + most,
        "paid {paid} of {total}"
    );

    // B owes A exactly 10% of every receipt (rounded down per receipt).
    let royalty: u64 = at_b["served"]
        .as_array()
        .expect("receipts")
        .iter()
        .map(|r| u(&r["cost"]) / 10)
        .sum();
    let (status, ledger) = b_node
        .api_get("/api/v1/credits")
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200);
    let to_a = ledger["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer_id"] == a_node.peer_id.as_str())
        .unwrap_or_else(|| panic!("B owes A nothing: {ledger}"));
    assert_eq!(u(&to_a["royalties_owed"]), royalty);
    assert_eq!(u(&to_a["royalty_calls"]), calls as u64);
    // B pays A with its own cheque when they settle (every second here), and A audits it from
    // B's receipts, checking each with the keys alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let at_a = receipts(&a_node, &b_node.peer_id);
        if u(&at_a["account"]["royalties_received"]) == royalty {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never paid A its royalties: {at_a}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let audit = a.json(&["credits", &b_node.peer_id, "--audit"]);
    assert_eq!(u(&audit["receipts"]), calls as u64, "{audit}");
    assert_eq!(u(&audit["claimed_calls"]), calls as u64, "{audit}");
    assert_eq!(u(&audit["rejected"]), 0, "{audit}");
    assert_eq!(u(&audit["billed"]), total, "{audit}");
    assert_eq!(u(&audit["due"]), royalty, "{audit}");
    assert_eq!(u(&audit["paid"]), royalty, "{audit}");
    let text = a.ok(&["credits", &b_node.peer_id, "--audit"]);
    assert!(text.contains("paid in full"), "{text}");

    // The CLI lists the receipts and checks them itself, with the keys in them alone.
    let text = c.ok(&["credits", &b_node.peer_id, "--receipts"]);
    assert!(
        text.contains("checked with the public keys alone"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{calls} used receipts ({total} credits)")),
        "{text}"
    );
    let summary = c.ok(&["credits"]);
    assert!(summary.contains(&b_node.peer_id), "{summary}");

    // A caller that never pays (spend limit 0) and also serves the model.
    let d = net.init("d", &format!("{PROVIDER}spend_limit = 0\n"));
    let d_node = d.start(&[a_node.addr(), b_node.addr()]);
    testnet::wait_for_offers(&b_node, &[&d_node.peer_id]).unwrap_or_else(|e| panic!("{e:#}"));
    testnet::wait_for_offers(&d_node, &[&b_node.peer_id]).unwrap_or_else(|e| panic!("{e:#}"));
    let mut refused = None;
    for i in 0..40 {
        let (status, answer) = call(&d_node, &id, &b_node.peer_id);
        if status == 402 {
            refused = Some((i, answer));
            break;
        }
        assert_eq!(status, 200, "{answer}");
    }
    let (served, why) = refused.expect("the non-payer is refused for payment");
    assert!(served > 0, "its first calls ran on credit: {why}");
    assert!(
        why["error"]
            .as_str()
            .unwrap_or("")
            .contains("payment required"),
        "{why}"
    );
    let debt = u(&receipts(&b_node, &d_node.peer_id)["account"]["net"]);
    assert!(
        debt > 200,
        "refused only past half the payment threshold: {debt}"
    );
    // B calls D's model: what D then owes B nets out, and D may call B again.
    let mut netted = false;
    for _ in 0..40 {
        let (status, answer) = call(&b_node, &id, &d_node.peer_id);
        assert_eq!(status, 200, "{answer}");
        let (status, _) = call(&d_node, &id, &b_node.peer_id);
        if status == 200 {
            netted = true;
            break;
        }
        assert_eq!(status, 402);
    }
    assert!(netted, "B's calls on D never paid off D's debt");
    let after = &receipts(&b_node, &d_node.peer_id)["account"];
    assert!(u(&after["used_calls"]) > 0, "{after}");
    // Spend limit 0: D never pays B more than B's calls on D cost (protocol §12.3).
    assert!(
        u(&after["paid_in"]) <= u(&after["used"]),
        "D paid beyond its spend limit: {after}"
    );
}

fn running(n: &Option<Daemon>) -> &Daemon {
    n.as_ref().expect("running")
}

/// Calls C→B until one succeeds (the nodes may be reconnecting after a restart).
fn call_until_ok(c: &Daemon, id: &str, b: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, answer) = call(c, id, b);
        if status == 200 {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "C never got a call through to B again: {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn kill_9_of_the_provider_or_the_caller_mid_call_loses_no_credit_and_pays_nothing_twice() {
    let (mut rng, seed) = super::crash::Rng::seeded();
    eprintln!("credits kill test: MOXNET_CRASH_SEED={seed}");
    let net = Testnet::new().expect("testnet");
    let a = net.init("a", "");
    let pkg = testnet::echo_package(net.path()).expect("package");
    let id = a.ok(&["publish", pkg.to_str().expect("utf8")]);
    let a_node = a.start(&[]);
    let b = net.init("b", PROVIDER);
    let c = net.init("c", CALLER);
    let mut b_node = Some(b.start(&[a_node.addr()]));
    let mut c_node = Some(c.start(&[a_node.addr()]));
    let b_peer = b_node
        .as_ref()
        .map(|n| n.peer_id.clone())
        .unwrap_or_default();
    let c_peer = c_node
        .as_ref()
        .map(|n| n.peer_id.clone())
        .unwrap_or_default();
    testnet::wait_for_offers(running(&c_node), &[&b_peer]).unwrap_or_else(|e| panic!("{e:#}"));

    let calls = 100;
    let kills = 8;
    let mut at: Vec<u64> = Vec::new();
    while at.len() < kills {
        let i = 5 + rng.next() % (calls - 10);
        if !at.contains(&i) {
            at.push(i);
        }
    }
    let mut killed = (0, 0);
    for i in 0..calls {
        let c_api = running(&c_node).api.clone();
        if !at.contains(&i) {
            call_until_ok(running(&c_node), &id, &b_peer);
            continue;
        }
        // A call in flight, and a kill -9 somewhere in it: of B or of C.
        let path = format!("/v2/models/{id}/infer?on={b_peer}");
        let flying = std::thread::spawn(move || {
            testnet::http(
                &c_api,
                "POST",
                &path,
                Some(&mode("echo")),
                std::time::Duration::from_secs(30),
            )
        });
        std::thread::sleep(std::time::Duration::from_micros(rng.next() % 6_000));
        if rng.next().is_multiple_of(2) {
            if let Some(n) = b_node.take() {
                n.kill();
            }
            killed.0 += 1;
            let _ = flying.join();
            b_node = Some(b.start(&[a_node.addr()]));
        } else {
            if let Some(n) = c_node.take() {
                n.kill();
            }
            killed.1 += 1;
            let _ = flying.join();
            c_node = Some(c.start(&[a_node.addr()]));
            testnet::wait_for_offers(running(&c_node), &[&b_peer])
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
    eprintln!("killed B {} times and C {} times", killed.0, killed.1);
    // One more call connects the two if the last kill left them apart; each side settles with
    // the other when they connect (cheques again, receipts C missed).
    call_until_ok(running(&c_node), &id, &b_peer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (at_b, at_c) = loop {
        let at_b = receipts(running(&b_node), &c_peer);
        let at_c = receipts(running(&c_node), &b_peer);
        let agree = at_b["account"]["served"] == at_c["account"]["used"]
            && at_b["account"]["paid_in"] == at_c["account"]["paid_out"];
        if agree || std::time::Instant::now() > deadline {
            break (at_b, at_c);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (b_acct, c_acct) = (&at_b["account"], &at_c["account"]);
    let ids = |list: &Value| -> Vec<String> {
        let mut v: Vec<String> = list
            .as_array()
            .expect("receipts")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&at_b["served"]),
        ids(&at_c["used"]),
        "B and C hold the same receipts (seed {seed})"
    );
    assert_eq!(b_acct["served"], c_acct["used"], "seed {seed}");
    assert_eq!(b_acct["served_calls"], c_acct["used_calls"], "seed {seed}");
    // Every call that was not killed ran, once (a killed one may have run too).
    assert!(
        u(&b_acct["served_calls"]) > calls - kills as u64,
        "{b_acct}"
    );
    assert_eq!(
        b_acct["cheque_out_seq"],
        Value::Null,
        "B never paid C: {b_acct}"
    );
    assert_eq!(b_acct["paid_in"], c_acct["paid_out"], "seed {seed}");
    assert_eq!(at_b["cheque_in"], at_c["cheque_out"], "seed {seed}");
    // Nothing paid twice: C never paid more than the receipts, and owes less than the point
    // at which it pays plus one call.
    let (served, paid) = (u(&b_acct["served"]), u(&b_acct["paid_in"]));
    assert!(paid <= served, "paid {paid} of {served} (seed {seed})");
    assert!(served - paid < 400, "paid {paid} of {served} (seed {seed})");
    // The CLI's own check of both sides, with the keys alone.
    for (node, peer) in [(&c, &b_peer), (&b, &c_peer)] {
        let text = node.ok(&["credits", peer, "--receipts"]);
        assert!(
            text.contains("checked with the public keys alone"),
            "{text}"
        );
    }
}

/// `testnet credits` at CI size: 2 providers, 3 honest callers making 120 calls, a non-payer and
/// 20 fresh identities (the full size, 5 providers, 13 callers, 2,000 calls and 200 identities,
/// runs with `cargo run -p testnet -- credits`).
#[test]
fn credits_scenario_at_ci_size_refuses_no_honest_caller_and_caps_freeloaders() {
    let report = testnet::credits::credits(2, 3, 120, 20).expect("credits scenario");
    eprintln!("{report}");
    assert!(report.passed(), "{report}");
    assert!(
        report.paid > 0,
        "the honest callers paid with cheques: {report}"
    );
    assert!(
        report.fresh_ok > 0,
        "the allowance let some free calls through: {report}"
    );
    assert!(
        report.fresh_ok < report.fresh_calls,
        "the allowance stopped the freeloaders: {report}"
    );
}
