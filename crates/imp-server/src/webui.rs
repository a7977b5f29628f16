//! The chat page at `/`: plain HTML, CSS and JavaScript compiled into the binary (nothing is
//! fetched from elsewhere, at build time or run time). It uses `/v1/chat/completions` like any
//! other client; `--no-webui` leaves it out.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../webui/index.html");
const APP_JS: &str = include_str!("../webui/app.js");
const APP_CSS: &str = include_str!("../webui/app.css");

/// The page's own files only: no inline scripts, no other origins; images are `data:` URLs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/webui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/webui/app.css",
            get(|| async { page("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // A new binary may bring a new page: revalidate rather than keep a stale one.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
