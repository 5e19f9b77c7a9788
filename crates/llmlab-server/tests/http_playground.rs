//! The web playground's files over the in-process router: served without
//! the API key (with the right types, CSP and caching headers) while every
//! API route still asks for it, and written so that their own CSP lets them
//! run and model output cannot become markup.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};

use common::{harness, send, Reply};
use llmlab_core::testing::Script;
use llmlab_server::http::AppState;

const KEY: &str = "sesame";

async fn get(state: &AppState, path: &str, key: Option<&str>) -> Reply {
    let mut request = Request::get(path);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    send(state, request.body(Body::empty()).unwrap()).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The values that follow `marker` in `text`, each up to `close`
/// (`src="` up to `"`, `from './` up to `'`).
fn quoted_after(text: &str, marker: &str, close: char) -> Vec<String> {
    text.split(marker)
        .skip(1)
        .filter_map(|rest| rest.split_once(close).map(|(value, _)| value.to_owned()))
        .collect()
}

/// Every file the page loads: what index.html links to and, from there,
/// what each module imports (relative to /playground/).
async fn page_files(state: &AppState) -> BTreeSet<String> {
    let page = get(state, "/", None).await;
    let mut found: BTreeSet<String> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|marker| quoted_after(&page.body, marker, '"'))
        .filter(|path| path.starts_with('/'))
        .collect();
    let mut pending: Vec<String> = found.iter().filter(|p| p.ends_with(".js")).cloned().collect();
    while let Some(script) = pending.pop() {
        let body = get(state, &script, None).await.body;
        for import in quoted_after(&body, "from './", '\'') {
            let path = format!("/playground/{import}");
            if found.insert(path.clone()) {
                pending.push(path);
            }
        }
    }
    found
}

fn expected_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => panic!("unexpected file {path}"),
    }
}

fn assert_static_headers(reply: &Reply, path: &str) {
    let csp = header(reply, "content-security-policy");
    assert!(csp.starts_with("default-src 'self';"), "{path}: {csp}");
    assert!(csp.contains("img-src 'self' data: blob:"), "{path}: {csp}");
    assert!(!csp.contains("unsafe"), "{path}: {csp}");
    assert_eq!(header(reply, "cache-control"), "no-cache", "{path}");
    assert_eq!(header(reply, "x-content-type-options"), "nosniff", "{path}");
    assert!(header(reply, "etag").starts_with('"'), "{path}");
}

#[tokio::test]
async fn the_page_and_its_files_need_no_key_but_the_api_does() {
    let h = harness(Script::text(&["hi"]), Some(KEY));
    let page = get(&h.state, "/", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_static_headers(&page, "/");
    assert!(page.body.contains("<title>llmlab playground</title>"));

    let files = page_files(&h.state).await;
    for expected in [
        "/playground/app.js",
        "/playground/chat.js",
        "/playground/api.js",
        "/playground/style.css",
    ] {
        assert!(
            files.contains(expected),
            "{expected} not reached from the page: {files:?}"
        );
    }
    for path in &files {
        let reply = get(&h.state, path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert_eq!(header(&reply, "content-type"), expected_type(path), "{path}");
        assert_static_headers(&reply, path);
    }

    // The gate still guards the API, and the page's path prefix opens
    // nothing but its own files.
    let models = get(&h.state, "/v1/models", None).await;
    models.assert_error(401, None);
    assert_eq!(get(&h.state, "/v1/models", Some(KEY)).await.status, StatusCode::OK);
    get(&h.state, "/playground/missing.js", None)
        .await
        .assert_error(401, None);
    let unknown = get(&h.state, "/playground/missing.js", Some(KEY)).await;
    assert_eq!(unknown.assert_error(404, None)["code"], "route_not_found");
    let wrong_method = send(&h.state, Request::post("/").body(Body::empty()).unwrap()).await;
    assert_eq!(wrong_method.assert_error(405, None)["code"], "method_not_allowed");
}

#[tokio::test]
async fn an_unchanged_file_is_revalidated_with_304() {
    let h = harness(Script::text(&["hi"]), None);
    let first = get(&h.state, "/playground/app.js", None).await;
    let etag = header(&first, "etag").to_owned();
    let request = Request::get("/playground/app.js")
        .header("if-none-match", &etag)
        .body(Body::empty())
        .unwrap();
    let again = send(&h.state, request).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(header(&again, "etag"), etag);
    let stale = Request::get("/playground/app.js")
        .header("if-none-match", "\"0\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.state, stale).await.status, StatusCode::OK);
}

/// The CSP forbids inline scripts, inline styles and handlers, so a page
/// that used them would break silently in the browser; and text from
/// models or servers reaches the page only through text nodes.
#[tokio::test]
async fn the_files_keep_to_their_own_policy() {
    let h = harness(Script::text(&["hi"]), None);
    let page = get(&h.state, "/", None).await.body;
    for forbidden in [
        " style=\"",
        " onclick=",
        " onload=",
        " onsubmit=",
        "javascript:",
        "http://",
        "https://",
    ] {
        assert!(!page.contains(forbidden), "index.html contains {forbidden:?}");
    }
    for script in page.split("<script").skip(1) {
        assert!(script.contains("src=\"/playground/"), "inline script: {script}");
    }
    for path in page_files(&h.state).await.iter().filter(|p| p.ends_with(".js")) {
        let body = get(&h.state, path, None).await.body;
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!body.contains(forbidden), "{path} uses {forbidden}");
        }
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} reaches another site"
        );
    }
}
