//! Trust and vote weights on small graphs: who gets trust, which receipts count, how a vote's
//! weight grows with what its voter paid.

use protocol::compute::{InferRequest, InferResult};
use protocol::credits::Receipt;
use protocol::vote::{CheckedVote, Choice, Vote};
use protocol::{BlobHash, ModelId, SecretKey};
use votes::{TrustGraph, USAGE_FULL, VoteBook};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i + 1; 32])
}

fn model() -> ModelId {
    ModelId(BlobHash::of(b"model"))
}

fn receipt(caller: &SecretKey, provider: &SecretKey, cost: u64) -> Receipt {
    let request = caller.sign(InferRequest {
        model: model(),
        input_hash: BlobHash::of(b"{}"),
        max_fuel: cost * 1_000_000,
        max_price_per_mfuel: 1,
        nonce: [cost as u8; 16],
        issued_ms: 1,
        provider: provider.node_id(),
    });
    let result = provider.sign(InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model: model(),
        output_hash: BlobHash::of(b"out"),
        fuel: cost * 1_000_000,
        price_per_mfuel: 1,
        backend: "wasm".into(),
    });
    Receipt::of(&request, &result)
}

fn vote(book: &mut VoteBook, voter: &SecretKey, receipts: Vec<Receipt>) {
    let envelope = voter
        .sign(Vote {
            model: model(),
            choice: Choice::Up,
            clock: book.next_clock(&model(), &voter.node_id()),
            issued_ms: 1,
            receipts,
        })
        .to_bytes();
    book.apply(&CheckedVote::from_bytes(&envelope).expect("valid"));
}

#[test]
fn trust_reaches_only_linked_nodes_and_follows_link() {
    let (me, provider, user, stranger, friend) = (key(0), key(1), key(2), key(3), key(4));
    let mut graph = TrustGraph::new();
    graph.add_credit(me.node_id(), provider.node_id(), 500);
    graph.add_credit(user.node_id(), provider.node_id(), 500);
    let trust = graph.rank(me.node_id());
    assert!(trust.of(&me.node_id()) > trust.of(&provider.node_id()));
    assert!(trust.of(&user.node_id()) > 0.0);
    assert_eq!(trust.of(&stranger.node_id()), 0.0);
    assert_eq!(trust.of(&friend.node_id()), 0.0);
    graph.follow(me.node_id(), friend.node_id());
    let trust = graph.rank(me.node_id());
    assert!(trust.of(&friend.node_id()) > trust.of(&user.node_id()));
    // Shares of one walk: they add up to (at most) 1.
    let total: f64 = [&me, &provider, &user, &friend]
        .iter()
        .map(|k| trust.of(&k.node_id()))
        .sum();
    assert!(total <= 1.0 + 1e-9 && total > 0.99, "{total}");
}

#[test]
fn a_vote_weighs_its_voters_trust_times_what_it_paid_trusted_providers() {
    let (me, provider, voter, loner) = (key(0), key(1), key(2), key(3));
    let mut book = VoteBook::new();
    // The voter paid the provider a little, then voted again with more.
    vote(
        &mut book,
        &voter,
        vec![receipt(&voter, &provider, USAGE_FULL / 4)],
    );
    let mut graph = TrustGraph::new();
    graph.add_credit(me.node_id(), provider.node_id(), 5_000);
    graph.add_votes(&book);
    let trust = graph.rank(me.node_id());
    assert!(trust.trusts_provider(&provider.node_id()));
    let (_, quarter, used) = trust.weight(&book, &model(), &voter.node_id());
    assert_eq!(used, USAGE_FULL / 4);
    let t = trust.of(&voter.node_id());
    assert!((quarter - t / 4.0).abs() < 1e-12, "{quarter} vs {t}");

    // Usage saturates: twice USAGE_FULL weighs the voter's trust, no more.
    vote(
        &mut book,
        &voter,
        vec![
            receipt(&voter, &provider, USAGE_FULL),
            receipt(&voter, &provider, USAGE_FULL + 1),
        ],
    );
    let (_, full, _) = trust.weight(&book, &model(), &voter.node_id());
    assert!((full - t).abs() < 1e-12);

    // A vote with no receipts weighs nothing, even from a node this node follows; so does one
    // whose receipts are from a provider nobody here reaches.
    let (outsider, lonely_provider) = (key(4), key(5));
    vote(&mut book, &loner, vec![]);
    vote(
        &mut book,
        &outsider,
        vec![receipt(&outsider, &lonely_provider, USAGE_FULL)],
    );
    let mut graph = TrustGraph::new();
    graph.add_credit(me.node_id(), provider.node_id(), 5_000);
    graph.follow(me.node_id(), loner.node_id());
    graph.add_votes(&book);
    let trust = graph.rank(me.node_id());
    assert!(trust.of(&loner.node_id()) > 0.0);
    assert_eq!(trust.weight(&book, &model(), &loner.node_id()).1, 0.0);
    assert_eq!(trust.weight(&book, &model(), &outsider.node_id()).1, 0.0);
    let score = trust.score(&book, &model());
    assert_eq!(score.paying_voters, 1);
    assert!((score.score - trust.weight(&book, &model(), &voter.node_id()).1).abs() < 1e-12);
}

/// A revoked provider's receipts prove no usage (its key may have been stolen to mint them),
/// and it gets no trust and passes none on, whatever this node's ledger says.
#[test]
fn a_revoked_key_gets_no_trust_and_its_receipts_prove_nothing() {
    let (me, provider, voter) = (key(0), key(1), key(2));
    let mut book = VoteBook::new();
    vote(
        &mut book,
        &voter,
        vec![receipt(&voter, &provider, USAGE_FULL)],
    );
    let graph_of = |book: &VoteBook| {
        let mut graph = TrustGraph::new();
        graph.add_credit(me.node_id(), provider.node_id(), 5_000);
        graph.add_votes(book);
        graph.rank(me.node_id())
    };
    let trust = graph_of(&book);
    assert!(trust.weight(&book, &model(), &voter.node_id()).1 > 0.0);
    let revocation = provider
        .sign(protocol::vote::Revocation {
            issued_ms: 1,
            reason: "stolen".into(),
        })
        .to_bytes();
    let revocation =
        protocol::vote::CheckedRevocation::from_bytes(&revocation).expect("revocation");
    book.revoke(&revocation);
    let trust = graph_of(&book);
    assert_eq!(trust.of(&provider.node_id()), 0.0);
    assert!(!trust.trusts_provider(&provider.node_id()));
    // The voter was reached only through the provider: no trust, no weight.
    assert_eq!(trust.of(&voter.node_id()), 0.0);
    assert_eq!(trust.weight(&book, &model(), &voter.node_id()).1, 0.0);
    assert_eq!(trust.score(&book, &model()).paying_voters, 0);
}
