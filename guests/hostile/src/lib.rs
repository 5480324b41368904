//! A hostile model guest, for the sandbox's containment tests.
//!
//! `init` returns an interface with one `BYTES` input `mode`; `predict` does what the mode says:
//! `loop` (spins forever), `memory` (allocates without bound), `recurse` (unbounded recursion),
//! `huge-output` (returns a 1 GiB tensor), `trap` (an unreachable instruction), `echo` (returns
//! its input: the well-behaved case), `fs` (tries to read outside the package), `env` (reads the
//! environment), `clock` (returns the wall clock and a random number: these must be fixed),
//! `floats` (float results a CPU may choose: NaN bits and relaxed SIMD, which must come out the
//! same on every host), `package` (lists the package directory), `remember:<secret>` (keeps an
//! encoding of the secret in a static and in leaked heap memory, as a guest that keeps one
//! caller's data would; `kept` once its own scan finds it) and `recall:<secret>` (scans all of
//! its linear memory for that encoding: `found` means an earlier call's data survived into this
//! instance). With the entry
//! `reads-package`, `init` lists the package directory first (a guest that holds the directory's
//! handle from `init` on, which a snapshot cannot carry); with `draws-randomness`, it draws
//! from WASI's random source (which a snapshot must not freeze).

use moxnet::model::types as wit;

// The model's world, and WASI's random source (to draw from in `init`).
wit_bindgen::generate!({
    path: ["wit", "../wit"],
    inline: "
        package moxnet:hostile;
        world hostile {
            include moxnet:model/model@0.1.0;
            import wasi:random/random@0.2.0;
        }
    ",
    world: "hostile",
    generate_all,
});

struct Hostile;

fn mode(inputs: &[wit::Tensor]) -> String {
    inputs
        .first()
        .map(|t| String::from_utf8_lossy(t.data.get(4..).unwrap_or(&[])).into_owned())
        .unwrap_or_default()
}

fn text(name: &str, s: &str) -> wit::Tensor {
    let mut data = (s.len() as u32).to_le_bytes().to_vec();
    data.extend_from_slice(s.as_bytes());
    wit::Tensor {
        name: name.into(),
        dtype: wit::Dtype::Bytes,
        shape: vec![1],
        data,
    }
}

/// The bits of operations whose results a CPU may choose: a NaN's sign and payload, and each
/// relaxed SIMD instruction on inputs where hosts differ (fused or not, signed or unsigned,
/// saturating or not, `-0` or `+0`, bit or lane select). `one` is 1, unknown at compile time.
fn floats(one: i32) -> String {
    use core::arch::wasm32::*;
    let onef = one as f32;
    let zero = onef - 1.0;
    #[allow(clippy::eq_op, reason = "0 / 0: a NaN the compiler cannot fold")]
    let nan = zero / zero;
    // (1 + 2^-12)^2 - (1 + 2^-11) = 2^-24 when fused, 0 when the product is rounded first.
    let a = onef + 1.0 / 4096.0;
    let madd = f32x4_relaxed_madd(
        f32x4_splat(a),
        f32x4_splat(a),
        f32x4_splat(-(onef + 1.0 / 2048.0)),
    );
    // 1 × -1, four times: -4 when the second operand is signed, 1020 when unsigned.
    let dot = i32x4_relaxed_dot_i8x16_i7x16_add(
        i8x16_splat(one as i8),
        i8x16_splat(-(one as i8)),
        i32x4_splat(0),
    );
    let trunc = i32x4_relaxed_trunc_f32x4(f32x4_splat(nan));
    let min = f32x4_relaxed_min(f32x4_splat(zero), f32x4_splat(-zero));
    let select = i32x4_relaxed_laneselect(
        i32x4_splat(-one),
        i32x4_splat(0),
        i32x4_splat(i32::MAX * one),
    );
    format!(
        "nan {:08x} madd {:08x} dot {} trunc {} min {:08x} select {:08x}",
        nan.to_bits(),
        f32x4_extract_lane::<0>(madd).to_bits(),
        i32x4_extract_lane::<0>(dot),
        i32x4_extract_lane::<0>(trunc),
        f32x4_extract_lane::<0>(min).to_bits(),
        i32x4_extract_lane::<0>(select),
    )
}

/// Recurses until `depth` (never reached in practice: the guest's stack runs out first).
#[inline(never)]
fn recurse(n: u64, depth: u64) -> u64 {
    let mut frame = [n; 64];
    std::hint::black_box(&mut frame);
    if n >= depth {
        return frame[0];
    }
    recurse(n + 1, depth) + frame[(n % 64) as usize]
}

