//! Real `moxnet node` processes on loopback: publish on A, fetch on C through B (C knows only
//! B, so it finds A in the DHT), a late joiner lists earlier models, kill -9 of a fetching node
//! and resume, and graceful shutdown.

use std::fs;
use std::time::{Duration, Instant};

use testnet::{Testnet, write_random_file};

/// GET on a node's HTTP API, with its token; the JSON body.
fn api_get(node: &testnet::Daemon, path: &str) -> serde_json::Value {
    let (status, body) = node.api_get(path).expect("API");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A package with one large weights file, so transfers take a while.
fn big_package(dir: &std::path::Path, mib: u64) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(
        dir.join("moxnet.toml"),
        "[package]\nname = \"big\"\nversion = \"1\"\n",
    )
    .expect("write");
    write_random_file(&dir.join("weights.bin"), mib << 20, 9).expect("weights");
}

#[test]
fn publish_on_a_fetch_on_c_through_b_and_late_joiners_see_it() {
    let net = Testnet::new().expect("testnet");
    let (a, b, c, d) = (net.home("a"), net.home("b"), net.home("c"), net.home("d"));
    for n in [&a, &b, &c, &d] {
        n.ok(&["init"]);
    }
    let pkg = net.path().join("pkg");
    big_package(&pkg, 24);
    let id = a.ok(&["publish", pkg.to_str().expect("utf8")]);

    let node_a = a.start(&[]);
    let node_b = b.start(&[node_a.addr()]);
    let node_c = c.start(&[node_b.addr()]);
    // C learns the model from B's catalogue, which B synced from A.
    wait_until("C to list the model", || c.ok(&["models"]).contains(&id));

    let fetched = c.json(&["fetch", &id]);
    assert_eq!(fetched["state"], "complete");
    assert_eq!(c.json(&["verify"])["ok"], true);
    // The HTTP API answers with the node and its blobs.
    let api = |path: &str| api_get(&node_c, path);
    let info = api("/api/v1/node");
    assert_eq!(info["peer_id"], node_c.peer_id.as_str());
    assert!(!info["peers"].as_array().expect("peers").is_empty());
    let blobs = api("/api/v1/blobs");
    assert!(
        blobs["blobs"]
            .as_array()
            .expect("blobs")
            .iter()
            .any(|b| b["hash"] == id.as_str())
    );
    let out = net.path().join("out");
    c.ok(&["get", &id, "-o", out.to_str().expect("utf8")]);
    assert_eq!(
        fs::read(out.join("weights.bin")).expect("read"),
        fs::read(pkg.join("weights.bin")).expect("read")
    );

    // A node joining after the announcement still lists the model.
    let _node_d = d.start(&[node_c.addr()]);
    wait_until("D to list the model", || d.ok(&["models"]).contains(&id));

    // Graceful shutdown: exit status 0, the API file removed, the store intact.
    let status = node_c.stop();
    assert!(status.success(), "{status}");
    assert!(!c.home.join("api").exists());
    assert_eq!(c.json(&["verify"])["ok"], true);
    drop(node_b);
}

#[test]
fn a_killed_fetch_resumes_without_refetching_verified_groups() {
    let net = Testnet::new().expect("testnet");
    let (a, c) = (net.home("a"), net.home("c"));
    a.ok(&["init"]);
    c.ok(&["init"]);
    let pkg = net.path().join("pkg");
    big_package(&pkg, 160);
    let id = a.ok(&["publish", pkg.to_str().expect("utf8")]);
    let node_a = a.start(&[]);
    let node_c = c.start(&[node_a.addr()]);
    wait_until("C to list the model", || c.ok(&["models"]).contains(&id));

    // Start the fetch, and kill -9 the node once 32 MiB are verified and recorded (the
    // progress counts groups in the store's durable partial record).
    let mut fetching = c.spawn(&["fetch", &id]);
    let saved = 32u64 << 20;
    wait_until("32 MiB of the weights to be recorded", || {
        // 404 until the CLI has started the fetch.
        let (_, progress) = node_c.api_get(&format!("/api/v1/fetch/{id}")).expect("API");
        progress["bytes_done"]
            .as_u64()
            .is_some_and(|done| done >= saved)
    });
    node_c.kill();
    let _ = fetching.kill();
    let _ = fetching.wait();

    // The groups that verified before the kill are recorded; the store still verifies.
    let node_c = c.start(&[node_a.addr()]);
    let fetched = c.json(&["fetch", &id]);
    assert_eq!(fetched["state"], "complete");
    let total = fetched["bytes_total"].as_u64().expect("total");
    let again = fetched["bytes_fetched"].as_u64().expect("fetched");
    eprintln!("resume: fetched {again} of {total} bytes after the kill");
    assert!(
        again + saved - (1 << 20) <= total,
        "the resumed fetch downloaded {again} of {total} bytes: verified groups were fetched again"
    );
    assert_eq!(c.json(&["verify"])["ok"], true);
    drop(node_c);
    let out = net.path().join("out");
    c.ok(&["get", &id, "-o", out.to_str().expect("utf8")]);
    assert_eq!(
        fs::read(out.join("weights.bin")).expect("read"),
        fs::read(pkg.join("weights.bin")).expect("read")
    );
}

