//! The vote book against the protocol's merge rule: any order of arrival, with duplicates,
//! gives the same state, and that state is the vote with the greatest (clock, id) per voter and
//! model; the checks of a vote's receipts; what a vote that must not count looks like.

use proptest::prelude::*;
use protocol::compute::{InferRequest, InferResult};
use protocol::credits::{Cheque, Receipt};
use protocol::vote::{
    CheckedVote, Choice, MAX_VOTE_RECEIPTS, Revocation, Vote, VoteError, VoteMessage,
};
use protocol::{BlobHash, DecodeError, ModelId, Object, SecretKey, Signed};
use votes::{Applied, Revoked, VoteBook};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i + 1; 32])
}

fn model(i: u8) -> ModelId {
    ModelId(BlobHash::of(&[b'm', i]))
}

fn choice(i: u8) -> Choice {
    [Choice::Up, Choice::Down, Choice::Retract][usize::from(i % 3)]
}

fn vote(voter: &SecretKey, model: ModelId, clock: u64, choice: Choice) -> Vec<u8> {
    voter
        .sign(Vote {
            model,
            choice,
            clock,
            issued_ms: 1_764_300_000_000 + clock,
            receipts: vec![],
        })
        .to_bytes()
}

/// A receipt of a call of `model` by `caller` on `provider`, costing `fuel` at price 1_000_000.
fn receipt(caller: &SecretKey, provider: &SecretKey, model: ModelId, fuel: u64) -> Receipt {
    let request = caller.sign(InferRequest {
        model,
        input_hash: BlobHash::of(b"{}"),
        max_fuel: 1_000,
        max_price_per_mfuel: 1_000_000,
        nonce: [fuel as u8; 16],
        issued_ms: 1,
        provider: provider.node_id(),
    });
    let result = provider.sign(InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model,
        output_hash: BlobHash::of(b"out"),
        fuel,
        price_per_mfuel: 1_000_000,
        backend: "wasm".into(),
    });
    Receipt::of(&request, &result)
}

fn revocation(node: &SecretKey, reason: &str) -> Vec<u8> {
    node.sign(Revocation {
        issued_ms: 1_764_300_000_000,
        reason: reason.into(),
    })
    .to_bytes()
}

/// Takes each envelope, a vote or a revocation, as a node does.
fn apply_all(envelopes: &[&Vec<u8>]) -> VoteBook {
    let mut book = VoteBook::new();
    for e in envelopes {
        match VoteMessage::from_bytes(e).expect("a valid vote or revocation") {
            VoteMessage::Vote(v) => {
                book.apply(&v);
            }
            VoteMessage::Revocation(r) => {
                book.revoke(&r);
            }
        }
    }
    book
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any permutation of the same votes, each arriving one to three times, leaves the same
    /// book, and in it, per (model, voter), the vote with the greatest (clock, id).
    #[test]
    fn any_order_and_duplication_gives_the_same_state(
        votes in proptest::collection::vec((0u8..4, 0u8..3, 1u64..4, 0u8..3), 1..30),
        repeats in proptest::collection::vec(1usize..4, 34),
        order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
        revoked in proptest::collection::vec((0u8..4, 0u8..2), 0..4),
    ) {
        let keys: Vec<SecretKey> = (0..4).map(key).collect();
        let mut envelopes: Vec<Vec<u8>> = votes
            .iter()
            .map(|&(v, m, clock, c)| vote(&keys[usize::from(v)], model(m), clock, choice(c)))
            .collect();
        // Revocations (a key may be revoked twice, with different envelopes) among the votes.
        envelopes.extend(
            revoked
                .iter()
                .map(|&(v, r)| revocation(&keys[usize::from(v)], ["leaked", "retired"][usize::from(r)])),
        );
        let is_revoked = |v: u8| revoked.iter().any(|&(r, _)| r == v);
        let in_order: Vec<&Vec<u8>> = envelopes.iter().collect();
        let reference = apply_all(&in_order);

        // The same votes, duplicated and shuffled (a seeded Fisher–Yates).
        let mut arrivals: Vec<&Vec<u8>> = envelopes
            .iter()
            .zip(&repeats)
            .flat_map(|(e, &n)| std::iter::repeat_n(e, n))
            .collect();
        let mut state = order | 1;
        for i in (1..arrivals.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            arrivals.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let shuffled = apply_all(&arrivals);
        prop_assert_eq!(&shuffled, &reference);

        // The oracle: the greatest (clock, id) of each voter's votes on each model.
        for (i, &(v, m, _, _)) in votes.iter().enumerate() {
            if is_revoked(v) {
                prop_assert!(reference.get(&model(m), &keys[usize::from(v)].node_id()).is_none());
                continue;
            }
            let best = votes
                .iter()
                .zip(&envelopes)
                .filter(|((v2, m2, _, _), _)| (*v2, *m2) == (v, m))
                .map(|((_, _, clock, _), e)| (*clock, BlobHash::of(e)))
                .max_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())))
                .expect("the vote itself");
            let standing = reference
                .get(&model(m), &keys[usize::from(v)].node_id())
                .expect("a vote stands");
            prop_assert_eq!((standing.clock, standing.id), best, "vote {}", i);
        }
    }
}

