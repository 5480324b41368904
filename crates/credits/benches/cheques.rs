//! Cheque benchmark: how many cheques a payee checks and stores a second (decode, signature,
//! the cheque rules, the account written to the journal; sled written and flushed by the
//! checkpointer once a second) against ed25519-dalek's own verify rate on the same signed
//! messages with their keys already decompressed, in rounds interleaved in the same run; alone
//! and with 8 payers at once. Then the credit work one paid call adds on both sides
//! (provider: admit, settle with its receipt; caller: record the receipt, sign and store a
//! cheque; provider: accept it), p50 and p99.
//!
//! `cargo bench -p credits --bench cheques` (`BENCH_CHEQUES` sets the count per payer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use credits::{Credits, PayWhen};
use protocol::compute::{InferRequest, InferResult};
use protocol::credits::{Cheque, CreditTerms};
use protocol::{BlobHash, ModelId, SecretKey, Signed};

const NOW: u64 = 1_764_300_000_000;

fn terms() -> CreditTerms {
    CreditTerms {
        payment_threshold: 1 << 40,
        disconnect_threshold: 1 << 41,
        free_cap: 0,
        free_per_s: 0,
    }
}

/// `payer` opens a ledger at `payee` (known peers get credit) and `payee` books one big receipt
/// of a call it served `payer`, so that cheques up to its cost pass; returns the receipt's id.
fn give_receipt(credits: &Credits, payee: &SecretKey, payer: &SecretKey) -> BlobHash {
    let (q, r) = call(payer, payee, 0, 1 << 40);
    let open = payer.sign(Cheque {
        payee: payee.node_id(),
        epoch: 1,
        seq: 1,
        calls: 0,
        royalties: 0,
        receipt: None,
        issued_ms: NOW,
    });
    credits.accept_cheque(&open.to_bytes()).expect("open");
    let reservation = credits.admit(payer.node_id(), 1 << 34, NOW).expect("admit");
    credits
        .settle(reservation, &q, &r, None, NOW)
        .expect("settle");
    BlobHash::of(&r.to_bytes())
}

fn call(
    caller: &SecretKey,
    provider: &SecretKey,
    nonce: u64,
    fuel: u64,
) -> (Signed<InferRequest>, Signed<InferResult>) {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&nonce.to_le_bytes());
    let request = caller.sign(InferRequest {
        model: ModelId(BlobHash::of(b"model")),
        input_hash: BlobHash::of(b"{}"),
        max_fuel: fuel,
        max_price_per_mfuel: 1,
        nonce: n,
        issued_ms: NOW,
        provider: provider.node_id(),
    });
    let result = provider.sign(InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model: request.body().model,
        output_hash: BlobHash::of(b"out"),
        fuel,
        price_per_mfuel: 1,
        backend: "wasm".into(),
    });
    (request, result)
}

