//! The web UI as a browser sees it, against a node that keeps a small catalogue in memory:
//! pages list, search, sort and filter; a manifest's hostile text is escaped everywhere; votes
//! need the page's CSRF token and the page's own origin; assets are embedded; every answer
//! carries the security headers.

use std::sync::{Arc, Mutex};

use api::dto::*;
use api::{Access, ApiError, ApiResult, NodeApi};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const PORT: u16 = 5080;
const TOKEN: &str = "0123456789abcdef";
const HOST: (&str, &str) = ("host", "127.0.0.1:5080");
const HOSTILE: &str = "<script>alert('pwned')</script><img src=x onerror=alert(1)>";

struct Model {
    id: String,
    name: String,
    description: String,
    tags: Vec<String>,
    score: f64,
    usage: u64,
}

/// A node with three models (one whose manifest tries to inject a script) and a history.
struct Catalogue {
    models: Vec<Model>,
    votes: Mutex<Vec<(String, String)>>,
}

impl Catalogue {
    fn new() -> Catalogue {
        let model = |n: u8, name: &str, description: &str, tags: &[&str], score, usage| Model {
            id: format!("{n:02x}").repeat(32),
            name: name.into(),
            description: description.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            score,
            usage,
        };
        Catalogue {
            models: vec![
                model(
                    1,
                    "iris-linear",
                    "Iris flowers, linear.",
                    &["tabular"],
                    0.5,
                    10,
                ),
                model(
                    2,
                    "minilm",
                    "Sentence embeddings.",
                    &["text", "embeddings"],
                    2.0,
                    3,
                ),
                model(3, HOSTILE, HOSTILE, &["text", HOSTILE], -1.0, 50),
            ],
            votes: Mutex::new(Vec::new()),
        }
    }
}

impl NodeApi for Catalogue {
    async fn info(&self) -> ApiResult<NodeInfo> {
        Ok(NodeInfo {
            node_id: "ab".repeat(32),
            peer_id: "12D3KooWPeer".into(),
            listen: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            peers: vec!["12D3KooWOther".into()],
            limits: vec![("calls at once".into(), HOSTILE.into())],
        })
    }

    async fn fetches(&self) -> ApiResult<FetchList> {
        Ok(FetchList {
            fetches: vec![FetchProgress {
                id: self.models[1].id.clone(),
                state: FetchState::Running,
                bytes_total: 4 << 20,
                bytes_done: 1 << 20,
                bytes_fetched: 1 << 20,
                peers_used: 2,
                peers_banned: 0,
                elapsed_ms: 1500,
                error: None,
            }],
        })
    }

    async fn blobs(&self) -> ApiResult<BlobList> {
        let blob = |n: u8, size, pinned| BlobRow {
            hash: format!("{n:02x}").repeat(32),
            size,
            kind: "file".into(),
            pinned,
        };
        Ok(BlobList {
            blobs: vec![blob(1, 1 << 20, true), blob(2, 1 << 20, false)],
        })
    }

    async fn search(&self, q: SearchQuery) -> ApiResult<SearchResults> {
        let words = q.q.to_lowercase();
        let mut hits: Vec<&Model> = self
            .models
            .iter()
            .filter(|m| words.is_empty() || m.name.to_lowercase().contains(&words))
            .filter(|m| q.tags.as_ref().is_none_or(|t| m.tags.contains(t)))
            .collect();
        match q.sort.as_deref() {
            Some("usage") => hits.sort_by_key(|m| std::cmp::Reverse(m.usage)),
            _ => hits.sort_by(|a, b| b.score.total_cmp(&a.score)),
        }
        Ok(SearchResults {
            query: q.q.clone(),
            sort: q.sort.clone().unwrap_or_default(),
            total: hits.len(),
            hits: hits
                .into_iter()
                .map(|m| SearchHit {
                    model_id: m.id.clone(),
                    name: m.name.clone(),
                    version: "1.0.0".into(),
                    description: m.description.clone(),
                    tags: m.tags.clone(),
                    author: "cd".repeat(32),
                    score: m.score,
                    paying_voters: 1,
                    usage: m.usage,
                    relevance: 1.0,
                    rank: m.score,
                    local: true,
                    bytes: 3 << 20,
                })
                .collect(),
        })
    }

