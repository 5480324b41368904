//! Who may use the API. The node listens on loopback only, but loopback is not a boundary: any
//! local user can connect, and any web page the node's user opens can make the browser send
//! requests to `127.0.0.1` (a form POST, or a script after DNS rebinding). So every request is
//! checked, before any handler runs, in this order:
//!
//! 1. **Host**: must name the API's own address (`127.0.0.1:PORT`, `localhost:PORT`,
//!    `[::1]:PORT`). A page that rebinds its own name to 127.0.0.1 still sends its own name as
//!    `Host`, so it is refused (403).
//! 2. **Origin** and **Sec-Fetch-Site**: a request a browser sends on behalf of a page carries
//!    the page's origin; unless that origin is the API itself, it is refused (403). Requests
//!    from programs (the CLI, curl, tritonclient) carry neither.
//! 3. **Token** (`/api/v1` only): `Authorization: Bearer <token>`, where the token is the
//!    random secret the node wrote to `<home>/api.token` (mode 0600), readable only by the
//!    node's user. Without it: 401.
//! 4. **Content type** (`POST` outside `/api/v1`, i.e. OIP inference): the three types a page
//!    can send without a CORS preflight (`application/x-www-form-urlencoded`,
//!    `multipart/form-data`, `text/plain`) are refused (415), so even a browser that sent no
//!    `Origin` could not make the node fetch or run a model from a plain form.
//!
//! `/v2` (OIP) and `/metrics` need no token, so tritonclient, KServe clients, curl and
//! Prometheus work unchanged from the same machine; they run models the node would serve to
//! any peer anyway, and steps 1, 2 and 4 keep web pages out.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// The API's access rules: its own addresses and the owner's token.
#[derive(Clone)]
pub struct Access {
    token: String,
    hosts: Vec<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("hosts", &self.hosts)
            .field("token", &"<secret>")
            .finish()
    }
}

impl Access {
    /// Rules for an API listening on loopback port `port`, with the owner's `token`.
    pub fn new(port: u16, token: impl Into<String>) -> Access {
        Access {
            token: token.into(),
            hosts: vec![
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ],
        }
    }

    /// The token the web UI's forms carry (see `ui`): a keyed hash of the owner's token, so
    /// it is as hard to guess and reveals nothing of it.
    pub fn csrf(&self) -> String {
        blake3::derive_key("moxnet 2026-12 web ui csrf token", self.token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `host` (a `Host` header) names this API.
    fn is_own_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether `origin` (an `Origin` header) is this API itself.
    fn is_own_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|host| self.is_own_host(host))
    }

    /// Checks one request's headers; `Err` is the answer to send instead.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        match text(header::HOST) {
            Some(host) if self.is_own_host(host) => {}
            Some(host) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("Host {host:?} is not this node's API address"),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the request has no Host header",
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = origin.to_str().is_ok_and(|o| self.is_own_origin(o));
            if !own {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross-origin requests are refused: web pages cannot use this API",
                ));
            }
        }
        // A link from elsewhere to one of the UI's pages opens it (a top-level navigation,
        // which reads a page and changes nothing); everything else must come from here.
        let navigation = *method == Method::GET
            && text(axum::http::HeaderName::from_static("sec-fetch-mode")) == Some("navigate")
            && crate::ui::is_page(path);
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.to_str(), Ok("same-origin" | "none"))
            && !navigation
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-site requests are refused: web pages cannot use this API",
            ));
        }
        if path == "/api/v1" || path.starts_with("/api/v1/") {
            let presented = text(header::AUTHORIZATION)
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !presented.is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes())) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this API needs the node's token: send `Authorization: Bearer <token>` \
                     with the token from <home>/api.token",
                ));
            }
        } else if method == Method::POST && !path.starts_with("/ui/") {
            // UI forms (under /ui/) are form posts: each carries the CSRF token, checked by
            // its handler.
            let kind = text(header::CONTENT_TYPE)
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase());
            if let Some(kind) = kind
                && matches!(
                    kind.as_str(),
                    "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
                )
            {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "Content-Type {kind} is refused (web forms send it): \
                         send Content-Type: application/json"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: runs [`Access::check`] before every route.
pub(crate) async fn guard(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    match access.check(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn token_host_origin_and_form_types() {
        let a = Access::new(5080, "secret");
        let get = Method::GET;
        let ok = headers(&[
            ("host", "127.0.0.1:5080"),
            ("authorization", "Bearer secret"),
        ]);
        assert!(a.check(&get, "/api/v1/node", &ok).is_ok());
        let status = |r: Result<(), ApiError>| r.err().map(|e| e.status);
        let no_token = headers(&[("host", "localhost:5080")]);
        assert_eq!(
            status(a.check(&get, "/api/v1/node", &no_token)),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(status(a.check(&get, "/v2/health/live", &no_token)), None);
        let wrong = headers(&[("host", "[::1]:5080"), ("authorization", "Bearer secreT")]);
        assert_eq!(
            status(a.check(&get, "/api/v1/node", &wrong)),
            Some(StatusCode::UNAUTHORIZED)
        );
        let rebound = headers(&[
            ("host", "evil.example:5080"),
            ("authorization", "Bearer secret"),
        ]);
        assert_eq!(
            status(a.check(&get, "/api/v1/node", &rebound)),
            Some(StatusCode::FORBIDDEN)
        );
        let other_port = headers(&[("host", "127.0.0.1:5081")]);
        assert_eq!(
            status(a.check(&get, "/v2/health/live", &other_port)),
            Some(StatusCode::FORBIDDEN)
        );
        let page = headers(&[
            ("host", "127.0.0.1:5080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            status(a.check(&Method::POST, "/v2/models/x/infer", &page)),
            Some(StatusCode::FORBIDDEN)
        );
        let null = headers(&[("host", "127.0.0.1:5080"), ("origin", "null")]);
        assert_eq!(
            status(a.check(&get, "/v2/health/live", &null)),
            Some(StatusCode::FORBIDDEN)
        );
        let own = headers(&[
            ("host", "127.0.0.1:5080"),
            ("origin", "http://127.0.0.1:5080"),
        ]);
        assert_eq!(status(a.check(&get, "/v2/health/live", &own)), None);
        let site = headers(&[("host", "127.0.0.1:5080"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(
            status(a.check(&get, "/v2/health/live", &site)),
            Some(StatusCode::FORBIDDEN)
        );
        let form = headers(&[
            ("host", "127.0.0.1:5080"),
            ("content-type", "text/plain;charset=UTF-8"),
        ]);
        assert_eq!(
            status(a.check(&Method::POST, "/v2/models/x/infer", &form)),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        let json = headers(&[
            ("host", "127.0.0.1:5080"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(
            status(a.check(&Method::POST, "/v2/models/x/infer", &json)),
            None
        );
    }
}
