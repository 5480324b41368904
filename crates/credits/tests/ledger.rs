//! The credit rules, each test failing if its rule is broken: cheques that must change nothing
//! (forged, flipped, relabelled, replayed, older, for another payee, beyond the receipts), the
//! thresholds, the shared free allowance, royalties, and a property test of random
//! interleavings of calls, cheques, lost messages and restarts between two real ledgers on
//! disk.

use credits::{Accepted, ChequeError, Credits, CreditsError, PayWhen, Refusal, Reservation, Side};
use proptest::prelude::*;
use protocol::compute::{InferRequest, InferResult};
use protocol::credits::{Cheque, CreditTerms, Royalty};
use protocol::{BlobHash, DecodeError, ModelId, NodeId, SecretKey, Signed};

const NOW: u64 = 1_700_000_000_000;
const PRICE: u64 = 1;

fn terms() -> CreditTerms {
    CreditTerms {
        payment_threshold: 1_000,
        disconnect_threshold: 1_250,
        free_cap: 300,
        free_per_s: 10,
    }
}

struct Node {
    key: SecretKey,
    dir: tempfile::TempDir,
    credits: Credits,
}

impl Node {
    fn new(seed: u8) -> Node {
        let key = SecretKey::from_seed(&[seed; 32]);
        let dir = tempfile::tempdir().expect("tempdir");
        let credits = Credits::open(dir.path(), key.node_id(), terms(), NOW).expect("open");
        Node { key, dir, credits }
    }

    fn id(&self) -> NodeId {
        self.key.node_id()
    }

    /// A kill and a start: whatever was in memory only is gone.
    fn restart(&mut self) {
        let path = self.dir.path().to_path_buf();
        // Sled holds a lock on the folder until the old handle is gone.
        let placeholder = Credits::open(&tempdir_path(), self.id(), terms(), NOW).expect("tmp");
        drop(std::mem::replace(&mut self.credits, placeholder));
        // Sled's own flusher thread lets go of the folder's lock a moment after the handle is
        // dropped (a new process would not wait).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        self.credits = loop {
            match Credits::open(&path, self.id(), terms(), NOW) {
                Ok(c) => break c,
                Err(e)
                    if std::time::Instant::now() < deadline && format!("{e}").contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
    }
}

fn tempdir_path() -> std::path::PathBuf {
    tempfile::tempdir().expect("tempdir").keep()
}

/// A call from `caller` to `provider`: the signed request and, for `fuel`, the signed result.
fn call(
    caller: &Node,
    provider: &Node,
    nonce: u64,
    max_fuel: u64,
    fuel: u64,
) -> (Signed<InferRequest>, Signed<InferResult>) {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&nonce.to_le_bytes());
    let request = caller.key.sign(InferRequest {
        model: ModelId(BlobHash::of(b"model")),
        input_hash: BlobHash::of(b"{}"),
        max_fuel,
        max_price_per_mfuel: PRICE,
        nonce: n,
        issued_ms: NOW,
        provider: provider.id(),
    });
    let result = provider.key.sign(InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model: request.body().model,
        output_hash: BlobHash::of(b"out"),
        fuel: fuel.min(max_fuel),
        price_per_mfuel: PRICE,
        backend: "wasm".into(),
    });
    (request, result)
}

fn worst(max_fuel: u64) -> u64 {
    protocol::credits::cost(max_fuel, PRICE)
}

/// Runs one whole call: the caller pays what is due with it, the provider admits, settles,
/// and the caller books the receipt.
fn paid_call(caller: &Node, provider: &Node, nonce: u64, fuel: u64) -> Result<u64, Refusal> {
    if let Some(cheque) = caller
        .credits
        .pay(
            &caller.key,
            provider.id(),
            terms().payment_threshold,
            u64::MAX,
            PayWhen::Due,
            NOW,
        )
        .expect("pay")
    {
        provider
            .credits
            .accept_cheque(&cheque.to_bytes())
            .expect("accept");
    }
    let r = provider.credits.admit(caller.id(), worst(fuel), NOW)?;
    let (request, result) = call(caller, provider, nonce, fuel, fuel);
    let v = provider
        .credits
        .settle(r, &request, &result, None, NOW)
        .expect("settle");
    caller
        .credits
        .record_used(&request, &result)
        .expect("record");
    Ok(v.cost)
}

