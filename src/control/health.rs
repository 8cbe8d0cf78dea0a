//! Liveness, readiness, the CA certificate and the metrics page.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error_response;
use crate::state::Shared;

/// The process is up and serving this listener.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the proxy listener accepts connections and the store answers.
///
/// With Redis, a Redis that does not answer is *degraded*, not unready:
/// requests keep flowing at this replica's share (docs/distributed.md), and
/// taking every replica out of service because their shared Redis blinked
/// would turn a degradation into an outage. The body says what is degraded.
/// A CA that differs from the peers' is unready: clients would reject it.
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.proxy_ready.load(Ordering::SeqCst) {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the proxy listener is not accepting connections yet",
        );
    }
    if let Some(redis) = &shared.redis {
        if let Some(theirs) = redis.ca_mismatch() {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                &format!("this replica's CA differs from the one its peers mint from (sha256 {theirs}); give every replica the same [tls] ca_cert and ca_key"),
            );
        }
        let mut degraded = Vec::new();
        if shared.store.ping().await.is_err() {
            degraded.push(serde_json::json!({
                "component": "store",
                "reason": "redis does not answer",
                "effect": "each replica paces at its share of every limit; Idempotency-Key requests and job submissions answer 503 store_unavailable",
            }));
        }
        let mut body = serde_json::json!({
            "status": "ready",
            "config": **shared.config_hash.load(),
            "backend": "redis",
            "replicas": redis.live_replicas(),
        });
        if !degraded.is_empty() {
            body["degraded"] = serde_json::Value::Array(degraded);
        }
        return Json(body).into_response();
    }
    if let Err(e) = shared.store.ping().await {
        tracing::warn!(error = %e, "readiness: store unreachable");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store is not reachable",
        );
    }
    Json(serde_json::json!({ "status": "ready", "config": **shared.config_hash.load() }))
        .into_response()
}

pub async fn ca_pem(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        shared.ca.cert_pem().to_string(),
    )
        .into_response()
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    if let Some(redis) = &shared.redis {
        shared.metrics.store_up.set(i64::from(redis.is_up()));
        shared
            .metrics
            .replicas
            .set(i64::from(redis.live_replicas()));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}
