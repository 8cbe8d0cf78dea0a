//! The console's job queue: `GET /console/api/jobs` (filters, keyset
//! paging), `GET /console/api/jobs/{id}` (request, attempts, follow-up
//! chain, webhook deliveries) and the actions, which run the job API's own
//! code (`control::jobs::{cancel_in, retry_in, redeliver_in}`) in the
//! caller's workspace ([`ConsoleWorkspace`]).
//!
//! Why the list stays fast with 100,000 jobs: every page is one indexed
//! range read of the store's `jobs_list` (embedded: the `jobs_list` /
//! `jobs_list_status` indexes on `(workspace, [status,] created_at, id)`;
//! Redis: the per-workspace sorted sets), continued from a
//! `<created_at>.<id>` cursor — never an OFFSET. `until` is the first
//! cursor, `since` ends the walk. The domain filter is indexed too
//! (`Store::jobs_list_by_domain`: the store keeps each job's lower-cased
//! host next to it), so a filtered page costs what an unfiltered one does.
//! A job's page lists the jobs it spawned (`Store::job_children`), the
//! other direction of its `parent_job_id`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::redact;
use super::ConsoleWorkspace;
use crate::control::error_response;
use crate::control::jobs::{cancel_in, find, redeliver_in, retry_in, store_error};
use crate::jobs::history::Attempt;
use crate::jobs::spec::{JobSpec, Trigger};
use crate::state::Shared;
use crate::store::{Delivery, DeliveryState, JobRecord, JobStatus};
use crate::webhooks::quorum::QuorumState;

/// Body bytes shown of a request or response.
const MAX_BODY: usize = 4096;
/// Fallback levels shown.
const MAX_CHAIN: usize = 8;
/// Spawned jobs shown on a parent's page (a job spawns at most its
/// `on_success` and `on_failure` job; more only from hand-written metadata).
const MAX_CHILDREN: usize = 20;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    domain: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// A query parameter that does not parse: `400 invalid_request` naming it.
#[derive(Debug)]
struct Invalid(String);

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        error_response(StatusCode::BAD_REQUEST, "invalid_request", &self.0)
    }
}

fn bad(message: String) -> Invalid {
    Invalid(message)
}

fn ms_param(name: &str, v: Option<&str>) -> Result<Option<u64>, Invalid> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad(format!("{name}: must be Unix milliseconds, got {s:?}"))),
    }
}

/// The parts of a list query, checked.
struct Filter {
    status: Option<JobStatus>,
    domain: Option<String>,
    since: Option<u64>,
    after: Option<(u64, String)>,
    limit: usize,
}

fn filter(q: &ListQuery) -> Result<Filter, Invalid> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            bad(format!(
                "status: must be one of {}, got {s:?}",
                JobStatus::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?),
    };
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => return Err(bad(format!("limit: must be 1-200, got {l:?}"))),
        },
    };
    let since = ms_param("since", q.since.as_deref())?;
    let until = ms_param("until", q.until.as_deref())?;
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(t, id)| Some((t.parse::<u64>().ok()?, id.to_string())))
                .ok_or_else(|| bad(format!("cursor: not a cursor from this API: {c:?}")))?,
        ),
        // The store reads `created_at <= t` for a cursor with no id.
        None => until.map(|t| (t, String::new())),
    };
    // Normalised as the store derives a job's domain from its URL
    // (`store::url_domain`: lower case, IDNA to punycode), so `API.Test` or
    // `bücher.test` find the jobs sent there; what is no host at all is
    // compared as typed (lower-cased) and simply finds nothing.
    let domain = q
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            crate::store::url_domain(&format!("http://{d}/"))
                .unwrap_or_else(|| d.to_ascii_lowercase())
        });
    Ok(Filter {
        status,
        domain,
        since,
        after,
        limit,
    })
}

fn spec_of(job: &JobRecord) -> Option<JobSpec> {
    serde_json::from_str(&job.spec).ok()
}

fn cursor_of(job: &JobRecord) -> String {
    format!("{}.{}", job.created_at, job.id)
}

fn result_of(job: &JobRecord) -> Option<Value> {
    job.result
        .as_deref()
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
}