#[test]
fn three_providers_one_byzantine_fetch_completes_and_bans_it() {
    let net = Testnet::new().expect("testnet");
    let pkg = net.path().join("pkg");
    big_package(&pkg, 32);
    let providers: Vec<_> = (0..3).map(|i| net.home(&format!("p{i}"))).collect();
    let mut ids = Vec::new();
    for p in &providers {
        p.ok(&["init"]);
        ids.push(p.ok(&["publish", pkg.to_str().expect("utf8")]));
    }
    // A liar on p0's home: the same store and catalogue, every range it serves corrupted.
    let evil = providers[0].start_corrupting(&[]);
    let honest1 = providers[1].start(&[]);
    let honest2 = providers[2].start(&[]);
    let client = net.home("client");
    client.ok(&["init"]);
    let _node = client.start(&[evil.addr(), honest1.addr(), honest2.addr()]);
    // The evil provider's model id: its manifest is honest, its bytes are not.
    wait_until("the client to list the model", || {
        client.ok(&["models"]).contains(&ids[0])
    });
    let fetched = client.json(&["fetch", &ids[0]]);
    assert_eq!(fetched["state"], "complete");
    assert_eq!(fetched["peers_banned"], 1, "{fetched}");
    assert_eq!(
        client.json(&["verify"])["ok"],
        true,
        "no bad byte was stored"
    );
    let out = net.path().join("out");
    client.ok(&["get", &ids[0], "-o", out.to_str().expect("utf8")]);
    assert_eq!(
        fs::read(out.join("weights.bin")).expect("read"),
        fs::read(pkg.join("weights.bin")).expect("read")
    );
}

#[test]
fn testnet_scenarios_pass_at_ci_size() {
    for report in [
        testnet::scenario::fetch_many(5, 16).expect("fetch-many"),
        testnet::scenario::kill_provider(64).expect("kill-provider"),
        // Two network namespaces as two hosts; needs root, as CI has.
        testnet::scenario::partition(16).expect("partition"),
    ] {
        eprintln!("{report}");
    }
    eprintln!("{}", testnet::scenario::compute(200).expect("compute"));
    // Providers that left (their QUIC addresses time out rather than refuse) cost a fetch next
    // to nothing; waiting on them cost 38x at 64 MiB. The goal of 1.5x is checked full-size by
    // `cargo run -p testnet -- churn`; at CI size the fetch is so short that the bound is looser.
    let churn = testnet::scenario::churn(16, 2).expect("churn");
    eprintln!("{churn}");
    assert!(churn.ratio() < 3.0, "{churn}");
}

/// `testnet scale` at CI size: 16 nodes, each bootstrapped to a random earlier one and keeping
/// 10 connections at most (target 6), so the connection manager prunes; every node still lists
/// a model published on the last (gossip through a sparse mesh), each is connected and under its
/// hard bound of 12 (newcomers and peers useful lately may hold it above 10 so soon after the
/// start),
/// and the idle figures are measured (the goals on them, for 100 and 200 nodes with the default
/// watermarks, are checked full-size with `cargo run -p testnet -- scale`).
#[test]
fn scale_at_ci_size_every_node_sees_a_new_model() {
    let report = testnet::scenario::scale(16, Duration::from_secs(5), Some(10)).expect("scale");
    eprintln!("{report}");
    assert_eq!(report.seen, report.nodes, "{report}");
    assert!(report.connections.iter().all(|&c| c >= 1), "{report}");
    assert!(
        report.connections.iter().all(|&c| c <= 10 + 10 / 4),
        "{report}"
    );
    assert_eq!(report.idle_cpu.len(), report.nodes, "{report}");
    assert!(report.rss_mib.iter().all(|&m| m > 0.0), "{report}");
}