/// A caller's account at a provider after some paid calls, and the cheque it sent last.
fn setup() -> (Node, Node, Signed<Cheque>) {
    let (c, b) = (Node::new(1), Node::new(2));
    for i in 0..12 {
        paid_call(&c, &b, i, 100_000_000).expect("call");
    }
    let cheque = c
        .credits
        .pay(&c.key, b.id(), 0, u64::MAX, PayWhen::Now, NOW)
        .expect("pay")
        .expect("owes");
    b.credits.accept_cheque(&cheque.to_bytes()).expect("accept");
    (c, b, cheque)
}

#[test]
fn cheques_that_must_change_nothing_change_nothing() {
    let (c, b, cheque) = setup();
    let before = b.credits.balance(&c.id());
    assert_eq!(before.account.paid_in(), 1_200);
    let bytes = cheque.to_bytes();
    let unchanged = |what: &str| {
        assert_eq!(
            b.credits.balance(&c.id()),
            before,
            "{what} changed the ledger"
        );
    };

    // Replayed: the same cheque again.
    let (_, accepted) = b.credits.accept_cheque(&bytes).expect("replay");
    assert_eq!(accepted, Accepted::Stale);
    unchanged("a replayed cheque");

    // Every flipped bit: a decode or signature error.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(
            b.credits.accept_cheque(&bad).is_err(),
            "bit flip at byte {i}"
        );
    }
    unchanged("flipped cheques");

    // Forged: the caller's cheque body signed by someone else is a cheque from someone else,
    // who holds no receipts here.
    let mallory = SecretKey::from_seed(&[66; 32]);
    let forged = mallory.sign(Cheque {
        seq: 99,
        ..cheque.body().clone()
    });
    assert!(matches!(
        b.credits.accept_cheque(&forged.to_bytes()),
        Err(CreditsError::Cheque(ChequeError::OverReceipts { .. }))
    ));
    unchanged("a forged cheque");

    // Relabelled: a request's signed envelope presented as a cheque.
    let (request, _) = call(&c, &b, 1_000, 10, 10);
    assert!(matches!(
        b.credits.accept_cheque(&request.to_bytes()),
        Err(CreditsError::Decode(DecodeError::WrongDomain { .. }))
    ));
    unchanged("a relabelled signature");

    // Older: a lower seq with more money in it is still older.
    let older = c.key.sign(Cheque {
        seq: cheque.body().seq - 1,
        calls: 1_000,
        ..cheque.body().clone()
    });
    let older = Signed::<Cheque>::from_bytes(&older.to_bytes()).expect("older");
    assert_eq!(
        b.credits.accept_cheque(&older.to_bytes()).expect("older").1,
        Accepted::Stale
    );
    unchanged("an older cheque");

    // For another payee.
    let other = SecretKey::from_seed(&[3; 32]).node_id();
    let elsewhere = c.key.sign(Cheque {
        payee: other,
        seq: cheque.body().seq + 1,
        ..cheque.body().clone()
    });
    assert!(matches!(
        b.credits.accept_cheque(&elsewhere.to_bytes()),
        Err(CreditsError::Cheque(ChequeError::WrongPayee { .. }))
    ));
    unchanged("a cheque to another payee");

    // More than the receipts held, a total that goes down, another epoch, an unknown receipt.
    let next = |f: &dyn Fn(&mut Cheque)| {
        let mut body = cheque.body().clone();
        body.seq += 1;
        f(&mut body);
        c.key.sign(body).to_bytes()
    };
    for (what, bytes, expected) in [
        (
            "over the receipts",
            next(&|c| c.calls = 1_201),
            "OverReceipts",
        ),
        ("a lower total", next(&|c| c.calls = 1_100), "Decreasing"),
        ("another epoch", next(&|c| c.epoch += 1), "WrongEpoch"),
        (
            "an unknown receipt",
            next(&|c| c.receipt = Some(BlobHash::of(b"never"))),
            "UnknownReceipt",
        ),
    ] {
        let err = b.credits.accept_cheque(&bytes).expect_err(what);
        assert!(format!("{err:?}").contains(expected), "{what}: {err:?}");
        unchanged(what);
    }

    // And a genuine newer cheque still goes through afterwards.
    paid_call(&c, &b, 500, 100_000_000).expect("call");
    let newer = c
        .credits
        .pay(&c.key, b.id(), 0, u64::MAX, PayWhen::Now, NOW)
        .expect("pay")
        .expect("owes");
    assert_eq!(
        b.credits.accept_cheque(&newer.to_bytes()).expect("newer").1,
        Accepted::New {
            calls: 100,
            royalties: 0
        }
    );
}

