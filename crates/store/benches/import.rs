//! Import benchmark: `Store::import_file` of a 1 GiB file against the baseline of copying it and
//! hashing it with the `blake3` crate in the same process and run.
//!
//! `cargo bench -p store --bench import` (set `MOXNET_BENCH_MIB` for another size). Prints the
//! median of several rounds of each, and the ratios. The goal is import ≤ 1.5× the baseline.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const BUF: usize = 1 << 20;
const ROUNDS: usize = 3;

fn write_random(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = BufWriter::with_capacity(BUF, File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(BUF as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// The baseline: read the file, write a copy, hash with `blake3::Hasher` on the way.
fn copy_and_hash(src: &Path, dst: &Path, fsync: bool) -> std::io::Result<blake3::Hash> {
    let mut r = BufReader::with_capacity(BUF, File::open(src)?);
    let out = File::create(dst)?;
    let mut w = BufWriter::with_capacity(BUF, &out);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
    w.flush()?;
    drop(w);
    if fsync {
        out.sync_all()?;
    }
    Ok(hasher.finalize())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; ignore arguments.
    let mib: u64 = std::env::var("MOXNET_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let dir =
        tempfile::tempdir_in(std::env::var_os("MOXNET_BENCH_DIR").unwrap_or_else(|| ".".into()))?;
    let src = dir.path().join("input.bin");
    write_random(&src, size)?;
    // Warm the page cache so every contender reads from memory.
    let expected = copy_and_hash(&src, &dir.path().join("warm"), false)?;
    std::fs::remove_file(dir.path().join("warm"))?;

    let mut base = Vec::new();
    let mut base_sync = Vec::new();
    let mut import = Vec::new();
    for round in 0..ROUNDS {
        let copy = dir.path().join("copy.bin");
        let t = Instant::now();
        let h = copy_and_hash(&src, &copy, false)?;
        base.push(t.elapsed());
        assert_eq!(h, expected);
        std::fs::remove_file(&copy)?;

        let t = Instant::now();
        copy_and_hash(&src, &copy, true)?;
        base_sync.push(t.elapsed());
        std::fs::remove_file(&copy)?;

        let store_dir = dir.path().join(format!("store-{round}"));
        let store = store::Store::open(&store_dir)?;
        let t = Instant::now();
        let imported = store.import_file(&src, &mut |_| {})?;
        import.push(t.elapsed());
        assert_eq!(blake3::Hash::from(imported.hash), expected);
        drop(store);
        std::fs::remove_dir_all(&store_dir)?;
    }
    let (b, bs, i) = (median(base), median(base_sync), median(import));
    let mbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    println!("import benchmark: {mib} MiB, median of {ROUNDS} rounds");
    println!(
        "  baseline copy+blake3          {:>8.3} s  {:>7.0} MB/s",
        b.as_secs_f64(),
        mbps(b)
    );
    println!(
        "  baseline copy+blake3+fsync    {:>8.3} s  {:>7.0} MB/s",
        bs.as_secs_f64(),
        mbps(bs)
    );
    println!(
        "  moxnet import (fsync, outboard, index) {:>8.3} s  {:>7.0} MB/s",
        i.as_secs_f64(),
        mbps(i)
    );
    println!(
        "  ratio import / baseline       {:>8.2}x  (goal <= 1.5x)",
        i.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "  ratio import / baseline+fsync {:>8.2}x",
        i.as_secs_f64() / bs.as_secs_f64()
    );
    Ok(())
}
