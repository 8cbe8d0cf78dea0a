//! `GET /`: the status page (SPEC §8). One small, self-contained HTML page
//! (no external assets) with what `GET /api/v1/domains` reports — every
//! known domain's rps and concurrency and where they came from, in flight,
//! waiting, paused until — plus the jobs in the store by status.
//!
//! It keeps itself current: an inline script re-fetches the page every 2 s
//! and swaps the live section in place (no flicker, scroll position kept);
//! without JavaScript a `<noscript>` meta refresh reloads it every 5 s.
//! Everything that comes from outside (domain names) is HTML-escaped, and a
//! strict Content-Security-Policy allows only this page's own inline script
//! and style (by hash) and fetches to this origin.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::admission::{Snapshot, Source};
use crate::state::Shared;
use crate::store::{now_ms, JobStatus};

/// How often the page refreshes itself (milliseconds).
const REFRESH_MS: u32 = 2000;

const STYLE: &str = r#"
:root { color-scheme: light dark; --muted: #6b7280; --line: #d1d5db; --warn: #b45309; --bad: #b91c1c; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; padding: 1.25rem 1.5rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .5rem 1.5rem; margin-bottom: 1rem; }
h1 { font-size: 1.35rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
.muted { color: var(--muted); }
.summary { display: flex; flex-wrap: wrap; gap: .75rem; margin: .5rem 0 0; padding: 0; list-style: none; }
.summary li { border: 1px solid var(--line); border-radius: 6px; padding: .35rem .75rem; }
.summary b { font-size: 1.1rem; }
table { border-collapse: collapse; min-width: 40rem; }
#jobs { min-width: 16rem; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .7rem; text-align: right; white-space: nowrap; }
th { font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
td.domain { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.src { display: inline-block; margin-left: .35rem; padding: 0 .4rem; border-radius: 9px; font-size: .75rem; border: 1px solid var(--line); color: var(--muted); }
.src.config { color: #1d4ed8; border-color: #1d4ed8; }
.src.learned { color: #047857; border-color: #047857; }
.src.dialect, .src.preset { color: #7c3aed; border-color: #7c3aed; }
.budget { font-size: .75rem; color: var(--muted); }
.pin { font-size: .75rem; color: var(--muted); margin-left: .35rem; }
tr.paused td { color: var(--warn); }
tr.busy td.waiting { color: var(--bad); font-weight: 600; }
.empty { color: var(--muted); font-style: italic; }
#state { font-size: .8rem; }
"#;

const SCRIPT: &str = r#"
(function () {
  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    var state = document.getElementById("state");
    fetch(window.location.href, { cache: "no-store", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) { current.replaceWith(document.importNode(fresh, true)); }
        if (state) { state.textContent = "live, refreshed every 2 s"; }
      })
      .catch(function (e) {
        if (state) { state.textContent = "refresh failed (" + e.message + "), retrying"; }
      })
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, REFRESH_MS);
})();
"#;

/// The script with the refresh period filled in.
fn script() -> &'static str {
    static SCRIPT_TEXT: OnceLock<String> = OnceLock::new();
    SCRIPT_TEXT.get_or_init(|| SCRIPT.replace("REFRESH_MS", &REFRESH_MS.to_string()))
}

/// `'sha256-…'` CSP source of an inline element's exact text.
fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Only this page's own inline style and script may run; it may fetch only
/// from its own origin, and may not be framed.
fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(STYLE),
            csp_hash(script())
        )
    })
}

pub async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let domains = shared.admission.snapshot();
    let jobs = match shared.store.job_counts().await {
        Ok(counts) => Some(counts),
        Err(e) => {
            tracing::warn!(error = %e, "status page: cannot count jobs");
            None
        }
    };
    let html = render(&domains, jobs.as_deref(), now_ms());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
        ],
        html,
    )
        .into_response()
}