    async fn show(&self, id: String) -> ApiResult<ModelView> {
        let m = self
            .models
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| ApiError::not_found(format!("no model {id}")))?;
        let tensor = |name: &str, datatype: &str, shape: Vec<DimView>| TensorView {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        };
        Ok(ModelView {
            model_id: m.id.clone(),
            author: "cd".repeat(32),
            name: m.name.clone(),
            version: "1.0.0".into(),
            description: m.description.clone(),
            license: HOSTILE.into(),
            tags: m.tags.clone(),
            authors: vec![HOSTILE.into()],
            interface: InterfaceView {
                inputs: vec![tensor(
                    "features",
                    "FP32",
                    vec![DimView::Fixed(1), DimView::Fixed(4)],
                )],
                outputs: vec![tensor(
                    "scores",
                    "FP32",
                    vec![DimView::Symbolic("batch".into()), DimView::Fixed(3)],
                )],
            },
            runtime: RuntimeView {
                kind: "onnx".into(),
                entry: Some("model.onnx".into()),
                guest: None,
                memory_mib: None,
                language_model: None,
            },
            files: vec![FileView {
                path: HOSTILE.into(),
                hash: "ef".repeat(32),
                size: 1234,
            }],
            datasets: vec![DatasetView {
                hash: "12".repeat(32),
                description: HOSTILE.into(),
            }],
            parent: None,
            children: vec![self.models[0].id.clone()],
            snapshots: vec![],
            royalty: None,
            votes: None,
        })
    }

    async fn model_history(&self, _id: String) -> ApiResult<History> {
        let snapshot = |step: u64, loss: f64| SnapshotView {
            snapshot: format!("{step:02x}").repeat(32),
            step,
            time_ms: step * 1000,
            metrics: [("loss".to_string(), loss), ("</script>".to_string(), 1.0)]
                .into_iter()
                .collect(),
            weights: vec![],
            parent: None,
        };
        Ok(History {
            snapshots: vec![snapshot(1, 2.5), snapshot(2, 1.25), snapshot(3, 0.5)],
        })
    }

    async fn offers(&self) -> ApiResult<OfferList> {
        Ok(OfferList {
            serving: false,
            offers: vec![OfferView {
                node_id: "ef".repeat(32),
                peer_id: "12D3KooWOther".into(),
                cores: 8,
                memory_mib: 16384,
                gpus: vec![HOSTILE.into()],
                backends: vec!["wasm".into(), "llama.cpp".into()],
                models: vec![self.models[1].id.clone()],
                max_concurrent: 4,
                price_per_mfuel: 1,
                price_per_mtoken: Some(100_000),
                expires_in_s: 90,
                latency_ms: Some(3.5),
                in_flight: 0,
                failures: 0,
            }],
        })
    }

    async fn vote(&self, id: String, request: VoteRequest) -> ApiResult<VotesView> {
        self.votes
            .lock()
            .expect("lock")
            .push((id.clone(), request.choice));
        Ok(votes_view(id))
    }
}

fn votes_view(model: String) -> VotesView {
    VotesView {
        model,
        score: 1.0,
        up_weight: 1.0,
        down_weight: 0.0,
        up: 1,
        down: 0,
        retracted: 0,
        paying_voters: 1,
        usage: 5,
        usage_full: 5,
        voters: vec![],
    }
}

async fn send(
    node: &Arc<Catalogue>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Body::from(body.to_string())).expect("request");
    let response = api::router(node.clone(), Access::new(PORT, TOKEN))
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn get(node: &Arc<Catalogue>, path: &str) -> String {
    let (status, headers, html) = send(node, "GET", path, &[HOST], "").await;
    assert_eq!(status, StatusCode::OK, "{path}: {html}");
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{path}: {csp}"
    );
    html
}