#[test]
fn a_caller_that_never_pays_is_refused_at_the_disconnect_threshold() {
    let (c, b) = (Node::new(1), Node::new(2));
    // It opens a ledger (a cheque of nothing) and then never pays.
    let open = c
        .credits
        .pay(
            &c.key,
            b.id(),
            terms().payment_threshold,
            0,
            PayWhen::Due,
            NOW,
        )
        .expect("pay")
        .expect("an opening cheque");
    assert_eq!(open.body().calls, 0);
    b.credits.accept_cheque(&open.to_bytes()).expect("open");
    let mut nonce = 0;
    let refused = loop {
        nonce += 1;
        match b.credits.admit(c.id(), worst(100_000_000), NOW) {
            Ok(r) => {
                let (q, res) = call(&c, &b, nonce, 100_000_000, 100_000_000);
                b.credits.settle(r, &q, &res, None, NOW).expect("settle");
            }
            Err(refusal) => break refusal,
        }
    };
    // 12 calls of 100 fit under 1,250; the 13th would pass it.
    assert_eq!(nonce, 13);
    assert_eq!(
        refused,
        Refusal::OverLimit {
            owed: 1_200,
            in_flight: 0,
            worst: 100,
            limit: 1_250
        }
    );
    // Its spend limit (0) keeps it from paying even when asked to.
    assert!(
        c.credits
            .pay(&c.key, b.id(), 0, 0, PayWhen::Now, NOW)
            .expect("pay")
            .is_none()
    );
}

#[test]
fn concurrent_calls_reserve_their_worst_case_before_they_run() {
    let (c, b) = (Node::new(1), Node::new(2));
    let open = c
        .credits
        .pay(&c.key, b.id(), 1_000, u64::MAX, PayWhen::Due, NOW)
        .expect("pay")
        .expect("open");
    b.credits.accept_cheque(&open.to_bytes()).expect("open");
    // Eight calls at once, each up to 400: only three fit under 1,250.
    let admitted: Vec<Reservation> = (0..8)
        .filter_map(|_| b.credits.admit(c.id(), 400, NOW).ok())
        .collect();
    assert_eq!(admitted.len(), 3);
    assert_eq!(b.credits.balance(&c.id()).in_flight, 1_200);
    // They use less than their worst case; the rest is given back.
    for (i, r) in admitted.into_iter().enumerate() {
        let (q, res) = call(&c, &b, i as u64, 400_000_000, 10_000_000);
        b.credits.settle(r, &q, &res, None, NOW).expect("settle");
    }
    let after = b.credits.balance(&c.id());
    assert_eq!((after.in_flight, after.account.debt()), (0, 30));
}

#[test]
fn a_thousand_fresh_identities_get_no_more_than_one_allowance() {
    let b = Node::new(2);
    let mut free = 0u64;
    let mut refused = 0;
    for i in 0..1_000u32 {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        seed[31] = 0xee;
        let sybil = Node {
            key: SecretKey::from_seed(&seed),
            dir: tempfile::tempdir().expect("tmp"),
            credits: Credits::open(
                &tempdir_path(),
                SecretKey::from_seed(&seed).node_id(),
                terms(),
                NOW,
            )
            .expect("open"),
        };
        // Each makes calls 10 s apart in its turn, never paying.
        let now = NOW + u64::from(i) * 10;
        match b.credits.admit(sybil.id(), worst(50_000_000), now) {
            Ok(r) => {
                let (q, res) = call(&sybil, &b, 0, 50_000_000, 50_000_000);
                free += b
                    .credits
                    .settle(r, &q, &res, None, now)
                    .expect("settle")
                    .cost;
            }
            Err(Refusal::NoAllowance { .. }) => refused += 1,
            Err(other) => panic!("{other}"),
        }
        let _ = sybil.dir;
    }
    // 10 s of refill at 10/s over 1,000 turns of 10 ms: 100 credits, plus the cap of 300.
    let elapsed_s = 999 * 10 / 1000;
    assert!(
        free <= terms().free_cap + elapsed_s * terms().free_per_s,
        "{free}"
    );
    assert!(free >= terms().free_cap, "the allowance was given: {free}");
    assert!(refused > 900, "{refused}");
    // Nobody owes anything: the allowance forgave it.
    assert!(b.credits.balances().iter().all(|x| x.account.debt() == 0));
}

