//! The job API (SPEC §8) on the engine of `crate::jobs`: submit, look up,
//! list, cancel, retry — plus `POST /api/v1/proxy`, the envelope the PyPI
//! SDK wraps every call in.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Workspace;
use super::error_response;
use crate::egress::Purpose;
use crate::jobs::request::{self, derived_key};
use crate::jobs::spec::{ExecutionMode, JobSpec};
use crate::state::Shared;
use crate::store::{Delivery, DeliveryState, JobRecord, JobStatus};
use crate::webhooks::quorum::QuorumState;

pub(crate) fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "job API: storage failed");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the proxy's storage is unavailable",
    )
}

fn not_found(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "job_not_found",
        &format!("no job {id:?} in this workspace"),
    )
}

/// `POST /api/v1/jobs`
pub async fn submit(
    State(shared): State<Arc<Shared>>,
    Workspace(ws): Workspace,
    body: Bytes,
) -> Response {
    let sub = match request::parse(&body, &shared.config.load()) {
        Ok(s) => s,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "invalid_request", &e.0),
    };
    // SPEC §13: refused at submission, naming the field; the resolved
    // address is checked again when each attempt connects.
    for named in sub.spec.urls() {
        let purpose = if named.webhook {
            Purpose::Webhook
        } else {
            Purpose::Job
        };
        if let Err(refusal) = shared.egress.load().check_url(purpose, named.url) {
            return error_response(
                StatusCode::BAD_REQUEST,
                "egress_denied",
                &format!("{}: {refusal}", named.field),
            );
        }
    }
    let key = sub
        .idempotent_key
        .clone()
        .unwrap_or_else(|| derived_key(&ws, &sub.spec));
    let accepted = match shared
        .jobs
        .submit(&ws, &key, &sub.spec, sub.retry_at, 0)
        .await
    {
        Ok(a) => a,
        Err(e) => return store_error(e),
    };
    let racing = sub.spec.regions.len() > 1 && sub.spec.execution_mode == ExecutionMode::Race;
    let status = match accepted.status {
        JobStatus::Queued if racing => "racing",
        s => s.as_str(),
    };
    let mut out = json!({
        "job_id": accepted.job_id,
        "status": status,
        "idempotent_key": accepted.idempotent_key,
        "queued_at": accepted.queued_at,
    });
    if accepted.duplicate {
        out["duplicate"] = Value::Bool(true);
        (StatusCode::OK, Json(out)).into_response()
    } else {
        (StatusCode::CREATED, Json(out)).into_response()
    }
}

/// The job, if it exists in `ws`.
pub(crate) async fn find(shared: &Shared, ws: &str, id: &str) -> Result<JobRecord, Response> {
    match shared.store.job_get(id).await {
        Ok(Some(job)) if job.workspace == ws => Ok(job),
        Ok(_) => Err(not_found(id)),
        Err(e) => Err(store_error(e)),
    }
}

/// The SPEC §8 view of a job.
async fn view(shared: &Shared, job: &JobRecord) -> Result<Value, Response> {
    let deliveries = shared
        .store
        .deliveries_for_job(&job.id)
        .await
        .map_err(store_error)?;
    Ok(view_with(job, &deliveries))
}

/// The view of a job with its webhook deliveries.
fn view_with(job: &JobRecord, deliveries: &[Delivery]) -> Value {
    let spec: Option<JobSpec> = serde_json::from_str(&job.spec).ok();
    let required = spec.as_ref().map(|s| s.webhook_quorum).unwrap_or(1);
    let mut out = json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "idempotent_key": job.idempotent_key,
        "attempts": job.attempts,
        "claims": job.claims,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "next_attempt_at": job.next_attempt_at,
        "webhooks": deliveries.iter().map(|d| json!({
            "delivery_id": d.id,
            "url": d.url,
            "state": d.state.as_str(),
            "attempts": d.attempts,
            "has_quorum_vote": d.has_quorum_vote,
            "last_status": d.last_status,
        })).collect::<Vec<_>>(),
    });
    if let Some(spec) = &spec {
        out["url"] = json!(spec.url);
        out["method"] = json!(spec.method);
        out["metadata"] = spec.metadata.clone();
    }
    if let Some(result) = job
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
    {
        // Headers as an object, like the webhook payload.
        let mut headers = Map::new();
        for pair in result["headers"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) {
                headers.entry(k.to_string()).or_insert_with(|| json!(v));
            }
        }
        out["response"] = json!({
            "status_code": result["status_code"],
            "headers": headers,
            "body": result["body"],
        });
        if !result["region_results"].is_null() {
            out["region_results"] = result["region_results"].clone();
        }
    }
    if !deliveries.is_empty() {
        let q = QuorumState::of(deliveries, required);
        out["webhook_quorum"] = serde_json::to_value(q).unwrap_or(Value::Null);
    }
    out
}