#[test]
fn equal_clocks_are_settled_by_the_greater_id_whatever_came_first() {
    let voter = key(0);
    let up = vote(&voter, model(0), 5, Choice::Up);
    let down = vote(&voter, model(0), 5, Choice::Down);
    let winner = if BlobHash::of(&up).as_bytes() > BlobHash::of(&down).as_bytes() {
        BlobHash::of(&up)
    } else {
        BlobHash::of(&down)
    };
    for (first, second) in [(&up, &down), (&down, &up)] {
        let book = apply_all(&[first, second]);
        let standing = book
            .get(&model(0), &voter.node_id())
            .expect("a vote stands");
        assert_eq!(standing.id, winner);
    }
}

#[test]
fn a_retraction_stands_and_an_older_vote_does_not_come_back() {
    let voter = key(0);
    let up = vote(&voter, model(0), 1, Choice::Up);
    let retract = vote(&voter, model(0), 2, Choice::Retract);
    let mut book = VoteBook::new();
    let checked = |e: &[u8]| CheckedVote::from_bytes(e).expect("valid");
    assert_eq!(book.apply(&checked(&up)), Applied::New);
    assert_eq!(book.tally(&model(0)).up, 1);
    assert!(matches!(
        book.apply(&checked(&retract)),
        Applied::Replaced(_)
    ));
    assert_eq!(book.apply(&checked(&up)), Applied::Older);
    assert_eq!(book.apply(&checked(&retract)), Applied::Same);
    let tally = book.tally(&model(0));
    assert_eq!((tally.up, tally.down, tally.retracted), (0, 0, 1));
    assert_eq!(book.next_clock(&model(0), &voter.node_id()), 3);
    assert_eq!(book.next_clock(&model(1), &voter.node_id()), 1);
}

#[test]
fn a_voter_has_at_most_its_share_of_standing_votes() {
    let voter = key(0);
    let mut book = VoteBook::new();
    let many = |i: u32| ModelId(BlobHash::of(&i.to_le_bytes()));
    for i in 0..votes::MAX_VOTES_PER_VOTER as u32 {
        let v = CheckedVote::from_bytes(&vote(&voter, many(i), 1, Choice::Up)).expect("valid");
        assert_eq!(book.apply(&v), Applied::New);
    }
    assert_eq!(book.votes_of(&voter.node_id()), votes::MAX_VOTES_PER_VOTER);
    // One model more is refused; replacing a standing vote still works; others are unaffected.
    let extra = CheckedVote::from_bytes(&vote(&voter, model(9), 1, Choice::Up)).expect("valid");
    assert_eq!(book.apply(&extra), Applied::Full);
    let again = CheckedVote::from_bytes(&vote(&voter, many(0), 2, Choice::Down)).expect("valid");
    assert!(matches!(book.apply(&again), Applied::Replaced(_)));
    let other = CheckedVote::from_bytes(&vote(&key(1), model(9), 1, Choice::Up)).expect("valid");
    assert_eq!(book.apply(&other), Applied::New);
    assert_eq!(book.len(), votes::MAX_VOTES_PER_VOTER + 1);
}

#[test]
fn receipts_count_only_for_the_voters_own_paid_calls_of_that_model() {
    let (voter, provider, other) = (key(0), key(1), key(2));
    let sign = |receipts: Vec<Receipt>| {
        voter
            .sign(Vote {
                model: model(0),
                choice: Choice::Up,
                clock: 1,
                issued_ms: 1,
                receipts,
            })
            .to_bytes()
    };
    let paid = receipt(&voter, &provider, model(0), 300);
    let checked = CheckedVote::from_bytes(&sign(vec![paid.clone()])).expect("valid");
    assert_eq!(checked.receipts.len(), 1);
    assert_eq!(checked.receipts[0].cost, 300);
    let mut book = VoteBook::new();
    book.apply(&checked);
    assert_eq!(book.tally(&model(0)).paying, 1);
    let usage = &book
        .get(&model(0), &voter.node_id())
        .expect("standing")
        .usage;
    assert_eq!(usage[0].provider, provider.node_id());

    // Someone else's call, another model's, a call the voter served itself.
    for (receipt, why) in [
        (receipt(&other, &provider, model(0), 10), "another caller"),
        (receipt(&voter, &provider, model(1), 10), "another model"),
        (receipt(&voter, &voter, model(0), 10), "served itself"),
    ] {
        match CheckedVote::from_bytes(&sign(vec![receipt])) {
            Err(VoteError::Foreign(_)) => {}
            other => panic!("{why}: {other:?}"),
        }
    }
    // A receipt whose result was tampered with (the fuel raised) does not verify.
    let mut forged = paid.clone();
    let n = forged.result.len();
    forged.result[n - 1] ^= 1;
    assert!(CheckedVote::from_bytes(&sign(vec![forged])).is_err());
    // The same receipt twice, or too many.
    assert!(matches!(
        Signed::<Vote>::from_bytes(&sign(vec![paid.clone(), paid.clone()])),
        Err(DecodeError::Invalid { .. })
    ));
    let many: Vec<Receipt> = (0..=MAX_VOTE_RECEIPTS as u64)
        .map(|i| receipt(&voter, &provider, model(0), 100 + i))
        .collect();
    assert!(Signed::<Vote>::from_bytes(&sign(many)).is_err());
}