/// HTML-escape text for element content and quoted attribute values.
fn esc(text: &str) -> String {
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

fn source_badge(source: Source) -> String {
    let name = source.name();
    let class = match source {
        Source::Dialect(_) => "dialect",
        _ => name,
    };
    format!(r#"<span class="src {class}" title="source: {name}">{name}</span>"#)
}

/// What the API's budget headers said, under the pace: `42 / 100 left,
/// resets in 12.0 s; 9000 tokens left`.
fn budget_note(d: &Snapshot, now_ms: u64) -> String {
    let Some(b) = &d.budget else {
        return String::new();
    };
    let mut parts = Vec::new();
    match (b.remaining, b.limit) {
        (Some(r), Some(l)) => parts.push(format!("{r} / {l} left")),
        (Some(r), None) => parts.push(format!("{r} left")),
        _ => {}
    }
    if let Some(at) = b.resets_at {
        let left = at.saturating_sub(now_ms) as f64 / 1000.0;
        parts.push(format!("resets in {left:.1} s"));
    }
    if let Some(t) = b.tokens_remaining {
        parts.push(format!("{t} tokens left"));
    }
    format!(
        r#"<div class="budget" title="{src}">{text}</div>"#,
        src = esc(b.source),
        text = esc(&parts.join("; "))
    )
}

/// A rate as a person reads it: `2`, `0.5`, `12.25`.
fn fmt_rps(rps: f64) -> String {
    let s = format!("{rps:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.into()
    }
}

/// `Sat, 28 Nov 2026 12:00:05 GMT (in 4.2 s)` for a Unix-ms instant.
fn fmt_paused_until(until_ms: u64, now_ms: u64) -> String {
    let at = UNIX_EPOCH
        .checked_add(Duration::from_millis(until_ms))
        .unwrap_or(UNIX_EPOCH);
    let left = until_ms.saturating_sub(now_ms) as f64 / 1000.0;
    let left = if left >= 120.0 {
        format!("{:.0} min", left / 60.0)
    } else {
        format!("{left:.1} s")
    };
    format!("{} (in {left})", httpdate::fmt_http_date(at))
}

fn domain_row(out: &mut String, d: &Snapshot, now_ms: u64) {
    let mut classes = Vec::new();
    if d.paused_until.is_some() {
        classes.push("paused");
    }
    if d.waiting > 0 {
        classes.push("busy");
    }
    let paused = match (d.paused_until, &d.pause_reason) {
        (Some(until), Some(why)) => format!(
            r#"{}<div class="budget pause-reason">{}</div>"#,
            esc(&fmt_paused_until(until, now_ms)),
            esc(why)
        ),
        (Some(until), None) => esc(&fmt_paused_until(until, now_ms)),
        (None, _) => "&mdash;".to_string(),
    };
    let pin = if d.pinned {
        r#"<span class="pin" title="pin = true: learned headers are ignored">pinned</span>"#
    } else {
        ""
    };
    let _ = writeln!(
        out,
        r#"<tr class="{classes}" data-domain="{domain}"><td class="domain">{domain}{pin}</td><td class="rps">{rps}{rps_src}{budget}</td><td class="concurrency">{conc}{conc_src}</td><td class="burst">{burst}</td><td class="in-flight">{in_flight}</td><td class="waiting">{waiting}</td><td class="capacity">{capacity}</td><td class="paused-until">{paused}</td></tr>"#,
        classes = classes.join(" "),
        domain = esc(&d.domain),
        rps = fmt_rps(d.rps),
        rps_src = source_badge(d.rps_source),
        budget = budget_note(d, now_ms),
        conc = d.max_concurrent,
        conc_src = source_badge(d.concurrency_source),
        burst = d.burst,
        in_flight = d.in_flight,
        waiting = d.waiting,
        capacity = d.queue_capacity,
    );
}

/// The whole page for these domains and job counts (`None`: the store could
/// not be read) at `now_ms`.
pub fn render(domains: &[Snapshot], jobs: Option<&[(JobStatus, u64)]>, now_ms: u64) -> String {
    let in_flight: u64 = domains.iter().map(|d| u64::from(d.in_flight)).sum();
    let waiting: usize = domains.iter().map(|d| d.waiting).sum();
    let paused = domains.iter().filter(|d| d.paused_until.is_some()).count();
    let generated = httpdate::fmt_http_date(
        UNIX_EPOCH
            .checked_add(Duration::from_millis(now_ms))
            .unwrap_or(UNIX_EPOCH),
    );

    let mut out = String::with_capacity(4096 + domains.len() * 512);
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ezthrottle status</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>{style}</style>
</head>
<body>
<header><h1>ezthrottle</h1><span class="muted">version {version}</span><span id="state" class="muted">refreshes every 2 s</span></header>
<div id="live">
<ul class="summary">
<li><b id="count-domains">{n}</b> domains</li>
<li><b id="count-in-flight">{in_flight}</b> in flight</li>
<li><b id="count-waiting">{waiting}</b> waiting</li>
<li><b id="count-paused">{paused}</b> paused</li>
</ul>
<h2>Domains</h2>
"#,
        style = STYLE,
        version = esc(env!("CARGO_PKG_VERSION")),
        n = domains.len(),
    );

    if domains.is_empty() {
        out.push_str(
            r#"<p class="empty" id="no-domains">No domains yet: a domain appears here with its first request through the proxy.</p>
"#,
        );
    } else {
        out.push_str(
            r#"<table id="domains">
<thead><tr><th>Domain</th><th title="requests per second, and where the value came from">RPS</th><th title="requests in flight at once, and where the value came from">Max concurrent</th><th>Burst</th><th>In flight</th><th>Waiting</th><th title="waiting requests before 429 throttle_queue_full">Queue capacity</th><th>Paused until</th></tr></thead>
<tbody>
"#,
        );
        for d in domains {
            domain_row(&mut out, d, now_ms);
        }
        out.push_str("</tbody>\n</table>\n");
    }

    out.push_str("<h2>Jobs</h2>\n");
    match jobs {
        None => out.push_str(
            r#"<p class="empty" id="jobs-unavailable">Job counts are unavailable: the store could not be read.</p>
"#,
        ),
        Some(counts) => {
            out.push_str(
                "<table id=\"jobs\">\n<thead><tr><th>Status</th><th>Jobs</th></tr></thead>\n<tbody>\n",
            );
            let mut total = 0u64;
            for status in JobStatus::ALL {
                let n = counts
                    .iter()
                    .filter(|(s, _)| *s == status)
                    .map(|(_, n)| *n)
                    .sum::<u64>();
                total += n;
                let name = status.as_str();
                let _ = writeln!(
                    out,
                    r#"<tr data-status="{name}"><td>{name}</td><td>{n}</td></tr>"#
                );
            }
            let _ = write!(
                out,
                "</tbody>\n<tfoot><tr><th>total</th><th>{total}</th></tr></tfoot>\n</table>\n"
            );
        }
    }

    let _ = write!(
        out,
        r#"<p class="muted">Generated {generated}. JSON: <a href="api/v1/domains">/api/v1/domains</a> &middot; metrics: <a href="metrics">/metrics</a></p>
</div>
<script>{script}</script>
</body>
</html>
"#,
        script = script(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(domain: &str) -> Snapshot {
        Snapshot {
            domain: domain.to_string(),
            rps: 2.0,
            rps_source: Source::Default,
            max_concurrent: 2,
            concurrency_source: Source::Default,
            burst: 1,
            pinned: false,
            in_flight: 0,
            waiting: 0,
            queue_capacity: 10000,
            paused_until: None,
            pause_reason: None,
            in_flight_all_replicas: None,
            budget: None,
        }
    }

    #[test]
    fn domain_names_are_escaped() {
        let evil = snap("<script>alert('x')</script>&\"");
        let html = render(&[evil], Some(&[]), 0);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
        // The only <script> element is the page's own.
        assert_eq!(html.matches("<script>").count(), 1);
    }

    #[test]
    fn shows_limits_sources_and_state() {
        let mut a = snap("api.a.test");
        a.rps = 0.5;
        a.rps_source = Source::Learned;
        a.max_concurrent = 10;
        a.concurrency_source = Source::Config;
        a.in_flight = 3;
        a.waiting = 7;
        a.pinned = true;
        let mut b = snap("api.b.test");
        b.paused_until = Some(1_800_000_030_000);
        b.pause_reason = Some("HTTP 429: Retry-After".into());
        let html = render(
            &[a, b],
            Some(&[(JobStatus::Queued, 4), (JobStatus::Failed, 1)]),
            1_800_000_000_000,
        );
        assert!(html.contains(r#"<td class="rps">0.5<span class="src learned""#));
        assert!(html.contains(r#"<td class="concurrency">10<span class="src config""#));
        assert!(html.contains(r#"<td class="in-flight">3</td><td class="waiting">7</td>"#));
        assert!(html.contains("pinned"));
        assert!(html.contains("(in 30.0 s)"), "{html}");
        assert!(html.contains(r#"<div class="budget pause-reason">HTTP 429: Retry-After</div>"#));
        assert!(html.contains(r#"<tr data-status="queued"><td>queued</td><td>4</td></tr>"#));
        assert!(html.contains(r#"<tr data-status="in_flight"><td>in_flight</td><td>0</td></tr>"#));
        assert!(html.contains("<th>total</th><th>5</th>"));
        assert!(html.contains(r#"<b id="count-waiting">7</b>"#));
        assert!(html.contains(r#"<b id="count-paused">1</b>"#));
    }

    #[test]
    fn empty_and_store_error() {
        let html = render(&[], None, 0);
        assert!(html.contains("id=\"no-domains\""));
        assert!(html.contains("id=\"jobs-unavailable\""));
    }

    #[test]
    fn csp_hashes_match_the_inline_elements() {
        let html = render(&[], Some(&[]), 0);
        let csp = content_security_policy();
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert!(html.contains(&format!("<script>{}</script>", script())));
        assert!(csp.contains(&csp_hash(STYLE)) && csp.contains(&csp_hash(script())));
        assert!(!script().contains("REFRESH_MS"));
    }

    #[test]
    fn rps_formatting() {
        assert_eq!(fmt_rps(2.0), "2");
        assert_eq!(fmt_rps(0.5), "0.5");
        assert_eq!(fmt_rps(12.25), "12.25");
        assert_eq!(fmt_rps(0.01), "0.01");
        assert_eq!(fmt_rps(10000.0), "10000");
    }
}
