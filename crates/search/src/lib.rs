//! The catalogue's search index: [tantivy] over each model's name, description, tags, human
//! authors, signing node and interface (tensor names and datatypes, runtime), ranked by text
//! relevance combined with the model's weighted votes and usage.
//!
//! The index lives in memory and is rebuilt from the catalogue when a node starts (10,000
//! manifests take well under a second; see the `search` bench); [`SearchIndex::update`] adds
//! and removes documents in one commit, so a flood of gossiped manifests costs one commit per
//! batch. The signals (score, usage) are not indexed: they change with every vote and every
//! paid call, so [`SearchIndex::search`] asks for them per candidate at query time.
//!
//! **Ranking** ([`Sort`]):
//! - `relevance` (the default): the query's BM25 relevance `r` (name ×3, tags ×2, authors and
//!   node ×1.5, description and interface ×1), normalised by the best candidate's, times
//!   `1 + v + u/2`, where `v` is the model's vote score divided by the largest absolute score
//!   among the candidates (so in [-1, 1]) and `u` is `ln(1 + usage) / ln(1 + largest usage)`
//!   (in [0, 1]). A model every trusted voter votes down keeps half its usage term at most; a
//!   well-voted, well-used model counts up to 2.5 times its relevance. Relevance leads: votes
//!   reorder what matches, they never make a model match. With an empty query every model
//!   matches and this is the `score` order.
//! - `score`: vote score, highest first; models with weighed votes before models without
//!   (an unrated model is not "worse" than one voted down to 0); then relevance.
//! - `usage`: credits paid for calls of the model on trusted providers, then score.
//! - `new`: when this node first saw the model, newest first.
//!
//! Ties end on the model id, so an order is the same on every call. Bounds: a query is cut to
//! [`MAX_QUERY_CHARS`]; at most [`MAX_LIMIT`] hits a page; relevance ranking considers the
//! [`MAX_CANDIDATES`] best text matches.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use protocol::{Manifest, ModelId, NodeId, Signed};
use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, Query as TantivyQuery, QueryParser, TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// A query longer than this is cut (at a character boundary).
pub const MAX_QUERY_CHARS: usize = 256;

/// Hits one search returns at most.
pub const MAX_LIMIT: usize = 100;

/// Text matches the relevance order ranks at most (the best by BM25); the other orders rank
/// every match.
pub const MAX_CANDIDATES: usize = 1000;

/// Tags a search may require at once.
pub const MAX_TAGS: usize = 8;

/// Memory the index writer buffers before it flushes a segment.
const WRITER_HEAP: usize = 32 << 20;

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Tantivy failed (in memory: a bug or memory exhausted, not user input).
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
}

/// The order of a search's hits; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Text relevance combined with votes and usage.
    #[default]
    Relevance,
    /// Vote score.
    Score,
    /// Usage.
    Usage,
    /// First seen here, newest first.
    New,
}

impl Sort {
    /// Its name (`relevance`, `score`, `usage`, `new`).
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Relevance => "relevance",
            Sort::Score => "score",
            Sort::Usage => "usage",
            Sort::New => "new",
        }
    }
}

impl std::str::FromStr for Sort {
    type Err = String;

    fn from_str(s: &str) -> Result<Sort, String> {
        match s {
            "relevance" => Ok(Sort::Relevance),
            "score" => Ok(Sort::Score),
            "usage" => Ok(Sort::Usage),
            "new" => Ok(Sort::New),
            other => Err(format!(
                "sort {other:?}: expected relevance, score, usage or new"
            )),
        }
    }
}

/// What a search asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Words (tantivy's query syntax is accepted leniently: a malformed query still searches
    /// its words). Empty: every model.
    pub text: String,
    /// Tags every hit must carry (compared lowercased), at most [`MAX_TAGS`].
    pub tags: Vec<String>,
    /// The order.
    pub sort: Sort,
    /// Hits to skip (paging).
    pub offset: usize,
    /// Hits to return, at most [`MAX_LIMIT`].
    pub limit: usize,
}

/// A model's standing outside the text: its weighted vote score and usage, as this node sees
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// Weighted votes up minus down.
    pub score: f64,
    /// Whether any vote on it weighs something here.
    pub rated: bool,
    /// Credits paid for its calls on trusted providers.
    pub usage: u64,
    /// Voters whose vote weighs something here.
    pub paying_voters: u64,
}

/// One hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The model.
    pub id: ModelId,
    /// Its BM25 relevance to the query (1 for an empty query).
    pub relevance: f32,
    /// Its signals.
    pub signals: Signals,
    /// The key it was ranked by (the combined rank for `relevance`).
    pub rank: f64,
    /// When this node first saw it (ms since the Unix epoch).
    pub seen_ms: u64,
}

/// A page of hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Models that matched (before paging; relevance order: at most [`MAX_CANDIDATES`]).
    pub total: usize,
    /// The page.
    pub hits: Vec<Hit>,
}

