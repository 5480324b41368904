//! Votes between real nodes: C pays B for calls of A's model and votes it up with the
//! receipts; the vote reaches B and A by gossip. B, which served C's calls, weighs it; A, which
//! has no credit link to either, sees it but gives it no weight (scores are personal) until it
//! follows C. A retraction replaces the vote everywhere, and a restarted node still holds it.

use std::time::{Duration, Instant};

use serde_json::Value;
use testnet::{Daemon, Testnet};

use super::inference::{http, mode};

/// Echo costs some 50 credits a call here; generous limits, so calls never wait on payment.
const PROVIDER: &str = "[inference]\nfuel = 1000000000\ntimeout_secs = 5\nmax_concurrent = 4\n\n\
                        [compute]\nserve = true\noffer_interval_secs = 1\nprice_per_mfuel = 20000\n\
                        max_price_per_mfuel = 50000\n";
const CALLER: &str = "[compute]\ncall_timeout_secs = 10\nmax_price_per_mfuel = 50000\n";

/// Searches `node` (`GET /api/v1/search?{query}`) until `done` holds of the answer.
fn wait_search(node: &Daemon, query: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, results) = node
            .api_get(&format!("/api/v1/search?{query}"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(status, 200, "{results}");
        if done(&results) {
            return results;
        }
        assert!(Instant::now() < deadline, "{what}: {results}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn votes(node: &Daemon, id: &str) -> Value {
    let (status, v) = node
        .api_get(&format!("/api/v1/models/{id}/votes"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits until `node`'s view of the model's votes satisfies `ok` (gossip takes a moment).
fn wait_votes(node: &Daemon, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = votes(node, id);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_paid_vote_reaches_every_node_and_weighs_where_its_voter_is_trusted() {
    let net = Testnet::new().expect("testnet");
    let a = net.init("a", "");
    let pkg = testnet::echo_package(net.path()).expect("package");
    let id = a.ok(&["publish", pkg.to_str().expect("utf8")]);
    // A model that matches "guest" better by its name alone.
    let twin = testnet::echo_package_named(net.path(), "guest").expect("package");
    let twin = a.ok(&["publish", twin.to_str().expect("utf8")]);
    let a_node = a.start(&[]);
    let b = net.init("b", PROVIDER);
    let b_node = b.start(&[a_node.addr()]);
    let c = net.init("c", CALLER);
    let c_node = c.start(&[a_node.addr()]);
    testnet::wait_for_offers(&c_node, &[&b_node.peer_id]).unwrap_or_else(|e| panic!("{e:#}"));
    // B's search index has both, the better name first.
    let found = wait_search(&b_node, "q=guest", "B indexes both models", |r| {
        r["total"] == 2
    });
    assert_eq!(found["hits"][0]["model_id"], twin.as_str(), "{found}");

    // Unknown choices and models are refused.
    let bad = c.fails(&["vote", &id, "sideways"]);
    assert!(bad.contains("sideways"), "{bad}");
    let unknown = c.fails(&["vote", &"0".repeat(64), "up"]);
    assert!(unknown.contains("no model"), "{unknown}");

    for i in 0..25 {
        let (status, answer) = http(
            &c_node.api,
            "POST",
            &format!("/v2/models/{id}/infer?on={}", b_node.peer_id),
            Some(&mode("echo")),
        );
        assert_eq!(status, 200, "call {i}: {answer}");
    }
    let mine = c.json(&["vote", &id, "up"]);
    assert_eq!(mine["up"], 1, "{mine}");
    let voter = &mine["voters"][0];
    assert!(voter["receipts"].as_u64().unwrap_or(0) >= 1, "{mine}");
    assert!(voter["weight"].as_f64().unwrap_or(0.0) > 0.0, "{mine}");
    let text = c.ok(&["votes", &id]);
    assert!(text.contains("1 paying voters"), "{text}");

    // B served those calls: it trusts C and weighs the vote.
    let at_b = wait_votes(&b_node, &id, "the vote reaches B", |v| v["up"] == 1);
    assert_eq!(at_b["paying_voters"], 1, "{at_b}");
    assert!(at_b["score"].as_f64().unwrap_or(0.0) > 0.0, "{at_b}");
    assert!(at_b["usage"].as_u64().unwrap_or(0) > 0, "{at_b}");
    // The vote lifts the model above the better-named one in B's search, and leads B's
    // score order.
    let found = wait_search(&b_node, "q=guest", "the vote reorders B's search", |r| {
        r["hits"][0]["model_id"] == id.as_str()
    });
    assert_eq!(found["hits"][0]["paying_voters"], 1, "{found}");
    let by_score = wait_search(&b_node, "q=&sort=score", "B's score order", |r| {
        r["total"] == 2
    });
    assert_eq!(by_score["hits"][0]["model_id"], id.as_str(), "{by_score}");
    let text = b.ok(&["search", "guest", "--sort", "score"]);
    assert!(text.starts_with(&id), "{text}");
    // `moxnet show` carries the same score, breakdown and paying voters.
    let shown = b.json(&["show", &id]);
    assert_eq!(shown["votes"]["paying_voters"], 1, "{shown}");
    assert!(
        shown["votes"]["score"].as_f64().unwrap_or(0.0) > 0.0,
        "{shown}"
    );
    let text = b.ok(&["show", &id]);
    assert!(text.contains("1 paying voters"), "{text}");
    assert!(text.contains("score    "), "{text}");
    // A relayed it but has no credit link to C or B: the vote stands there, weighing nothing.
    let at_a = wait_votes(&a_node, &id, "the vote reaches A", |v| v["up"] == 1);
    assert_eq!(at_a["paying_voters"], 0, "{at_a}");
    assert_eq!(at_a["score"].as_f64(), Some(0.0), "{at_a}");

    // Once A follows C, C's trust (and its paid vote's weight) comes from A directly.
    let follows = a.json(&["follow", &c_node.peer_id]);
    assert_eq!(
        follows["follows"].as_array().map(Vec::len),
        Some(1),
        "{follows}"
    );
    let at_a = votes(&a_node, &id);
    assert_eq!(at_a["paying_voters"], 1, "{at_a}");
    assert!(at_a["score"].as_f64().unwrap_or(0.0) > 0.0, "{at_a}");
    let unfollowed = a.json(&["follow", &c_node.peer_id, "--undo"]);
    assert_eq!(unfollowed["follows"].as_array().map(Vec::len), Some(0));
    assert_eq!(votes(&a_node, &id)["paying_voters"], 0);
    let (_, metrics) = testnet::http_text(
        &b_node.api,
        "GET",
        "/metrics",
        &[],
        None,
        Duration::from_secs(10),
    )
    .expect("metrics");
    assert!(
        metrics.contains("moxnet_votes_total{outcome=\"new\"} 1"),
        "{metrics}"
    );

    // A retraction replaces it everywhere.
    c.ok(&["vote", &id, "retract"]);
    wait_votes(&b_node, &id, "the retraction reaches B", |v| {
        v["retracted"] == 1 && v["up"] == 0
    });
    let at_a = wait_votes(&a_node, &id, "the retraction reaches A", |v| {
        v["retracted"] == 1
    });
    assert_eq!(at_a["voters"][0]["clock"], 2, "{at_a}");

    // B keeps it across a restart.
    b_node.stop();
    let b_node = b.start(&[a_node.addr()]);
    let again = votes(&b_node, &id);
    assert_eq!(again["retracted"], 1, "{again}");
    assert_eq!(again["up"], 0, "{again}");

    // C votes up again, then its key is revoked: the vote is gone everywhere, even after a
    // restart, and C can vote no more.
    c.ok(&["vote", &id, "up"]);
    wait_votes(&b_node, &id, "the new vote reaches B", |v| v["up"] == 1);
    let refused = c.fails(&["revoke"]);
    assert!(refused.contains("--yes"), "{refused}");
    let revoked = c.json(&["revoke", "--yes", "--reason", "the key leaked"]);
    assert_eq!(revoked["dropped_votes"], 1, "{revoked}");
    for (node, name) in [(&b_node, "B"), (&a_node, "A")] {
        wait_votes(node, &id, &format!("the revocation reaches {name}"), |v| {
            v["up"] == 0 && v["retracted"] == 0 && v["voters"].as_array().is_some_and(Vec::is_empty)
        });
    }
    let again = c.fails(&["vote", &id, "up"]);
    assert!(again.contains("revoked"), "{again}");
    b_node.stop();
    let b_node = b.start(&[a_node.addr()]);
    let after = votes(&b_node, &id);
    assert_eq!(after["up"], 0, "{after}");
    assert_eq!(after["paying_voters"], 0, "{after}");
}

/// The votes scenario at CI size (`cargo run -p testnet -- votes` runs it with 20 nodes): every
/// vote reaches every node, and a node that was away (and voted alone) converges when it comes
/// back.
#[test]
fn votes_reach_every_node_and_an_absent_one_catches_up() {
    let report = testnet::votes::votes(5).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{report}");
    assert_eq!(report.propagation.len(), 5 * 4);
    // Three models: each holds the standing votes of the voters on it.
    assert!(report.standing >= 5, "{report}");
}
