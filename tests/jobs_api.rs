//! The job API on the control port (SPEC §8) with a raw HTTP client: every
//! validation error of `POST /api/v1/jobs`, camelCase aliases, duplicates,
//! GET / list / DELETE / retry, and auth. The SDK-driven half is
//! tests/sdk_conformance.rs.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::api_origin::ApiOrigin;
use common::harness::EzBuilder;
use common::webhook_sink::{Delivery, WebhookSink};
use common::{Ezthrottle, RawResponse};

const WEBHOOK_WAIT: Duration = Duration::from_secs(45);
const POLL_WAIT: Duration = Duration::from_secs(30);

fn builder() -> EzBuilder {
    EzBuilder::new()
        .resolve("api.test", "127.0.0.1")
        .egress_loopback()
}

/// `method path` on the control port with an optional body and token.
fn call(
    ez: &Ezthrottle,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> RawResponse {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        ez.control
    );
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        head += "Content-Type: application/json\r\n";
    }
    head += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    common::raw::request(ez.control, &head)
}

fn submit_raw(ez: &Ezthrottle, body: &str) -> RawResponse {
    call(ez, "POST", "/api/v1/jobs", Some(body), Some("test"))
}

fn submit(ez: &Ezthrottle, job: &Value) -> RawResponse {
    submit_raw(ez, &job.to_string())
}

fn get_job(ez: &Ezthrottle, id: &str) -> RawResponse {
    call(ez, "GET", &format!("/api/v1/jobs/{id}"), None, Some("test"))
}

fn job_until(ez: &Ezthrottle, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    common::eventually(POLL_WAIT, &format!("job {id}: {what}"), || {
        let r = get_job(ez, id);
        assert_eq!(r.status, 200, "GET job {id}: {}", r.text());
        let v = r.json();
        done(&v).then_some(v)
    })
}

fn created_id(r: &RawResponse) -> String {
    assert_eq!(r.status, 201, "new job: {}", r.text());
    let v = r.json();
    v["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id: {v}"))
        .to_string()
}

fn await_hooks(sink: &WebhookSink, path: &str, n: usize) -> Vec<Delivery> {
    sink.until(WEBHOOK_WAIT, &format!("{n} webhook(s) at {path}"), |all| {
        all.iter().filter(|d| d.path == path).count() >= n
    });
    sink.all().into_iter().filter(|d| d.path == path).collect()
}

/// A 400 `invalid_request` (or `invalid_json` for unparsable bodies) whose
/// message names `field`.
#[track_caller]
fn assert_invalid(r: &RawResponse, field: &str, case: &str) {
    assert_eq!(r.status, 400, "{case}: {}", r.text());
    let v = r.json();
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(code, "invalid_request", "{case}: {v}");
    assert!(
        message.starts_with(field),
        "{case}: message must start with the field path {field:?}: {v}"
    );
}

// ---------------------------------------------------------------------------
// Validation.