/// A model as the index sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// The model.
    pub id: ModelId,
    /// Package name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Human authors.
    pub authors: Vec<String>,
    /// The signing node.
    pub author: NodeId,
    /// Interface words: tensor names and datatypes, the runtime's kind and entry.
    pub interface: Vec<String>,
    /// When this node first saw it (ms since the Unix epoch).
    pub seen_ms: u64,
}

impl Doc {
    /// The document of a verified manifest.
    pub fn of(id: ModelId, manifest: &Signed<Manifest>, seen_ms: u64) -> Doc {
        let m = manifest.body();
        let mut interface = Vec::new();
        for t in m.interface.inputs.iter().chain(&m.interface.outputs) {
            interface.push(t.name.clone());
            interface.push(t.dtype.name().to_string());
        }
        interface.push(m.runtime.kind.clone());
        if let Some(entry) = &m.runtime.entry {
            interface.push(entry.clone());
        }
        Doc {
            id,
            name: m.name.clone(),
            description: m.description.clone(),
            tags: m.tags.clone(),
            authors: m.authors.clone(),
            author: manifest.signer(),
            interface,
            seen_ms,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    key: Field,
    name: Field,
    description: Field,
    tags: Field,
    tag: Field,
    authors: Field,
    author: Field,
    interface: Field,
}

/// What the index keeps beside tantivy: its documents' keys and first-seen times.
#[derive(Debug, Default)]
struct Table {
    next_key: u64,
    by_key: HashMap<u64, (ModelId, u64)>,
    keys: HashMap<ModelId, u64>,
}

/// The search index: see the module docs. Searches run concurrently; updates take turns.
pub struct SearchIndex {
    reader: IndexReader,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    fields: Fields,
    parser: QueryParser,
    table: RwLock<Table>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("models", &self.len())
            .finish()
    }
}

impl SearchIndex {
    /// An empty index, in memory.
    pub fn new() -> Result<SearchIndex, SearchError> {
        let mut schema = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let fields = Fields {
            key: schema.add_u64_field("key", INDEXED | FAST),
            name: schema.add_text_field("name", text.clone()),
            description: schema.add_text_field("description", text.clone()),
            tags: schema.add_text_field("tags", text.clone()),
            tag: schema.add_text_field("tag", STRING),
            authors: schema.add_text_field("authors", text.clone()),
            author: schema.add_text_field("author", STRING),
            interface: schema.add_text_field("interface", text),
        };
        let index = Index::create_in_ram(schema.build());
        let writer = index.writer(WRITER_HEAP)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let mut parser = QueryParser::for_index(
            &index,
            vec![
                fields.name,
                fields.tags,
                fields.authors,
                fields.author,
                fields.description,
                fields.interface,
            ],
        );
        parser.set_field_boost(fields.name, 3.0);
        parser.set_field_boost(fields.tags, 2.0);
        parser.set_field_boost(fields.authors, 1.5);
        parser.set_field_boost(fields.author, 1.5);
        Ok(SearchIndex {
            reader,
            writer: Mutex::new(writer),
            fields,
            parser,
            table: RwLock::new(Table::default()),
        })
    }

    /// Models indexed.
    pub fn len(&self) -> usize {
        self.table().by_key.len()
    }

    /// Whether no model is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is indexed.
    pub fn contains(&self, id: &ModelId) -> bool {
        self.table().keys.contains_key(id)
    }

