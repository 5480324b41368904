//! Bad input gets a clear error, a non-zero exit status, and loses nothing.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use protocol::{Manifest, SecretKey};

struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Home {
        let h = Home(tempfile::tempdir().expect("tempdir"));
        h.ok(&["init"]);
        h
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_moxnet"))
            .arg("--home")
            .arg(self.path().join("home"))
            .args(args)
            .env_remove("MOXNET_HOME")
            .output()
            .expect("run moxnet")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a command that must fail with status 1; returns stderr.
    fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} should fail with status 1"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn missing_path_names_it() {
    let h = Home::new();
    let err = h.err(&["add", "/definitely/not/here.bin"]);
    assert!(
        err.contains("/definitely/not/here.bin") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn not_a_moxnet_home_says_to_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_moxnet"))
        .arg("--home")
        .arg(dir.path())
        .arg("ls")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a moxnet home") && err.contains("moxnet init"),
        "{err}"
    );
    // MOXNET_HOME works the same as --home.
    let out = Command::new(env!("CARGO_BIN_EXE_moxnet"))
        .env("MOXNET_HOME", dir.path())
        .arg("ls")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a moxnet home"));
}

#[test]
fn bad_hashes_say_what_a_hash_is() {
    let h = Home::new();
    let err = h.err(&["get", "abc123", "-o", "x"]);
    assert!(err.contains("64 hex characters"), "{err}");
    let err = h.err(&["show", &"z".repeat(64)]);
    assert!(err.contains("not a hex digit"), "{err}");
    let err = h.err(&["get", &"0".repeat(64), "-o", "x"]);
    assert!(err.contains("not in the store"), "{err}");
}

#[test]
fn malformed_moxnet_toml_points_at_the_line() {
    let h = Home::new();
    let pkg = h.path().join("pkg");
    fs::create_dir_all(&pkg).expect("mkdir");
    fs::write(
        pkg.join("moxnet.toml"),
        "[package]\nname = \"x\"\nversion = \n",
    )
    .expect("write");
    let err = h.err(&["publish", pkg.to_str().expect("utf8")]);
    assert!(
        err.contains("moxnet.toml") && err.contains("line 3"),
        "{err}"
    );
    fs::write(pkg.join("moxnet.toml"), "[package]\nname = \"x\"\nversion = \"1\"\n[runtime]\nkind = \"onnx\"\nentry = \"missing.onnx\"\n").expect("write");
    let err = h.err(&["publish", pkg.to_str().expect("utf8")]);
    assert!(err.contains("missing.onnx"), "{err}");
    // Nothing was published by the failed attempts.
    assert_eq!(h.ok(&["ls"]), "");
}

#[test]
fn a_manifest_whose_signature_fails_is_refused() {
    let h = Home::new();
    let key = SecretKey::from_seed(&[9; 32]);
    let manifest = Manifest {
        name: "forged".into(),
        version: "1".into(),
        ..Manifest::default()
    };
    let signed = key.sign(manifest);
    let mut bytes = signed.to_bytes();
    let sig_at = bytes
        .windows(64)
        .position(|w| w == signed.signature())
        .expect("signature bytes in the envelope");
    bytes[sig_at + 10] ^= 0x01;
    let file = h.path().join("forged.manifest");
    fs::write(&file, &bytes).expect("write");
    let hash = h.ok(&["add", file.to_str().expect("utf8")]);
    let err = h.err(&["show", &hash]);
    assert!(
        err.contains("signature") && err.contains("does not verify"),
        "{err}"
    );
}

#[test]
fn corrupt_store_is_reported_and_not_exported() {
    let h = Home::new();
    let file = h.path().join("data.bin");
    fs::write(&file, vec![7u8; 100_000]).expect("write");
    let hash = h.ok(&["add", file.to_str().expect("utf8")]);
    let blob = h
        .path()
        .join("home/store/blobs")
        .join(format!("{hash}.data"));
    let mut bytes = fs::read(&blob).expect("read");
    bytes[50_000] ^= 0xff;
    fs::write(&blob, bytes).expect("write");
    let out = h.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify must exit 1 on corruption"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&hash));
    let dest = h.path().join("out.bin");
    let err = h.err(&["get", &hash, "-o", dest.to_str().expect("utf8")]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn json_mode_prints_one_object_even_for_errors() {
    let h = Home::new();
    let out = h.run(&["--json", "get", "nope", "-o", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a hash"))
    );
}

#[test]
fn identity_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    let key = h.path().join("home/identity.key");
    let mode = fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = h.err(&["ls"]);
    assert!(err.contains("chmod 600"), "{err}");
}