/// The rows of the catalogue table, as model ids in order.
fn rows(html: &str) -> Vec<String> {
    html.split("data-model=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

fn assert_escaped(html: &str) {
    assert!(
        !html.contains("<script>alert") && !html.contains("<img src=x"),
        "hostile text reached the page unescaped"
    );
}

#[tokio::test]
async fn the_catalogue_lists_searches_sorts_and_filters_with_every_text_escaped() {
    let node = Arc::new(Catalogue::new());
    let ids: Vec<String> = node.models.iter().map(|m| m.id.clone()).collect();
    let all = get(&node, "/").await;
    assert_eq!(
        rows(&all),
        vec![ids[1].clone(), ids[0].clone(), ids[2].clone()],
        "by score"
    );
    assert!(all.contains("3 models") && all.contains("3.0 MiB"));
    assert!(all.contains("&lt;script&gt;alert("), "shown, as text");
    assert_escaped(&all);
    let by_usage = get(&node, "/?sort=usage").await;
    assert_eq!(rows(&by_usage)[0], ids[2]);
    assert!(by_usage.contains("<option value=\"usage\" selected>"));
    let search = get(&node, "/?q=mini").await;
    assert_eq!(rows(&search), vec![ids[1].clone()]);
    let tagged = get(&node, "/?tag=text&sort=usage").await;
    assert_eq!(rows(&tagged), vec![ids[2].clone(), ids[1].clone()]);
    assert!(tagged.contains("tag=text"), "links keep the filter");
    // The minilm row counts its one provider.
    assert!(all.contains("Providers"));
    let (status, _, _) = send(&node, "GET", "/?page=x", &[HOST], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_model_page_shows_the_manifest_history_and_a_call_form_and_runs_no_injected_script() {
    let node = Arc::new(Catalogue::new());
    let id = node.models[2].id.clone();
    let html = get(&node, &format!("/m/{id}")).await;
    assert_escaped(&html);
    for part in [
        "id=\"interface\"",
        "features",
        "[1, 4]",
        "[batch, 3]",
        "id=\"history-data\"",
        "id=\"charts\"",
        "uPlot.iife.min.js",
        "id=\"call-form\"",
        "id=\"files\"",
        "1.2 KiB",
        "id=\"datasets\"",
        "signature verified",
    ] {
        assert!(html.contains(part), "{part} missing");
    }
    // The chart's data block cannot be closed by a metric's name.
    let block = html
        .split("id=\"history-data\">")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .expect("the data block");
    let data: serde_json::Value = serde_json::from_str(block).expect("JSON");
    assert_eq!(data["steps"], serde_json::json!([1, 2, 3]));
    assert!(data["metrics"].to_string().contains("\"loss\""));
    // Its derived models link to their pages.
    assert!(html.contains(&format!("href=\"/m/{}\"", node.models[0].id)));
    // A grid of 4 number fields for a [1, 4] input.
    assert_eq!(html.matches("type=\"number\"").count(), 4);
    let (status, _, missing) = send(&node, "GET", "/m/nope", &[HOST], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing.contains("no model nope"));
}

#[tokio::test]
async fn a_vote_needs_the_pages_csrf_token_and_origin() {
    let node = Arc::new(Catalogue::new());
    let id = node.models[0].id.clone();
    let html = get(&node, &format!("/m/{id}")).await;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the vote form")
        .to_string();
    assert_eq!(csrf.len(), 64);
    assert!(!csrf.contains(TOKEN), "not the API token");
    let path = format!("/ui/vote/{id}");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let origin = ("origin", "http://127.0.0.1:5080");
    for body in ["choice=up", &format!("csrf={}&choice=up", "0".repeat(64))] {
        let (status, _, _) = send(&node, "POST", &path, &[HOST, form, origin], body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let good = format!("csrf={csrf}&choice=up");
    let evil = ("origin", "http://evil.example");
    let (status, _, _) = send(&node, "POST", &path, &[HOST, form, evil], &good).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another origin");
    assert!(node.votes.lock().expect("lock").is_empty());
    let (status, headers, _) = send(&node, "POST", &path, &[HOST, form, origin], &good).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/m/{id}#votes").as_str())
    );
    assert_eq!(
        *node.votes.lock().expect("lock"),
        vec![(id.clone(), "up".to_string())]
    );
}

#[tokio::test]
async fn network_credits_and_node_pages_assets_and_links_from_elsewhere() {
    let node = Arc::new(Catalogue::new());
    let network = get(&node, "/network").await;
    assert!(network.contains("12D3KooWOther") && network.contains("llama.cpp"));
    assert!(network.contains("3 ms") || network.contains("4 ms"));
    // The fetch in progress, with its bar.
    assert!(
        network.contains("<progress value=\"1048576\" max=\"4194304\">")
            && network.contains("1.0 MiB of 4.0 MiB")
            && network.contains("running"),
        "{network}"
    );
    assert_escaped(&network);
    let page = get(&node, "/node").await;
    assert!(page.contains(&"ab".repeat(32)) && page.contains("/metrics"));
    assert!(page.contains("2 blobs, 2.0 MiB (1 pinned)"), "{page}");
    assert!(page.contains("id=\"limits\"") && page.contains("calls at once"));
    assert_escaped(&page);
    // This node keeps no ledger: the page says so with the API's error.
    let (status, _, credits) = send(&node, "GET", "/credits", &[HOST], "").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert!(credits.contains("does not offer"));
    for (name, kind) in [
        ("ui.css", "text/css"),
        ("ui.js", "text/javascript"),
        ("uPlot.iife.min.js", "text/javascript"),
        ("uPlot.LICENSE", "text/plain"),
    ] {
        let (status, headers, body) =
            send(&node, "GET", &format!("/ui/assets/{name}"), &[HOST], "").await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert!(!body.is_empty());
        let got = headers.get("content-type").and_then(|v| v.to_str().ok());
        assert!(got.is_some_and(|t| t.starts_with(kind)), "{name}: {got:?}");
    }
    let (status, _, _) = send(&node, "GET", "/ui/assets/../Cargo.toml", &[HOST], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A link on another site opens a page; a script there cannot read one.
    let link = [
        HOST,
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
    ];
    assert_eq!(send(&node, "GET", "/", &link, "").await.0, StatusCode::OK);
    let script = [
        HOST,
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "cors"),
    ];
    assert_eq!(
        send(&node, "GET", "/", &script, "").await.0,
        StatusCode::FORBIDDEN
    );
    // Another Host (DNS rebinding) gets nothing.
    let rebound = [("host", "evil.example:5080")];
    assert_eq!(
        send(&node, "GET", "/", &rebound, "").await.0,
        StatusCode::FORBIDDEN
    );
}