#[test]
fn every_invalid_job_field_is_a_400_naming_the_field_and_nothing_runs() {
    let origin = ApiOrigin::start();
    let ez = builder().start();
    let url = origin.http_url("api.test", "/v1/never");
    let hook = "http://127.0.0.1:9/hook";
    let voting = json!({"url": hook});

    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing url", json!({"method": "GET"}), "url"),
        ("url not a string", json!({"url": 42}), "url"),
        ("non-http url", json!({"url": "ftp://api.test/x"}), "url"),
        ("relative url", json!({"url": "/v1/x"}), "url"),
        (
            "bad method",
            json!({"url": url, "method": "GE T"}),
            "method",
        ),
        (
            "method not a string",
            json!({"url": url, "method": 7}),
            "method",
        ),
        (
            "body not a string",
            json!({"url": url, "method": "POST", "body": {"a": 1}}),
            "body",
        ),
        (
            "metadata not an object",
            json!({"url": url, "metadata": [1, 2]}),
            "metadata",
        ),
        (
            "headers not an object",
            json!({"url": url, "headers": "X-A: 1"}),
            "headers",
        ),
        (
            "webhooks[0].url invalid",
            json!({"url": url, "webhooks": [{"url": "not a url"}]}),
            "webhooks[0].url",
        ),
        (
            "webhooks[1].url missing",
            json!({"url": url, "webhooks": [voting, {"has_quorum_vote": true}]}),
            "webhooks[1].url",
        ),
        (
            "webhook_quorum 0",
            json!({"url": url, "webhooks": [voting], "webhook_quorum": 0}),
            "webhook_quorum",
        ),
        (
            "webhook_quorum above the voting webhooks",
            json!({
                "url": url,
                "webhooks": [voting, {"url": hook, "has_quorum_vote": false}],
                "webhook_quorum": 2,
            }),
            "webhook_quorum",
        ),
        (
            "unknown region, strict",
            json!({"url": url, "regions": ["mars"], "region_policy": "strict"}),
            "regions",
        ),
        (
            "bad region_policy",
            json!({"url": url, "region_policy": "sometimes"}),
            "region_policy",
        ),
        (
            "bad execution_mode",
            json!({"url": url, "execution_mode": "sequential"}),
            "execution_mode",
        ),
        (
            "bad trigger type",
            json!({"url": url, "fallback_job": {
                "url": url, "trigger": {"type": "on_magic"}}}),
            "fallback_job.trigger.type",
        ),
        (
            "fallback url invalid",
            json!({"url": url, "fallback_job": {
                "url": "nope", "trigger": {"type": "on_error", "codes": [500]}}}),
            "fallback_job.url",
        ),
        (
            "nested on_success url missing",
            json!({"url": url, "on_success": {"method": "GET"}}),
            "on_success.url",
        ),
        (
            "negative on_failure_timeout_ms",
            json!({"url": url, "on_failure_timeout_ms": -5}),
            "on_failure_timeout_ms",
        ),
        (
            "retry_at not a number",
            json!({"url": url, "retry_at": "tomorrow"}),
            "retry_at",
        ),
        (
            "idempotent_key not a string",
            json!({"url": url, "idempotent_key": 12}),
            "idempotent_key",
        ),
    ];
    for (case, job, field) in &cases {
        assert_invalid(&submit(&ez, job), field, case);
    }

    // Not JSON at all, or not an object.
    for body in ["{\"url\":", "[1,2]", "\"x\""] {
        let r = submit_raw(&ez, body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let code = r.error_code();
        assert!(
            code == "invalid_request" || code == "invalid_json",
            "{body}: {}",
            r.text()
        );
    }
    assert_eq!(origin.calls(), 0, "no invalid job ran");
    let list = call(&ez, "GET", "/api/v1/jobs", None, Some("test"));
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(
        list.json()["jobs"]
            .as_array()
            .map(|a| a.is_empty())
            .unwrap_or(false),
        "nothing was stored: {}",
        list.text()
    );
}

#[test]
fn unknown_region_under_fallback_policy_uses_the_remaining_regions() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder().start();
    let r = submit(
        &ez,
        &json!({
            "url": origin.http_url("api.test", "/v1/lenient"),
            "regions": ["mars", "local"],
            "region_policy": "fallback",
            "webhooks": [{"url": sink.url("/hook")}],
        }),
    );
    let id = created_id(&r);
    let p = await_hooks(&sink, "/hook", 1)[0].json();
    assert_eq!(p["job_id"], id.as_str());
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(origin.count("/v1/lenient"), 1);
}

// ---------------------------------------------------------------------------
// camelCase aliases, everywhere.

#[test]
fn camel_case_aliases_are_accepted_including_nested_jobs() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder().start();
    let job = json!({
        "url": origin.http_url("api.test", "/v1/camel?status=500"),
        "method": "POST",
        "body": "{}",
        "idempotentKey": "camel-1",
        "webhooks": [
            {"url": sink.url("/hook"), "hasQuorumVote": true},
            {"url": sink.url("/observer"), "hasQuorumVote": false},
        ],
        "webhookQuorum": 1,
        "retryPolicy": {"maxRetries": 0, "maxReroutes": 0},
        "regionPolicy": "fallback",
        "executionMode": "race",
        "onFailureTimeoutMs": 60000,
        "fallbackJob": {
            "url": origin.http_url("api.test", "/v1/camel-backup"),
            "trigger": {"type": "on_error", "codes": [500]},
        },
        "onSuccess": {
            "url": origin.http_url("api.test", "/v1/camel-next"),
            "webhooks": [{"url": sink.url("/next"), "hasQuorumVote": true}],
        },
    });
    let r = submit(&ez, &job);
    let id = created_id(&r);
    assert_eq!(r.json()["idempotent_key"], "camel-1", "{}", r.text());

    let p = await_hooks(&sink, "/hook", 1)[0].json();
    assert_eq!(p["job_id"], id.as_str());
    assert_eq!(p["idempotent_key"], "camel-1");
    assert_eq!(p["status"], "success", "{p}");
    let next = await_hooks(&sink, "/next", 1)[0].json();
    assert_eq!(next["metadata"]["parent_job_id"], id.as_str(), "{next}");
    await_hooks(&sink, "/observer", 1);
    assert_eq!(origin.count("/v1/camel"), 1, "maxRetries=0 was honoured");
    assert_eq!(origin.count("/v1/camel-backup"), 1);
    assert_eq!(origin.count("/v1/camel-next"), 1);
    let job = get_job(&ez, &id).json();
    assert_eq!(job["idempotent_key"], "camel-1", "{job}");
}

