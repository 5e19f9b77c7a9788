//! The web playground at `/`: static files compiled into the binary (no
//! network, no build step), served without the API key (they hold no data;
//! every API route they call stays behind the key) and under a strict
//! Content-Security-Policy, so that nothing but this server's own scripts
//! runs even if model output ever reached the page as markup.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Scripts, styles, fetches and fonts from this server only; images also
/// from `data:` and `blob:` (attachments, generated pictures); no plugins,
/// no `<base>` rewriting, no framing (clickjacking), no form posts away.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file and the path it is served at.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("playground/", $file));
        Asset {
            path: $path,
            content_type: $type,
            body: BODY,
            etag: fnv1a(BODY),
        }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/playground/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/playground/icon.svg", "icon.svg", "image/svg+xml"),
    asset!("/playground/app.js", "app.js", JS),
    asset!("/playground/api.js", "api.js", JS),
    asset!("/playground/dom.js", "dom.js", JS),
    asset!("/playground/models.js", "models.js", JS),
    asset!("/playground/chat.js", "chat.js", JS),
    asset!("/playground/images.js", "images.js", JS),
    asset!("/playground/embeddings.js", "embeddings.js", JS),
];

/// A content hash computed at compile time: the ETag that lets a browser
/// revalidate cheaply, and changes with every build that changes a file.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Whether `path` is one of the playground's files, which the API-key gate
/// lets through. Exact paths only: anything else under `/playground/` is an
/// unknown route, behind the key like every other.
pub fn is_public(path: &str) -> bool {
    ASSETS.iter().any(|asset| asset.path == path)
}

/// The playground's routes, one per file, merged into the door's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        )
    })
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    // Revalidated on every load (a 304 when unchanged): the files change
    // whenever the binary does, and a stale script against a newer API is
    // worse than one round trip.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_its_own_path_and_a_distinct_tag() {
        for (i, a) in ASSETS.iter().enumerate() {
            for b in &ASSETS[i + 1..] {
                assert_ne!(a.path, b.path);
                assert_ne!(a.etag, b.etag, "{} and {}", a.path, b.path);
            }
        }
        assert!(is_public("/") && is_public("/playground/app.js"));
        assert!(!is_public("/playground/") && !is_public("/playground/missing.js") && !is_public("/v1/models"));
    }
}