#[test]
fn calls_net_out_both_ways() {
    let (c, b) = (Node::new(1), Node::new(2));
    let open = |from: &Node, to: &Node| {
        let cheque = from
            .credits
            .pay(&from.key, to.id(), 1_000, 0, PayWhen::Due, NOW)
            .expect("pay")
            .expect("open");
        to.credits.accept_cheque(&cheque.to_bytes()).expect("open");
    };
    open(&c, &b);
    open(&b, &c);
    // C calls B up to the limit, never paying (spend limit 0).
    let mut n = 0;
    while let Ok(r) = b.credits.admit(c.id(), 100, NOW) {
        let (q, res) = call(&c, &b, n, 100_000_000, 100_000_000);
        b.credits.settle(r, &q, &res, None, NOW).expect("settle");
        c.credits.record_used(&q, &res).expect("record");
        n += 1;
    }
    assert_eq!(b.credits.balance(&c.id()).account.debt(), 1_200);
    // B calls C's models for 500: C's debt to B shrinks by as much, and C may call B again.
    for i in 0..5 {
        let r = c.credits.admit(b.id(), 100, NOW).expect("b calls c");
        let (q, res) = call(&b, &c, 100 + i, 100_000_000, 100_000_000);
        c.credits.settle(r, &q, &res, None, NOW).expect("settle");
        b.credits.record_used(&q, &res).expect("record");
    }
    assert_eq!(b.credits.balance(&c.id()).account.debt(), 700);
    assert_eq!(c.credits.balance(&b.id()).account.net(), -700);
    assert!(b.credits.admit(c.id(), 100, NOW).is_ok());
}

#[test]
fn a_provider_owes_the_royalty_payee_its_share_and_pays_it_with_a_cheque() {
    let (c, b, a) = (Node::new(1), Node::new(2), Node::new(3));
    let royalty = Royalty {
        payee: a.id(),
        bps: 1_000,
    };
    let open = c
        .credits
        .pay(&c.key, b.id(), 1_000, u64::MAX, PayWhen::Due, NOW)
        .expect("pay")
        .expect("open");
    b.credits.accept_cheque(&open.to_bytes()).expect("open");
    let mut total = 0;
    for i in 0..10 {
        let r = b.credits.admit(c.id(), 300, NOW).expect("a call on credit");
        let (q, res) = call(&c, &b, i, 300_000_000, 7_000_000 * (i + 1));
        total += b
            .credits
            .settle(r, &q, &res, Some(royalty), NOW)
            .expect("settle")
            .cost;
    }
    let owed = b.credits.balance(&a.id()).account.royalties_owed;
    let receipts = b.credits.receipts(&c.id(), Side::Served).expect("receipts");
    let audited: u64 = receipts
        .iter()
        .map(|r| protocol::credits::royalty_of(r.verify().expect("receipt").cost, 1_000))
        .sum();
    assert_eq!(owed, audited);
    assert!(
        owed <= total / 10 && owed + 10 >= total / 10,
        "{owed} of {total}"
    );
    // B pays A what it owes in royalties with its own cheque.
    let cheque = b
        .credits
        .pay(&b.key, a.id(), 1_000, u64::MAX, PayWhen::Due, NOW)
        .expect("pay")
        .expect("royalties due");
    assert_eq!(cheque.body().royalties, owed);
    let (payer, accepted) = a.credits.accept_cheque(&cheque.to_bytes()).expect("accept");
    assert_eq!(payer, b.id());
    assert_eq!(
        accepted,
        Accepted::New {
            calls: 0,
            royalties: owed
        }
    );
    assert_eq!(b.credits.balance(&a.id()).account.royalties_due(), 0);
}

