//! The control listener (axum): health, readiness, the CA, metrics and the
//! JSON APIs. Every error body has the one shape of SPEC §8, built by
//! [`error_response`].

pub mod auth;
pub mod console;
mod cross_site;
mod domains;
mod health;
pub mod jobs;
pub mod secrets;
mod status;

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::error_body;
use crate::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/ca.pem", get(health::ca_pem))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/domains", get(domains::list))
        .route(
            "/api/v1/webhook-secrets",
            get(secrets::get)
                .post(secrets::post)
                .delete(secrets::delete),
        )
        .route("/api/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/api/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/api/v1/jobs/{id}/retry", post(jobs::retry))
        .route(
            "/api/v1/jobs/{id}/webhooks/{delivery_id}/redeliver",
            post(jobs::redeliver),
        )
        .route("/api/v1/proxy", post(jobs::envelope))
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(cross_site::refuse))
        .with_state(shared)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The JSON error response used by every control route.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error_body(code, message),
    )
        .into_response()
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not allowed on {}", uri.path()),
    )
}
