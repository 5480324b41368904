//! The search index on real tantivy: what matches (names, descriptions, tags, authors, the
//! signing node, interfaces), the orders, updates, and queries that do not parse.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use protocol::{BlobHash, ModelId, NodeId, SecretKey};
use search::{Doc, Query, SearchIndex, Signals, Sort};

fn id(n: u32) -> ModelId {
    ModelId(BlobHash::of(&n.to_le_bytes()))
}

fn node(n: u8) -> NodeId {
    SecretKey::from_seed(&[n; 32]).node_id()
}

fn doc(n: u32, name: &str, description: &str, tags: &[&str]) -> Doc {
    Doc {
        id: id(n),
        name: name.into(),
        description: description.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        authors: vec![format!("Author {n}")],
        author: node(n as u8),
        interface: vec!["input_ids".into(), "INT64".into(), "onnx".into()],
        seen_ms: 1_000 + u64::from(n),
    }
}

fn index(docs: Vec<Doc>) -> SearchIndex {
    let index = SearchIndex::new().expect("index");
    index.update(docs, &[]).expect("update");
    index
}

fn ids(index: &SearchIndex, query: Query, signals: &HashMap<ModelId, Signals>) -> Vec<ModelId> {
    index
        .search(&query, |id| signals.get(id).copied().unwrap_or_default())
        .expect("search")
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect()
}

fn q(text: &str) -> Query {
    Query {
        text: text.into(),
        limit: 100,
        ..Query::default()
    }
}

fn corpus() -> Vec<Doc> {
    vec![
        doc(
            1,
            "sentiment-bert",
            "Classifies the sentiment of English reviews",
            &["nlp", "classification"],
        ),
        doc(
            2,
            "resnet50",
            "Image classification on ImageNet",
            &["vision", "classification"],
        ),
        doc(3, "whisper-tiny", "Speech recognition", &["audio"]),
        doc(
            4,
            "mini-lm",
            "Sentence embeddings for semantic search",
            &["nlp", "embeddings"],
        ),
    ]
}

#[test]
fn every_field_is_searched() {
    let index = index(corpus());
    let none = HashMap::new();
    assert_eq!(
        ids(&index, q("bert"), &none),
        vec![id(1)],
        "a part of a name"
    );
    assert_eq!(
        ids(&index, q("sentiment-bert"), &none)[0],
        id(1),
        "the whole name"
    );
    assert_eq!(
        ids(&index, q("speech"), &none),
        vec![id(3)],
        "a description word"
    );
    assert_eq!(ids(&index, q("reviewing"), &none), vec![id(1)], "stemmed");
    assert_eq!(ids(&index, q("audio"), &none), vec![id(3)], "a tag");
    assert_eq!(ids(&index, q("author"), &none).len(), 4, "human authors");
    let signer = node(2).to_string();
    assert_eq!(
        ids(&index, q(&signer), &none),
        vec![id(2)],
        "the signing node"
    );
    assert_eq!(ids(&index, q("input_ids"), &none).len(), 4, "the interface");
    assert!(ids(&index, q("zebra"), &none).is_empty());
    // The name weighs more than the description.
    let both = index
        .update(vec![doc(5, "imagenet-tools", "utilities", &[])], &[])
        .map(|_| ids(&index, q("imagenet"), &none));
    assert_eq!(both.expect("update"), vec![id(5), id(2)]);
}