/// One row of the list.
fn row(job: &JobRecord, spec: Option<&JobSpec>, deliveries: &[&Delivery]) -> Value {
    let count = |s: DeliveryState| deliveries.iter().filter(|d| d.state == s).count();
    let result = result_of(job);
    json!({
        "job_id": job.id,
        "workspace": job.workspace,
        "status": job.status.as_str(),
        "method": spec.map(|s| s.method.as_str()),
        "url": spec.map(|s| redact::url(&s.url)),
        "domain": spec.and_then(|s| redact::host(&s.url)),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "next_attempt_at": job.next_attempt_at,
        "attempts": job.attempts,
        "status_code": result.as_ref().and_then(|r| r["status_code"].as_u64()),
        "webhooks": {
            "total": deliveries.len(),
            "delivered": count(DeliveryState::Delivered),
            "pending": count(DeliveryState::Pending),
            "failed": count(DeliveryState::Failed),
        },
        "parent_job_id": spec.and_then(|s| s.metadata.get("parent_job_id").cloned()),
    })
}

/// `GET /console/api/jobs?status=&domain=&since=&until=&cursor=&limit=&workspace=`
pub async fn list(
    State(shared): State<Arc<Shared>>,
    ws: ConsoleWorkspace,
    Query(q): Query<ListQuery>,
) -> Result<Response, Response> {
    let f = filter(&q).map_err(IntoResponse::into_response)?;
    let page = match &f.domain {
        None => {
            shared
                .store
                .jobs_list(&ws.workspace, f.status, f.limit, f.after.clone())
                .await
        }
        Some(d) => {
            shared
                .store
                .jobs_list_by_domain(&ws.workspace, d, f.status, f.limit, f.after.clone())
                .await
        }
    }
    .map_err(store_error)?;
    let full = page.len() == f.limit;
    let mut found: Vec<(JobRecord, Option<JobSpec>)> = Vec::with_capacity(page.len());
    let mut ended = false;
    for job in page {
        if f.since.is_some_and(|s| job.created_at < s) {
            ended = true;
            break;
        }
        let spec = spec_of(&job);
        found.push((job, spec));
    }
    let next_cursor = match found.last() {
        Some((job, _)) if full && !ended => Some(cursor_of(job)),
        _ => None,
    };
    let ids: Vec<String> = found.iter().map(|(j, _)| j.id.clone()).collect();
    let deliveries = shared
        .store
        .deliveries_for_jobs(&ids)
        .await
        .map_err(store_error)?;
    let jobs: Vec<Value> = found
        .iter()
        .map(|(job, spec)| {
            let mine: Vec<&Delivery> = deliveries.iter().filter(|d| d.job_id == job.id).collect();
            row(job, spec.as_ref(), &mine)
        })
        .collect();
    Ok(Json(json!({
        "workspace": ws.workspace,
        "workspace_fixed": ws.fixed,
        "jobs": jobs,
        "next_cursor": next_cursor,
    }))
    .into_response())
}

/// The request a job (or one of its fallbacks / follow-ups) makes, safe to show.
fn request_view(spec: &JobSpec) -> Value {
    let text = String::from_utf8_lossy(&spec.body);
    let (body, cut) = redact::body(&text, MAX_BODY);
    json!({
        "method": spec.method,
        "url": redact::url(&spec.url),
        "headers": redact::headers(&spec.headers),
        "body": body,
        "body_bytes": spec.body.len(),
        "body_truncated": cut,
        "regions": spec.regions,
        "region": spec.region,
        "execution_mode": spec.execution_mode,
        "max_wait_ms": spec.max_wait_ms,
        "retry_policy": spec.retry_policy,
        "parked": spec.parked,
    })
}