/// `count` cheques from `payer`, seq 2.., each paying one credit more, covering the receipt.
fn cheques(payer: &SecretKey, payee: &SecretKey, receipt: BlobHash, count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            payer
                .sign(Cheque {
                    payee: payee.node_id(),
                    epoch: 1,
                    seq: 2 + i,
                    calls: 1 + i,
                    royalties: 0,
                    receipt: Some(receipt),
                    issued_ms: NOW + i,
                })
                .to_bytes()
        })
        .collect()
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn percentile(mut us: Vec<f64>, q: f64) -> f64 {
    us.sort_by(f64::total_cmp);
    us[((us.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let count: u64 = std::env::var("BENCH_CHEQUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let payee = SecretKey::from_seed(&[1; 32]);
    let threads = 8u64;
    let payers: Vec<SecretKey> = (0..threads)
        .map(|i| SecretKey::from_seed(&[10 + i as u8; 32]))
        .collect();

    // The baseline: ed25519-dalek verifying the same messages (domain || 0 || body), strict (as
    // a payee checks cheques) and not, with the keys already decompressed. Measured in rounds
    // interleaved with the payee's own work on fresh cheques, so that noise hits both alike;
    // the medians are compared.
    let dir = tempfile::tempdir().expect("tmp");
    let one = Credits::open(dir.path(), payee.node_id(), terms(), NOW).expect("open");
    let receipt = give_receipt(&one, &payee, &payers[0]);
    let rounds = 7u64;
    let signed: Vec<Vec<u8>> = cheques(&payers[0], &payee, receipt, count * rounds);
    let parsed: Vec<(
        ed25519_dalek::VerifyingKey,
        Vec<u8>,
        ed25519_dalek::Signature,
    )> = signed
        .iter()
        .map(|bytes| {
            let c = Signed::<Cheque>::from_bytes(bytes).expect("cheque");
            let key = ed25519_dalek::VerifyingKey::from_bytes(c.signer().as_bytes()).expect("key");
            let mut msg = protocol::credits::DOMAIN_CHEQUE.as_bytes().to_vec();
            msg.push(0);
            msg.extend_from_slice(c.body_bytes());
            (
                key,
                msg,
                ed25519_dalek::Signature::from_bytes(c.signature()),
            )
        })
        .collect();
    let verify_all = |round: &[(
        ed25519_dalek::VerifyingKey,
        Vec<u8>,
        ed25519_dalek::Signature,
    )],
                      strict: bool| {
        let start = Instant::now();
        for (key, msg, sig) in round {
            let ok = if strict {
                key.verify_strict(msg, sig).is_ok()
            } else {
                use ed25519_dalek::Verifier;
                key.verify(msg, sig).is_ok()
            };
            assert!(ok);
        }
        rate(round.len() as u64, start.elapsed())
    };
    let (mut verify_rates, mut strict_rates, mut decode_rates, mut store_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (round, batch) in parsed
        .chunks(count as usize)
        .zip(signed.chunks(count as usize))
    {
        verify_rates.push(verify_all(round, false));
        strict_rates.push(verify_all(round, true));
        // Decode + verify alone (what the payee does before its ledger and journal).
        let start = Instant::now();
        for bytes in batch {
            Signed::<Cheque>::from_bytes(bytes).expect("decode");
        }
        decode_rates.push(rate(count, start.elapsed()));
        // Verify + store, one payer: these cheques, checked and kept by the payee.
        let start = Instant::now();
        for bytes in batch {
            one.accept_cheque(bytes).expect("accept");
        }
        store_rates.push(rate(count, start.elapsed()));
    }
    let median = |v: Vec<f64>| percentile(v, 0.5);
    let (verify_rate, strict_rate, decode_rate, store_rate) = (
        median(verify_rates),
        median(strict_rates),
        median(decode_rates),
        median(store_rates),
    );
    drop(one);
    let parsed = Arc::new(parsed[..count as usize].to_vec());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let parsed = parsed.clone();
            std::thread::spawn(move || {
                for (key, msg, sig) in parsed.iter() {
                    assert!(key.verify_strict(msg, sig).is_ok());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let strict_rate_n = rate(parsed.len() as u64 * threads, start.elapsed());

    // Verify + store, `threads` payers at once into one ledger.
    let dir_n = tempfile::tempdir().expect("tmp");
    let ledger =
        Arc::new(Credits::open(dir_n.path(), payee.node_id(), terms(), NOW).expect("open"));
    let mut batches = Vec::new();
    for payer in &payers {
        let receipt = give_receipt(&ledger, &payee, payer);
        batches.push(cheques(payer, &payee, receipt, count));
    }
    let start = Instant::now();
    let handles: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                for bytes in &batch {
                    ledger.accept_cheque(bytes).expect("accept");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let store_rate_n = rate(count * threads, start.elapsed());

    // The credit work of one paid call, both sides, each on its own ledger on disk.
    let (pdir, cdir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let caller_key = SecretKey::from_seed(&[99; 32]);
    let provider =
        Credits::open(pdir.path(), payee.node_id(), CreditTerms::default(), NOW).expect("open");
    let caller = Credits::open(
        cdir.path(),
        caller_key.node_id(),
        CreditTerms::default(),
        NOW,
    )
    .expect("open");
    let calls = count.min(1_000);
    let mut per_call = Vec::new();
    for i in 0..calls {
        let (q, r) = call(&caller_key, &payee, i + 1, 1_000_000);
        let start = Instant::now();
        // A cheque with every call (the worst case: a threshold of 2 credits).
        if let Some(cheque) = caller
            .pay(&caller_key, payee.node_id(), 2, u64::MAX, PayWhen::Due, NOW)
            .expect("pay")
        {
            provider.accept_cheque(&cheque.to_bytes()).expect("accept");
        }
        let reservation = provider
            .admit(caller_key.node_id(), 200_000, NOW)
            .expect("admit");
        provider
            .settle(reservation, &q, &r, None, NOW)
            .expect("settle");
        caller.record_used(&q, &r).expect("record");
        per_call.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = (
        percentile(per_call.clone(), 0.5),
        percentile(per_call, 0.99),
    );

    println!(
        "cheques: {count} per payer and round, medians of {rounds} interleaved rounds; {threads} payers for the concurrent runs"
    );
    println!("ed25519-dalek verify          {verify_rate:>9.0}/s");
    println!(
        "ed25519-dalek verify_strict   {strict_rate:>9.0}/s   ({threads} threads: {strict_rate_n:.0}/s)"
    );
    println!(
        "cheque decode + verify, 1 payer {decode_rate:>9.0}/s   = {:.2}x verify_strict",
        decode_rate / strict_rate
    );
    println!(
        "cheque verify + store, 1 payer  {store_rate:>9.0}/s   = {:.2}x verify_strict, {:.2}x verify",
        store_rate / strict_rate,
        store_rate / verify_rate
    );
    println!(
        "cheque verify + store, {threads} payers {store_rate_n:>9.0}/s   = {:.2}x verify_strict on {threads} threads",
        store_rate_n / strict_rate_n
    );
    println!(
        "credit work of one paid call (cheque signed, accepted; admit, settle, record; 4 journaled writes): p50 {p50:.0} us, p99 {p99:.0} us"
    );
}
