//! The node's web UI, served on the API's own address: server-rendered HTML (maud templates,
//! which escape every value), a stylesheet, a small script and the charting library (uPlot,
//! vendored from npm with its licence), all embedded in the binary; nothing is loaded from
//! anywhere else.
//!
//! # Pages
//! `/` the catalogue (`?q=&sort=&tag=&page=`), `/m/{id}` a model, `/network`, `/credits`,
//! `/node`; assets under `/ui/assets/`. Pages read through the same [`NodeApi`] as `/api/v1`,
//! need no token (like `/v2` and `/metrics`: the guard's Host and Origin rules keep other web
//! pages out) and work without JavaScript; `ui.js` draws the training charts and sends the call
//! form and the chat to `/v2` and `/v1` (same origin, JSON).
//!
//! # Changes
//! State changes are form posts under `/ui/` (a vote: `POST /ui/vote/{id}`), each carrying the
//! node's CSRF token ([`Access::csrf`]): a keyed hash of the API token, so a page on another
//! origin can neither read nor guess it. A post without it, or with another, is refused (403).
//! Every answer carries a Content-Security-Policy that allows scripts from the node only, and
//! forbids framing.

mod page;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;

use crate::dto::{History, VoteRequest};
use crate::{Access, ApiError, NodeApi};

pub use page::size;
use pages::CatalogueQuery;

/// Whether `path` is one of the UI's pages (a link from elsewhere may open it).
pub fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/network" | "/credits" | "/node") || path.starts_with("/m/")
}

/// The largest form a UI post may carry.
pub const MAX_FORM_BODY: usize = 16 << 10;

/// What the UI's handlers share: the node and the CSRF token its forms carry.
struct Ui<N> {
    node: Arc<N>,
    csrf: String,
}

/// The UI's routes for `node`, its forms checked against `access`'s CSRF token.
pub(crate) fn router<N: NodeApi>(node: Arc<N>, access: &Access) -> Router {
    let ui = Arc::new(Ui {
        node,
        csrf: access.csrf(),
    });
    Router::new()
        .route("/", get(catalogue::<N>))
        .route("/m/{id}", get(model::<N>))
        .route("/network", get(network::<N>))
        .route("/credits", get(credits::<N>))
        .route("/node", get(node_page::<N>))
        .route("/ui/vote/{id}", post(vote::<N>))
        .route("/ui/assets/{name}", get(asset))
        .layer(DefaultBodyLimit::max(MAX_FORM_BODY))
        .layer(axum::middleware::map_response(secure))
        .with_state(ui)
}

/// The headers every UI answer carries.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it a browser sends `Origin: null` on the UI's own form posts,
    // which the guard refuses.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A page, or the error page with the error's status.
fn answer(page: Result<Markup, ApiError>) -> Response {
    match page {
        Ok(html) => Html(html.into_string()).into_response(),
        Err(e) => (
            e.status,
            Html(page::error_page(e.status.as_u16(), &e.message).into_string()),
        )
            .into_response(),
    }
}

async fn catalogue<N: NodeApi>(
    State(ui): State<Arc<Ui<N>>>,
    query: Result<Query<CatalogueQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    answer(
        async {
            let Query(query) =
                query.map_err(|e| ApiError::bad_request(format!("the page's query: {e}")))?;
            let results = ui
                .node
                .search(crate::dto::SearchQuery {
                    q: query.q.clone(),
                    sort: Some(query.sort().to_string()),
                    tags: query.tag().map(str::to_string),
                    limit: Some(pages::PAGE_ROWS),
                    offset: Some(query.page.saturating_mul(pages::PAGE_ROWS)),
                })
                .await?;
            let offers = ui.node.offers().await?;
            Ok(pages::catalogue(
                &query,
                &results,
                &pages::providers(&offers),
            ))
        }
        .await,
    )
}

async fn model<N: NodeApi>(State(ui): State<Arc<Ui<N>>>, Path(id): Path<String>) -> Response {
    answer(
        async {
            let view = ui.node.show(id.clone()).await?;
            // A model without snapshots, or a node that keeps no history, has an empty one.
            let history = ui.node.model_history(id.clone()).await.unwrap_or(History {
                snapshots: Vec::new(),
            });
            // A node that hears no offers (or keeps none) shows none.
            let offers = ui.node.offers().await.unwrap_or(crate::dto::OfferList {
                serving: false,
                offers: Vec::new(),
            });
            Ok(pages::model(&view, &history, &offers, &ui.csrf))
        }
        .await,
    )
}

async fn network<N: NodeApi>(State(ui): State<Arc<Ui<N>>>) -> Response {
    answer(
        async {
            let info = ui.node.info().await?;
            let offers = ui.node.offers().await?;
            // A node that keeps no list of fetches shows none.
            let fetches = ui
                .node
                .fetches()
                .await
                .map(|f| f.fetches)
                .unwrap_or_default();
            Ok(pages::network(&info, &offers, &fetches))
        }
        .await,
    )
}

/// Peers whose receipts the credits page charts.
const CHARTED_PEERS: usize = 16;

async fn credits<N: NodeApi>(State(ui): State<Arc<Ui<N>>>) -> Response {
    answer(
        async {
            let credits = ui.node.credits().await?;
            // Every receipt moves the balance: a call served earns its cost, a call used
            // owes it.
            let mut moves = Vec::new();
            for p in credits.peers.iter().take(CHARTED_PEERS) {
                if let Ok(list) = ui.node.credit_receipts(p.peer_id.clone()).await {
                    moves.extend(list.served.iter().map(|r| (r.issued_ms, r.cost as i64)));
                    moves.extend(list.used.iter().map(|r| (r.issued_ms, -(r.cost as i64))));
                }
            }
            Ok(pages::credits(&credits, &pages::balance(moves)))
        }
        .await,
    )
}

async fn node_page<N: NodeApi>(State(ui): State<Arc<Ui<N>>>) -> Response {
    answer(
        async {
            let info = ui.node.info().await?;
            // A node that cannot list its store still shows who it is.
            let blobs = ui.node.blobs().await.ok();
            Ok(pages::node(&info, blobs.as_ref()))
        }
        .await,
    )
}

/// A vote form's fields.
#[derive(serde::Deserialize)]
struct VoteForm {
    /// Missing is refused like a wrong one (403).
    #[serde(default)]
    csrf: String,
    choice: String,
}

async fn vote<N: NodeApi>(
    State(ui): State<Arc<Ui<N>>>,
    Path(id): Path<String>,
    form: Result<axum::Form<VoteForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match form {
        Ok(axum::Form(f)) => f,
        Err(e) => {
            return answer(Err(ApiError::bad_request(format!("the vote form: {e}"))));
        }
    };
    if !blake3::Hash::from_hex(&form.csrf)
        .is_ok_and(|h| blake3::Hash::from_hex(&ui.csrf).is_ok_and(|own| own == h))
    {
        return answer(Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is not this node's: reload the page and vote again",
        )));
    }
    match ui
        .node
        .vote(
            id.clone(),
            VoteRequest {
                choice: form.choice,
            },
        )
        .await
    {
        Ok(_) => Redirect::to(&format!("/m/{}#votes", pages::encode(&id))).into_response(),
        Err(e) => answer(Err(e)),
    }
}

/// The embedded assets: name, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/ui.css"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/ui.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/vendor/uPlot.LICENSE"),
    ),
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            *bytes,
        )
            .into_response(),
        None => answer(Err(ApiError::not_found(format!("no asset {name:?}")))),
    }
}
