//! The Sybil test: 20 honest users and 5 honest providers vote on 10 honest models, each vote
//! backed by receipts of calls it paid for; 1,000 Sybil identities and a Sybil provider that
//! issues them receipts vote their own model up and the honest favourite down, with 0, 1, 5 and
//! 20 attack edges (Sybils that really paid an honest provider for calls). Seen from one honest
//! user. Pass: at 0 edges nothing moves; the Sybils' influence (the weight of their votes)
//! grows at most linearly with the edges; their model never reaches the honest top model; the
//! honest models' order keeps Kendall τ ≥ 0.9. Prints the table (`--nocapture`).

use protocol::compute::{InferRequest, InferResult};
use protocol::credits::Receipt;
use protocol::vote::{CheckedVote, Choice, Vote};
use protocol::{BlobHash, ModelId, SecretKey};
use votes::{TrustGraph, VoteBook};

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(kind: u8, i: u16) -> SecretKey {
    let mut seed = [kind; 32];
    seed[..2].copy_from_slice(&i.to_le_bytes());
    SecretKey::from_seed(&seed)
}

fn model(name: &str) -> ModelId {
    ModelId(BlobHash::of(name.as_bytes()))
}

/// A receipt of a call of `model` by `caller` on `provider`, costing `cost` credits.
fn receipt(caller: &SecretKey, provider: &SecretKey, model: ModelId, cost: u64, n: u64) -> Receipt {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    let request = caller.sign(InferRequest {
        model,
        input_hash: BlobHash::of(b"{}"),
        max_fuel: cost * 1_000_000,
        max_price_per_mfuel: 1,
        nonce,
        issued_ms: 1,
        provider: provider.node_id(),
    });
    let result = provider.sign(InferResult {
        request: BlobHash::of(&request.to_bytes()),
        model,
        output_hash: BlobHash::of(b"out"),
        fuel: cost * 1_000_000,
        price_per_mfuel: 1,
        backend: "wasm".into(),
    });
    Receipt::of(&request, &result)
}

fn cast(
    book: &mut VoteBook,
    voter: &SecretKey,
    model: ModelId,
    choice: Choice,
    receipts: Vec<Receipt>,
) {
    let envelope = voter
        .sign(Vote {
            model,
            choice,
            clock: 1,
            issued_ms: 1,
            receipts,
        })
        .to_bytes();
    book.apply(&CheckedVote::from_bytes(&envelope).expect("a valid vote"));
}

/// Kendall's τ between two orders of the same items.
fn kendall_tau(a: &[ModelId], b: &[ModelId]) -> f64 {
    let pos = |order: &[ModelId], m: &ModelId| order.iter().position(|x| x == m).unwrap_or(0);
    let (mut concordant, mut discordant) = (0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let (x, y) = (&a[i], &a[j]);
            if (pos(b, x) < pos(b, y)) == (i < j) {
                concordant += 1;
            } else {
                discordant += 1;
            }
        }
    }
    (concordant - discordant) as f64 / (concordant + discordant).max(1) as f64
}

struct World {
    honest_book: VoteBook,
    observer: SecretKey,
    honest_models: Vec<ModelId>,
}

/// The honest world: users vote on the models they used, mostly by quality (model 0 best).
fn honest_world(rng: &mut Rng) -> World {
    let users: Vec<SecretKey> = (0..20).map(|i| key(1, i)).collect();
    let providers: Vec<SecretKey> = (0..5).map(|i| key(2, i)).collect();
    let honest_models: Vec<ModelId> = (0..10).map(|i| model(&format!("honest-{i}"))).collect();
    let mut book = VoteBook::new();
    let mut n = 0;
    for user in &users {
        let mine = [rng.below(5) as usize, rng.below(5) as usize];
        for (m, id) in honest_models.iter().enumerate() {
            // Better models are used by more users.
            if rng.below(100) >= 90 - 6 * m as u64 {
                continue;
            }
            let receipts = (0..1 + rng.below(3))
                .map(|i| {
                    n += 1;
                    let provider = &providers[mine[(i % 2) as usize]];
                    receipt(user, provider, *id, 200 + rng.below(1_300), n)
                })
                .collect();
            let up = rng.below(100) < 95 - 7 * m as u64;
            let choice = if up { Choice::Up } else { Choice::Down };
            cast(&mut book, user, *id, choice, receipts);
        }
    }
    World {
        honest_book: book,
        observer: key(1, 0),
        honest_models,
    }
}

/// The models by score, best first (ties by id, so the order is total).
fn ranking(book: &VoteBook, observer: &SecretKey, models: &[ModelId]) -> Vec<(ModelId, f64)> {
    let mut graph = TrustGraph::new();
    graph.add_votes(book);
    let trust = graph.rank(observer.node_id());
    let mut scored: Vec<(ModelId, votes::Score)> =
        models.iter().map(|m| (*m, trust.score(book, m))).collect();
    scored.sort_by(|a, b| {
        a.1.rank_cmp(&b.1)
            .then(a.0.0.as_bytes().cmp(b.0.0.as_bytes()))
    });
    scored.into_iter().map(|(m, s)| (m, s.score)).collect()
}

