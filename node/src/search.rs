//! Search, wired: the catalogue's tantivy index ([`search::SearchIndex`]) kept up with the
//! catalogue, and searches ranked with this node's vote scores and usage ([`Votes::signals`]).
//!
//! - **Built at start** from the catalogue, in memory (a node with 10,000 models builds it in
//!   well under a second; see `cargo bench -p search`).
//! - **Kept up** by [`Search::run`]: every [`REFRESH`] it compares the catalogue's generation
//!   with the one indexed and, if they differ, indexes what was added and drops what was
//!   removed in one commit. A flood of gossiped manifests so costs one commit per tick.
//! - **First seen** times (for `--sort new`) are kept in the store's `seen` tree (model id →
//!   milliseconds, big-endian), so a restart keeps the order; a model removed from the
//!   catalogue loses its entry.

use api::ui::pages::encode;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use api::dto::{SearchHit, SearchQuery, SearchResults};
use api::{ApiError, ApiResult};
use catalog::Catalog;
use protocol::ModelId;
use search::{Doc, Query, SearchIndex, Sort};

use crate::metrics::Metrics;
use crate::votes::Votes;

/// How often [`Search::run`] looks for catalogue changes.
pub const REFRESH: Duration = Duration::from_millis(200);

/// Hits a page holds when the query does not say.
pub const DEFAULT_LIMIT: usize = 20;

/// The node's search index: see the module docs.
pub struct Search {
    catalog: Arc<Catalog>,
    seen: sled::Tree,
    index: SearchIndex,
    /// The catalogue generation indexed (`u64::MAX`: none yet).
    indexed: AtomicU64,
    votes: Option<Arc<Votes>>,
    metrics: Option<Arc<Metrics>>,
}

impl Search {
    /// Builds the index from `catalog`; `votes` ranks hits (without it every model is unrated,
    /// as for `moxnet search` on a home whose node is not running).
    pub fn open(
        catalog: Arc<Catalog>,
        seen: sled::Tree,
        votes: Option<Arc<Votes>>,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Search> {
        let search = Search {
            catalog,
            seen,
            index: SearchIndex::new()?,
            indexed: AtomicU64::new(u64::MAX),
            votes,
            metrics,
        };
        search.refresh().context("building the search index")?;
        Ok(search)
    }

    /// Brings the index up to the catalogue. Returns how many models it added and removed.
    pub fn refresh(&self) -> anyhow::Result<(usize, usize)> {
        let generation = self.catalog.generation();
        if self.indexed.load(Ordering::Acquire) == generation {
            return Ok((0, 0));
        }
        let current: HashSet<ModelId> = self.catalog.ids(None, usize::MAX).into_iter().collect();
        let have: HashSet<ModelId> = self.index.ids().into_iter().collect();
        let removed: Vec<ModelId> = have.difference(&current).copied().collect();
        let now = crate::compute::now_ms();
        let mut batch = sled::Batch::default();
        let mut added = Vec::new();
        for id in current.difference(&have) {
            let Some(manifest) = self.catalog.get(*id) else {
                continue; // removed since the listing: the next refresh drops nothing
            };
            let seen = match self.seen.get(id.blob().as_bytes())? {
                Some(v) => <[u8; 8]>::try_from(v.as_ref()).map_or(now, u64::from_be_bytes),
                None => {
                    batch.insert(id.blob().as_bytes().as_slice(), &now.to_be_bytes());
                    now
                }
            };
            added.push(Doc::of(*id, &manifest, seen));
        }
        for id in &removed {
            batch.remove(id.blob().as_bytes().as_slice());
        }
        let counts = (added.len(), removed.len());
        self.index.update(added, &removed)?;
        self.seen.apply_batch(batch)?;
        self.indexed.store(generation, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.search_models.set(self.index.len() as i64);
        }
        Ok(counts)
    }

    /// Keeps the index up with the catalogue, for as long as the node runs.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.refresh()).await {
                Ok(Ok((0, 0))) => {}
                Ok(Ok((added, removed))) => {
                    tracing::debug!(added, removed, "search index refreshed")
                }
                Ok(Err(e)) => tracing::error!("search index: {e:#}"),
                Err(e) => tracing::error!("search index: {e}"),
            }
        }
    }

    /// Answers a search (on a blocking thread: it may score every voted model).
    pub fn search(&self, q: &SearchQuery) -> ApiResult<SearchResults> {
        let start = Instant::now();
        let sort: Sort = match &q.sort {
            Some(s) if !s.is_empty() => s.parse().map_err(ApiError::bad_request)?,
            _ => Sort::default(),
        };
        let tags: Vec<String> = q
            .tags
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tags.len() > search::MAX_TAGS {
            return Err(ApiError::bad_request(format!(
                "at most {} tags at once",
                search::MAX_TAGS
            )));
        }
        let query = Query {
            text: q.q.clone(),
            tags,
            sort,
            offset: q.offset.unwrap_or(0),
            limit: q.limit.unwrap_or(DEFAULT_LIMIT),
        };
        let signals = self.votes.as_ref().map(|v| v.signals());
        let results = self
            .index
            .search(&query, |id| {
                signals
                    .as_ref()
                    .and_then(|s| s.get(id).copied())
                    .unwrap_or_default()
            })
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let hits = results
            .hits
            .into_iter()
            .filter_map(|h| {
                let manifest = self.catalog.get(h.id)?;
                let m = manifest.body();
                Some(SearchHit {
                    model_id: h.id.to_string(),
                    name: m.name.clone(),
                    version: m.version.clone(),
                    description: m.description.clone(),
                    tags: m.tags.clone(),
                    author: manifest.signer().to_string(),
                    score: h.signals.score,
                    paying_voters: h.signals.paying_voters,
                    usage: h.signals.usage,
                    relevance: h.relevance,
                    rank: h.rank,
                    local: self.catalog.is_local(h.id),
                    bytes: m
                        .files
                        .iter()
                        .fold(0u64, |sum, f| sum.saturating_add(f.size)),
                })
            })
            .collect();
        if let Some(m) = &self.metrics {
            m.search_seconds.observe(start.elapsed().as_secs_f64());
        }
        Ok(SearchResults {
            query: q.q.clone(),
            sort: sort.as_str().into(),
            total: results.total,
            hits,
        })
    }
}

/// `query` as a URL query string (`q=…&sort=…`), percent-encoded.
pub fn query_string(query: &SearchQuery) -> String {
    let mut parts = vec![format!("q={}", encode(&query.q))];
    if let Some(sort) = &query.sort {
        parts.push(format!("sort={}", encode(sort)));
    }
    if let Some(tags) = &query.tags {
        parts.push(format!("tags={}", encode(tags)));
    }
    if let Some(limit) = query.limit {
        parts.push(format!("limit={limit}"));
    }
    if let Some(offset) = query.offset {
        parts.push(format!("offset={offset}"));
    }
    parts.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        let q = SearchQuery {
            q: "bert & co/ü".into(),
            sort: Some("new".into()),
            tags: Some("nlp,vision".into()),
            limit: Some(5),
            offset: None,
        };
        assert_eq!(
            query_string(&q),
            "q=bert%20%26%20co%2F%C3%BC&sort=new&tags=nlp%2Cvision&limit=5"
        );
    }
}
