//! The user journeys of the foundation: add/get by hash, publish a package with its training
//! history, show it, export it, pin and gc.

use std::fs;
use std::path::Path;

use testnet::{Testnet, write_random_file};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."))
}

fn b3(path: &Path) -> String {
    blake3::hash(&fs::read(path).expect("read"))
        .to_hex()
        .to_string()
}

fn same_tree(a: &Path, b: &Path) {
    let mut left: Vec<_> = walk(a);
    let mut right: Vec<_> = walk(b);
    left.sort();
    right.sort();
    assert_eq!(left, right, "{} and {} differ", a.display(), b.display());
}

fn walk(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, fs::read(&p).expect("read")));
            }
        }
    }
    out
}

#[test]
fn add_get_by_hash_equals_b3sum_and_round_trips() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    a.ok(&["init"]);
    let file = net.path().join("weights.bin");
    write_random_file(&file, 5_000_000, 1).expect("write");
    let hash = a.ok(&["add", file.to_str().expect("utf8")]);
    assert_eq!(hash, b3(&file), "a raw file's id is its b3sum");
    // Adding again stores nothing new.
    let again = a.json(&["add", file.to_str().expect("utf8")]);
    assert_eq!(again["new"], false);
    let out = net.path().join("out.bin");
    a.ok(&["get", &hash, "-o", out.to_str().expect("utf8")]);
    assert_eq!(
        fs::read(&out).expect("read"),
        fs::read(&file).expect("read")
    );

    // Folders too.
    let dir = net.path().join("folder");
    fs::create_dir_all(dir.join("nested")).expect("mkdir");
    fs::write(dir.join("a.txt"), "alpha").expect("write");
    fs::copy(&file, dir.join("nested/w.bin")).expect("copy");
    let folder = a.ok(&["add", dir.to_str().expect("utf8")]);
    let back = net.path().join("folder-back");
    a.ok(&["get", &folder, "-o", back.to_str().expect("utf8")]);
    same_tree(&dir, &back);
    let listing = a.json(&["ls"]);
    let kinds: Vec<&str> = listing["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .filter_map(|b| b["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"collection"), "{kinds:?}");
}

#[test]
fn publish_snapshot_history_show_export_gc() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    let init = a.json(&["init"]);
    let node_id = init["node_id"].as_str().expect("node id").to_string();
    // Work on a copy of the example package so the test can add checkpoints.
    let pkg = net.path().join("iris-linear");
    copy_dir(&repo_root().join("examples/iris-linear"), &pkg);
    let pkg_s = pkg.to_str().expect("utf8");
    let s1 = a.json(&[
        "snapshot",
        "add",
        pkg_s,
        "--step",
        "100",
        "--metric",
        "loss=0.61",
        "--weights",
        &format!("{pkg_s}/checkpoints/step-100.safetensors"),
    ]);
    assert!(s1["parent"].is_null());
    let s2 = a.json(&[
        "snapshot",
        "add",
        pkg_s,
        "--step",
        "200",
        "--metric",
        "loss=0.38",
        "--weights",
        &format!("{pkg_s}/checkpoints/step-200.safetensors"),
    ]);
    assert_eq!(
        s2["parent"], s1["snapshot"],
        "snapshots link by parent hash"
    );

    let published = a.json(&["publish", pkg_s]);
    let id = published["model_id"]
        .as_str()
        .expect("model id")
        .to_string();
    assert_eq!(published["snapshots"], 2);
    assert_eq!(published["author"], node_id.as_str());

    let shown = a.json(&["show", &id]);
    assert_eq!(shown["name"], "iris-linear");
    assert_eq!(shown["interface"]["inputs"][0]["datatype"], "FP32");
    assert_eq!(
        shown["interface"]["inputs"][0]["shape"],
        serde_json::json!(["batch", 4])
    );
    assert_eq!(shown["runtime"]["entry"], "model.onnx");
    let history = a.json(&["history", &id]);
    let steps: Vec<u64> = history["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .filter_map(|s| s["step"].as_u64())
        .collect();
    assert_eq!(steps, vec![100, 200]);
    assert_eq!(history["snapshots"][1]["metrics"]["loss"], 0.38);

    // The package exports byte-identical.
    let out = net.path().join("exported");
    a.ok(&["get", &id, "-o", out.to_str().expect("utf8")]);
    same_tree(&pkg, &out);

    // gc keeps everything the pinned model reaches; unpinning model and snapshot frees all
    // of it but the manifest, which the catalogue keeps (the model is known, no longer local).
    let before = a.json(&["ls"])["blobs"].as_array().expect("blobs").len();
    assert_eq!(a.json(&["gc"])["blobs_removed"], 0);
    assert_eq!(
        a.json(&["ls"])["blobs"].as_array().expect("blobs").len(),
        before
    );
    a.ok(&["unpin", &id]);
    a.ok(&["unpin", s2["snapshot"].as_str().expect("snapshot")]);
    let gc = a.json(&["gc"]);
    assert_eq!(gc["blobs_removed"].as_u64(), Some(before as u64 - 1));
    let left = a.json(&["ls"]);
    let left = left["blobs"].as_array().expect("blobs");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["hash"], id.as_str());
    assert_eq!(a.json(&["show", &id])["name"], "iris-linear");
    let again = net.path().join("exported-after-gc");
    let got = a.fails(&["get", &id, "-o", again.to_str().expect("utf8")]);
    assert!(got.contains("not in the store"), "{got}");
    assert_eq!(a.json(&["gc"])["blobs_removed"], 0);
    assert_eq!(a.json(&["verify"])["ok"], true);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
fn a_bare_onnx_file_publishes_as_a_package() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    a.ok(&["init"]);
    let onnx = net.path().join("My Classifier.onnx");
    fs::copy(repo_root().join("examples/iris-linear/model.onnx"), &onnx).expect("copy");
    let published = a.json(&["publish", onnx.to_str().expect("utf8")]);
    let id = published["model_id"].as_str().expect("id");
    let shown = a.json(&["show", id]);
    assert_eq!(shown["name"], "My-Classifier");
    assert_eq!(shown["runtime"]["kind"], "onnx");
    assert_eq!(shown["runtime"]["entry"], "My Classifier.onnx");
    assert_eq!(shown["files"][0]["hash"], b3(&onnx).as_str());
    // A file that is neither a package folder nor .onnx is refused with a hint.
    let txt = net.path().join("notes.txt");
    fs::write(&txt, "hello").expect("write");
    let err = a.fails(&["publish", txt.to_str().expect("utf8")]);
    assert!(err.contains("moxnet.toml"), "{err}");
}
