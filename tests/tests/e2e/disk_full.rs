//! A full disk (ENOSPC, on a small tmpfs) gives a clear error, leaves no partial blob visible,
//! and the store still verifies and works afterwards.
//!
//! Mounting tmpfs needs root (CAP_SYS_ADMIN); CI runs as root. Without it the test fails with a
//! message saying so rather than passing without checking anything.

use std::path::PathBuf;
use std::process::Command;

use testnet::{Node, Testnet, write_random_file};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_a_clear_error_and_loses_nothing() {
    let net = Testnet::new().expect("testnet");
    let mnt = net.path().join("small-disk");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "could not mount a 40 MiB tmpfs at {} (this test needs root, as in CI)",
        mnt.display()
    );
    let _mount = Mount(mnt.clone());

    let node = Node::at(mnt.join("home")).expect("node");
    node.ok(&["init"]);
    let small = net.path().join("small.bin");
    write_random_file(&small, 3 << 20, 1).expect("write");
    let small_hash = node.ok(&["add", small.to_str().expect("utf8")]);

    let big = net.path().join("big.bin");
    write_random_file(&big, 64 << 20, 2).expect("write");
    let err = node.fails(&["add", big.to_str().expect("utf8")]);
    assert!(err.contains("disk full"), "unclear error: {err}");

    // Nothing partial is visible, nothing is left in tmp, the store verifies.
    let blobs = node.json(&["ls"]);
    let hashes: Vec<&str> = blobs["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .filter_map(|b| b["hash"].as_str())
        .collect();
    assert_eq!(hashes, vec![small_hash.as_str()]);
    assert_eq!(
        std::fs::read_dir(mnt.join("home/store/tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert_eq!(node.json(&["verify"])["ok"], true);

    // The store still works: export the small blob, add another one.
    let out = net.path().join("small.out");
    node.ok(&["get", &small_hash, "-o", out.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read(&out).expect("read"),
        std::fs::read(&small).expect("read")
    );
    let another = net.path().join("another.bin");
    write_random_file(&another, 1 << 20, 3).expect("write");
    node.ok(&["add", another.to_str().expect("utf8")]);
    assert_eq!(node.json(&["verify"])["ok"], true);
}
