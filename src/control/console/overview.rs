//! `GET /console/api/overview?since=&q=&domains=&limit=`: the overview's
//! data, polled by the page once a second.
//!
//! Why polling and not Server-Sent Events: a poll is one small request a
//! second per open page, stateless on the server (no task or channel per
//! watcher, nothing to clean up when a laptop sleeps), passes every proxy
//! unchanged, and carries only the seconds the page has not seen yet
//! (`since`), so it costs no more than a stream would.
//!
//! `since` (Unix seconds): points from there to now — the page asks again
//! from the last `now` it got, whose second may have filled up since.
//! Without it: the whole 15-minute window. Domains are chosen by `domains`
//! (comma-separated labels), else every domain matching `q` (substring),
//! paused ones first, then by traffic in the window; at most `limit`
//! (default 12, at most 100).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::series::{self, now_second, WINDOW};
use super::ConsoleWorkspace;
use crate::admission::Snapshot;
use crate::control::error_response;
use crate::state::Shared;

/// Throttles listed per domain label (`other` may hold thousands).
const MAX_THROTTLES: usize = 10;

#[derive(Debug, Deserialize)]
pub struct OverviewQuery {
    since: Option<String>,
    q: Option<String>,
    domains: Option<String>,
    limit: Option<String>,
}

fn bad(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid_request", &message)
}

/// One throttle's limits and state, as the page shows them.
fn throttle_view(s: &Snapshot) -> Value {
    json!({
        "name": s.domain,
        "rps": s.rps,
        "rps_source": s.rps_source,
        "max_concurrent": s.max_concurrent,
        "concurrency_source": s.concurrency_source,
        "burst": s.burst,
        "pinned": s.pinned,
        "in_flight": s.in_flight,
        "waiting": s.waiting,
        "queue_capacity": s.queue_capacity,
        "paused_until": s.paused_until,
        "pause_reason": s.pause_reason,
        "budget": s.budget,
    })
}

pub async fn get(
    State(shared): State<Arc<Shared>>,
    _ws: ConsoleWorkspace,
    Query(q): Query<OverviewQuery>,
) -> Response {
    let now = now_second();
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse::<u32>() {
            Ok(v) => v,
            Err(_) => return bad(format!("since: must be Unix seconds, got {s:?}")),
        },
    };
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => 12,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return bad(format!("limit: must be 1-100, got {l:?}")),
        },
    };
    let metrics = &shared.metrics;
    let mut throttles: HashMap<String, Vec<Snapshot>> = HashMap::new();
    for snap in shared.admission.snapshot() {
        let label = metrics.domain_label(&snap.domain);
        throttles.entry(label).or_default().push(snap);
    }
    let mut labels: Vec<String> = metrics.console.labels();
    let known: std::collections::HashSet<String> = labels.iter().cloned().collect();
    labels.extend(throttles.keys().filter(|l| !known.contains(*l)).cloned());
    let total = labels.len();
    if let Some(list) = q.domains.as_deref().filter(|s| !s.is_empty()) {
        let wanted: Vec<&str> = list.split(',').map(str::trim).take(100).collect();
        labels.retain(|l| wanted.contains(&l.as_str()));
    } else if let Some(needle) = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let needle = needle.to_ascii_lowercase();
        labels.retain(|l| l.contains(&needle));
    }
    let matching = labels.len();
    let paused = |l: &String| {
        throttles
            .get(l)
            .is_some_and(|t| t.iter().any(|s| s.paused_until.is_some()))
    };
    let mut ranked: Vec<(bool, u64, String)> = labels
        .into_iter()
        .map(|l| (paused(&l), metrics.console.activity(&l, now), l))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    ranked.truncate(limit);
    let domains: Vec<Value> = ranked
        .into_iter()
        .map(|(_, activity, label)| {
            let own = throttles.remove(&label).unwrap_or_default();
            json!({
                "domain": label,
                "activity": activity,
                "throttle_count": own.len(),
                "throttles": own.iter().take(MAX_THROTTLES).map(throttle_view).collect::<Vec<_>>(),
                "points": metrics.console.points(&label, since, now),
            })
        })
        .collect();
    Json(json!({
        "now": now,
        "window_s": WINDOW,
        "resolution_s": 1,
        "domains_total": total,
        "domains_matching": matching,
        "domains": domains,
        "rings": {
            "tracked": metrics.console.len(),
            "cap": metrics.console.cap(),
            "dropped_events": metrics.console.dropped(),
            "bytes": metrics.console.bytes(),
            "bytes_per_domain": series::RING_BYTES,
        },
    }))
    .into_response()
}
