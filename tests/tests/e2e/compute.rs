//! Compute sharing between real nodes: a model published on A is served by B and called from C,
//! which has never fetched it; `--verify` across two honest providers agrees; lying providers
//! (`testnet`'s `liar`, which copies B's answers and lies about them) are caught: one that returns
//! a wrong output by `--verify`, one whose outputs do not match its signed hash on every call, and
//! a silent one times out; and forged, replayed, stale, misaddressed, underpriced and oversized
//! requests sent by a raw libp2p peer are refused with clear reasons. A provider whose instances
//! start from the model's snapshot answers as one whose instances run `init`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::compute::{InferCall, InferReply, InferRequest, InferStatus};
use protocol::{BlobHash, ModelId, Object, SecretKey};
use serde_json::json;
use testnet::{Fault, Testnet};

use super::inference::{http, mode};

/// Serving config: offers every second, tight limits for the hostile modes.
const SERVE: &str = "[inference]\nfuel = 1000000000\ntimeout_secs = 5\nmemory_mib = 64\n\
                     max_concurrent = 4\n\n[compute]\nserve = true\noffer_interval_secs = 1\n";
/// Caller config: remote calls time out quickly.
const CALLER: &str = "[inference]\nfuel = 1000000000\n\n[compute]\ncall_timeout_secs = 5\n";

/// Node `a`, in its default configuration, with the echo package published: its id.
fn publisher(net: &Testnet) -> (testnet::Node, String) {
    let a = net.init("a", "");
    let package = testnet::echo_package(net.path()).expect("package");
    let id = a.ok(&["publish", package.to_str().expect("utf8")]);
    (a, id)
}

