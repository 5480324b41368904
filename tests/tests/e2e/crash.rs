//! kill -9 `moxnet add` at random moments during a 256 MiB import, 20 times. After every kill
//! the store verifies, every import that printed its hash (an acknowledged write) is still
//! there, and a final import gives the right hash.

use std::time::{Duration, Instant};

use testnet::{Testnet, write_random_file};

const SIZE: u64 = 256 << 20;
const KILLS: usize = 20;

/// xorshift64*, seeded from the clock and printed, so a failure can be replayed with
/// `MOXNET_CRASH_SEED`.
pub(crate) struct Rng(u64);

impl Rng {
    /// `MOXNET_CRASH_SEED`, else one from the clock; the test prints it, to replay a failure.
    pub(crate) fn seeded() -> (Rng, u64) {
        let seed = std::env::var("MOXNET_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        (Rng(seed), seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn kill_9_during_import_loses_nothing_and_corrupts_nothing() {
    let net = Testnet::new().expect("testnet");
    let file = net.path().join("big.bin");
    write_random_file(&file, SIZE, 42).expect("write");
    let expected = b3(&file);
    let file_s = file.to_str().expect("utf8");

    // How long one complete import takes here, in a scratch home, to spread kills over it.
    let probe = net.home("probe");
    probe.ok(&["init"]);
    let start = Instant::now();
    assert_eq!(probe.ok(&["add", file_s]), expected);
    let full = start.elapsed();

    let (mut rng, seed) = Rng::seeded();
    eprintln!("crash test: full import takes {full:?}; MOXNET_CRASH_SEED={seed}");

    let node = net.home("node");
    node.ok(&["init"]);
    let mut acknowledged = false;
    let mut killed_mid_import = 0;
    for round in 0..KILLS {
        // Alternate between fresh imports (unpin + gc first) and re-imports of present data.
        if round % 4 == 3 {
            node.run(&["unpin", &expected]);
            node.ok(&["gc"]);
            acknowledged = false;
        }
        let delay = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 11 / 10 + 1));
        let mut child = node.spawn(&["add", file_s]);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL; the process may have finished already.
        let out = child.wait_with_output().expect("wait");
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            assert_eq!(printed, expected, "round {round}: wrong hash");
            acknowledged = true;
        } else {
            killed_mid_import += 1;
        }
        let verify = node.run(&["verify"]);
        assert!(
            verify.status.success(),
            "round {round} (killed after {delay:?}, seed {seed}): verify failed:\n{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let listing = node.json(&["ls"]);
        let present = listing["blobs"]
            .as_array()
            .expect("blobs")
            .iter()
            .any(|b| b["hash"] == expected.as_str());
        if acknowledged {
            assert!(
                present,
                "round {round}: an import that printed its hash was lost (seed {seed})"
            );
        }
        if present {
            let entry = node.ok(&["verify", &expected]);
            assert!(entry.contains("all intact"), "{entry}");
        }
    }
    eprintln!("crash test: {killed_mid_import} of {KILLS} imports were killed before finishing");
    assert!(
        killed_mid_import >= KILLS / 4,
        "only {killed_mid_import} kills landed mid-import; the test did not exercise crashes"
    );
    // Interrupted imports leave nothing behind once the store is opened again.
    assert_eq!(node.ok(&["add", file_s]), expected);
    let tmp = node.home.join("store/tmp");
    let leftovers = std::fs::read_dir(&tmp).expect("tmp").count();
    assert_eq!(leftovers, 0, "temp files left in {}", tmp.display());
    let out = net.path().join("out.bin");
    node.ok(&["get", &expected, "-o", out.to_str().expect("utf8")]);
    assert_eq!(b3(&out), expected);
}

fn b3(path: &std::path::Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).expect("open");
    std::io::copy(&mut f, &mut h).expect("hash");
    h.finalize().to_hex().to_string()
}
