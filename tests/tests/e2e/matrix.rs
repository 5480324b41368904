//! Every journey starts on one node and ends on another, for every kind of package: a bare
//! `.onnx` graph, a package folder (the iris example), a package with a `runner.json` (the demo
//! text-embedding model, tokenized inside the sandbox) and a package that brings its own wasm
//! guest. Published on A; fetched on B and called there; called from C (which never fetches)
//! through a provider; and run with `--verify` on two providers, one of which fetches the model
//! only when the call arrives. All outputs must be identical.
//!
//! Regression: a fetch used to bring the manifest and files but not the runtime guest the
//! manifest names, so a model published on one node could be neither run on another nor served
//! by a provider that fetched it (`reading the guest …: blob … is not in the store`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use testnet::Testnet;

/// Providers: re-announce every second; limits that fit the demo model.
const SERVE: &str = "[inference]\nfuel = 50000000000\ntimeout_secs = 120\nmemory_mib = 1024\n\n\
                     [compute]\nserve = true\noffer_interval_secs = 1\n";
/// The caller: a remote call may include the provider's fetch and first compile.
const CALLER: &str = "[compute]\ncall_timeout_secs = 300\n";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// One kind of package and an input for it (the CLI's shorthand).
struct Case {
    what: &'static str,
    path: PathBuf,
    input: &'static str,
}

/// The outputs of a `moxnet --json call` answer (names, types, shapes and values).
fn outputs(answer: &Value) -> Value {
    answer["outputs"].clone()
}

#[test]
fn every_journey_works_across_nodes_for_every_kind_of_package() {
    let net = Testnet::new().expect("testnet");
    let cases = [
        Case {
            what: "bare .onnx",
            path: repo("crates/sandbox/tests/fixtures/mlp.onnx"),
            input: r#"{"x": [[5.1, 3.5, 1.4, 0.2], [-1.0, 0.5, 2.25, -3.0]]}"#,
        },
        Case {
            what: "package folder (iris example)",
            path: repo("examples/iris-linear"),
            input: r#"{"features": [[5.1, 3.5, 1.4, 0.2]]}"#,
        },
        Case {
            what: "package with runner.json (demo model)",
            path: repo("examples/minilm"),
            input: r#"{"text": ["models are the products of research"]}"#,
        },
        Case {
            what: "package with its own wasm guest",
            path: testnet::echo_package(net.path()).expect("echo package"),
            input: r#"{"mode": ["echo"]}"#,
        },
    ];
    assert!(
        repo("examples/minilm/model.onnx").is_file(),
        "the demo model is missing: python3 examples/minilm/fetch.py (scripts/test.sh runs it)"
    );

    let a = net.init("a", "");
    let ids: Vec<String> = cases
        .iter()
        .map(|c| a.ok(&["publish", c.path.to_str().expect("utf8")]))
        .collect();
    let a_node = a.start(&[]);
    let (b, c, d) = (
        net.init("b", SERVE),
        net.init("c", CALLER),
        net.init("d", SERVE),
    );
    let b_node = b.start(&[a_node.addr()]);
    let d_node = d.start(&[a_node.addr()]);
    let c_node = c.start(&[a_node.addr()]);
    testnet::wait_for_offers(&c_node, &[&b_node.peer_id, &d_node.peer_id])
        .unwrap_or_else(|e| panic!("{e:#}"));

    for (case, id) in cases.iter().zip(&ids) {
        let what = case.what;
        // Fetch on B: the manifest, the files and the guest arrive; B can run it.
        let fetched = b.json(&["fetch", id]);
        assert_eq!(fetched["state"], "complete", "{what}: {fetched}");
        let listed = b.json(&["models"]);
        let row = listed["models"]
            .as_array()
            .expect("models")
            .iter()
            .find(|m| m["model_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{what}: B does not list {id}"))
            .clone();
        assert_eq!(row["local"], true, "{what}: everything it needs is on B");

        // Call it on B, where it was fetched: the reference answer.
        let here = b.json(&["call", id, "--input", case.input]);
        let reference = outputs(&here);
        assert!(
            reference.as_array().is_some_and(|o| !o.is_empty()),
            "{what}: {here}"
        );
        assert!(here["parameters"]["provider"].is_null(), "{what}: ran on B");

        // Call it from C, which never fetches it: a provider runs it.
        let remote = c.json(&["call", id, "--input", case.input]);
        let provider = remote["parameters"]["provider"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: not run on a provider: {remote}"));
        assert!(
            provider == b_node.peer_id || provider == d_node.peer_id,
            "{what}: {provider}"
        );
        assert_eq!(outputs(&remote), reference, "{what}: same outputs remotely");

        // --verify from C: B and D both run it (D fetching it from A or B first); they agree.
        let verified = c.json(&["call", id, "--input", case.input, "--verify"]);
        let by = verified["parameters"]["verified_by"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {verified}"));
        assert_eq!(by.len(), 2, "{what}: {verified}");
        assert_eq!(outputs(&verified), reference, "{what}: verified outputs");
        assert!(
            !c.home.join("run").join(id).exists(),
            "{what}: C ran nothing itself"
        );
    }
    // Everything D fetched on demand for the calls is verified and intact.
    assert_eq!(d.json(&["verify"])["ok"], true);
    drop((c_node, d_node, b_node, a_node));
}