std::thread_local! {
    /// What `remember` keeps in static memory.
    static KEPT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A secret as `remember` keeps it (and `recall` looks for it): every byte flipped, so that the
/// input holding the secret itself is never what `recall` finds.
fn encoded(secret: &str) -> Vec<u8> {
    secret.bytes().map(|b| !b).collect()
}

/// Whether `needle` appears anywhere in this instance's linear memory, other than where
/// `needle` itself lies.
fn in_memory(needle: &[u8]) -> bool {
    if needle.is_empty() {
        return false;
    }
    #[cfg(target_arch = "wasm32")]
    let size = core::arch::wasm32::memory_size::<0>() * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    let size = 0;
    let own = needle.as_ptr() as usize;
    (1..=size.saturating_sub(needle.len()))
        .filter(|&at| at != own)
        // SAFETY: `at..at + needle.len()` lies inside the linear memory (its size was just read),
        // all of which is readable; address 0 is skipped.
        .any(|at| unsafe { std::slice::from_raw_parts(at as *const u8, needle.len()) } == needle)
}

impl Guest for Hostile {
    fn init(entry: Option<String>) -> Result<wit::Metadata, wit::Error> {
        // Entry `reads-package`: lists the package directory, so that the guest holds the
        // directory's handle from `init` on (as a guest reading its files in `init` does).
        if entry.as_deref() == Some("reads-package") {
            let entries = std::fs::read_dir("/model").map_or(0, Iterator::count);
            std::hint::black_box(entries);
        }
        // Entry `draws-randomness`: draws from the random source (a snapshot would freeze
        // what it drew; std's `HashMap` keys come from the insecure seed, fixed at zero).
        if entry.as_deref() == Some("draws-randomness") {
            std::hint::black_box(wasi::random::random::get_random_u64());
        }
        let spec = |name: &str| wit::TensorSpec {
            name: name.into(),
            dtype: wit::Dtype::Bytes,
            shape: vec![wit::Dim::Fixed(1)],
        };
        Ok(wit::Metadata {
            inputs: vec![spec("mode")],
            outputs: vec![spec("out")],
        })
    }

    fn predict(inputs: Vec<wit::Tensor>) -> Result<Vec<wit::Tensor>, wit::Error> {
        match mode(&inputs).as_str() {
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let n = recurse(0, std::hint::black_box(u64::MAX));
                Ok(vec![text("out", &n.to_string())])
            }
            "huge-output" => Ok(vec![wit::Tensor {
                name: "out".into(),
                dtype: wit::Dtype::Uint8,
                shape: vec![1 << 30],
                data: vec![7u8; 1 << 30],
            }]),
            "trap" => std::process::abort(),
            "fs" => match std::fs::read("/etc/passwd") {
                Ok(b) => Ok(vec![text("out", &format!("read {} bytes", b.len()))]),
                Err(e) => Err(wit::Error::Failed(format!("fs: {e}"))),
            },
            "package" => match std::fs::read_dir("/model") {
                Ok(d) => Ok(vec![text("out", &format!("{} entries", d.count()))]),
                Err(e) => Err(wit::Error::Failed(format!("package: {e}"))),
            },
            "env" => Ok(vec![text(
                "out",
                &format!("{:?}", std::env::vars().collect::<Vec<_>>()),
            )]),
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let mut random = std::collections::hash_map::RandomState::new();
                use std::hash::{BuildHasher, Hasher};
                let mut h = random.build_hasher();
                h.write_u8(1);
                let _ = &mut random;
                Ok(vec![text("out", &format!("{now} {}", h.finish()))])
            }
            "floats" => Ok(vec![text("out", &floats(mode(&inputs).len() as i32 / 6))]),
            m if m.starts_with("remember:") => {
                let kept = encoded(&m["remember:".len()..]);
                KEPT.with_borrow_mut(|k| k.clone_from(&kept));
                std::hint::black_box(kept.leak());
                // The scan `recall` makes must find what was just kept.
                let needle = encoded(&m["remember:".len()..]);
                Ok(vec![text(
                    "out",
                    if in_memory(&needle) { "kept" } else { "lost" },
                )])
            }
            m if m.starts_with("recall:") => {
                let needle = encoded(&m["recall:".len()..]);
                Ok(vec![text(
                    "out",
                    if in_memory(&needle) { "found" } else { "gone" },
                )])
            }
            _ => Ok(inputs),
        }
    }
}

export!(Hostile);