#[test]
fn a_vote_that_must_not_count_is_refused() {
    let voter = key(0);
    let good = vote(&voter, model(0), 1, Choice::Up);
    // Every flipped bit of the envelope is refused (or is another valid vote: never).
    for i in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(CheckedVote::from_bytes(&bad).is_err(), "bit {i}");
    }
    // A cheque's signature presented as a vote: another domain.
    let cheque = voter.sign(Cheque {
        payee: key(1).node_id(),
        epoch: 1,
        seq: 1,
        calls: 0,
        royalties: 0,
        receipt: None,
        issued_ms: 1,
    });
    assert!(matches!(
        Signed::<Vote>::from_bytes(&cheque.to_bytes()),
        Err(DecodeError::WrongDomain { .. })
    ));
    // Clock 0, and a choice the protocol does not have.
    let mut zero = protocol::cbor::Value::decode(
        Signed::<Vote>::from_bytes(&good)
            .expect("valid")
            .body_bytes(),
        4096,
    )
    .expect("cbor");
    if let protocol::cbor::Value::Map(entries) = &mut zero {
        for (k, v) in entries.iter_mut() {
            if *k == protocol::cbor::Value::text("clock") {
                *v = protocol::cbor::Value::Uint(0);
            }
        }
    }
    assert!(Vote::from_cbor(zero).is_err());
    assert!("sideways".parse::<Choice>().is_err());
}

#[test]
fn a_revoked_key_loses_its_votes_whatever_the_order() {
    let (voter, other) = (key(1), key(2));
    let early = vote(&voter, model(1), 1, Choice::Up);
    let late = vote(&voter, model(2), 5, Choice::Down);
    let kept = vote(&other, model(1), 1, Choice::Up);
    let revoke = revocation(&voter, "the key leaked");
    let before = apply_all(&[&early, &kept, &revoke, &late]);
    let after = apply_all(&[&revoke, &late, &kept, &early]);
    assert_eq!(before, after);
    assert!(before.is_revoked(&voter.node_id()));
    assert!(before.get(&model(1), &voter.node_id()).is_none());
    assert!(before.get(&model(2), &voter.node_id()).is_none());
    assert!(
        before.get(&model(1), &other.node_id()).is_some(),
        "others' votes stay"
    );
    assert_eq!(before.len(), 1);
    assert_eq!(before.ids().count(), 2, "the other vote and the revocation");

    // What the book says about each step.
    let mut book = VoteBook::new();
    let checked = |e: &Vec<u8>| CheckedVote::from_bytes(e).expect("vote");
    let rev = |e: &Vec<u8>| match VoteMessage::from_bytes(e).expect("revocation") {
        VoteMessage::Revocation(r) => r,
        VoteMessage::Vote(_) => panic!("a revocation decoded as a vote"),
    };
    assert_eq!(book.apply(&checked(&early)), Applied::New);
    assert_eq!(
        book.revoke(&rev(&revoke)),
        Revoked::New(vec![BlobHash::of(&early)])
    );
    assert_eq!(book.apply(&checked(&late)), Applied::Revoked);
    assert_eq!(book.revoke(&rev(&revoke)), Revoked::Same);
    // A second revocation of the same key: the greater id stands, either order.
    let again = revocation(&voter, "retired");
    let (low, high) = if BlobHash::of(&revoke).as_bytes() < BlobHash::of(&again).as_bytes() {
        (&revoke, &again)
    } else {
        (&again, &revoke)
    };
    let one = apply_all(&[low, high]);
    let two = apply_all(&[high, low]);
    assert_eq!(one, two);
    assert_eq!(one.ids().collect::<Vec<_>>(), vec![BlobHash::of(high)]);
}

#[test]
fn a_revocation_is_no_vote_and_a_vote_no_revocation() {
    let voter = key(1);
    let revoke = revocation(&voter, "");
    assert!(CheckedVote::from_bytes(&revoke).is_err());
    let up = vote(&voter, model(1), 1, Choice::Up);
    assert!(protocol::vote::CheckedRevocation::from_bytes(&up).is_err());
    assert!(matches!(
        VoteMessage::from_bytes(&up),
        Ok(VoteMessage::Vote(_))
    ));
    // A reason too long does not decode.
    let long = voter
        .sign(Revocation {
            issued_ms: 1,
            reason: "x".repeat(protocol::vote::MAX_REVOCATION_REASON + 1),
        })
        .to_bytes();
    assert!(VoteMessage::from_bytes(&long).is_err());
}