#[test]
fn a_payer_that_lost_its_ledger_adopts_the_payees_copy() {
    let (c, b, _) = setup();
    let kept = b.credits.cheque_from(&c.id()).expect("kept");
    // C starts over from nothing (a new folder), with the same key.
    let fresh = Node {
        key: SecretKey::from_seed(&[1; 32]),
        dir: tempfile::tempdir().expect("tmp"),
        credits: Credits::open(&tempdir_path(), c.id(), terms(), NOW + 5).expect("open"),
    };
    let restarted = fresh
        .credits
        .pay(&fresh.key, b.id(), 1_000, u64::MAX, PayWhen::Due, NOW + 5)
        .expect("pay")
        .expect("open");
    // Its new epoch is refused...
    assert!(matches!(
        b.credits.accept_cheque(&restarted.to_bytes()),
        Err(CreditsError::Cheque(ChequeError::WrongEpoch { .. }))
    ));
    // ...until it adopts the payee's copy of its own cheque; then it goes on from there.
    assert!(fresh.credits.adopt_own(b.id(), &kept).expect("adopt"));
    assert!(!fresh.credits.adopt_own(b.id(), &kept).expect("again"));
    let account = fresh.credits.balance(&b.id()).account;
    assert_eq!(account.paid_out(), 1_200);
    // Not a cheque of someone else's.
    assert!(
        !fresh
            .credits
            .adopt_own(c.id(), &kept)
            .expect("not to itself")
    );
    drop(c);
}

#[derive(Debug, Clone)]
enum Op {
    /// A call starts: `a` calls `b` (0 = C calls B, 1 = B calls C) with this worst case.
    Start { reverse: bool, max_fuel: u64 },
    /// The n-th call in flight finishes with this share of its worst case.
    Finish { n: usize, share: u8 },
    /// The n-th call in flight fails: no receipt.
    Fail { n: usize },
    /// A cheque is signed and stored but lost on the way.
    LoseCheque { reverse: bool },
    /// Both sides reconnect and resend their newest cheques.
    Reconnect,
    /// A node is killed and started again (its calls in flight are gone).
    Restart { provider: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1u64..400).prop_map(|(reverse, w)| Op::Start { reverse, max_fuel: w * 1_000_000 }),
        4 => (0usize..8, 0u8..=100).prop_map(|(n, share)| Op::Finish { n, share }),
        1 => (0usize..8).prop_map(|n| Op::Fail { n }),
        1 => any::<bool>().prop_map(|reverse| Op::LoseCheque { reverse }),
        1 => Just(Op::Reconnect),
        1 => any::<bool>().prop_map(|provider| Op::Restart { provider }),
    ]
}

