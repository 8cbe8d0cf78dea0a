//! `GET /api/v1/domains`: every known domain's effective limits, where they
//! came from, and what is happening on it now (SPEC §8).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::state::Shared;

pub async fn list(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "domains": shared.admission.snapshot() }))
}