// ---------------------------------------------------------------------------
// Duplicates and derived keys.

#[test]
fn duplicates_answer_200_and_derived_keys_depend_on_workspace_method_url_and_body() {
    let origin = ApiOrigin::start();
    let ez = builder()
        .extra("[control.api_keys]\n\"tok_a\" = \"ws-a\"\n\"tok_b\" = \"ws-b\"")
        .start();
    let url = origin.http_url("api.test", "/v1/dedup");
    let post = |token: &str, job: &Value| {
        call(
            &ez,
            "POST",
            "/api/v1/jobs",
            Some(&job.to_string()),
            Some(token),
        )
    };
    let job = json!({"url": url, "method": "POST", "body": "{\"a\":1,\"b\":2}"});

    let first = post("tok_a", &job);
    let id = created_id(&first);
    let v = first.json();
    assert!(v["status"] == "queued" || v["status"] == "racing", "{v}");
    assert!(!v["queued_at"].is_null(), "{v}");
    let key = v["idempotent_key"].as_str().expect("key").to_string();

    let again = post("tok_a", &job);
    assert_eq!(again.status, 200, "{}", again.text());
    let w = again.json();
    assert_eq!(w["job_id"], id.as_str());
    assert_eq!(w["idempotent_key"], key.as_str());
    assert_eq!(w["duplicate"], true, "{w}");

    // Another workspace, same request: another job.
    let b = post("tok_b", &job);
    assert_ne!(created_id(&b), id);
    assert_ne!(b.json()["idempotent_key"], key.as_str());
    // Another method or body: another job.
    let other_body = json!({"url": url, "method": "POST", "body": "{\"a\":1,\"b\":3}"});
    assert_ne!(created_id(&post("tok_a", &other_body)), id);
    let put = json!({"url": url, "method": "PUT", "body": "{\"a\":1,\"b\":2}"});
    assert_ne!(created_id(&post("tok_a", &put)), id);

    // A workspace cannot see another's job.
    let hidden = call(
        &ez,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        None,
        Some("tok_b"),
    );
    assert_eq!(hidden.status, 404, "{}", hidden.text());

    common::eventually(POLL_WAIT, "four distinct jobs ran", || {
        (origin.count("/v1/dedup") >= 4).then_some(())
    });
    job_until_token(&ez, &id, "tok_a");
    assert_eq!(origin.count("/v1/dedup"), 4, "the duplicate never ran");
}

fn job_until_token(ez: &Ezthrottle, id: &str, token: &str) -> Value {
    common::eventually(POLL_WAIT, &format!("job {id} success"), || {
        let r = call(ez, "GET", &format!("/api/v1/jobs/{id}"), None, Some(token));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        (v["status"] == "success").then_some(v)
    })
}

// ---------------------------------------------------------------------------
// GET, list, DELETE, retry.

