//! Browsers may not change anything on the control port from another site.
//!
//! Without API keys the control port is open on loopback, and any web page
//! the operator visits could make the browser send a `POST` (a form post or
//! a `text/plain` fetch needs no CORS preflight) to `127.0.0.1:4001`:
//! submit a job (a request sent from inside the network), cancel or retry
//! one, redeliver a webhook, rotate a webhook secret. So every request
//! other than `GET`/`HEAD`/`OPTIONS` that a browser marks as coming from
//! another site is refused with `403 cross_site_request`, on every route.
//! Browsers send `Sec-Fetch-Site` and `Origin`; curl, the SDK and other
//! non-browser clients send neither and are not affected.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error_response;

/// Axum middleware: refuse a cross-site state-changing request.
pub async fn refuse(req: Request, next: Next) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads && !same_origin(req.headers()) {
        return error_response(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "changes through the control port are accepted only from its own pages or from non-browser clients",
        );
    }
    next.run(req).await
}

/// Whether a request is same-origin, or from a client that is not a browser.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none`: typed in the address bar or a bookmark.
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return false;
        }
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || authority != Some(host) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderValue, Request as HttpRequest};
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn other_sites_are_refused_non_browsers_are_not() {
        let host = ("host", "127.0.0.1:4001");
        assert!(same_origin(&headers(&[host])), "curl, the SDK");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:4001"),
            ("sec-fetch-site", "same-origin")
        ])));
        for bad in [
            vec![host, ("origin", "http://evil.test")],
            vec![host, ("origin", "null")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![("origin", "http://127.0.0.1:4001")],
        ] {
            assert!(!same_origin(&headers(&bad)), "{bad:?}");
        }
    }

    /// The middleware on a router: a cross-site POST never reaches the
    /// handler, a GET and a non-browser POST do.
    #[tokio::test]
    async fn the_middleware_guards_every_change() {
        let app = Router::new()
            .route("/x", post(|| async { "done" }).get(|| async { "read" }))
            .layer(axum::middleware::from_fn(refuse));
        let send = |method: &str, site: Option<&'static str>| {
            let mut b = HttpRequest::builder()
                .method(method)
                .uri("/x")
                .header("host", "127.0.0.1:4001");
            if let Some(site) = site {
                b = b.header("sec-fetch-site", site);
            }
            app.clone().oneshot(b.body(Body::empty()).expect("request"))
        };
        let r = send("POST", Some("cross-site")).await.expect("response");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = send("POST", None).await.expect("response");
        assert_eq!(r.status(), StatusCode::OK);
        let r = send("GET", Some("cross-site")).await.expect("response");
        assert_eq!(r.status(), StatusCode::OK);
    }
}