    /// The models indexed.
    pub fn ids(&self) -> Vec<ModelId> {
        self.table().keys.keys().copied().collect()
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `add` (a model already indexed is replaced, keeping its first-seen time) and
    /// removes `remove`, in one commit; searches see all of it or none.
    pub fn update(&self, add: Vec<Doc>, remove: &[ModelId]) -> Result<(), SearchError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        for id in remove.iter().chain(add.iter().map(|d| &d.id)) {
            if let Some(key) = table.keys.remove(id) {
                writer.delete_term(Term::from_field_u64(self.fields.key, key));
                if let Some((_, seen)) = table.by_key.remove(&key) {
                    gone.push((*id, seen));
                }
            }
        }
        let f = self.fields;
        for doc in add {
            let key = table.next_key;
            table.next_key += 1;
            let seen = gone
                .iter()
                .find(|(id, _)| *id == doc.id)
                .map_or(doc.seen_ms, |(_, s)| *s);
            let mut d = TantivyDocument::default();
            d.add_u64(f.key, key);
            d.add_text(f.name, &doc.name);
            // Names are often joined words (`mini-lm`, `resnet_50`): index the parts too.
            d.add_text(f.name, doc.name.replace(['-', '_', '.'], " "));
            d.add_text(f.description, &doc.description);
            for t in &doc.tags {
                d.add_text(f.tags, t);
                d.add_text(f.tag, t.to_lowercase());
            }
            for a in &doc.authors {
                d.add_text(f.authors, a);
            }
            d.add_text(f.author, doc.author.to_string());
            d.add_text(f.interface, doc.interface.join(" "));
            writer.add_document(d)?;
            table.keys.insert(doc.id, key);
            table.by_key.insert(key, (doc.id, seen));
        }
        writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Searches; `signals` gives each candidate's vote score and usage (called once per
    /// candidate).
    pub fn search(
        &self,
        query: &Query,
        signals: impl Fn(&ModelId) -> Signals,
    ) -> Result<Results, SearchError> {
        let text: String = query.text.chars().take(MAX_QUERY_CHARS).collect();
        let text = text.trim();
        let mut clauses: Vec<(Occur, Box<dyn TantivyQuery>)> = Vec::new();
        if !text.is_empty() {
            // A query that does not parse still searches its words.
            let (q, _errors) = self.parser.parse_query_lenient(text);
            clauses.push((Occur::Must, q));
        }
        for tag in query.tags.iter().take(MAX_TAGS) {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.fields.tag, &tag.to_lowercase()),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        let tantivy_query: Box<dyn TantivyQuery> = if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = self.reader.searcher();
        let relevance_order = query.sort == Sort::Relevance && !text.is_empty();
        let limit = if relevance_order {
            MAX_CANDIDATES
        } else {
            (searcher.num_docs() as usize).max(1)
        };
        let found =
            searcher.search(&tantivy_query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut columns = Vec::with_capacity(searcher.segment_readers().len());
        for segment in searcher.segment_readers() {
            columns.push(segment.fast_fields().u64("key")?);
        }
        let table = self.table();
        let mut hits: Vec<Hit> = Vec::with_capacity(found.len());
        for (relevance, address) in found {
            let Some(key) = columns
                .get(address.segment_ord as usize)
                .and_then(|c| c.first(address.doc_id))
            else {
                continue;
            };
            // A key without an entry was deleted by a commit this searcher predates.
            let Some((id, seen_ms)) = table.by_key.get(&key).copied() else {
                continue;
            };
            hits.push(Hit {
                id,
                relevance: if text.is_empty() { 1.0 } else { relevance },
                signals: signals(&id),
                rank: 0.0,
                seen_ms,
            });
        }
        drop(table);
        let sort = if query.sort == Sort::Relevance && text.is_empty() {
            Sort::Score
        } else {
            query.sort
        };
        rank(&mut hits, sort);
        let total = hits.len();
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let hits = hits.into_iter().skip(query.offset).take(limit).collect();
        Ok(Results { total, hits })
    }
}

/// Orders `hits` by `sort` (see the module docs), setting each one's `rank`.
pub fn rank(hits: &mut [Hit], sort: Sort) {
    use std::cmp::Ordering;
    let by_id = |a: &Hit, b: &Hit| a.id.cmp(&b.id);
    match sort {
        Sort::Relevance => {
            let best = hits.iter().map(|h| h.relevance).fold(0.0f32, f32::max);
            let loudest = hits
                .iter()
                .map(|h| h.signals.score.abs())
                .fold(0.0f64, f64::max);
            let busiest = hits.iter().map(|h| h.signals.usage).max().unwrap_or(0);
            for h in hits.iter_mut() {
                h.rank = combined(h, best, loudest, busiest);
            }
            hits.sort_by(|a, b| {
                b.rank
                    .total_cmp(&a.rank)
                    .then(b.relevance.total_cmp(&a.relevance))
                    .then(by_id(a, b))
            });
        }
        Sort::Score => {
            for h in hits.iter_mut() {
                h.rank = h.signals.score;
            }
            hits.sort_by(|a, b| {
                b.signals
                    .rated
                    .cmp(&a.signals.rated)
                    .then(b.signals.score.total_cmp(&a.signals.score))
                    .then(b.relevance.total_cmp(&a.relevance))
                    .then(by_id(a, b))
            });
        }
        Sort::Usage => {
            for h in hits.iter_mut() {
                h.rank = h.signals.usage as f64;
            }
            hits.sort_by(|a, b| {
                b.signals
                    .usage
                    .cmp(&a.signals.usage)
                    .then(b.signals.score.total_cmp(&a.signals.score))
                    .then(b.relevance.total_cmp(&a.relevance))
                    .then(by_id(a, b))
            });
        }
        Sort::New => {
            for h in hits.iter_mut() {
                h.rank = h.seen_ms as f64;
            }
            hits.sort_by(|a, b| {
                b.seen_ms
                    .cmp(&a.seen_ms)
                    .then_with(|| by_id(a, b))
                    .then(Ordering::Equal)
            });
        }
    }
}

/// The relevance order's key: `r / best × (1 + v + u/2)`, at least 0 (module docs).
fn combined(hit: &Hit, best: f32, loudest: f64, busiest: u64) -> f64 {
    let r = if best > 0.0 {
        f64::from(hit.relevance / best)
    } else {
        1.0
    };
    let v = if loudest > 0.0 {
        hit.signals.score / loudest
    } else {
        0.0
    };
    let u = if busiest > 0 {
        (1.0 + hit.signals.usage as f64).ln() / (1.0 + busiest as f64).ln()
    } else {
        0.0
    };
    (r * (1.0 + v + u / 2.0)).max(0.0)
}