/// `GET /api/v1/jobs/{id}`
pub async fn get(
    State(shared): State<Arc<Shared>>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let job = find(&shared, &ws, &id).await?;
    Ok(Json(view(&shared, &job).await?).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/v1/jobs?status=&limit=&cursor=`: newest first; `next_cursor`
/// is opaque (`<created_at>.<job_id>`).
pub async fn list(
    State(shared): State<Arc<Shared>>,
    Workspace(ws): Workspace,
    Query(q): Query<ListQuery>,
) -> Result<Response, Response> {
    let bad = |m: String| error_response(StatusCode::BAD_REQUEST, "invalid_request", &m);
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match JobStatus::parse(s) {
            Some(st) => Some(st),
            None => {
                return Err(bad(format!(
                    "status: must be one of {}, got {s:?}",
                    JobStatus::ALL.map(|s| s.as_str()).join(", ")
                )))
            }
        },
    };
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => return Err(bad(format!("limit: must be 1-500, got {l:?}"))),
        },
    };
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match c
            .split_once('.')
            .and_then(|(t, id)| Some((t.parse::<u64>().ok()?, id.to_string())))
        {
            Some(pair) => Some(pair),
            None => return Err(bad(format!("cursor: not a cursor from this API: {c:?}"))),
        },
    };
    let jobs = shared
        .store
        .jobs_list(&ws, status, limit, after)
        .await
        .map_err(store_error)?;
    let next_cursor = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| format!("{}.{}", j.created_at, j.id)))
        .flatten();
    // One store call for the page's deliveries, not one per job.
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let deliveries = shared
        .store
        .deliveries_for_jobs(&ids)
        .await
        .map_err(store_error)?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let mine: Vec<Delivery> = deliveries
            .iter()
            .filter(|d| d.job_id == job.id)
            .cloned()
            .collect();
        out.push(view_with(job, &mine));
    }
    Ok(Json(json!({ "jobs": out, "next_cursor": next_cursor })).into_response())
}

/// `DELETE /api/v1/jobs/{id}`: cancel a job that has not ended.
pub async fn cancel(
    State(shared): State<Arc<Shared>>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    cancel_in(&shared, &ws, &id).await
}

/// Cancel job `id` of workspace `ws` (the job API and the console).
pub async fn cancel_in(shared: &Shared, ws: &str, id: &str) -> Result<Response, Response> {
    let job = find(shared, ws, id).await?;
    Ok(match shared.store.job_cancel(&job.id).await {
        Ok(true) => {
            shared.jobs.refresh_gauge().await;
            Json(json!({"job_id": job.id, "status": "cancelled"})).into_response()
        }
        Ok(false) => error_response(
            StatusCode::CONFLICT,
            "job_finished",
            &format!("job {id:?} has already ended ({})", job.status.as_str()),
        ),
        Err(e) => store_error(e),
    })
}

/// `POST /api/v1/jobs/{id}/retry`: run a failed (or cancelled) job again.
pub async fn retry(
    State(shared): State<Arc<Shared>>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    retry_in(&shared, &ws, &id).await
}

/// Re-queue job `id` of workspace `ws` (the job API and the console).
pub async fn retry_in(shared: &Shared, ws: &str, id: &str) -> Result<Response, Response> {
    let job = find(shared, ws, id).await?;
    Ok(
        match shared
            .store
            .job_requeue(&job.id, crate::store::now_ms())
            .await
        {
            Ok(true) => {
                shared.jobs.wake();
                shared.jobs.refresh_gauge().await;
                Json(
                json!({"job_id": job.id, "status": "queued", "idempotent_key": job.idempotent_key}),
            )
            .into_response()
            }
            Ok(false) => error_response(
                StatusCode::CONFLICT,
                "job_not_retryable",
                &format!(
                    "only failed or cancelled jobs can be retried; job {id:?} is {}",
                    job.status.as_str()
                ),
            ),
            Err(e) => store_error(e),
        },
    )
}

/// `POST /api/v1/jobs/{id}/webhooks/{delivery_id}/redeliver`: send a
/// webhook delivery that has ended (delivered, or failed for good) again,
/// with a fresh budget of attempts (docs/webhooks.md).
pub async fn redeliver(
    State(shared): State<Arc<Shared>>,
    Workspace(ws): Workspace,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, Response> {
    redeliver_in(&shared, &ws, &id, &delivery).await
}

/// Redeliver webhook delivery `delivery` of job `id` in workspace `ws`.
/// A pending delivery is refused (`409 delivery_pending`): the worker owns
/// it, and a second writer could send it twice at once.
pub async fn redeliver_in(
    shared: &Shared,
    ws: &str,
    id: &str,
    delivery: &str,
) -> Result<Response, Response> {
    let job = find(shared, ws, id).await?;
    let unknown = || {
        error_response(
            StatusCode::NOT_FOUND,
            "delivery_not_found",
            &format!("job {id:?} has no webhook delivery {delivery:?}"),
        )
    };
    let Ok(delivery_id) = delivery.parse::<i64>() else {
        return Err(unknown());
    };
    let deliveries = shared
        .store
        .deliveries_for_job(&job.id)
        .await
        .map_err(store_error)?;
    let Some(mut d) = deliveries.into_iter().find(|d| d.id == delivery_id) else {
        return Err(unknown());
    };
    if d.state == DeliveryState::Pending {
        return Err(error_response(
            StatusCode::CONFLICT,
            "delivery_pending",
            &format!(
                "delivery {delivery_id} of job {id:?} is still being delivered (attempt {}); redeliver it once it has ended",
                d.attempts
            ),
        ));
    }
    let now = crate::store::now_ms();
    d.state = DeliveryState::Pending;
    d.attempts = 0;
    d.next_attempt_at = now;
    d.updated_at = now;
    shared
        .store
        .delivery_update(&d)
        .await
        .map_err(store_error)?;
    shared.webhooks.notify();
    tracing::info!(job_id = %job.id, delivery_id, "webhook redelivery requested");
    Ok(Json(json!({
        "job_id": job.id,
        "delivery_id": delivery_id,
        "state": "pending",
    }))
    .into_response())
}

/// The envelope of `POST /api/v1/proxy` (the SDK's TracktTags hop).
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    #[allow(dead_code)]
    scope: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    metric_name: Option<String>,
    target_url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    body: Option<String>,
}

/// `POST /api/v1/proxy`: route on the *path* of `target_url` (its host is
/// ignored) through this same router, with the caller's credentials, and
/// wrap the answer: `{"status":"allowed","forwarded_response":{..}}`.
/// There are no plan limits here, so every call is "allowed".
pub async fn envelope(
    State(shared): State<Arc<Shared>>,
    _auth: Workspace,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |m: String| error_response(StatusCode::BAD_REQUEST, "invalid_request", &m);
    let env: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return bad(format!("body: not a proxy envelope: {e}")),
    };
    let Ok(target) = url::Url::parse(&env.target_url) else {
        return bad(format!(
            "target_url: not an absolute URL: {:?}",
            env.target_url
        ));
    };
    let mut path = target.path().to_string();
    if let Some(q) = target.query() {
        path = format!("{path}?{q}");
    }
    if path.starts_with("/api/v1/proxy") {
        return bad("target_url: an envelope cannot target /api/v1/proxy".into());
    }
    let method = match env
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase()
        .parse::<Method>()
    {
        Ok(m) => m,
        Err(_) => return bad(format!("method: invalid {:?}", env.method)),
    };
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in env.headers.iter().flatten() {
        if let (Some(v), false) = (v.as_str(), k.eq_ignore_ascii_case("authorization")) {
            req = req.header(k.as_str(), v);
        }
    }
    // The envelope's own credentials authorise the inner call.
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let req = match req.body(Body::from(env.body.unwrap_or_default())) {
        Ok(r) => r,
        Err(e) => return bad(format!("headers: {e}")),
    };
    let resp = match tower::ServiceExt::oneshot(super::router(shared), req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "envelope: reading the inner response failed");
            Bytes::new()
        }
    };
    let mut out_headers = Map::new();
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            out_headers.insert(k.as_str().to_string(), json!(v));
        }
    }
    Json(json!({
        "status": "allowed",
        "forwarded_response": {
            "status_code": parts.status.as_u16(),
            "headers": out_headers,
            "body": String::from_utf8_lossy(&bytes),
        }
    }))
    .into_response()
}