struct InFlight {
    reverse: bool,
    reservation: Reservation,
    max_fuel: u64,
    nonce: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random interleavings of concurrent calls both ways, cheques (some lost), reconnects and
    /// restarts: no admitted call ever takes a caller past the disconnect threshold, and in the
    /// end both ledgers agree with each other and with the receipts.
    #[test]
    fn exposure_stays_bounded_and_both_ledgers_end_equal_to_the_receipts(ops in prop::collection::vec(op(), 1..60)) {
        let mut nodes = [Node::new(1), Node::new(2)];
        let mut flying: Vec<InFlight> = Vec::new();
        let mut nonce = 0;
        for op in ops {
            match op {
                Op::Start { reverse, max_fuel } => {
                    let (ci, pi) = if reverse { (1, 0) } else { (0, 1) };
                    let (caller, provider) = (&nodes[ci], &nodes[pi]);
                    if let Some(cheque) = caller.credits.pay(&caller.key, provider.id(), terms().payment_threshold, u64::MAX, PayWhen::Due, NOW).expect("pay") {
                        provider.credits.accept_cheque(&cheque.to_bytes()).expect("accept");
                    }
                    let w = worst(max_fuel);
                    let admitted = match provider.credits.admit(caller.id(), w, NOW) {
                        Ok(r) => Some(r),
                        Err(_) => {
                            // Refused for payment: pay everything now and try once more.
                            if let Some(cheque) = caller.credits.pay(&caller.key, provider.id(), terms().payment_threshold, u64::MAX, PayWhen::Now, NOW).expect("pay") {
                                provider.credits.accept_cheque(&cheque.to_bytes()).expect("accept");
                            }
                            provider.credits.admit(caller.id(), w, NOW).ok()
                        }
                    };
                    if let Some(reservation) = admitted {
                        let b = provider.credits.balance(&caller.id());
                        if !reservation.free {
                            prop_assert!(b.account.debt() + b.in_flight <= terms().disconnect_threshold,
                                "exposure {} + {} past the threshold", b.account.debt(), b.in_flight);
                        }
                        nonce += 1;
                        flying.push(InFlight { reverse, reservation, max_fuel, nonce });
                    }
                }
                Op::Finish { n, share } if n < flying.len() => {
                    let f = flying.remove(n);
                    let (ci, pi) = if f.reverse { (1, 0) } else { (0, 1) };
                    let fuel = f.max_fuel / 100 * share as u64;
                    let (q, res) = call(&nodes[ci], &nodes[pi], f.nonce, f.max_fuel, fuel);
                    nodes[pi].credits.settle(f.reservation, &q, &res, None, NOW).expect("settle");
                    nodes[ci].credits.record_used(&q, &res).expect("record");
                }
                Op::Fail { n } if n < flying.len() => {
                    let f = flying.remove(n);
                    let pi = if f.reverse { 0 } else { 1 };
                    nodes[pi].credits.release(f.reservation);
                }
                Op::LoseCheque { reverse } => {
                    let (ci, pi) = if reverse { (1, 0) } else { (0, 1) };
                    let payee = nodes[pi].id();
                    let caller = &nodes[ci];
                    let _lost = caller.credits.pay(&caller.key, payee, 0, u64::MAX, PayWhen::Now, NOW).expect("pay");
                }
                Op::Reconnect => {
                    for (from, to) in [(0, 1), (1, 0)] {
                        let peer = nodes[to].id();
                        if let Some(c) = nodes[from].credits.balance(&peer).account.cheque_out {
                            nodes[to].credits.accept_cheque(&c.envelope).expect("resend");
                        }
                    }
                }
                Op::Restart { provider } => {
                    let i = usize::from(provider);
                    // Every call in flight is between the two, so every one dies: the other
                    // side gives back what it reserved, the restarted one forgets it.
                    for f in flying.drain(..) {
                        let pi = if f.reverse { 0 } else { 1 };
                        if pi != i {
                            nodes[pi].credits.release(f.reservation);
                        }
                    }
                    nodes[i].restart();
                }
                _ => {}
            }
        }
        for f in flying.drain(..) {
            let pi = if f.reverse { 0 } else { 1 };
            nodes[pi].credits.release(f.reservation);
        }
        // Both resend their newest cheques (as on reconnect).
        for (from, to) in [(0, 1), (1, 0)] {
            let peer = nodes[to].id();
            if let Some(c) = nodes[from].credits.balance(&peer).account.cheque_out {
                nodes[to].credits.accept_cheque(&c.envelope).expect("resend");
            }
        }
        let (c, b) = (&nodes[0], &nodes[1]);
        let at_b = b.credits.balance(&c.id()).account;
        let at_c = c.credits.balance(&b.id()).account;
        prop_assert_eq!(at_b.served, at_c.used);
        prop_assert_eq!(at_c.served, at_b.used);
        prop_assert_eq!(at_b.paid_in(), at_c.paid_out());
        prop_assert_eq!(at_c.paid_in(), at_b.paid_out());
        let sum = |n: &Node, peer: NodeId, side: Side| -> u64 {
            n.credits.receipts(&peer, side).expect("receipts").iter()
                .map(|r| r.verify().expect("a stored receipt verifies").cost).sum()
        };
        prop_assert_eq!(sum(b, c.id(), Side::Served), at_b.served);
        prop_assert_eq!(sum(c, b.id(), Side::Used), at_c.used);
        prop_assert_eq!(sum(c, b.id(), Side::Served), at_c.served);
        prop_assert_eq!(sum(b, c.id(), Side::Used), at_b.used);
        // No cheque ever paid for more than the receipts behind it.
        prop_assert!(at_b.paid_in() <= at_b.served);
        prop_assert!(at_c.paid_in() <= at_c.served);
    }
}