/// Fallbacks in order, then the follow-up jobs the end of the run spawns.
fn chain_view(spec: &JobSpec) -> Value {
    let mut fallbacks = Vec::new();
    let mut next = spec.fallback.as_deref();
    while let Some(fb) = next {
        if fallbacks.len() == MAX_CHAIN {
            break;
        }
        let trigger = match &fb.trigger {
            Trigger::OnError { codes } if codes.is_empty() => "on any error".to_string(),
            Trigger::OnError { codes } => format!(
                "on error {}",
                codes
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Trigger::OnTimeout { timeout_ms } => format!("on no answer within {timeout_ms} ms"),
        };
        fallbacks.push(json!({
            "depth": fallbacks.len() + 1,
            "trigger": trigger,
            "method": fb.job.method,
            "url": redact::url(&fb.job.url),
        }));
        next = fb.job.fallback.as_deref();
    }
    let follow = |s: &Option<Box<JobSpec>>| {
        s.as_deref()
            .map(|c| json!({"method": c.method, "url": redact::url(&c.url)}))
    };
    json!({
        "parent_job_id": spec.metadata.get("parent_job_id"),
        "fallbacks": fallbacks,
        "on_success": follow(&spec.on_success),
        "on_failure": follow(&spec.on_failure),
        "on_failure_timeout_ms": spec.on_failure_timeout_ms,
    })
}

/// The jobs `parent` spawned, oldest first: only those in its workspace
/// (a follow-up is queued in its parent's, so this drops nothing real; it
/// keeps a hand-written `parent_job_id` from showing another workspace's
/// job).
fn children_view(parent: &JobRecord, children: &[JobRecord]) -> Value {
    Value::Array(
        children
            .iter()
            .filter(|c| c.workspace == parent.workspace)
            .map(|c| {
                let spec = spec_of(c);
                json!({
                    "job_id": c.id,
                    "status": c.status.as_str(),
                    "created_at": c.created_at,
                    "method": spec.as_ref().map(|s| s.method.as_str()),
                    "url": spec.as_ref().map(|s| redact::url(&s.url)),
                    // `<parent key>:on_success` / `:on_failure` (jobs::child_spec).
                    "trigger": c
                        .idempotent_key
                        .strip_prefix(&format!("{}:", parent.idempotent_key))
                        .filter(|t| t.starts_with("on_")),
                })
            })
            .collect(),
    )
}

/// A stored response (engine JSON), safe to show.
fn response_view(result: &Value) -> Value {
    let pairs: Vec<(String, String)> = result["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
        .collect();
    let (body, cut) = redact::body(result["body"].as_str().unwrap_or(""), MAX_BODY);
    json!({
        "status_code": result["status_code"],
        "error": result["error"],
        "headers": redact::headers(&pairs),
        "body": body,
        "body_truncated": cut,
    })
}

fn delivery_view(d: &Delivery) -> Value {
    json!({
        "delivery_id": d.id,
        "url": redact::url(&d.url),
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "has_quorum_vote": d.has_quorum_vote,
        "last_status": d.last_status,
        "last_error": d.last_error.as_deref().map(|e| crate::logging::scrub(e).into_owned()),
        "next_attempt_at": (d.state == DeliveryState::Pending).then_some(d.next_attempt_at),
        "updated_at": d.updated_at,
        "can_redeliver": d.state != DeliveryState::Pending,
    })
}

/// Attempts: this process's record if it has one, else the one stored with
/// the result. Error texts are scrubbed like log lines.
fn attempts_view(live: Vec<Attempt>, result: Option<&Value>) -> (Vec<Attempt>, &'static str) {
    let (mut list, source) = if !live.is_empty() {
        (live, "this process")
    } else {
        let stored: Vec<Attempt> = result
            .and_then(|r| serde_json::from_value(r["attempt_log"].clone()).ok())
            .unwrap_or_default();
        let source = if stored.is_empty() {
            "none recorded"
        } else {
            "stored with the result"
        };
        (stored, source)
    };
    for a in &mut list {
        if let Some(e) = a.error.as_mut() {
            *e = crate::logging::scrub(e).into_owned();
        }
    }
    (list, source)
}

/// `GET /console/api/jobs/{id}`
pub async fn detail(
    State(shared): State<Arc<Shared>>,
    ws: ConsoleWorkspace,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let job = find(&shared, &ws.workspace, &id).await?;
    let deliveries = shared
        .store
        .deliveries_for_job(&job.id)
        .await
        .map_err(store_error)?;
    let spec = spec_of(&job);
    let result = result_of(&job);
    let (attempts, source) = attempts_view(shared.jobs.history().of(&job.id), result.as_ref());
    let mut out = Map::new();
    out.insert("job_id".into(), json!(job.id));
    out.insert("workspace".into(), json!(job.workspace));
    out.insert("status".into(), json!(job.status.as_str()));
    out.insert("idempotent_key".into(), json!(job.idempotent_key));
    out.insert("attempts".into(), json!(job.attempts));
    out.insert("runs".into(), json!(job.claims));
    out.insert("created_at".into(), json!(job.created_at));
    out.insert("updated_at".into(), json!(job.updated_at));
    out.insert(
        "next_attempt_at".into(),
        json!((!job.status.is_final()).then_some(job.next_attempt_at)),
    );
    out.insert("attempt_log".into(), json!(attempts));
    out.insert("attempt_log_source".into(), json!(source));
    let children = shared
        .store
        .job_children(&job.id, MAX_CHILDREN)
        .await
        .map_err(store_error)?;
    if let Some(spec) = &spec {
        out.insert("request".into(), request_view(spec));
        let mut chain = chain_view(spec);
        chain["children"] = children_view(&job, &children);
        out.insert("chain".into(), chain);
        out.insert("metadata".into(), spec.metadata.clone());
        let q = QuorumState::of(&deliveries, spec.webhook_quorum);
        out.insert(
            "webhook_quorum".into(),
            serde_json::to_value(q).unwrap_or(Value::Null),
        );
    }
    if let Some(r) = &result {
        out.insert("response".into(), response_view(r));
        if !r["region_results"].is_null() {
            out.insert("region_results".into(), r["region_results"].clone());
        }
    }
    out.insert(
        "webhooks".into(),
        Value::Array(deliveries.iter().map(delivery_view).collect()),
    );
    out.insert(
        "actions".into(),
        json!({
            "cancel": !job.status.is_final(),
            "retry": matches!(job.status, JobStatus::Failed | JobStatus::Cancelled),
        }),
    );
    Ok(Json(Value::Object(out)).into_response())
}

/// `POST /console/api/jobs/{id}/cancel`
pub async fn cancel(
    State(shared): State<Arc<Shared>>,
    ws: ConsoleWorkspace,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    cancel_in(&shared, &ws.workspace, &id).await
}

/// `POST /console/api/jobs/{id}/retry`
pub async fn retry(
    State(shared): State<Arc<Shared>>,
    ws: ConsoleWorkspace,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    retry_in(&shared, &ws.workspace, &id).await
}

/// `POST /console/api/jobs/{id}/deliveries/{delivery_id}/redeliver`
pub async fn redeliver(
    State(shared): State<Arc<Shared>>,
    ws: ConsoleWorkspace,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, Response> {
    redeliver_in(&shared, &ws.workspace, &id, &delivery).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> JobSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn chain_lists_fallbacks_and_follow_ups() {
        let s = spec(
            r#"{"method":"GET","url":"https://a.test/x?token=T","max_wait_ms":1,
            "fallback":{"trigger":{"type":"on_error","codes":[500,502]},
              "job":{"method":"POST","url":"https://b.test/y","max_wait_ms":1,
                "fallback":{"trigger":{"type":"on_timeout","timeout_ms":300},
                  "job":{"method":"GET","url":"https://c.test/","max_wait_ms":1}}}},
            "on_failure":{"method":"POST","url":"https://alert.test/","max_wait_ms":1}}"#,
        );
        let c = chain_view(&s);
        assert_eq!(c["fallbacks"][0]["trigger"], "on error 500, 502");
        assert_eq!(c["fallbacks"][1]["trigger"], "on no answer within 300 ms");
        assert_eq!(c["fallbacks"][1]["url"], "https://c.test/");
        assert_eq!(c["on_failure"]["url"], "https://alert.test/");
        assert!(c["on_success"].is_null());
        let r = request_view(&s);
        assert!(!r.to_string().contains("token=T"));
    }

    #[test]
    fn filter_refuses_bad_input_with_400() {
        let q = |s: &str| -> ListQuery { serde_urlencoded_like(s) };
        for bad in [
            "status=nope",
            "limit=0",
            "limit=201",
            "since=yesterday",
            "cursor=zz",
        ] {
            let resp = filter(&q(bad)).err().expect(bad).into_response();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let f = filter(&q("until=1000&domain=API.Test")).ok().unwrap();
        assert_eq!(f.after, Some((1000, String::new())));
        assert_eq!(f.domain.as_deref(), Some("api.test"));
        let f = filter(&q("domain=%20B%C3%BCcher.Test%20")).ok().unwrap();
        assert_eq!(f.domain.as_deref(), Some("xn--bcher-kva.test"));
        assert_eq!(
            crate::store::job_domain(r#"{"url":"https://BÜCHER.test/x"}"#).as_deref(),
            Some("xn--bcher-kva.test"),
            "the filter and the store agree"
        );
    }

    fn serde_urlencoded_like(s: &str) -> ListQuery {
        let map: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(s.as_bytes())
                .into_owned()
                .collect();
        serde_json::from_value(serde_json::to_value(map).unwrap()).unwrap()
    }
}
