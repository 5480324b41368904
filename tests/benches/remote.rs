//! Remote-call benchmark: the same trivial model (the test guest's `echo`) called through a
//! node's OIP v2 endpoint where it runs locally, and through a second node that sends it to the
//! first over loopback (`/moxnet/infer/1`: signed request, signed result, verified hashes).
//! Both go through the same HTTP path, so the difference is what a remote call adds. Prints
//! p50/p99 of each, the added latency, and calls per second with 8 callers at once. Every remote
//! call books its receipt on both sides; a second provider with a payment threshold of 2
//! credits makes the caller pay a cheque with every call (signed and stored by the caller,
//! checked and stored by the provider): the paid call against the one that carries no cheque.
//!
//! `cargo build --release -p node && cargo bench -p tests --bench remote` (`BENCH_CALLS` sets the count;
//! `MOXNET_BIN` picks another `moxnet` binary, `MOXNET_GUESTS_DIR` the built guests).

use std::time::{Duration, Instant};

use testnet::Testnet;

fn stats(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// One call: its wall time seen by the client, and the node's own `elapsed_ms` (for a remote
/// call, the round trip to the provider: sign, send, run there, verify).
fn timed(api: &str, path: &str, body: &str) -> (f64, f64) {
    let start = Instant::now();
    let (status, v) = testnet::http(api, "POST", path, Some(body), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{v}");
    let inner = v["parameters"]["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
    (start.elapsed().as_secs_f64() * 1e3, inner)
}

fn call(api: &str, path: &str, body: &str) -> f64 {
    timed(api, path, body).0
}

/// Calls per second with `callers` threads calling for `for_how_long`.
fn throughput(api: &str, path: &str, body: &str, callers: usize, for_how_long: Duration) -> f64 {
    let start = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while start.elapsed() < for_how_long {
                        call(api, path, body);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let net = Testnet::new().expect("testnet");
    let provider = net.home("provider");
    provider.ok(&["init"]);
    std::fs::write(
        provider.home.join("config.toml"),
        "[inference]\nmax_concurrent = 2\nmax_queued = 64\n\n\
         [compute]\nserve = true\noffer_interval_secs = 1\nper_peer_concurrent = 64\n",
    )
    .expect("config");
    let pkg = testnet::echo_package(net.path()).expect("package");
    let id = provider.ok(&["publish", pkg.to_str().expect("utf8")]);
    let p = provider.start(&[]);
    // The same provider's terms, except that a caller pays with every call.
    let payee = net.home("payee");
    payee.ok(&["init"]);
    std::fs::write(
        payee.home.join("config.toml"),
        "[inference]\nmax_concurrent = 2\nmax_queued = 64\n\n\
         [compute]\nserve = true\noffer_interval_secs = 1\nper_peer_concurrent = 64\n\n\
         [credits]\npayment_threshold = 2\ndisconnect_threshold = 10000000000\n",
    )
    .expect("config");
    let q = payee.start(&[p.addr()]);
    let caller = net.home("caller");
    caller.ok(&["init"]);
    let c = caller.start(&[p.addr()]);
    testnet::wait_for_offers(&c, &[&p.peer_id, &q.peer_id]).expect("the offers");
    let path = format!("/v2/models/{id}/infer?on={}", p.peer_id);
    let paid_path = format!("/v2/models/{id}/infer?on={}", q.peer_id);
    let body =
        r#"{"inputs": [{"name": "mode", "datatype": "BYTES", "shape": [1], "data": ["echo"]}]}"#;
    let local_path = format!("/v2/models/{id}/infer");
    for _ in 0..20 {
        call(&p.api, &local_path, body);
        call(&c.api, &path, body);
        call(&c.api, &paid_path, body);
    }
    // Interleaved, so that noise hits all alike.
    let (mut local, mut remote, mut local_run, mut remote_trip, mut paid) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..calls {
        let (total, run) = timed(&p.api, &local_path, body);
        local.push(total);
        local_run.push(run);
        let (total, trip) = timed(&c.api, &path, body);
        remote.push(total);
        remote_trip.push(trip);
        paid.push(timed(&c.api, &paid_path, body).0);
    }
    let (paid50, paid99) = stats(paid);
    let (l50, l99) = stats(local);
    let (r50, r99) = stats(remote);
    let (run50, _) = stats(local_run);
    let (trip50, _) = stats(remote_trip);
    println!("trivial model (echo guest), {calls} sequential calls each, over HTTP");
    println!("local call (model on the node)      p50 {l50:>8.3} ms  p99 {l99:>8.3} ms  1.00x");
    println!(
        "remote call (loopback, signed)      p50 {r50:>8.3} ms  p99 {r99:>8.3} ms  {:.2}x",
        r50 / l50
    );
    println!(
        "added by the remote call            p50 {:>8.3} ms  p99 {:>8.3} ms",
        r50 - l50,
        r99 - l99
    );
    println!(
        "remote call, a cheque with each      p50 {paid50:>8.3} ms  p99 {paid99:>8.3} ms  {:.2}x the remote call without one",
        paid50 / r50
    );
    println!(
        "inside the nodes: sandbox run p50 {run50:.3} ms; caller's round trip to the provider p50 {trip50:.3} ms"
    );
    let window = Duration::from_secs(3);
    let lt = throughput(&p.api, &local_path, body, 8, window);
    let rt = throughput(&c.api, &path, body, 8, window);
    println!(
        "8 callers at once: local {lt:.0} calls/s, remote {rt:.0} calls/s ({:.2}x)",
        rt / lt
    );
}