#[test]
fn a_size_lie_is_refuted_and_does_not_stop_a_later_honest_fetch() {
    let net = Testnet::new().expect("testnet");
    let file = net.path().join("blob.bin");
    write_random_file(&file, 300_000, 17).expect("write");
    let file = file.to_str().expect("utf8");
    // The liar and the honest peer hold the same blob (a blob's hash names no author).
    let lying = net.home("lying");
    lying.ok(&["init"]);
    let hash = lying.ok(&["add", file]);
    let honest = net.home("honest");
    honest.ok(&["init"]);
    assert_eq!(honest.ok(&["add", file]), hash);
    let liar = lying.start_lying_about_sizes(&[]);
    let client = net.home("client");
    client.ok(&["init"]);

    // Only the liar is there: its size (100 bytes too many) is refuted by the blob's last group,
    // so the fetch fails, and nothing is recorded under the false size.
    let node = client.start(&[liar.addr()]);
    let failed = client.fails(&["fetch", &hash]);
    assert!(failed.contains("proved the size"), "{failed}");
    drop(node);

    // With an honest peer there too, the fetch completes, whichever peer is asked first.
    let honest_node = honest.start(&[]);
    let _node = client.start(&[liar.addr(), honest_node.addr()]);
    let fetched = client.json(&["fetch", &hash]);
    assert_eq!(fetched["state"], "complete", "{fetched}");
    assert!(fetched["peers_banned"].as_u64() <= Some(1), "{fetched}");
    let out = net.path().join("out.bin");
    client.ok(&["get", &hash, "-o", out.to_str().expect("utf8")]);
    assert_eq!(fs::read(&out).expect("read"), fs::read(file).expect("read"));
}

#[test]
fn gc_during_a_fetch_keeps_its_files_and_a_lost_index_is_rebuilt() {
    let net = Testnet::new().expect("testnet");
    let pkg = net.path().join("pkg");
    fs::create_dir_all(&pkg).expect("mkdir");
    fs::write(
        pkg.join("moxnet.toml"),
        "[package]\nname = \"many\"\nversion = \"1\"\n",
    )
    .expect("write");
    for i in 0..8 {
        write_random_file(&pkg.join(format!("w{i}.bin")), 3 << 20, i).expect("write");
    }
    let a = net.home("a");
    a.ok(&["init"]);
    let id = a.ok(&["publish", pkg.to_str().expect("utf8")]);
    let a_node = a.start(&[]);
    let c = net.home("c");
    c.ok(&["init"]);
    let c_node = c.start(&[a_node.addr()]);
    wait_until("C to list the model", || c.ok(&["models"]).contains(&id));

    // The files arrive one after another; gc runs again and again meanwhile.
    let mut fetching = c.spawn(&["--json", "fetch", &id]);
    let mut gcs = 0;
    while fetching.try_wait().expect("wait").is_none() {
        c.ok(&["gc"]);
        gcs += 1;
    }
    let out = fetching.wait_with_output().expect("fetch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{gcs} gc runs during the fetch");
    let check = |what: &str| {
        let dest = net.path().join(what);
        c.ok(&["get", &id, "-o", dest.to_str().expect("utf8")]);
        for i in 0..8 {
            let name = format!("w{i}.bin");
            assert_eq!(
                fs::read(dest.join(&name)).expect("read"),
                fs::read(pkg.join(&name)).expect("read"),
                "{what}: {name}"
            );
        }
    };
    check("after-gc");

    // The index is lost; gc deletes nothing it cannot account for, and reindex brings the
    // blobs and the model back.
    drop(c_node);
    fs::remove_dir_all(c.home.join("store/meta")).expect("rm meta");
    let gc = c.ok(&["gc"]);
    assert!(gc.contains("reindex"), "{gc}");
    let reindexed = c.json(&["reindex"]);
    assert_eq!(reindexed["models"], 1, "{reindexed}");
    assert_eq!(reindexed["removed"], 0, "{reindexed}");
    assert!(c.ok(&["models"]).contains(&id));
    assert_eq!(c.json(&["verify"])["ok"], true);
    check("after-reindex");
}

