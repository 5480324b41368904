//! The web UI in a real browser against two real nodes: A publishes the examples (the iris
//! classifier with a training run of snapshots, MiniLM) and a package whose manifest carries a
//! script, and serves calls; B pays A for calls of both. Debian's Chromium, driven by
//! playwright-core (`tests/ui/browser.mjs`), then reads B's pages: the catalogue lists the
//! models and search, sort and tags change its rows; the model page charts the snapshot
//! metrics; the call form gives the output hash `moxnet call` gave; a vote changes the score
//! and the order; the network page shows A and its offer; the language model's chat streams an
//! answer generated on A; no console errors; the injected script never runs. Screenshots of every page, at laptop and phone widths, go to
//! `$CARGO_TARGET_TMPDIR/ui-screenshots` (not committed).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testnet::Testnet;

const PROVIDER: &str = "mdns = false\n[compute]\nserve = true\noffer_interval_secs = 1\n\
                        price_per_mfuel = 20000\nmax_price_per_mfuel = 50000\n";
const CALLER: &str =
    "mdns = false\n[compute]\ncall_timeout_secs = 60\nmax_price_per_mfuel = 50000\n";

/// The browser test's tools, or why they are missing.
fn tools() -> (std::path::PathBuf, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/system-deps.sh does)"
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: npm ci --prefix tests/ui (scripts/test.sh does)"
    );
    (dir, chromium)
}

#[test]
fn the_web_ui_lists_charts_calls_and_votes_in_a_real_browser_across_two_nodes() {
    let (ui_dir, chromium) = tools();
    let net = Testnet::new().expect("testnet");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let minilm = examples.join("minilm");
    assert!(
        minilm.join("model.onnx").exists(),
        "run `python3 examples/minilm/fetch.py` (scripts/test.sh does)"
    );

    // A: the iris classifier with a training run, MiniLM, and a manifest with a script in it.
    let a = net.init("a", PROVIDER);
    let iris_pkg = net.path().join("iris-linear");
    std::fs::create_dir_all(iris_pkg.join("checkpoints")).expect("dir");
    for f in ["model.onnx", "moxnet.toml", "README.md"] {
        std::fs::copy(examples.join("iris-linear").join(f), iris_pkg.join(f)).expect("copy");
    }
    let pkg = iris_pkg.to_str().expect("utf8");
    for (step, loss, accuracy) in [
        (50, "1.1", "0.41"),
        (100, "0.61", "0.83"),
        (200, "0.38", "0.96"),
    ] {
        a.ok(&[
            "snapshot",
            "add",
            pkg,
            "--step",
            &step.to_string(),
            "--metric",
            &format!("loss={loss}"),
            "--metric",
            &format!("accuracy={accuracy}"),
        ]);
    }
    let iris = a.ok(&["publish", pkg]);
    let minilm = a.ok(&["publish", minilm.to_str().expect("utf8")]);
    let hostile_pkg = testnet::echo_package_named(net.path(), "hostile").expect("package");
    let manifest = std::fs::read_to_string(hostile_pkg.join("moxnet.toml")).expect("toml");
    std::fs::write(
        hostile_pkg.join("moxnet.toml"),
        manifest.replacen(
            "name = \"hostile\"",
            "name = \"hostile\"\n\
             description = \"<script>window.__pwned=1</script> and </script><script>alert(1)</script>\"\n\
             authors = [\"<img src=x onerror=window.__pwned=1>\"]",
            1,
        ),
    )
    .expect("toml");
    let hostile = a.ok(&["publish", hostile_pkg.to_str().expect("utf8")]);
    let gguf = examples.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "run `python3 examples/smollm2/fetch.py` (scripts/test.sh does)"
    );
    let llm = a.ok(&["publish", gguf.to_str().expect("utf8")]);
    let a_node = a.start(&[]);

    // B learns the catalogue from A and pays A for calls of both examples.
    let b = net.init("b", CALLER);
    let b_node = b.start(&[a_node.addr()]);
    testnet::wait_for_offers(&b_node, &[&a_node.peer_id]).unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, found) = b_node.api_get("/api/v1/search?q=").expect("search");
        if found["total"] == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never learnt A's models: {found}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut iris_hash = String::new();
    for _ in 0..3 {
        let called = b.json(&[
            "call",
            &iris,
            "--input",
            r#"{"features": [[5.1, 3.5, 1.4, 0.2]]}"#,
            "--on",
            &a_node.peer_id,
        ]);
        iris_hash = called["parameters"]["output_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no output hash: {called}"))
            .to_string();
        let said = b.json(&[
            "call",
            &minilm,
            "--input",
            r#"{"text": ["a sentence to embed"]}"#,
            "--on",
            &a_node.peer_id,
        ]);
        assert!(said["parameters"]["output_hash"].is_string(), "{said}");
    }

    // B keeps the iris model (and its training run) too; the form's call still runs on A.
    b.ok(&["fetch", &iris]);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    // Only this run's pictures.
    let _ = std::fs::remove_dir_all(&shots);
    let setup: Value = json!({
        "api": b_node.api,
        "peer_a": a_node.peer_id,
        "iris": iris,
        "minilm": minilm,
        "hostile": hostile,
        "llm": llm,
        "iris_hash": iris_hash,
        "shots": shots,
    });
    let out = Command::new("node")
        .arg("browser.mjs")
        .arg(setup.to_string())
        .current_dir(&ui_dir)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node (Node.js) runs: apt-get install nodejs (scripts/system-deps.sh does)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("every check passed"), "{said}");
    for page in ["catalogue", "model", "network", "credits", "node"] {
        for variant in ["", "-phone-dark"] {
            let file = shots.join(format!("{page}{variant}.png"));
            assert!(file.is_file(), "no screenshot {}", file.display());
        }
    }
}