fn wait_for_offers(node: &testnet::Daemon, peers: &[&str]) {
    testnet::wait_for_offers(node, peers).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn a_model_published_on_a_is_served_by_b_and_called_from_c() {
    let net = Testnet::new().expect("testnet");
    let (a, id) = publisher(&net);
    let a_node = a.start(&[]);
    let b = net.init("b", SERVE);
    let b_node = b.start(&[a_node.addr()]);
    let b2 = net.init("b2", SERVE);
    let b2_node = b2.start(&[a_node.addr()]);
    let c = net.init("c", CALLER);
    let c_node = c.start(&[a_node.addr()]);
    wait_for_offers(&c_node, &[&b_node.peer_id, &b2_node.peer_id]);

    // C has never fetched the model: the call runs on a provider, which fetches it from A.
    let infer = format!("/v2/models/{id}/infer");
    let (status, echo) = http(&c_node.api, "POST", &infer, Some(&mode("echo")));
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["outputs"][0]["data"], json!(["echo"]));
    let p = &echo["parameters"];
    let provider = p["provider"].as_str().expect("provider");
    assert!(provider == b_node.peer_id || provider == b2_node.peer_id);
    assert!(p["fuel"].as_u64().is_some_and(|f| f > 0), "{p}");
    assert_eq!(p["backend"], "wasm");
    let result = hex::decode(p["result"].as_str().expect("signed result")).expect("hex");
    let signed =
        protocol::Signed::<protocol::compute::InferResult>::from_bytes(&result).expect("verifies");
    assert_eq!(signed.body().model.to_string(), id);
    assert_eq!(signed.body().fuel, p["fuel"].as_u64().expect("fuel"));
    assert!(
        !c.home.join("run").join(&id).exists(),
        "C ran nothing itself"
    );

    // The CLI through C: --on forces a provider; --verify runs on both and they agree.
    let on = c.json(&[
        "call",
        &id,
        "--input",
        r#"{"mode": ["echo"]}"#,
        "--on",
        &b2_node.peer_id,
    ]);
    assert_eq!(on["parameters"]["provider"], json!(b2_node.peer_id));
    let verified = c.json(&["call", &id, "--input", r#"{"mode": ["echo"]}"#, "--verify"]);
    let by = verified["parameters"]["verified_by"]
        .as_array()
        .expect("verified_by");
    assert_eq!(by.len(), 2);
    assert_ne!(by[0], by[1]);
    // Both ran the guest in pure wasm: bit for bit, no tolerance.
    assert_eq!(
        verified["parameters"]["verified"], "bit for bit",
        "{verified}"
    );
    let text = c.ok(&["call", &id, "--input", r#"{"mode": ["echo"]}"#, "--verify"]);
    assert!(text.contains("agree on the outputs"), "{text}");

    // A guest failure is deterministic: it comes back as is, not retried elsewhere.
    let (status, looped) = http(&c_node.api, "POST", &infer, Some(&mode("loop")));
    assert_eq!(status, 500, "{looped}");
    assert!(
        looped["error"].as_str().unwrap_or("").contains("fuel"),
        "{looped}"
    );

    // A provider that corrupts its output (and signs it) is caught by --verify.
    assert_eq!(b2_node.stop().code(), Some(0));
    let liar = net.init("liar", "");
    let liar_node = liar.start_cheating(
        Fault::WrongOutput,
        &b_node.peer_id,
        &[a_node.addr(), b_node.addr()],
    );
    wait_for_offers(&c_node, &[&b_node.peer_id, &liar_node.peer_id]);
    let (status, caught) = http(
        &c_node.api,
        "POST",
        &format!("{infer}?verify=true"),
        Some(&mode("echo")),
    );
    assert_eq!(status, 502, "{caught}");
    assert!(
        caught["error"].as_str().unwrap_or("").contains("disagree"),
        "{caught}"
    );
    let results = caught["details"]["results"].as_array().expect("evidence");
    assert_eq!(results.len(), 2);
    for r in results {
        let bytes = hex::decode(r["result"].as_str().expect("result")).expect("hex");
        protocol::Signed::<protocol::compute::InferResult>::from_bytes(&bytes).expect("signed");
    }
    let refused = c.fails(&["call", &id, "--input", r#"{"mode": ["echo"]}"#, "--verify"]);
    assert!(refused.contains("disagree"), "{refused}");

    // A provider that sends true outputs but charges for twice the fuel is caught by --verify
    // too: fuel is deterministic, so two honest providers report the same.
    drop(liar_node);
    let greedy = net.init("greedy", "");
    let greedy_node = greedy.start_cheating(
        Fault::InflatedFuel,
        &b_node.peer_id,
        &[a_node.addr(), b_node.addr()],
    );
    wait_for_offers(&c_node, &[&b_node.peer_id, &greedy_node.peer_id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, inflated) = loop {
        let (status, v) = http(
            &c_node.api,
            "POST",
            &format!("{infer}?verify=true"),
            Some(&mode("echo")),
        );
        // Until the liar that left is forgotten, the second opinion may still go to it.
        if v["error"].as_str().unwrap_or("").contains("fuel") || Instant::now() > deadline {
            break (status, v);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status, 502, "{inflated}");
    assert!(
        inflated["error"]
            .as_str()
            .unwrap_or("")
            .contains("inflates"),
        "{inflated}"
    );
    drop(greedy_node);

    // A provider whose outputs do not match its signed hash is caught on any call.
    let cheat = net.init("cheat", "");
    let cheat_node = cheat.start_cheating(
        Fault::BadHash,
        &b_node.peer_id,
        &[a_node.addr(), b_node.addr()],
    );
    let forced = format!("{infer}?on={}", cheat_node.peer_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, bad) = loop {
        let (status, v) = http(&c_node.api, "POST", &forced, Some(&mode("echo")));
        // Until the cheat has connected to C it may be unreachable; then it must be caught.
        if v["error"]
            .as_str()
            .unwrap_or("")
            .contains("signed output hash")
            || Instant::now() > deadline
        {
            break (status, v);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status, 502, "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or("")
            .contains("signed output hash"),
        "{bad}"
    );

    // A silent provider times out; calls keep going to the honest one.
    drop(cheat_node);
    let mute = net.init("mute", "");
    let mute_node = mute.start_cheating(Fault::Silent, &b_node.peer_id, &[a_node.addr()]);
    wait_for_offers(&c_node, &[&b_node.peer_id, &mute_node.peer_id]);
    let started = Instant::now();
    let (status, timed_out) = http(
        &c_node.api,
        "POST",
        &format!("{infer}?on={}", mute_node.peer_id),
        Some(&mode("echo")),
    );
    assert_eq!(status, 502, "{timed_out}");
    assert!(
        timed_out["error"]
            .as_str()
            .unwrap_or("")
            .contains("no answer within 5 s"),
        "{timed_out}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    for _ in 0..3 {
        let (status, moved) = http(&c_node.api, "POST", &infer, Some(&mode("echo")));
        assert_eq!(status, 200, "{moved}");
        assert_eq!(moved["parameters"]["provider"], json!(b_node.peer_id));
    }

    // Raw requests from a peer that is not a moxnet node: each refused with its reason.
    raw_requests_are_checked(&b_node, &id);
    drop((mute_node, c_node, b_node, a_node));
}

/// A peer that serves nothing: only used to send hand-made calls.
struct Nothing;

impl net::Provider for Nothing {
    fn blob_size(&self, _: BlobHash) -> Option<u64> {
        None
    }
    fn serve(
        &self,
        _: BlobHash,
        _: &[(u64, u64)],
        _: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("serves nothing"))
    }
    fn catalog_ids(&self, _: Option<protocol::ModelId>, _: usize) -> Vec<protocol::ModelId> {
        Vec::new()
    }
    fn manifest(&self, _: protocol::ModelId) -> Option<Vec<u8>> {
        None
    }
}

fn raw_requests_are_checked(provider: &testnet::Daemon, id: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let seed = [42u8; 32];
        let key = SecretKey::from_seed(&seed);
        let (client, _events) = net::spawn(
            net::NetConfig {
                seed,
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
                ..net::NetConfig::default()
            },
            Arc::new(Nothing),
        )
        .await
        .expect("raw peer");
        let addr: net::libp2p::Multiaddr = provider.addr().parse().expect("addr");
        client.dial(addr).await.expect("dial provider");
        let peer: net::libp2p::PeerId = provider.peer_id.parse().expect("peer id");
        let provider_id = net::node_id_of(&peer).expect("node id");
        let model = ModelId(id.parse().expect("model id"));
        let input = mode("echo").into_bytes();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let request = |nonce: u8| InferRequest {
            model,
            input_hash: BlobHash::of(&input),
            max_fuel: 1_000_000_000,
            max_price_per_mfuel: 10,
            nonce: [nonce; 16],
            issued_ms: now,
            provider: provider_id,
        };
        let send = |signed: Vec<u8>, input: Vec<u8>| {
            let client = client.clone();
            async move {
                let reply = client
                    .infer(
                        peer,
                        InferCall {
                            request: signed,
                            input,
                            cheque: None,
                        }
                        .to_bytes(),
                    )
                    .await
                    .expect("a reply");
                InferReply::from_bytes(&reply).expect("a valid reply")
            }
        };
        let check = |reply: InferReply, status: InferStatus, says: &str| {
            assert_eq!(reply.status, status, "{reply:?}");
            let message = reply.message.unwrap_or_default();
            assert!(message.contains(says), "{message:?} should say {says:?}");
        };

        // An honest request runs, once; the same bytes again are a replay.
        let honest = key.sign(request(1)).to_bytes();
        let ok = send(honest.clone(), input.clone()).await;
        assert_eq!(ok.status, InferStatus::Ok, "{ok:?}");
        check(
            send(honest, input.clone()).await,
            InferStatus::Refused,
            "replayed",
        );
        // Signed by someone else than the sender.
        let other = SecretKey::from_seed(&[43; 32]).sign(request(2)).to_bytes();
        check(
            send(other, input.clone()).await,
            InferStatus::Refused,
            "not by the peer",
        );
        // A forged signature.
        let signed = key.sign(request(3));
        let mut forged = signed.to_bytes();
        let at = forged
            .windows(64)
            .position(|w| w == signed.signature())
            .expect("signature bytes");
        forged[at] ^= 1;
        check(
            send(forged, input.clone()).await,
            InferStatus::Refused,
            "signature",
        );
        // Stale.
        let stale = key
            .sign(InferRequest {
                issued_ms: now - 3_600_000,
                ..request(4)
            })
            .to_bytes();
        check(
            send(stale, input.clone()).await,
            InferStatus::Refused,
            "clock",
        );
        // Addressed to another provider.
        let elsewhere = key
            .sign(InferRequest {
                provider: key.node_id(),
                ..request(5)
            })
            .to_bytes();
        check(
            send(elsewhere, input.clone()).await,
            InferStatus::Refused,
            "another provider",
        );
        // Below the provider's price.
        let cheap = key
            .sign(InferRequest {
                max_price_per_mfuel: 0,
                ..request(6)
            })
            .to_bytes();
        check(
            send(cheap, input.clone()).await,
            InferStatus::Refused,
            "price",
        );
        // A model nobody announced to the provider: it fetches nothing for it (a caller may not
        // make a provider fetch whatever it names).
        let unknown = key
            .sign(InferRequest {
                model: protocol::ModelId(protocol::BlobHash::of(b"never announced")),
                ..request(8)
            })
            .to_bytes();
        check(
            send(unknown, input.clone()).await,
            InferStatus::NotFound,
            "never announced",
        );
        // Inputs that are not the ones signed.
        let swapped = key.sign(request(7)).to_bytes();
        check(
            send(swapped, mode("loop").into_bytes()).await,
            InferStatus::BadRequest,
            "input hash",
        );
        // Inputs over the protocol's limit are refused; a frame over it is never read.
        let huge = vec![b' '; protocol::compute::MAX_INFER_INPUT_BYTES + 1];
        let signed = key
            .sign(InferRequest {
                input_hash: BlobHash::of(&huge),
                ..request(8)
            })
            .to_bytes();
        check(send(signed, huge).await, InferStatus::BadRequest, "limit");
        let frame = vec![0u8; protocol::compute::MAX_INFER_CALL_BYTES + 1];
        assert!(
            client.infer(peer, frame).await.is_err(),
            "oversized frame refused"
        );
    });
}

#[test]
fn a_provider_whose_instances_start_from_a_snapshot_agrees_bit_for_bit_with_one_running_init() {
    let net = Testnet::new().expect("testnet");
    let (a, id) = publisher(&net);
    let a_node = a.start(&[]);
    let serving = |after: &str| {
        SERVE.replacen(
            "[inference]\n",
            &format!("[inference]\nsnapshot_after_secs = {after}\n"),
            1,
        )
    };
    let b = net.init("b", &serving("0"));
    let b_node = b.start(&[a_node.addr()]);
    let b2 = net.init("b2", &serving("-1"));
    let b2_node = b2.start(&[a_node.addr()]);
    let c = net.init("c", CALLER);
    let c_node = c.start(&[a_node.addr()]);
    wait_for_offers(&c_node, &[&b_node.peer_id, &b2_node.peer_id]);

    // B snapshots the model on its first load, in the background; its own calls say when their
    // instances start from the snapshot.
    b.ok(&["fetch", &id]);
    let infer = format!("/v2/models/{id}/infer");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (status, answer) = http(&b_node.api, "POST", &infer, Some(&mode("echo")));
        assert_eq!(status, 200, "{answer}");
        if answer["parameters"]["from_snapshot"] == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no call on B started from the snapshot: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // B2 (no snapshots) runs the model itself too.
    b2.ok(&["fetch", &id]);
    let (_, on_b2) = http(&b2_node.api, "POST", &infer, Some(&mode("floats")));
    assert_eq!(
        on_b2["parameters"]["from_snapshot"],
        json!(false),
        "{on_b2}"
    );

    // From C: the same outputs and the same signed fuel from either provider, and --verify
    // across both agrees bit for bit (the float results a CPU could choose included).
    let floats = r#"{"mode": ["floats"]}"#;
    let on = |peer: &str| c.json(&["call", &id, "--input", floats, "--on", peer]);
    let (from_b, from_b2) = (on(&b_node.peer_id), on(&b2_node.peer_id));
    assert_eq!(from_b["outputs"], from_b2["outputs"]);
    assert_eq!(from_b["outputs"], on_b2["outputs"]);
    assert_eq!(from_b["parameters"]["fuel"], from_b2["parameters"]["fuel"]);
    let verified = c.json(&["call", &id, "--input", floats, "--verify"]);
    assert_eq!(
        verified["parameters"]["verified"], "bit for bit",
        "{verified}"
    );
}

/// A provider keeps the models it fetched for peers' calls within `[compute] cache_mib`: the
/// least recently called one is let go (its files freed, its manifest still known), and a later
/// call of it fetches it again. A model its user pinned is never the cache's. A model larger
/// than `max_fetch_mib` is refused before anything is fetched.
#[test]
fn a_provider_keeps_models_fetched_for_calls_within_its_cache() {
    let net = Testnet::new().expect("testnet");
    let a = net.init("a", "");
    // Three models of about 1.1 MiB of files each (1 MiB of their own, the shared guest), and
    // a fourth of 3.1 MiB.
    let mut ids = Vec::new();
    for i in 0..4 {
        let pkg = testnet::echo_package_named(net.path(), &format!("cached-{i}")).expect("pkg");
        let pad = if i == 3 { 3 << 20 } else { 1 << 20 };
        testnet::write_random_file(&pkg.join("pad.bin"), pad, 77 + i).expect("pad");
        ids.push(a.ok(&["publish", pkg.to_str().expect("utf8")]));
    }
    let a_node = a.start(&[]);
    let b = net.init("b", &format!("{SERVE}cache_mib = 2\nmax_fetch_mib = 2\n"));
    // B's user pins model 2 on purpose: the cache must never let it go.
    let b_node = b.start(&[a_node.addr()]);
    b.ok(&["fetch", &ids[2]]);
    let c = net.init("c", CALLER);
    let c_node = c.start(&[a_node.addr()]);
    wait_for_offers(&c_node, &[&b_node.peer_id]);
    let local = |id: &str| {
        let models = b.json(&["models"]);
        models["models"]
            .as_array()
            .expect("models")
            .iter()
            .find(|m| m["model_id"] == id)
            .map(|m| m["local"] == true)
    };
    let call = |id: &str| {
        let (status, out) = http(
            &c_node.api,
            "POST",
            &format!("/v2/models/{id}/infer"),
            Some(&mode("echo")),
        );
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["parameters"]["provider"], json!(b_node.peer_id));
    };
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Model 0, then model 1: together over 2 MiB, so model 0 goes.
    call(&ids[0]);
    assert_eq!(local(&ids[0]), Some(true), "B fetched model 0 for the call");
    call(&ids[2]);
    call(&ids[1]);
    wait_until("model 0 let go", &|| local(&ids[0]) == Some(false));
    assert_eq!(local(&ids[1]), Some(true));
    assert_eq!(local(&ids[2]), Some(true), "the user's model stays");
    // Model 0 is called again: fetched again, and now model 1 goes.
    call(&ids[0]);
    wait_until("model 1 let go", &|| local(&ids[1]) == Some(false));
    assert_eq!(local(&ids[0]), Some(true));
    assert_eq!(local(&ids[2]), Some(true));
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
        metrics.contains("\nmoxnet_call_cache_evicted_total 2\n"),
        "{metrics}"
    );
    // The network's metrics carry the names docs/operating.md gives them.
    for name in [
        "\nmoxnet_net_connections_pruned_total ",
        "\nmoxnet_net_blob_streams_busy_total ",
        "\nmoxnet_net_streams_dropped_total ",
        "\nlibp2p_swarm_connections_established_total",
    ] {
        assert!(metrics.contains(name), "{name:?} in {metrics}");
    }
    // Over max_fetch_mib: refused, with the reason, and nothing fetched.
    let (status, refused) = http(
        &c_node.api,
        "POST",
        &format!("/v2/models/{}/infer", ids[3]),
        Some(&mode("echo")),
    );
    assert_eq!(status, 502, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("fetches at most 2 MiB for a call"),
        "{refused}"
    );
    assert_eq!(local(&ids[3]), Some(false));
    let listed = b.json(&["ls"]);
    assert!(
        !listed["blobs"]
            .as_array()
            .expect("blobs")
            .iter()
            .any(|blob| blob["size"] == json!(3u64 << 20)),
        "B fetched nothing of the large model (its manifest it knew already): {listed}"
    );
}

/// A call that requires a GPU goes only to a provider whose offer lists a GPU and a GPU engine
/// (here a hand-made offer from a raw peer, since this machine has none); without such an offer
/// it is refused with the reason, and calls that do not need one still go to the CPU provider.
#[test]
fn a_call_that_needs_a_gpu_goes_only_to_a_provider_offering_one() {
    use protocol::compute::ComputeOffer;
    let net = Testnet::new().expect("testnet");
    let (a, id) = publisher(&net);
    let a_node = a.start(&[]);
    let b = net.init("b", SERVE);
    let b_node = b.start(&[a_node.addr()]);
    let c = net.init("c", CALLER);
    let c_node = c.start(&[a_node.addr()]);
    wait_for_offers(&c_node, &[&b_node.peer_id]);
    let gpu_call = format!("/v2/models/{id}/infer?gpu=true");
    let (status, refused) = http(&c_node.api, "POST", &gpu_call, Some(&mode("echo")));
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused["error"].as_str().unwrap_or("").contains("GPU"),
        "{refused}"
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let seed = [44u8; 32];
        let key = SecretKey::from_seed(&seed);
        let (client, mut events) = net::spawn(
            net::NetConfig {
                seed,
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
                ..net::NetConfig::default()
            },
            Arc::new(Nothing),
        )
        .await
        .expect("fake GPU peer");
        let listen = loop {
            match events.recv().await {
                Some(net::NetEvent::Listening(a)) => break a,
                Some(_) => continue,
                None => panic!("no listen address"),
            }
        };
        client
            .dial(c_node.addr().parse().expect("addr"))
            .await
            .expect("dial C");
        let model = ModelId(id.parse().expect("model id"));
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64
        };
        let offer = |gpus: Vec<String>| {
            key.sign(ComputeOffer {
                issued_ms: now(),
                expires_ms: now() + 60_000,
                cores: 8,
                memory_mib: 16_384,
                gpus,
                backends: vec!["wasm".into(), "onnxruntime-cuda".into()],
                models: vec![model],
                max_concurrent: 4,
                price_per_mfuel: 0,
                addrs: vec![format!("{listen}/p2p/{}", client.peer_id())],
                credit: protocol::credits::CreditTerms::default(),
                price_per_mtoken: None,
            })
            .to_bytes()
        };
        // Announced until C lists it.
        let fake = client.peer_id().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let _ = client.announce_offer(offer(vec!["Fake GPU".into()])).await;
            let (_, offers) = c_node.api_get("/api/v1/offers").expect("offers");
            if offers.to_string().contains(&fake) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "C never heard the GPU offer: {offers}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The GPU call goes to the fake peer, which refuses it: C says so, B never sees it.
        let api = c_node.api.clone();
        let path = gpu_call.clone();
        let call =
            tokio::task::spawn_blocking(move || http(&api, "POST", &path, Some(&mode("echo"))));
        let got = loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(net::NetEvent::InferCall { reply, call, .. })) => {
                    reply.send(
                        InferReply::error(InferStatus::Refused, "a fake GPU provider").to_bytes(),
                    );
                    break call;
                }
                Ok(Some(_)) => continue,
                other => panic!("the GPU call never reached the GPU provider: {other:?}"),
            }
        };
        assert!(InferCall::from_bytes(&got).is_ok(), "a well-formed call");
        let (status, answer) = call.await.expect("the call");
        assert_ne!(status, 200, "{answer}");
        assert!(answer.to_string().contains("fake GPU provider"), "{answer}");
    });
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
        !metrics.contains("moxnet_calls_total{place=\"served\""),
        "B served a call that needed a GPU: {metrics}"
    );
    // A call that needs no GPU still runs on B.
    let infer = format!("/v2/models/{id}/infer");
    let (status, echo) = http(&c_node.api, "POST", &infer, Some(&mode("echo")));
    assert_eq!(status, 200, "{echo}");
    assert_eq!(
        echo["parameters"]["provider"],
        json!(b_node.peer_id),
        "{echo}"
    );
}

