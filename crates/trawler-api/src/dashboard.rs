//! The dashboard: a single page served at `/`, its script and styles, and
//! the vendored charting library (uPlot, MIT, `assets/vendor/uplot`).
//!
//! Every asset is compiled into the binary with `include_str!`: trawler
//! needs no CDN, no asset directory next to it and no Node.js to build. The
//! page reads the same public JSON API as any other client, plus the event
//! stream for live numbers; it holds no state the server does not.
//!
//! The page is sent with a strict Content-Security-Policy (everything from
//! this origin, nothing inline but styles), so a value shown on the page can
//! never run as script.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::JobInfo;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const STREAM_HTML: &str = include_str!("../assets/stream.html");
const STREAM_JS: &str = include_str!("../assets/stream.js");
const TOPN_HTML: &str = include_str!("../assets/topn.html");
const TOPN_JS: &str = include_str!("../assets/topn.js");
const BATCH_HTML: &str = include_str!("../assets/batch.html");
const BATCH_JS: &str = include_str!("../assets/batch.js");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// Routes of the page and its assets. The job's names ([`JobInfo`], as
/// JSON) are written into the page once, here, so the script knows which
/// API paths to read and what the answers' members are called.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(info: &JobInfo) -> Router<S> {
    page(INDEX, &info.name, info, ("/assets/app.js", APP_JS))
}

/// The page of a stream job (`/`), its script, and the shared assets.
pub(crate) fn stream_router<S: Clone + Send + Sync + 'static>(
    info: &crate::streams::StreamInfo,
) -> Router<S> {
    if info.topn.is_some() {
        return page(TOPN_HTML, &info.name, info, ("/assets/topn.js", TOPN_JS));
    }
    page(
        STREAM_HTML,
        &info.name,
        info,
        ("/assets/stream.js", STREAM_JS),
    )
}

/// The page of a batch job (`/`), its script, and the shared assets.
pub(crate) fn batch_router<S: Clone + Send + Sync + 'static>(job: &str) -> Router<S> {
    page(
        BATCH_HTML,
        job,
        &serde_json::json!({ "name": job }),
        ("/assets/batch.js", BATCH_JS),
    )
}

/// `/` from `template` with the job's name and `info` filled in, its
/// `script` (path, source), and the styles and chart library every page
/// shares.
fn page<S: Clone + Send + Sync + 'static>(
    template: &str,
    name: &str,
    info: &impl serde::Serialize,
    script: (&'static str, &'static str),
) -> Router<S> {
    let json = serde_json::to_string(info).unwrap_or_else(|_| "{}".into());
    let index = template
        .replace("{{job}}", &html_escape(name))
        .replace("{{info}}", &html_escape(&json));
    let (script_path, script) = script;
    Router::new()
        .route(
            "/",
            get(move || {
                let index = index.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                            (header::CACHE_CONTROL, "no-cache"),
                            (header::CONTENT_SECURITY_POLICY, CSP),
                            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        ],
                        index,
                    )
                }
            }),
        )
        .route(script_path, get(move || asset("text/javascript", script)))
        .route("/assets/app.css", get(|| asset("text/css", APP_CSS)))
        .route(
            "/assets/uplot.min.js",
            get(|| asset("text/javascript", UPLOT_JS)),
        )
        .route(
            "/assets/uplot.min.css",
            get(|| asset("text/css", UPLOT_CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// Escapes text for an HTML attribute or element.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_escape_neutralises_markup() {
        assert_eq!(
            super::html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_page_names_its_assets() {
        for asset in [
            "/assets/app.js",
            "/assets/app.css",
            "/assets/uplot.min.js",
            "/assets/uplot.min.css",
        ] {
            assert!(super::INDEX.contains(asset), "{asset}");
        }
        for asset in [
            "/assets/stream.js",
            "/assets/app.css",
            "/assets/uplot.min.js",
            "/assets/uplot.min.css",
        ] {
            assert!(super::STREAM_HTML.contains(asset), "{asset}");
        }
    }

    #[test]
    fn the_stream_and_batch_pages_run_nothing_inline() {
        // The CSP allows scripts from this origin only: an inline script
        // or handler would be blocked (and must not be needed).
        for (html, js, script) in [
            (super::STREAM_HTML, super::STREAM_JS, "/assets/stream.js"),
            (super::BATCH_HTML, super::BATCH_JS, "/assets/batch.js"),
        ] {
            let page = html.to_ascii_lowercase();
            assert!(page.contains(script), "{script}");
            assert!(!page.contains("<script>"), "inline script");
            assert!(
                !page.contains(" onclick=") && !page.contains(" onload="),
                "inline handler"
            );
            assert!(!js.contains("innerHTML"), "values go in with textContent");
        }
    }
}
