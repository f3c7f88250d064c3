//! The status page at `/`: one HTML page, its stylesheet and its script,
//! built into the binary. The page itself is open, like the probes; the
//! figures it shows come from the admin API (`/api/v1/cluster` and
//! `/api/v1/node`), which asks for the token as ever. The script sends the
//! token the user pastes into the page, kept in the tab's session storage.
//!
//! Nothing is fetched from elsewhere: the content security policy allows the
//! page this origin only.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::http::AppState;

const INDEX_HTML: &str = include_str!("status/index.html");
const STATUS_CSS: &str = include_str!("status/status.css");
const STATUS_JS: &str = include_str!("status/status.js");

/// Scripts, styles and requests from this origin only; no frames, no forms
/// sent anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/status.css", get(css))
        .route("/status.js", get(js))
}

/// One of the page's files, as `content_type`, checked again by the browser
/// at every load so that an upgraded node serves its own.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)],
        file("text/html; charset=utf-8", INDEX_HTML),
    )
}

async fn css() -> impl IntoResponse {
    file("text/css; charset=utf-8", STATUS_CSS)
}

async fn js() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", STATUS_JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_own_files_and_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("status.css", STATUS_CSS),
            ("status.js", STATUS_JS),
        ] {
            for outside in ["http://", "https://", "//fonts", "@import"] {
                assert!(!text.contains(outside), "{name} refers to {outside}");
            }
        }
        assert!(INDEX_HTML.contains(r#"href="/status.css""#));
        assert!(INDEX_HTML.contains(r#"src="/status.js""#));
        for route in ["/api/v1/cluster", "/api/v1/node"] {
            assert!(STATUS_JS.contains(route), "status.js reads {route}");
        }
    }

    #[test]
    fn the_ids_the_script_fills_are_on_the_page() {
        let mut rest = STATUS_JS;
        let mut ids = Vec::new();
        while let Some(at) = rest.find("show(\"") {
            rest = &rest[at + "show(\"".len()..];
            ids.push(rest.split('"').next().unwrap_or_default());
        }
        assert!(ids.len() >= 10, "{ids:?}");
        for id in ids.into_iter().chain(["members", "token", "token-form"]) {
            assert!(
                INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "index.html has no element {id:?}"
            );
        }
    }
}
