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
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.proxy_ready.load(Ordering::SeqCst) {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the proxy listener is not accepting connections yet",
        );
    }
    if let Err(e) = shared.store.ping().await {
        tracing::warn!(error = %e, "readiness: store unreachable");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store is not reachable",
        );
    }
    Json(serde_json::json!({ "status": "ready" })).into_response()
}

pub async fn ca_pem(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        shared.ca.cert_pem().to_string(),
    )
        .into_response()
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}