/// A node remembers the progress of at most 256 fetches: after 300 fetches, started at once
/// through the API, every blob is here and the oldest finished fetches were forgotten (`404`).
#[test]
fn fetch_progress_is_remembered_for_at_most_256_fetches() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    a.ok(&["init"]);
    let dir = net.path().join("many");
    fs::create_dir_all(&dir).expect("mkdir");
    let hashes: Vec<String> = (0..300)
        .map(|i| {
            let bytes = format!("blob number {i}");
            fs::write(dir.join(format!("{i}.txt")), &bytes).expect("write");
            blake3::hash(bytes.as_bytes()).to_hex().to_string()
        })
        .collect();
    a.ok(&["add", dir.to_str().expect("utf8")]);
    let a_node = a.start(&[]);
    let b = net.home("b");
    b.ok(&["init"]);
    let b_node = b.start(&[a_node.addr()]);
    wait_until("B connected to A", || {
        api_get(&b_node, "/api/v1/node")["peers"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    for h in &hashes {
        let (status, body) = b_node
            .api_call("POST", &format!("/api/v1/fetch/{h}"), None)
            .expect("API");
        assert_eq!(status, 202, "{body}");
    }
    // Once every fetch ended, each is either remembered (complete) or forgotten (404).
    let states = || -> Vec<String> {
        hashes
            .iter()
            .map(|h| {
                let (status, body) = b_node.api_get(&format!("/api/v1/fetch/{h}")).expect("API");
                match status {
                    404 => "forgotten".to_string(),
                    200 => body["state"].as_str().unwrap_or("?").to_string(),
                    _ => panic!("{status} {body}"),
                }
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let states = loop {
        let now = states();
        if !now.iter().any(|s| s == "running") {
            break now;
        }
        assert!(Instant::now() < deadline, "fetches never ended: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!states.iter().any(|s| s == "failed"), "{states:?}");
    let remembered = states.iter().filter(|s| *s == "complete").count();
    assert_eq!(remembered, 256, "fetches remembered");
    let listed = b.json(&["ls"]);
    let here: std::collections::HashSet<&str> = listed["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .filter_map(|b| b["hash"].as_str())
        .collect();
    for h in &hashes {
        assert!(here.contains(h.as_str()), "{h} was fetched");
    }
}

/// The simulation at CI size (2,000 nodes, a tenth of them offline; the full 10,000 run is
/// `cargo run -p testnet -- simulate`): the announcement reaches every online node, in about
/// log₆ N mesh hops of internet latency, and every provider lookup finds a record holder in a
/// handful of hops.
#[test]
fn simulation_at_ci_size_reaches_every_online_node_and_every_lookup_succeeds() {
    let report = testnet::sim::simulate(testnet::sim::SimConfig {
        nodes: 2000,
        seed: 11,
        lookups: 200,
        offline: 0.1,
    })
    .expect("simulate");
    eprintln!("{report}");
    assert_eq!(report.reached, report.online, "{report}");
    assert_eq!(report.failed_lookups, 0, "{report}");
    let p99 = report.propagation_percentile(99).expect("reached some");
    assert!(p99 < Duration::from_secs(2), "{report}");
    assert!(
        report.hops_percentile(99).is_some_and(|h| h <= 8),
        "{report}"
    );
    assert!(report.degree.2 <= 40, "{report}");
}

/// `testnet slow-providers` at CI size (32 MiB, providers limited to 4 MiB/s each; full size is
/// 64 MiB): with three rate-limited providers a fetch takes at most 0.4 of its time from one
/// (smaller models give the ranges too few to spread evenly over three).
#[test]
fn three_slow_providers_fetch_in_well_under_half_the_time_of_one() {
    let report = testnet::scenario::slow_providers(32, 4.0).expect("slow-providers");
    eprintln!("{report}");
    assert!(
        report.one >= Duration::from_secs(7),
        "the upload limit did not hold: {report}"
    );
    assert_eq!(report.used, 3, "{report}");
    assert!(report.ratio() <= 0.4, "{report}");
}

/// `testnet swarm` at CI size (full size: 50 fetchers of 64 MiB, `cargo run -p testnet --
/// swarm`): 12 nodes, every one limited to upload 2 MiB/s; 11 fetch a 12 MiB model at once.
/// They serve each other the parts they hold, so the publisher sends at most 3 copies, not 11,
/// and the others carry the rest.
#[test]
fn a_swarm_fetches_from_each_other_not_all_from_the_publisher() {
    let report = testnet::scenario::swarm(12, 12, 2.0).expect("swarm");
    eprintln!("{report}");
    assert_eq!(report.completed, report.fetchers, "{report}");
    assert!(report.publisher_copies() <= 3.0, "{report}");
    assert!(report.most_by_a_fetcher > 0, "{report}");
}
