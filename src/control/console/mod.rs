//! The operator console on the control listener (issue 16, docs/console.md):
//! `GET /console`, a single page that draws per-domain live charts from
//! [`series`] and browses the job queue with drill-down and actions.
//!
//! | module | what |
//! |---|---|
//! | [`series`] | the 15-minute, 1-second ring buffers per domain |
//! | [`overview`] | `GET /console/api/overview`: the charts' data, polled every second |
//! | [`jobs`] | `GET /console/api/jobs[/{id}]` and the cancel / retry / redeliver actions |
//! | [`redact`] | what of a job's request may be shown (no credentials) |
//! | [`page`] | the page, its script and style, embedded with `include_str!` |
//!
//! Auth is the job API's: with `[control] api_keys` every `/console/api/*`
//! call needs `Authorization: Bearer <token>` and sees only the token's
//! workspace ([`ConsoleWorkspace`]). The page itself holds no data.

pub mod jobs;
pub mod overview;
mod page;
pub mod redact;
/// The ring buffers live beside the Prometheus families they mirror
/// (`metrics/console.rs`), which feed them; the console only reads them.
pub use crate::metrics::console as series;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::auth::{authenticate, DEFAULT_WORKSPACE};
use super::error_response;
use crate::state::Shared;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/console", get(page::html))
        .route("/console/console.js", get(page::script))
        .route("/console/console.css", get(page::style))
        .route("/console/api/overview", get(overview::get))
        .route("/console/api/jobs", get(jobs::list))
        .route("/console/api/jobs/{id}", get(jobs::detail))
        .route("/console/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/console/api/jobs/{id}/retry", post(jobs::retry))
        .route(
            "/console/api/jobs/{id}/deliveries/{delivery_id}/redeliver",
            post(jobs::redeliver),
        )
}

/// The workspace a console call acts in. With API keys: the token's, and a
/// `workspace=` query naming another is refused (`403`), never silently
/// replaced. Without keys (the control listener is then loopback-only,
/// SPEC §8): `workspace=` picks any workspace, default `default` — parked
/// proxy requests carry the workspace of their `X-EZThrottle-Workspace`.
#[derive(Debug, Clone)]
pub struct ConsoleWorkspace {
    pub workspace: String,
    /// API keys are configured: the workspace is fixed by the token.
    pub fixed: bool,
}

impl<S> FromRequestParts<S> for ConsoleWorkspace
where
    Arc<Shared>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let shared = Arc::<Shared>::from_ref(state);
        let config = shared.config.load();
        let keys = &config.control.api_keys;
        let token_ws = authenticate(keys, &parts.headers).map_err(IntoResponse::into_response)?;
        let asked = parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "workspace")
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty())
        });
        if keys.is_empty() {
            return Ok(ConsoleWorkspace {
                workspace: asked.unwrap_or_else(|| DEFAULT_WORKSPACE.to_string()),
                fixed: false,
            });
        }
        match asked {
            Some(other) if other != token_ws.0 => Err(error_response(
                StatusCode::FORBIDDEN,
                "workspace_forbidden",
                "this token may only see its own workspace",
            )),
            _ => Ok(ConsoleWorkspace {
                workspace: token_ws.0,
                fixed: true,
            }),
        }
    }
}

/// Once a second, sample every domain's limits, in-flight and waiting
/// counts into [`series`] (the gauges' history), and free rings idle for
/// the whole window. Runs for the life of the process.
pub async fn sample_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_prune = 0u32;
    loop {
        tick.tick().await;
        let now = series::now_second();
        sample(&shared, now);
        if now.saturating_sub(last_prune) >= 60 {
            shared.metrics.console.prune(now);
            last_prune = now;
        }
    }
}

/// One sample of every throttle, summed per `domain` label (several
/// throttles share `other`, and a split budget's keys share nothing but
/// their host's config).
pub fn sample(shared: &Shared, now: u32) {
    let metrics = &shared.metrics;
    let mut by_label: std::collections::HashMap<String, series::Gauges> =
        std::collections::HashMap::new();
    for snap in shared.admission.snapshot() {
        let label = metrics.domain_label(&snap.domain);
        let g = by_label.entry(label).or_default();
        g.rps_limit += snap.rps;
        g.max_concurrent = g.max_concurrent.saturating_add(snap.max_concurrent);
        g.in_flight = g.in_flight.saturating_add(snap.in_flight);
        g.waiting = g
            .waiting
            .saturating_add(u32::try_from(snap.waiting).unwrap_or(u32::MAX));
    }
    for (label, g) in by_label {
        metrics.console.sample_at(&label, now, g);
    }
}
