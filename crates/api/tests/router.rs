//! The router as a client sees it: routes, typed bodies, body limits and the access guard,
//! against a node that counts what it was asked to do (no swarm, no store).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use api::dto::*;
use api::oip::{InferRequest, InferResponse};
use api::{Access, ApiError, ApiResult, NodeApi};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const PORT: u16 = 5080;
const TOKEN: &str = "0123456789abcdef";

/// A node that records the fetches and adds it was asked for.
#[derive(Default)]
struct Counting {
    fetches: AtomicUsize,
    added: std::sync::Mutex<Vec<AddRequest>>,
}

impl NodeApi for Counting {
    async fn info(&self) -> ApiResult<NodeInfo> {
        Ok(NodeInfo {
            node_id: "n".into(),
            peer_id: "p".into(),
            listen: vec![],
            peers: vec![],
            limits: vec![],
        })
    }

    async fn add(&self, request: AddRequest) -> ApiResult<Added> {
        self.added.lock().expect("lock").push(request);
        Ok(Added {
            hash: "h".into(),
            size: 1,
            new: true,
            kind: "file".into(),
        })
    }

    async fn start_fetch(&self, id: String) -> ApiResult<FetchProgress> {
        if id.len() != 64 {
            return Err(ApiError::bad_request(format!("{id:?} is not a hash")));
        }
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(FetchProgress {
            id,
            state: FetchState::Running,
            bytes_total: 0,
            bytes_done: 0,
            bytes_fetched: 0,
            peers_used: 0,
            peers_banned: 0,
            elapsed_ms: 0,
            error: None,
        })
    }

    async fn infer(
        &self,
        id: String,
        query: InferQuery,
        request: InferRequest,
    ) -> ApiResult<InferResponse> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let mut parameters = serde_json::Map::new();
        parameters.insert("verify".into(), json!(query.verify));
        parameters.insert("inputs".into(), json!(request.inputs.len()));
        Ok(InferResponse::new(
            id,
            "1".into(),
            &request,
            &[],
            parameters,
        ))
    }
}

fn app(node: &Arc<Counting>) -> axum::Router {
    api::router(node.clone(), Access::new(PORT, TOKEN))
}

async fn send(
    node: &Arc<Counting>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Body::from(body)).expect("request");
    let response = app(node).oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

const HOST: (&str, &str) = ("host", "127.0.0.1:5080");
const AUTH: (&str, &str) = ("authorization", "Bearer 0123456789abcdef");

#[tokio::test]
async fn the_owner_with_the_token_gets_typed_answers() {
    let node = Arc::new(Counting::default());
    let (status, v) = send(&node, "GET", "/api/v1/node", &[HOST, AUTH], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let info: NodeInfo = serde_json::from_value(v).expect("typed");
    assert_eq!(info.peer_id, "p");
    let body = serde_json::to_vec(&AddRequest {
        path: "/tmp/x".into(),
    })
    .expect("json");
    let (status, v) = send(&node, "POST", "/api/v1/blobs", &[HOST, AUTH], body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "file");
    assert_eq!(node.added.lock().expect("lock").len(), 1);
    // A route the node does not offer says so.
    let (status, _) = send(&node, "POST", "/api/v1/gc", &[HOST, AUTH], vec![]).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    // A body that does not fit the type is a 400 with serde's reason, not a panic.
    let (status, v) = send(
        &node,
        "POST",
        "/api/v1/blobs",
        &[HOST, AUTH],
        b"{\"p\":1}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap_or("").contains("path"), "{v}");
    let (status, v) = send(&node, "POST", "/api/v1/fetch/abc", &[HOST, AUTH], vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let id = "ab".repeat(32);
    let (status, v) = send(
        &node,
        "POST",
        &format!("/api/v1/fetch/{id}"),
        &[HOST, AUTH],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(v["state"], "running");
}

#[tokio::test]
async fn strangers_pages_and_rebound_names_are_refused() {
    let node = Arc::new(Counting::default());
    let id = "ab".repeat(32);
    let fetch = format!("/api/v1/fetch/{id}");
    let (status, v) = send(&node, "POST", &fetch, &[HOST], vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        v["error"].as_str().unwrap_or("").contains("api.token"),
        "{v}"
    );
    let (status, _) = send(
        &node,
        "POST",
        &fetch,
        &[HOST, ("authorization", "Bearer nope")],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // DNS rebinding: the right token cannot help a page whose name points at 127.0.0.1.
    let (status, _) = send(
        &node,
        "POST",
        &fetch,
        &[("host", "evil.example:5080"), AUTH],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A page's plain form POST, to either API.
    let form = [
        HOST,
        ("origin", "http://evil.example"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let (status, _) = send(&node, "POST", &fetch, &form, b"a=b".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let infer = format!("/v2/models/{id}/infer");
    let (status, _) = send(&node, "POST", &infer, &form, b"a=b".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Even a browser that sent no Origin cannot post a form to the OIP routes.
    let text = [HOST, ("content-type", "text/plain")];
    let (status, _) = send(&node, "POST", &infer, &text, b"{\"inputs\":[]}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        node.fetches.load(Ordering::SeqCst),
        0,
        "nothing was fetched or run"
    );
    // curl and tritonclient on this machine: no token, no Origin.
    let (status, v) = send(
        &node,
        "POST",
        &format!("{infer}?verify=true"),
        &[HOST],
        b"{\"inputs\":[]}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["parameters"]["verify"], true);
    // A malformed request is 400 with the reason, before the node sees it.
    let (status, v) = send(
        &node,
        "POST",
        &infer,
        &[HOST],
        b"{\"inputs\":[{\"data\":[1]}]}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap_or("").contains("name"), "{v}");
    let (status, v) = send(&node, "POST", &infer, &[HOST], b"{".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap_or("").contains("not JSON"),
        "{v}"
    );
    let (status, _) = send(
        &node,
        "GET",
        "/v2/health/live",
        &[("host", "localhost:5080")],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_refused() {
    let node = Arc::new(Counting::default());
    let path = "x".repeat(api::MAX_V1_BODY);
    let body = serde_json::to_vec(&json!({ "path": path })).expect("json");
    let (status, v) = send(&node, "POST", "/api/v1/blobs", &[HOST, AUTH], body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap_or("").contains("limit"), "{v}");
    assert!(node.added.lock().expect("lock").is_empty());
    // The same size is fine for an inference request.
    let ones = vec!["1"; api::MAX_V1_BODY / 2 + 1].join(",");
    let big = format!("{{\"inputs\":[{{\"name\":\"x\",\"data\":[{ones}]}}]}}").into_bytes();
    assert!(big.len() > api::MAX_V1_BODY);
    let (status, v) = send(
        &node,
        "POST",
        &format!("/v2/models/{}/infer", "ab".repeat(32)),
        &[HOST],
        big,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let huge = vec![b' '; api::MAX_INFER_BODY + 1];
    let (status, _) = send(
        &node,
        "POST",
        &format!("/v2/models/{}/infer", "ab".repeat(32)),
        &[HOST],
        huge,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
