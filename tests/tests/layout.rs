//! The workspace's dependency rules (docs/ARCHITECTURE.md, "Dependency rules"), checked over
//! `cargo metadata`: light crates never reach the heavy ones, so they build and test in
//! seconds; nothing depends on the `node` binary crate.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that must build without libp2p, wasmtime or tract.
const LIGHT: &[&str] = &[
    "protocol", "store", "api", "catalog", "compute", "credits", "votes", "search",
];
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

/// The sibling modules a source file names through `crate::…` (in `use` lists, groups and
/// paths).
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `crate::{a::X, b::{Y, Z}, c}`: the top-level names of the group.
            let mut depth = 0usize;
            let mut name = String::new();
            let mut at_start = true;
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                        name.push(c)
                    }
                    _ => {
                        if !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                        }
                        if !ch.is_whitespace() || !name.is_empty() {
                            at_start = false;
                        }
                    }
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        rest = after;
    }
    found
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![
        root.join("node/src"),
        root.join("protocol/src"),
        root.join("testnet/src"),
    ];
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        dirs.push(entry.expect("entry").path().join("src"));
    }
    let mut checked = 0;
    let mut cycles = Vec::new();
    for dir in dirs {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("src/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let module = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if module == "lib" || module == "main" {
                continue; // the crate root declares the modules; it imports nothing back
            }
            let source = std::fs::read_to_string(&path).expect("read");
            let mut refs = crate_references(&source);
            refs.remove(&module);
            graph.insert(module, refs);
        }
        for (module, refs) in &graph {
            for other in refs.iter().filter(|o| *o > module) {
                if graph.get(other).is_some_and(|r| r.contains(module)) {
                    let crate_dir = dir.parent().unwrap_or(&dir).display().to_string();
                    cycles.push(format!("{crate_dir}: {module}.rs <-> {other}.rs"));
                }
            }
        }
        checked += graph.len();
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(
        cycles.is_empty(),
        "files that import each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_reference_parser_sees_groups_and_paths() {
    let refs = crate_references(
        "use crate::{api_client::Api, cli::{Cli, Command}, home};\nlet x = crate::ops::add();",
    );
    let want: BTreeSet<String> = ["api_client", "cli", "home", "ops"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want);
}
