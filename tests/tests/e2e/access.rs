//! Only the node's owner drives the node, over real HTTP to a real `moxnet node`: without the
//! token `/api/v1` answers 401; a foreign `Host` (DNS rebinding) or a page's `Origin` gets 403;
//! a fetch started by a page's plain form POST never happens; OIP stays usable without a token,
//! as curl and tritonclient use it; and the CLI works unchanged through the running node.

use std::time::Duration;

use testnet::{Testnet, http_with};

#[test]
fn the_api_answers_only_its_owner_and_never_a_web_page() {
    let net = Testnet::new().expect("testnet");
    let a = net.home("a");
    a.ok(&["init"]);
    let node = a.start(&[]);
    let token_file = a.home.join("api.token");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("api.token")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the token is readable by its owner only"
        );
    }
    let t = Duration::from_secs(30);
    let api = node.api.as_str();
    let auth = format!("Bearer {}", node.token);
    let rebound_host = format!("evil.example:{}", api.rsplit(':').next().expect("port"));

    // The owner, with the token.
    let (status, info) = node.api_get("/api/v1/node").expect("owner");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["peer_id"], node.peer_id.as_str());

    // No token, or a wrong one: 401.
    let (status, body) = http_with(api, "GET", "/api/v1/node", &[], None, t).expect("http");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("api.token"),
        "{body}"
    );
    let wrong = [("Authorization", "Bearer 00")];
    let (status, _) = http_with(api, "GET", "/api/v1/node", &wrong, None, t).expect("http");
    assert_eq!(status, 401);

    // DNS rebinding: the page's own name as Host, even with the right token: 403.
    let rebound = [
        ("Host", rebound_host.as_str()),
        ("Authorization", auth.as_str()),
    ];
    let (status, _) = http_with(api, "GET", "/api/v1/node", &rebound, None, t).expect("http");
    assert_eq!(status, 403);

    // A page's plain form POST that would start a fetch: 403, and no fetch ever starts.
    let hash = "ab".repeat(32);
    let fetch = format!("/api/v1/fetch/{hash}");
    let form = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, _) = http_with(api, "POST", &fetch, &form, Some("x=1"), t).expect("http");
    assert_eq!(status, 403);
    let (status, _) = node.api_get(&fetch).expect("owner");
    assert_eq!(status, 404, "no fetch of {hash} was started");
    let cross_site = [
        ("Sec-Fetch-Site", "cross-site"),
        ("Authorization", auth.as_str()),
    ];
    let (status, _) = http_with(api, "POST", &fetch, &cross_site, None, t).expect("http");
    assert_eq!(status, 403);

    // OIP: a page cannot post to it (with or without Origin); curl-style clients can.
    let infer = format!("/v2/models/{hash}/infer");
    let (status, _) = http_with(api, "POST", &infer, &form, Some("x=1"), t).expect("http");
    assert_eq!(status, 403);
    let text = [("Content-Type", "text/plain")];
    let (status, body) = http_with(api, "POST", &infer, &text, Some("{}"), t).expect("http");
    assert_eq!(status, 415, "{body}");
    let (status, _) = http_with(api, "GET", "/v2/health/live", &[], None, t).expect("http");
    assert_eq!(status, 200);
    let (status, _) = http_with(api, "GET", "/v2/health/live", &rebound, None, t).expect("http");
    assert_eq!(status, 403);
    let (status, _) = node.api_get(&fetch).expect("owner");
    assert_eq!(status, 404, "the OIP attempts started no fetch either");

    // Body limits per route: a path is never 64 KiB.
    let big = format!("{{\"path\": \"/{}\"}}", "x".repeat(70 << 10));
    let (status, _) = node
        .api_call("POST", "/api/v1/blobs", Some(&big))
        .expect("owner");
    assert_eq!(status, 413);

    // The CLI works unchanged through the node, token and all.
    let file = net.path().join("hello.txt");
    std::fs::write(&file, b"hello").expect("write");
    let hash = a.ok(&["add", file.to_str().expect("utf8")]);
    assert_eq!(hash, blake3::hash(b"hello").to_hex().as_str());
    let listed = a.json(&["ls"]);
    assert!(
        listed["blobs"]
            .as_array()
            .expect("blobs")
            .iter()
            .any(|b| b["hash"] == hash.as_str() && b["pinned"] == true),
        "{listed}"
    );
    assert_eq!(a.json(&["unpin", &hash])["was_pinned"], true);
    assert_eq!(a.json(&["gc"])["blobs_removed"], 1);
    assert_eq!(a.json(&["verify"])["ok"], true);
    let relative = a.fails(&["get", &hash, "-o", "out"]);
    assert!(relative.contains("not in the store"), "{relative}");
}