#[test]
fn tags_filter_and_an_empty_query_lists_everything() {
    let index = index(corpus());
    let none = HashMap::new();
    let tagged = |text: &str, tags: &[&str]| {
        let query = Query {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..q(text)
        };
        ids(&index, query, &none)
            .into_iter()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(tagged("", &["NLP"]), BTreeSet::from([id(1), id(4)]));
    assert_eq!(tagged("classification", &["nlp"]), BTreeSet::from([id(1)]));
    assert_eq!(tagged("", &["nlp", "embeddings"]), BTreeSet::from([id(4)]));
    assert_eq!(tagged("", &[]).len(), 4);
    assert!(tagged("", &["nope"]).is_empty());
}

#[test]
fn votes_and_usage_reorder_matches_but_never_make_a_model_match() {
    let index = index(corpus());
    let mut signals = HashMap::new();
    // Both match "classification" about as well; the voted one comes first.
    signals.insert(
        id(2),
        Signals {
            score: 0.3,
            rated: true,
            usage: 500,
            paying_voters: 2,
        },
    );
    signals.insert(
        id(3),
        Signals {
            score: 0.9,
            rated: true,
            usage: 9_000,
            paying_voters: 9,
        },
    );
    let found = ids(&index, q("classification"), &signals);
    assert_eq!(found, vec![id(2), id(1)]);
    // Voted down: behind the unvoted match.
    signals.insert(
        id(2),
        Signals {
            score: -0.3,
            rated: true,
            usage: 0,
            paying_voters: 1,
        },
    );
    assert_eq!(
        ids(&index, q("classification"), &signals),
        vec![id(1), id(2)]
    );
    // Whisper's votes never make it match "classification".
    assert!(!ids(&index, q("classification"), &signals).contains(&id(3)));
}

#[test]
fn each_order() {
    let index = index(corpus());
    let mut signals = HashMap::new();
    signals.insert(
        id(1),
        Signals {
            score: 0.0,
            rated: true,
            usage: 10,
            paying_voters: 1,
        },
    );
    signals.insert(
        id(2),
        Signals {
            score: 0.5,
            rated: true,
            usage: 5,
            paying_voters: 1,
        },
    );
    signals.insert(
        id(4),
        Signals {
            score: -0.2,
            rated: true,
            usage: 100,
            paying_voters: 1,
        },
    );
    let sorted = |sort| ids(&index, Query { sort, ..q("") }, &signals);
    // Rated (even at 0 or below) before unrated.
    assert_eq!(sorted(Sort::Score), vec![id(2), id(1), id(4), id(3)]);
    assert_eq!(sorted(Sort::Usage), vec![id(4), id(1), id(2), id(3)]);
    assert_eq!(sorted(Sort::New), vec![id(4), id(3), id(2), id(1)]);
    // An empty query in relevance order is the score order.
    assert_eq!(sorted(Sort::Relevance), sorted(Sort::Score));
    // Paging.
    let page = ids(
        &index,
        Query {
            sort: Sort::New,
            offset: 1,
            limit: 2,
            ..q("")
        },
        &signals,
    );
    assert_eq!(page, vec![id(3), id(2)]);
}

#[test]
fn updates_replace_and_remove_and_keep_the_first_seen_time() {
    let index = index(corpus());
    let none = HashMap::new();
    let mut renamed = doc(3, "whisper-small", "Speech recognition, bigger", &["audio"]);
    renamed.seen_ms = 99_999;
    index.update(vec![renamed], &[id(1)]).expect("update");
    assert_eq!(index.len(), 3);
    assert!(!index.contains(&id(1)));
    assert!(ids(&index, q("bert"), &none).is_empty(), "removed");
    assert!(ids(&index, q("tiny"), &none).is_empty(), "replaced");
    assert_eq!(ids(&index, q("small"), &none), vec![id(3)]);
    let hit = index
        .search(&q("small"), |_| Signals::default())
        .expect("search")
        .hits
        .remove(0);
    assert_eq!(
        hit.seen_ms, 1_003,
        "a replaced model keeps when it was first seen"
    );
}

#[test]
fn queries_that_do_not_parse_still_search_their_words() {
    let index = index(corpus());
    let none = HashMap::new();
    for bad in [
        "\"unclosed bert",
        "name:(bert",
        "bert AND",
        "((((",
        ":::",
        "-",
        "*",
    ] {
        let found = ids(&index, q(bad), &none);
        assert!(found.len() <= 4, "{bad}: {found:?}");
    }
    for bad in ["bert \"unclosed", "bert AND", "bert name:("] {
        assert_eq!(ids(&index, q(bad), &none), vec![id(1)], "{bad}");
    }
    // A huge query is cut, not refused.
    let long = "bert ".repeat(10_000);
    assert_eq!(ids(&index, q(&long), &none), vec![id(1)]);
}

proptest! {
    /// Whatever the signals, every order returns the same matches, each exactly once, in
    /// non-increasing order of its key.
    #[test]
    fn orders_are_permutations_of_the_matches(
        scores in proptest::collection::vec((-1.0f64..1.0, any::<bool>(), 0u64..10_000), 4),
        word in prop::sample::select(vec!["", "classification", "nlp", "speech", "search"]),
    ) {
        let index = index(corpus());
        let signals: HashMap<ModelId, Signals> = scores
            .iter()
            .enumerate()
            .map(|(i, (score, rated, usage))| {
                (id(i as u32 + 1), Signals { score: *score, rated: *rated, usage: *usage, paying_voters: 0 })
            })
            .collect();
        let mut sets = Vec::new();
        for sort in [Sort::Relevance, Sort::Score, Sort::Usage, Sort::New] {
            let results = index
                .search(&Query { sort, ..q(word) }, |id| signals.get(id).copied().unwrap_or_default())
                .expect("search");
            let found: Vec<ModelId> = results.hits.iter().map(|h| h.id).collect();
            let set: BTreeSet<ModelId> = found.iter().copied().collect();
            prop_assert_eq!(set.len(), found.len(), "a hit twice");
            prop_assert_eq!(results.total, found.len());
            // (An empty query in relevance order is the score order: rated first.)
            if sort == Sort::Usage || sort == Sort::New || (sort == Sort::Relevance && !word.is_empty()) {
                for pair in results.hits.windows(2) {
                    prop_assert!(pair[0].rank >= pair[1].rank, "{:?}: {:?}", sort, results.hits);
                }
            }
            sets.push(set);
        }
        for s in &sets[1..] {
            prop_assert_eq!(s, &sets[0]);
        }
    }
}