#[test]
fn get_list_delete_and_retry() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder().start();

    // Unknown id.
    let r = get_job(&ez, "job_does_not_exist");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!r.error_code().is_empty());

    // A finished job: GET shows it; DELETE is 409.
    let done = created_id(&submit(
        &ez,
        &json!({
            "url": origin.http_url("api.test", "/v1/done"),
            "webhooks": [{"url": sink.url("/done")}],
        }),
    ));
    await_hooks(&sink, "/done", 1);
    let job = job_until(&ez, &done, "success", |j| j["status"] == "success");
    assert_eq!(job["response"]["status_code"], 201, "{job}");
    assert!(job["attempts"].as_u64().unwrap_or(0) >= 1, "{job}");
    let del = call(
        &ez,
        "DELETE",
        &format!("/api/v1/jobs/{done}"),
        None,
        Some("t"),
    );
    assert_eq!(del.status, 409, "DELETE of a finished job: {}", del.text());
    assert!(!del.error_code().is_empty());
    assert_eq!(get_job(&ez, &done).json()["status"], "success");

    // A job not before an hour from now: DELETE cancels it, it never runs.
    let later = now_ms() + 3_600_000;
    let waiting = created_id(&submit(
        &ez,
        &json!({
            "url": origin.http_url("api.test", "/v1/later"),
            "retry_at": later,
            "webhooks": [{"url": sink.url("/later")}],
        }),
    ));
    let del = call(
        &ez,
        "DELETE",
        &format!("/api/v1/jobs/{waiting}"),
        None,
        Some("t"),
    );
    assert!(
        (200..300).contains(&del.status),
        "DELETE of a queued job: {}",
        del.text()
    );
    let job = job_until(&ez, &waiting, "cancelled", |j| j["status"] == "cancelled");
    assert_eq!(job["job_id"], waiting.as_str());
    let again = call(
        &ez,
        "DELETE",
        &format!("/api/v1/jobs/{waiting}"),
        None,
        Some("t"),
    );
    assert_eq!(
        again.status,
        409,
        "DELETE of a cancelled job: {}",
        again.text()
    );
    let missing = call(&ez, "DELETE", "/api/v1/jobs/job_nope", None, Some("t"));
    assert_eq!(missing.status, 404, "{}", missing.text());

    // A failed job (400 once), then retried: it runs again and succeeds.
    let flaky = created_id(&submit(
        &ez,
        &json!({
            "url": origin.http_url("api.test", "/v1/flaky?fail_first=1&fail_status=400"),
            "webhooks": [{"url": sink.url("/flaky")}],
        }),
    ));
    let first = await_hooks(&sink, "/flaky", 1)[0].json();
    assert_eq!(first["status"], "failed", "{first}");
    assert_eq!(first["response"]["status_code"], 400, "{first}");
    job_until(&ez, &flaky, "failed", |j| j["status"] == "failed");
    let retry = call(
        &ez,
        "POST",
        &format!("/api/v1/jobs/{flaky}/retry"),
        None,
        Some("t"),
    );
    assert!(
        (200..300).contains(&retry.status),
        "retry of a failed job: {}",
        retry.text()
    );
    let second = await_hooks(&sink, "/flaky", 2)[1].json();
    assert_eq!(second["job_id"], flaky.as_str());
    assert_eq!(second["status"], "success", "{second}");
    job_until(&ez, &flaky, "success after retry", |j| {
        j["status"] == "success"
    });
    assert_eq!(origin.count("/v1/flaky"), 2);
    // A successful job cannot be retried.
    let retry = call(
        &ez,
        "POST",
        &format!("/api/v1/jobs/{done}/retry"),
        None,
        Some("t"),
    );
    assert_eq!(
        retry.status,
        409,
        "retry of a successful job: {}",
        retry.text()
    );

    // Listing: by status, limited, paged with a cursor.
    let list = call(&ez, "GET", "/api/v1/jobs?status=success", None, Some("t"));
    assert_eq!(list.status, 200, "{}", list.text());
    let ids = list_ids(&list.json());
    assert!(ids.contains(&done) && ids.contains(&flaky), "{ids:?}");
    assert!(!ids.contains(&waiting), "{ids:?}");
    let cancelled =
        list_ids(&call(&ez, "GET", "/api/v1/jobs?status=cancelled", None, Some("t")).json());
    assert_eq!(cancelled, std::slice::from_ref(&waiting));

    let page1 = call(&ez, "GET", "/api/v1/jobs?limit=1", None, Some("t")).json();
    let first_ids = list_ids(&page1);
    assert_eq!(first_ids.len(), 1, "{page1}");
    let cursor = page1
        .get("next_cursor")
        .or_else(|| page1.get("cursor"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("a limited page names its cursor: {page1}"))
        .to_string();
    let mut seen = first_ids;
    let mut cursor = Some(cursor);
    let mut pages = 1;
    while let Some(c) = cursor.take() {
        pages += 1;
        assert!(pages <= 10, "paging does not end: {seen:?}");
        let page = call(
            &ez,
            "GET",
            &format!("/api/v1/jobs?limit=1&cursor={c}"),
            None,
            Some("t"),
        )
        .json();
        for id in list_ids(&page) {
            assert!(!seen.contains(&id), "{id} listed twice");
            seen.push(id);
        }
        cursor = page
            .get("next_cursor")
            .or_else(|| page.get("cursor"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
    }
    seen.sort();
    let mut all = vec![done, waiting, flaky];
    all.sort();
    assert_eq!(seen, all, "paging lists every job once");
}

fn list_ids(v: &Value) -> Vec<String> {
    v["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("a job list is {{\"jobs\": [...]}}: {v}"))
        .iter()
        .map(|j| j["job_id"].as_str().expect("job_id").to_string())
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------
// Auth.

#[test]
fn with_api_keys_every_job_endpoint_needs_a_known_bearer_token() {
    let origin = ApiOrigin::start();
    let ez = builder()
        .extra("[control.api_keys]\n\"tok_test\" = \"ws-a\"")
        .start();
    let job = json!({"url": origin.http_url("api.test", "/v1/auth")}).to_string();
    let envelope = json!({
        "scope": "customer", "metric_name": "",
        "target_url": "http://x/api/v1/jobs", "method": "POST",
        "headers": {}, "body": job,
    })
    .to_string();
    for token in [None, Some("tok_wrong")] {
        for (method, path, body) in [
            ("POST", "/api/v1/jobs", Some(job.as_str())),
            ("GET", "/api/v1/jobs", None),
            ("GET", "/api/v1/jobs/job_x", None),
            ("DELETE", "/api/v1/jobs/job_x", None),
            ("POST", "/api/v1/jobs/job_x/retry", None),
            ("POST", "/api/v1/proxy", Some(envelope.as_str())),
        ] {
            let r = call(&ez, method, path, body, token);
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {token:?}: {}",
                r.text()
            );
            assert_eq!(r.error_code(), "unauthorized");
        }
    }
    assert_eq!(origin.calls(), 0);
    let r = call(&ez, "POST", "/api/v1/jobs", Some(&job), Some("tok_test"));
    let id = created_id(&r);
    common::eventually(POLL_WAIT, "the authorised job ran", || {
        let r = call(
            &ez,
            "GET",
            &format!("/api/v1/jobs/{id}"),
            None,
            Some("tok_test"),
        );
        (r.json()["status"] == "success").then_some(())
    });
    assert_eq!(origin.count("/v1/auth"), 1);
}

#[test]
fn a_retry_after_longer_than_the_max_wait_puts_the_job_back_until_it_succeeds() {
    let origin = ApiOrigin::start();
    // The API asks for 2 s; the job may wait 1 s per run: the run ends with
    // the 503, and the job must come back after the Retry-After, not fail.
    let ez = builder()
        .extra("[limits.domains.\"api.test\"]\nmax_wait = \"1s\"\n")
        .start();
    let url = origin.http_url(
        "api.test",
        "/v1/later?fail_first=2&fail_status=503&retry_after=2",
    );
    let started = std::time::Instant::now();
    let id = created_id(&submit(
        &ez,
        &json!({"url": url, "method": "POST", "body": "{}"}),
    ));
    let retrying = job_until(&ez, &id, "retrying", |v| v["status"] == "retrying");
    assert!(
        retrying["attempts"].as_u64().unwrap_or(0) >= 1,
        "{retrying}"
    );
    assert!(
        retrying["next_attempt_at"].as_u64().unwrap_or(0)
            >= retrying["updated_at"].as_u64().unwrap_or(u64::MAX) + 1_500,
        "the Retry-After is stored: {retrying}"
    );
    let done = job_until(&ez, &id, "success", |v| {
        v["status"] == "success" || v["status"] == "failed"
    });
    assert_eq!(done["status"], "success", "{done}");
    // Two 503s and the success: attempts count upstream calls, not claims.
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(origin.count("/v1/later"), 3);
    assert_eq!(done["response"]["status_code"], 201, "{done}");
    // Each Retry-After was honoured: at least 2 s twice.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_job_past_its_deadline_ends_with_its_last_answer() {
    let origin = ApiOrigin::start();
    let ez = builder()
        .extra("[limits.domains.\"api.test\"]\nmax_wait = \"1s\"\n[jobs]\ndeadline = \"1s\"\n")
        .start();
    let url = origin.http_url(
        "api.test",
        "/v1/never?fail_first=100&fail_status=503&retry_after=5",
    );
    let id = created_id(&submit(&ez, &json!({"url": url})));
    let done = job_until(&ez, &id, "failed", |v| v["status"] == "failed");
    assert_eq!(done["response"]["status_code"], 503, "{done}");
    assert_eq!(
        origin.count("/v1/never"),
        1,
        "a 5 s Retry-After is past the 1 s deadline"
    );
}

#[test]
fn a_job_running_longer_than_its_lease_is_not_run_twice() {
    let origin = ApiOrigin::start();
    // A 1 s lease under a 3.5 s upstream call: renewed while it runs, the
    // job is never claimed a second time.
    let ez = builder().extra("[jobs]\nlease = \"1s\"\n").start();
    let url = origin.http_url("api.test", "/v1/long?delay_ms=3500");
    let id = created_id(&submit(&ez, &json!({"url": url, "method": "POST"})));
    let done = job_until(&ez, &id, "success", |v| {
        v["status"] == "success" || v["status"] == "failed"
    });
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(origin.count("/v1/long"), 1, "the job ran twice");
    assert_eq!(done["claims"], 1, "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
}