#[test]
fn a_thousand_sybils_move_nothing_without_attack_edges_and_little_with_them() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    let world = honest_world(&mut rng);
    let baseline = ranking(&world.honest_book, &world.observer, &world.honest_models);
    let baseline_order: Vec<ModelId> = baseline.iter().map(|(m, _)| *m).collect();
    let top = baseline_order[0];
    let sybil_model = model("sybil");
    let sybil_provider = key(3, 0);
    let sybils: Vec<SecretKey> = (0..1_000).map(|i| key(4, i)).collect();
    let honest_providers: Vec<SecretKey> = (0..5).map(|i| key(2, i)).collect();
    let mut all_models = world.honest_models.clone();
    all_models.push(sybil_model);

    // Every Sybil "used" its model on the Sybil provider and votes it up, and votes the
    // honest favourite down with a receipt from the Sybil provider. An attack edge is a Sybil
    // that really paid an honest provider for calls of its model: its vote up (clock 2) carries
    // that receipt too.
    let signed = |voter: &SecretKey, model: ModelId, clock: u64, choice, receipts| {
        let envelope = voter
            .sign(Vote {
                model,
                choice,
                clock,
                issued_ms: 1,
                receipts,
            })
            .to_bytes();
        CheckedVote::from_bytes(&envelope).expect("a valid vote")
    };
    let base: Vec<CheckedVote> = sybils
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let i = i as u64;
            [
                signed(
                    s,
                    sybil_model,
                    1,
                    Choice::Up,
                    vec![receipt(s, &sybil_provider, sybil_model, 2_000, i)],
                ),
                signed(
                    s,
                    top,
                    1,
                    Choice::Down,
                    vec![receipt(s, &sybil_provider, top, 2_000, 10_000 + i)],
                ),
            ]
        })
        .collect();
    // The attack with one edge from Sybil `i` to honest provider `p` per (i, p).
    let attack = |edges: &[(usize, usize)]| {
        let mut book = world.honest_book.clone();
        for vote in &base {
            book.apply(vote);
        }
        for &(i, p) in edges {
            let s = &sybils[i];
            let receipts = vec![
                receipt(s, &sybil_provider, sybil_model, 2_000, i as u64),
                receipt(s, &honest_providers[p], sybil_model, 1_000, i as u64),
            ];
            book.apply(&signed(s, sybil_model, 2, Choice::Up, receipts));
        }
        let mut graph = TrustGraph::new();
        graph.add_votes(&book);
        let trust = graph.rank(world.observer.node_id());
        let influence: f64 = sybils
            .iter()
            .flat_map(|s| [sybil_model, top].map(|m| trust.weight(&book, &m, &s.node_id()).1))
            .sum();
        (influence, ranking(&book, &world.observer, &all_models))
    };
    // What one edge into each honest provider gives the Sybils: the bound of "linear".
    let single: Vec<f64> = (0..honest_providers.len())
        .map(|p| attack(&[(0, p)]).0)
        .collect();

    println!(
        "attack edges | Sybil influence | linear bound | Sybil model score (rank) | honest top score | Kendall tau"
    );
    for edges in [0usize, 1, 5, 20] {
        let attacked: Vec<(usize, usize)> = (0..edges).map(|i| (i, i % single.len())).collect();
        let (influence, ranked) = attack(&attacked);
        let bound = attacked.iter().fold(0.0, |sum, &(_, p)| sum + single[p]);
        let sybil_rank = ranked
            .iter()
            .position(|(m, _)| *m == sybil_model)
            .unwrap_or(0)
            + 1;
        let sybil_score = ranked
            .iter()
            .find(|(m, _)| *m == sybil_model)
            .map_or(0.0, |r| r.1);
        let honest_order: Vec<ModelId> = ranked
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| *m != sybil_model)
            .collect();
        let top_score = ranked.iter().find(|(m, _)| *m == top).map_or(0.0, |r| r.1);
        let best_honest = ranked
            .iter()
            .filter(|(m, _)| *m != sybil_model)
            .map(|r| r.1)
            .fold(f64::MIN, f64::max);
        let tau = kendall_tau(&honest_order, &baseline_order);
        println!(
            "{edges:>12} | {influence:>15.6} | {bound:>12.6} | {sybil_score:>16.6} ({sybil_rank:>2}) | {top_score:>16.6} | {tau:>11.3}"
        );
        if edges == 0 {
            assert_eq!(
                influence, 0.0,
                "Sybils weigh something without an attack edge"
            );
            assert_eq!(honest_order, baseline_order, "the honest order moved");
            assert_eq!(sybil_rank, all_models.len(), "the Sybil model rose");
        } else {
            assert!(
                influence <= 1.25 * bound,
                "influence grows faster than the edges: {influence} with {edges}, the edges alone {bound}"
            );
        }
        assert!(
            sybil_score < best_honest,
            "the Sybil model ({sybil_score}) reached the honest top ({best_honest}) at {edges} edges"
        );
        assert!(tau >= 0.9, "Kendall tau {tau} at {edges} edges");
    }
}
