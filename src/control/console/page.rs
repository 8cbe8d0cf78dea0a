//! The console page: one HTML shell, one script, one style sheet, all
//! embedded in the binary (`include_str!`, no CDN, nothing fetched from
//! elsewhere). The charts are hand-written SVG (`console.js`, about
//! 100 lines of it): no charting library is vendored, so there is no
//! third-party size or licence to carry.
//!
//! The shell holds no data, so it needs no token; everything it shows
//! comes from `/console/api/*`, which do. The Content-Security-Policy
//! allows scripts and styles from this origin only, no inline script, and
//! fetches to this origin only: a domain name or a job's header that got
//! through unescaped still could not run.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("assets/console.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

/// `GET /console`
pub async fn html() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

/// `GET /console/console.js`
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/console.css`
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_loads_only_its_own_assets() {
        assert!(HTML.contains(r#"<script src="/console/console.js" defer></script>"#));
        assert!(HTML.contains(r#"<link rel="stylesheet" href="/console/console.css">"#));
        assert!(
            !HTML.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
        assert!(
            !HTML.contains("style=\""),
            "no inline style: the CSP forbids it"
        );
        assert!(
            !SCRIPT.contains("innerHTML"),
            "text goes in as text, never as markup"
        );
        // Nothing from elsewhere: the only URL is the SVG namespace name.
        for text in [HTML, SCRIPT, STYLE] {
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
