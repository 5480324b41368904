//! The workspace's dependency rules (docs/ARCHITECTURE.md, "Dependency rules"), checked over
//! `cargo metadata`: light crates never reach the heavy ones, so they build and test in
//! seconds; nothing depends on the `node` binary crate.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that must build without libp2p, wasmtime or tract.
const LIGHT: &[&str] = &["protocol", "store", "api", "catalog", "compute", "credits"];
/// Crates that pull in libp2p (`net`), wasmtime (`sandbox`) or tract (`graph`).
const HEAVY: &[&str] = &["net", "sandbox", "graph"];

/// Every workspace crate and the workspace crates it depends on (normal and build
/// dependencies; dev-dependencies are the tests' business).
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|n| names.contains(*n))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

/// Everything `root` depends on, directly or not.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(next) = todo.pop() {
        for dep in graph.get(&next).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn light_crates_never_depend_on_heavy_ones() {
    let graph = workspace_graph();
    assert!(
        graph.contains_key("api"),
        "the api crate is in the workspace"
    );
    for light in LIGHT.iter().filter(|c| graph.contains_key(**c)) {
        let reached = reach(&graph, light);
        for heavy in HEAVY {
            assert!(
                !reached.contains(*heavy),
                "{light} depends on {heavy} (directly or through {:?})",
                reached
            );
        }
    }
}

#[test]
fn nothing_depends_on_the_node_and_there_are_no_cycles() {
    let graph = workspace_graph();
    for (name, deps) in &graph {
        assert!(
            !deps.contains("node"),
            "{name} depends on the node binary crate"
        );
        assert!(
            !reach(&graph, name).contains(name),
            "{name} depends on itself through {deps:?}"
        );
    }
}
