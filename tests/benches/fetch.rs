//! Fetch benchmark: a 1 GiB package fetched over loopback by a real `moxnet node` from 1
//! provider and from 3 providers, against a plain TCP copy of the same bytes in the same run.
//!
//! `cargo build --release -p node && cargo bench -p tests --bench fetch`
//! (`MOXNET_BENCH_MIB` sets another size). Prints times, MB/s, and ratios.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use testnet::{Testnet, write_random_file};

fn tcp_copy(path: &std::path::Path) -> std::io::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let path = path.to_path_buf();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut sock, _) = listener.accept()?;
        let mut f = std::fs::File::open(path)?;
        std::io::copy(&mut f, &mut sock)?;
        Ok(())
    });
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr)?;
    let mut out = std::fs::File::create(std::env::temp_dir().join("moxnet-bench-tcp.bin"))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    let took = start.elapsed();
    sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))??;
    let _ = std::fs::remove_file(std::env::temp_dir().join("moxnet-bench-tcp.bin"));
    Ok(took)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::var("MOXNET_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let net = Testnet::new()?;
    let pkg = net.path().join("pkg");
    std::fs::create_dir_all(&pkg)?;
    std::fs::write(
        pkg.join("moxnet.toml"),
        "[package]\nname = \"bench\"\nversion = \"1\"\n",
    )?;
    let weights = pkg.join("weights.bin");
    write_random_file(&weights, mib << 20, 3)?;

    let tcp = tcp_copy(&weights)?;

    let providers: Vec<_> = (0..3).map(|i| net.home(&format!("p{i}"))).collect();
    let mut ids = Vec::new();
    for p in &providers {
        p.ok(&["init"]);
        ids.push(p.ok(&["publish", pkg.to_str().unwrap_or_default()]));
    }
    let daemons: Vec<_> = providers.iter().map(|p| p.start(&[])).collect();
    let mut results = Vec::new();
    for count in [1usize, 3] {
        let client = net.home(&format!("client{count}"));
        client.ok(&["init"]);
        let bootstrap: Vec<&str> = daemons[..count].iter().map(|d| d.addr()).collect();
        let node = client.start(&bootstrap);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client.ok(&["models"]).contains(&ids[0]) {
            if Instant::now() > deadline {
                return Err("the client never learnt the model".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let start = Instant::now();
        let out = client.json(&["fetch", &ids[0]]);
        let took = start.elapsed();
        if out["state"] != "complete" {
            return Err(format!("fetch failed: {out}").into());
        }
        results.push((count, took, out["peers_used"].as_u64().unwrap_or(0)));
        drop(node);
    }
    let mbps = |d: Duration| (mib << 20) as f64 / d.as_secs_f64() / 1e6;
    println!("fetch benchmark: {mib} MiB over loopback");
    println!(
        "  plain TCP copy (+fsync)      {:>7.2} s  {:>7.0} MB/s",
        tcp.as_secs_f64(),
        mbps(tcp)
    );
    for (count, took, used) in &results {
        println!(
            "  moxnet fetch, {count} provider(s)   {:>7.2} s  {:>7.0} MB/s  ({used} peers used)  ratio to TCP {:.2}x",
            took.as_secs_f64(),
            mbps(*took),
            took.as_secs_f64() / tcp.as_secs_f64()
        );
    }
    if let [(_, one, _), (_, three, _)] = results.as_slice() {
        println!(
            "  3 providers / 1 provider     {:>7.2}x",
            three.as_secs_f64() / one.as_secs_f64()
        );
    }
    Ok(())
}
