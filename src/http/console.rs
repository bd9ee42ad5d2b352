//! The web console: page shells served by this process, and the plain
//! script and style sheet written for it (`console/`; no third-party
//! code). The script reads everything through the JSON API with the tenant
//! token, which the reviewer enters once: it is kept in the tab's
//! `sessionStorage` and sent as an `Authorization` header, never in a URL
//! or a cookie. Pages hold no tenant data themselves, so they need no
//! token to load.
//!
//! - `/`: jobs, with filters, refreshed live.
//! - `/jobs/{job_id}`: a job: steps, live progress (the event stream), loss
//!   plot, the contact sheet (every epoch's samples side by side with its
//!   losses), reports, the actions its state allows, webhook deliveries.
//! - `/jobs/{job_id}/history`: its events and the verification of its log.
//! - `/queue`, `/fleet`: queued jobs by position; connected executors.

use axum::Router;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, header};

use super::server::AppState;

const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// `text` safe inside an HTML attribute or element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// The shell of every page: the script renders `page` into `<main>`.
fn shell(page: &str, title: &str, job: Option<&str>) -> Html<String> {
    let job = job.map(escape).unwrap_or_default();
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>loraflow · {title}</title>
<link rel="stylesheet" href="/console/console.css">
<script src="/console/console.js" defer></script>
</head>
<body data-page="{page}" data-job="{job}">
<header>
  <a class="brand" href="/">loraflow</a>
  <nav><a href="/">Jobs</a><a href="/queue">Queue</a><a href="/fleet">Fleet</a></nav>
  <form id="token-form" hidden>
    <label for="token">Tenant token</label>
    <input id="token" type="password" autocomplete="off" required>
    <button id="token-save" type="submit">Use token</button>
  </form>
  <span id="who"></span>
  <button id="forget" type="button" hidden>Forget token</button>
</header>
<div id="error" role="alert" hidden></div>
<main id="main"></main>
</body>
</html>
"#,
        title = escape(title),
    ))
}

fn asset(body: &'static str, media_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The console's routes, added to `api`.
pub fn routes(api: Router<AppState>) -> Router<AppState> {
    api.route("/", get(|| async { shell("jobs", "Jobs", None) }))
        .route(
            "/jobs/{job_id}",
            get(|Path(job): Path<String>| async move { shell("job", "Job", Some(&job)) }),
        )
        .route(
            "/jobs/{job_id}/history",
            get(|Path(job): Path<String>| async move { shell("history", "History", Some(&job)) }),
        )
        .route("/queue", get(|| async { shell("queue", "Queue", None) }))
        .route("/fleet", get(|| async { shell("fleet", "Fleet", None) }))
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_cannot_break_out_of_the_page() {
        let Html(page) = shell("job", "Job", Some("\"><script>alert(1)</script>"));
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&quot;&gt;&lt;script&gt;"));
    }
}