/// Native engines across nodes: A publishes an ONNX model, B and B2 serve it on onnxruntime
/// (their default engine, each graph in a confined worker), C calls with `--verify`: the two
/// native results agree within the documented tolerance, not bit for bit, and the answer says so.
#[test]
fn native_engines_serve_across_nodes_and_verify_within_the_tolerance() {
    let net = Testnet::new().expect("testnet");
    let a = net.init("a", "");
    let iris = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/iris-linear");
    let id = a.ok(&["publish", iris.to_str().expect("utf8")]);
    let a_node = a.start(&[]);
    let b = net.init("b", SERVE);
    let b_node = b.start(&[a_node.addr()]);
    let b2 = net.init("b2", SERVE);
    let b2_node = b2.start(&[a_node.addr()]);
    // The providers fetch the model and compile the runner guest on the first call: more than
    // CALLER's 5 s in a debug build.
    let c = net.init(
        "c",
        "[inference]\nfuel = 1000000000\n\n[compute]\ncall_timeout_secs = 120\n",
    );
    let c_node = c.start(&[a_node.addr()]);
    for node in [&b_node, &b2_node] {
        let (status, ready) = http(&node.api, "GET", "/v2/health/ready", None);
        assert_eq!(status, 200);
        assert_eq!(ready["backend"], "onnxruntime", "{ready}");
        assert!(ready.get("fallback").is_none(), "{ready}");
    }
    wait_for_offers(&c_node, &[&b_node.peer_id, &b2_node.peer_id]);
    let offers = c.json(&["offers"]);
    let text = offers.to_string();
    assert!(
        text.contains("onnxruntime"),
        "offers name the engine: {text}"
    );

    let body = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
        "data": [5.1, 3.5, 1.4, 0.2]}]})
    .to_string();
    let (status, verified) = http(
        &c_node.api,
        "POST",
        &format!("/v2/models/{id}/infer?verify=true"),
        Some(&body),
    );
    assert_eq!(status, 200, "{verified}");
    let p = &verified["parameters"];
    assert_eq!(p["backend"], "onnxruntime", "{verified}");
    // The signed result names the engine, so that a checker knows to allow the tolerance.
    let result = hex::decode(p["result"].as_str().expect("signed result")).expect("hex");
    let signed =
        protocol::Signed::<protocol::compute::InferResult>::from_bytes(&result).expect("verifies");
    assert_eq!(signed.body().backend, "onnxruntime");
    // Two providers on one machine and one library agree bit for bit; on different CPUs they
    // may differ in the last bits, which the tolerance allows (compute::tolerance).
    assert!(
        p["verified"] == "bit for bit"
            || p["verified"] == "within the tolerance for native engines",
        "{verified}"
    );
    assert_eq!(
        p["verified_by"].as_array().map(Vec::len),
        Some(2),
        "{verified}"
    );
    let probabilities: Vec<f64> = verified["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(probabilities.len(), 3);
    assert!(
        (probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-5,
        "{probabilities:?}"
    );
    let reference = super::inference::onnxruntime(
        &iris.join("model.onnx"),
        "features",
        &[1, 4],
        &[5.1, 3.5, 1.4, 0.2],
    );
    for (p, r) in probabilities.iter().zip(&reference) {
        assert!(
            (p - r).abs() <= 1e-4,
            "{probabilities:?} vs onnxruntime {reference:?}"
        );
    }
}
