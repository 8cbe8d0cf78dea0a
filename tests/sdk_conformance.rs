//! Conformance of the EZThrottle-compatible job API (SPEC §8, issue 6): the
//! REAL PyPI SDK (`ezthrottle==1.3.0`, interpreter in `EZT_SDK_PYTHON`, set
//! by `scripts/test`), unmodified, against the real binary and loopback
//! origins. The SDK is pointed at the control port exactly as docs/sdk.md
//! tells users: `EZThrottle(key, tracktags_url=BASE, ezthrottle_url=BASE)`.
//!
//! Every test counts origin calls and webhook deliveries. Nothing sleeps to
//! synchronise: webhooks are awaited on the sink, job state is polled with a
//! bounded deadline, and "no further webhook" is checked after a later
//! sentinel job's webhook has arrived.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::api_origin::ApiOrigin;
use common::harness::EzBuilder;
use common::proc::{run, show};
use common::webhook_sink::{Delivery, WebhookSink};
use common::{json, metrics, Ezthrottle, RawResponse};

/// Bound on one job's webhook (a job may wait for admission and retries).
const WEBHOOK_WAIT: Duration = Duration::from_secs(45);
/// Bound on polling a job's state.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// Bound on one SDK process.
const SDK_TIMEOUT: Duration = Duration::from_secs(90);

const SECRET: &str = "sdk-conformance-secret-0123456789";
const SDK_VERSION: &str = "1.3.0";

// ---------------------------------------------------------------------------
// The SDK, driven through tests/py/sdk_client.py.

/// One SDK client: `EZThrottle(api_key, tracktags_url=base, ezthrottle_url=base)`.
struct Sdk {
    base: String,
    api_key: String,
}

impl Sdk {
    fn new(ez: &Ezthrottle, api_key: &str) -> Sdk {
        Sdk {
            base: ez.control_url(""),
            api_key: api_key.to_string(),
        }
    }

    /// Run `ops` (see tests/py/sdk_client.py) in one Python process; one
    /// result per op.
    fn run(&self, ops: Value) -> Vec<Value> {
        let python = common::py::sdk_python();
        let mut cmd = Command::new(&python);
        for k in common::py::CLEARED_ENV
            .iter()
            .chain(&["EZTHROTTLE_API_KEY"])
        {
            cmd.env_remove(k);
        }
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(common::py_script("sdk_client.py"))
            .arg(&self.base)
            .arg(&self.api_key)
            .arg(ops.to_string());
        let out = run(&mut cmd, SDK_TIMEOUT);
        match out.status.code() {
            Some(0) => {}
            Some(3) => panic!(
                "EZT_SDK_PYTHON={python} cannot import the ezthrottle SDK; run scripts/test \
                 (it installs ezthrottle=={SDK_VERSION} into .venv-sdk):\n{}",
                show(&out)
            ),
            _ => panic!("SDK script failed for ops {ops}:\n{}", show(&out)),
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("sdk_client.py printed no JSON ({e}):\n{}", show(&out)));
        assert_eq!(
            v["sdk_version"], SDK_VERSION,
            "the tests must run the PyPI SDK {SDK_VERSION}: {v}"
        );
        assert!(
            v["sdk_file"]
                .as_str()
                .unwrap_or_default()
                .contains("site-packages"),
            "the SDK must be the installed package, not a local copy: {v}"
        );
        v["results"].as_array().expect("results").clone()
    }

    fn one(&self, op: Value) -> Value {
        self.run(json!([op])).remove(0)
    }

    /// `Step(client)...execute()`; panics with the SDK's error if it raised.
    fn step(&self, step: Value) -> Value {
        let r = self.one(json!({"op": "step", "step": step}));
        assert!(
            r.get("error").is_none(),
            "SDK step failed: {r}\nstep: {step}"
        );
        r
    }

    /// `verify_webhook_signature(body, X-EZThrottle-Signature, secret)` →
    /// `(verified, reason)`.
    fn verify(&self, d: &Delivery, secret: &str) -> (bool, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let payload = dir.path().join("payload.json");
        std::fs::write(&payload, &d.body).expect("write payload");
        let sig = d.header("x-ezthrottle-signature").unwrap_or_else(|| {
            panic!(
                "webhook has no X-EZThrottle-Signature header: {:?}",
                d.headers
            )
        });
        let r = self.one(json!({
            "op": "verify",
            "payload_file": payload,
            "signature": sig,
            "secret": secret,
        }));
        (
            r["ok"].as_bool().expect("ok"),
            r["reason"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// The job id of an SDK submit answer (`{"job_id","status","idempotent_key","queued_at"}`).
fn job_id(answer: &Value) -> String {
    let id = answer["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in submit answer {answer}"));
    assert!(!id.is_empty(), "{answer}");
    id.to_string()
}

fn assert_accepted(answer: &Value) {
    job_id(answer);
    let status = answer["status"].as_str().unwrap_or_default();
    assert!(
        status == "queued" || status == "racing",
        "new job status must be queued|racing: {answer}"
    );
    assert!(
        !answer["idempotent_key"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{answer}"
    );
    assert!(
        !answer["queued_at"].is_null(),
        "submit answer lacks queued_at: {answer}"
    );
}

// ---------------------------------------------------------------------------
// ezthrottle, origins, webhooks.

fn builder() -> EzBuilder {
    EzBuilder::new()
        .resolve("api.test", "127.0.0.1")
        .egress_loopback()
}

fn with_secret(b: EzBuilder) -> EzBuilder {
    b.extra(&format!(
        "[webhooks]\nsecret = {}",
        common::toml_str(SECRET)
    ))
}

/// A plain-HTTP call to the control port.
fn control(ez: &Ezthrottle, method: &str, path: &str) -> RawResponse {
    common::raw::request(
        ez.control,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ez.control
        ),
    )
}

/// Poll `GET /api/v1/jobs/{id}` (bounded) until `done(job)`.
fn job_until(ez: &Ezthrottle, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/api/v1/jobs/{id}");
    common::eventually(POLL_WAIT, &format!("job {id}: {what}"), || {
        let r = control(ez, "GET", &path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let job = r.json();
        done(&job).then_some(job)
    })
}

/// Deliveries on the sink at `path`.
fn at(sink: &WebhookSink, path: &str) -> Vec<Delivery> {
    sink.all().into_iter().filter(|d| d.path == path).collect()
}

/// Wait (bounded) for `n` deliveries at `path`; returns them all.
fn await_hooks(sink: &WebhookSink, path: &str, n: usize) -> Vec<Delivery> {
    sink.until(WEBHOOK_WAIT, &format!("{n} webhook(s) at {path}"), |all| {
        all.iter().filter(|d| d.path == path).count() >= n
    });
    at(sink, path)
}

/// Submit a sentinel job (after everything under test) and await its
/// webhook, so deliveries that should NOT happen had their chance.
fn sentinel(sdk: &Sdk, origin: &ApiOrigin, sink: &WebhookSink, tag: &str) {
    let hook = format!("/sentinel-{tag}");
    sdk.step(json!({
        "url": origin.http_url("api.test", &format!("/v1/sentinel-{tag}")),
        "webhooks": [{"url": sink.url(&hook), "has_quorum_vote": true}],
    }));
    await_hooks(sink, &hook, 1);
}

fn hops(via: &str) -> usize {
    via.matches("ezthrottle-").count()
}

// ---------------------------------------------------------------------------
// 1. A PERFORMANCE step with a webhook, verified with the SDK's own verifier.

#[test]
fn performance_step_delivers_a_signed_webhook_the_sdk_verifies() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let url = origin.http_url("api.test", "/v1/orders");
    let answer = sdk.step(json!({
        "url": url,
        "method": "POST",
        "headers": {"X-Order": "42"},
        "body": "{\"amount\":1000}",
        "type": "performance",
        "metadata": {"order": "42"},
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
    }));
    assert_accepted(&answer);
    let id = job_id(&answer);
    let key = answer["idempotent_key"].as_str().unwrap().to_string();

    let d = await_hooks(&sink, "/hook", 1).remove(0);
    assert_eq!(d.header("content-type"), Some("application/json"));
    let p = d.json();
    assert_eq!(p["job_id"], id.as_str(), "{p}");
    assert_eq!(p["idempotent_key"], key.as_str(), "{p}");
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(p["response"]["status_code"], 201, "{p}");
    assert_eq!(p["metadata"]["order"], "42", "{p}");
    // The origin's answer, as a string; it got the method and the body.
    let body = json(
        p["response"]["body"]
            .as_str()
            .unwrap_or_else(|| panic!("response.body must be a string: {p}"))
            .as_bytes(),
    );
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/v1/orders");
    assert_eq!(body["body_len"], 15);
    // The job carried its idempotent key upstream as Idempotency-Key.
    assert_eq!(
        p["response"]["headers"]["x-echo-key"],
        key.as_str(),
        "Idempotency-Key upstream: {p}"
    );
    assert_eq!(origin.count("/v1/orders"), 1);

    // The SDK's own verifier accepts the signature, and only with our secret.
    assert_eq!(sdk.verify(&d, SECRET), (true, "valid".to_string()));
    let (ok, why) = sdk.verify(&d, "not-the-secret-0123456789");
    assert!(!ok, "verified with a wrong secret: {why}");

    // The job's record agrees.
    let job = job_until(&ez, &id, "success with its webhook delivered", |j| {
        j["status"] == "success" && j["webhooks"][0]["state"] == "delivered"
    });
    assert_eq!(job["job_id"], id.as_str());
    assert_eq!(job["idempotent_key"], key.as_str());
    assert!(job["attempts"].as_u64().unwrap_or(0) >= 1, "{job}");
    assert_eq!(job["response"]["status_code"], 201, "{job}");
    assert_eq!(job["webhooks"][0]["url"], sink.url("/hook").as_str());
    assert!(
        !job["created_at"].is_null() && !job["updated_at"].is_null(),
        "{job}"
    );
    assert_eq!(at(&sink, "/hook").len(), 1);
}

// ---------------------------------------------------------------------------
// 2. HASH strategy: identical submits dedupe to one job, one call, one webhook.

#[test]
fn hash_strategy_dedupes_identical_submits_to_one_execution() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let step = |body: &str| {
        json!({
            "url": origin.http_url("api.test", "/v1/charge"),
            "method": "POST",
            "body": body,
            "idempotent_strategy": "hash",
            "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
        })
    };
    // Two identical submits back to back (the second while the first is
    // queued or running), in one SDK process.
    let r = sdk.run(json!([
        {"op": "step", "step": step("{\"amount\":5}")},
        {"op": "step", "step": step("{\"amount\":5}")},
    ]));
    assert_accepted(&r[0]);
    let id = job_id(&r[0]);
    let key = r[0]["idempotent_key"].as_str().unwrap().to_string();
    assert_eq!(job_id(&r[1]), id, "HASH dedup: same job_id: {r:?}");
    assert_eq!(r[1]["idempotent_key"], key.as_str());
    assert_eq!(
        r[1]["duplicate"], true,
        "second submit is a duplicate: {r:?}"
    );
    assert!(r[0].get("duplicate").is_none() || r[0]["duplicate"] == false);

    let hooks = await_hooks(&sink, "/hook", 1);
    assert_eq!(hooks[0].json()["job_id"], id.as_str());
    assert_eq!(hooks[0].json()["idempotent_key"], key.as_str());

    // A third identical submit after the job finished: still the same job.
    let again = sdk.step(step("{\"amount\":5}"));
    assert_eq!(job_id(&again), id);
    assert_eq!(again["duplicate"], true, "{again}");

    // The same URL with another body is another job (the body is hashed).
    let other = sdk.step(step("{\"amount\":6}"));
    let other_id = job_id(&other);
    assert_ne!(other_id, id);
    assert_ne!(other["idempotent_key"], key.as_str());
    let hooks = await_hooks(&sink, "/hook", 2);
    sentinel(&sdk, &origin, &sink, "hash");

    let hooks_now = at(&sink, "/hook");
    assert_eq!(
        hooks_now.len(),
        2,
        "one webhook per distinct job: {hooks:?}"
    );
    let for_id = hooks_now
        .iter()
        .filter(|d| d.json()["job_id"] == id.as_str())
        .count();
    assert_eq!(for_id, 1, "exactly one webhook for the deduplicated job");
    assert_eq!(
        origin.count("/v1/charge"),
        2,
        "one origin call per distinct job"
    );
}

// ---------------------------------------------------------------------------
// 3. UNIQUE keys: different keys are different jobs; a repeated key is a duplicate.

#[test]
fn unique_keys_make_separate_jobs_and_a_repeated_key_is_a_duplicate() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let url = origin.http_url("api.test", "/v1/send");
    let keyed = |key: &str| {
        json!({
            "url": url,
            "method": "POST",
            "body": "{\"to\":\"a@b.c\"}",
            "idempotent_key": key,
            "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
        })
    };
    let r = sdk.run(json!([
        {"op": "step", "step": keyed("order-1")},
        {"op": "step", "step": keyed("order-2")},
    ]));
    assert_accepted(&r[0]);
    assert_accepted(&r[1]);
    assert_eq!(
        r[0]["idempotent_key"], "order-1",
        "a client key is used as is"
    );
    assert_eq!(r[1]["idempotent_key"], "order-2");
    let (id1, id2) = (job_id(&r[0]), job_id(&r[1]));
    assert_ne!(id1, id2);

    let hooks = await_hooks(&sink, "/hook", 2);
    let mut keys: Vec<String> = hooks
        .iter()
        .map(|d| {
            let p = d.json();
            assert_eq!(p["status"], "success", "{p}");
            // Each call went upstream with its own key.
            assert_eq!(p["response"]["headers"]["x-echo-key"], p["idempotent_key"]);
            p["idempotent_key"].as_str().unwrap().to_string()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["order-1", "order-2"]);
    assert_eq!(origin.count("/v1/send"), 2);

    // The SDK's UNIQUE strategy: a fresh UUID per submit, so two jobs.
    let unique = json!({
        "url": origin.http_url("api.test", "/v1/poll"),
        "idempotent_strategy": "unique",
        "webhooks": [{"url": sink.url("/poll"), "has_quorum_vote": true}],
    });
    let u = sdk.run(json!([
        {"op": "step", "step": unique},
        {"op": "step", "step": unique},
    ]));
    assert_ne!(job_id(&u[0]), job_id(&u[1]), "{u:?}");
    assert_ne!(u[0]["idempotent_key"], u[1]["idempotent_key"]);
    await_hooks(&sink, "/poll", 2);

    // Resubmitting order-1: the same job, no new call.
    let dup = sdk.step(keyed("order-1"));
    assert_eq!(job_id(&dup), id1);
    assert_eq!(dup["duplicate"], true, "{dup}");
    sentinel(&sdk, &origin, &sink, "unique");
    assert_eq!(origin.count("/v1/send"), 2, "a known key never runs again");
    assert_eq!(origin.count("/v1/poll"), 2);
    assert_eq!(at(&sink, "/hook").len(), 2);
    assert_eq!(at(&sink, "/poll").len(), 2);
}

// ---------------------------------------------------------------------------
// 4. Fallback chain: the primary answers 500, the fallback 200; one webhook
//    under the PRIMARY job_id.

#[test]
fn fallback_on_error_delivers_one_success_webhook_under_the_primary_job_id() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/primary?status=500"),
        "retry_policy": {"max_retries": 0, "max_reroutes": 0},
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
        "metadata": {"flow": "fallback"},
        "fallbacks": [{
            "step": {"url": origin.http_url("api.test", "/v1/backup?status=200")},
            "trigger_on_error": [500, 502, 503],
        }],
    }));
    assert_accepted(&answer);
    let id = job_id(&answer);

    let hooks = await_hooks(&sink, "/hook", 1);
    let p = hooks[0].json();
    assert_eq!(
        p["job_id"],
        id.as_str(),
        "webhook under the primary job_id: {p}"
    );
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(
        p["response"]["status_code"], 200,
        "the fallback's answer: {p}"
    );
    let body = json(p["response"]["body"].as_str().expect("body").as_bytes());
    assert_eq!(body["path"], "/v1/backup", "{p}");
    assert_eq!(p["metadata"]["flow"], "fallback", "{p}");
    assert!(sdk.verify(&hooks[0], SECRET).0);

    sentinel(&sdk, &origin, &sink, "fallback");
    assert_eq!(
        at(&sink, "/hook").len(),
        1,
        "exactly one webhook for the chain"
    );
    assert_eq!(
        origin.count("/v1/primary"),
        1,
        "retry_policy max_retries=0/max_reroutes=0: one primary call"
    );
    assert_eq!(origin.count("/v1/backup"), 1);
    let job = job_until(&ez, &id, "success", |j| j["status"] == "success");
    assert_eq!(job["response"]["status_code"], 200, "{job}");
}

#[test]
fn fallback_on_timeout_wins_while_the_primary_is_still_running() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/slow?delay_ms=4000"),
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
        "fallbacks": [{
            "step": {"url": origin.http_url("api.test", "/v1/quick")},
            "trigger_on_timeout": 300,
        }],
    }));
    let id = job_id(&answer);
    let p = await_hooks(&sink, "/hook", 1)[0].json();
    assert_eq!(p["job_id"], id.as_str(), "under the primary job_id: {p}");
    assert_eq!(p["status"], "success", "{p}");
    let body = json(p["response"]["body"].as_str().expect("body").as_bytes());
    assert_eq!(
        body["path"], "/v1/quick",
        "the fallback answered first: {p}"
    );
    assert_eq!(origin.count("/v1/slow"), 1);
    assert_eq!(origin.count("/v1/quick"), 1);
    sentinel(&sdk, &origin, &sink, "timeout");
    assert_eq!(at(&sink, "/hook").len(), 1);
}

#[test]
fn fallback_is_not_triggered_by_a_code_outside_its_trigger() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/gone?status=404"),
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
        "fallbacks": [{
            "step": {"url": origin.http_url("api.test", "/v1/unused")},
            "trigger_on_error": [500],
        }],
    }));
    let id = job_id(&answer);
    let p = await_hooks(&sink, "/hook", 1)[0].json();
    assert_eq!(p["job_id"], id.as_str());
    assert_eq!(p["status"], "failed", "{p}");
    assert_eq!(p["response"]["status_code"], 404, "{p}");
    sentinel(&sdk, &origin, &sink, "no-fallback");
    assert_eq!(origin.count("/v1/unused"), 0);
    assert_eq!(origin.count("/v1/gone"), 1, "a 404 is not retried");
    assert_eq!(at(&sink, "/hook").len(), 1);
}

// ---------------------------------------------------------------------------
// 5. on_success spawns a new job whose metadata names its parent.

#[test]
fn on_success_spawns_a_child_job_with_parent_job_id() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/first"),
        "method": "POST",
        "body": "{\"user\":1}",
        "metadata": {"flow": "signup"},
        "webhooks": [{"url": sink.url("/first"), "has_quorum_vote": true}],
        "on_success": {
            "url": origin.http_url("api.test", "/v1/second"),
            "metadata": {"step": "2"},
            "webhooks": [{"url": sink.url("/second"), "has_quorum_vote": true}],
        },
        "on_failure": {
            "url": origin.http_url("api.test", "/v1/never"),
            "webhooks": [{"url": sink.url("/never"), "has_quorum_vote": true}],
        },
    }));
    let parent = job_id(&answer);

    let first = await_hooks(&sink, "/first", 1)[0].json();
    assert_eq!(first["job_id"], parent.as_str(), "{first}");
    assert_eq!(first["status"], "success", "{first}");

    let second = await_hooks(&sink, "/second", 1)[0].json();
    assert_eq!(second["status"], "success", "{second}");
    assert_ne!(second["job_id"], parent.as_str(), "on_success is a new job");
    assert_eq!(
        second["metadata"]["parent_job_id"],
        parent.as_str(),
        "child metadata gains parent_job_id: {second}"
    );
    assert_eq!(second["metadata"]["step"], "2", "{second}");
    let body = json(
        second["response"]["body"]
            .as_str()
            .expect("body")
            .as_bytes(),
    );
    assert_eq!(body["path"], "/v1/second");
    let child = second["job_id"].as_str().expect("child job_id");
    let job = job_until(&ez, child, "success", |j| j["status"] == "success");
    assert_eq!(job["job_id"], child);

    sentinel(&sdk, &origin, &sink, "chain");
    assert_eq!(origin.count("/v1/first"), 1);
    assert_eq!(origin.count("/v1/second"), 1);
    assert_eq!(origin.count("/v1/never"), 0, "on_failure must not run");
    assert_eq!(at(&sink, "/first").len(), 1);
    assert_eq!(at(&sink, "/second").len(), 1);
    assert!(at(&sink, "/never").is_empty());
}

#[test]
fn on_failure_spawns_a_child_job_when_the_parent_fails() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = with_secret(builder()).start();
    let sdk = Sdk::new(&ez, "any-token");

    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/bad?status=400"),
        "webhooks": [{"url": sink.url("/parent"), "has_quorum_vote": true}],
        "on_success": {"url": origin.http_url("api.test", "/v1/not-this")},
        "on_failure": {
            "url": origin.http_url("api.test", "/v1/alert"),
            "webhooks": [{"url": sink.url("/alert"), "has_quorum_vote": true}],
        },
    }));
    let parent = job_id(&answer);
    let p = await_hooks(&sink, "/parent", 1)[0].json();
    assert_eq!(p["status"], "failed", "{p}");
    let alert = await_hooks(&sink, "/alert", 1)[0].json();
    assert_eq!(alert["status"], "success", "{alert}");
    assert_eq!(
        alert["metadata"]["parent_job_id"],
        parent.as_str(),
        "{alert}"
    );
    sentinel(&sdk, &origin, &sink, "on-failure");
    assert_eq!(origin.count("/v1/alert"), 1);
    assert_eq!(origin.count("/v1/not-this"), 0);
}

// ---------------------------------------------------------------------------
// 6. Regions: two ezthrottle instances, race and fanout.

/// The main instance with region `east` = a second ezthrottle.
fn two_regions() -> (Ezthrottle, Ezthrottle) {
    let east = builder().start();
    let main = with_secret(builder())
        .extra(&format!(
            "[regions.east]\nproxy = {}",
            common::toml_str(&east.proxy_url())
        ))
        .start();
    (main, east)
}

fn forwarded_by(ez: &Ezthrottle) -> f64 {
    let text = common::harness::control_get(ez, "/metrics");
    metrics::value(
        &text,
        "ezthrottle_requests_total",
        &[("domain", "api.test"), ("outcome", "forwarded")],
    )
    .unwrap_or(0.0)
}

#[test]
fn race_across_two_regions_delivers_one_success_webhook() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let (ez, east) = two_regions();
    let sdk = Sdk::new(&ez, "any-token");

    // Each region's call is held 400 ms, so both are under way before either
    // answers: "race" starts all listed regions at once.
    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/race?delay_ms=400"),
        "type": "performance",
        "regions": ["local", "east"],
        "execution_mode": "race",
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
    }));
    let id = job_id(&answer);
    let hooks = await_hooks(&sink, "/hook", 1);
    let p = hooks[0].json();
    assert_eq!(p["job_id"], id.as_str());
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(p["response"]["status_code"], 201, "{p}");
    assert!(sdk.verify(&hooks[0], SECRET).0);

    let vias = common::eventually(POLL_WAIT, "both regions reached the origin", || {
        let v = origin.vias("/v1/race");
        (v.len() >= 2).then_some(v)
    });
    let mut hop_counts: Vec<usize> = vias.iter().map(|v| hops(v)).collect();
    hop_counts.sort();
    assert_eq!(
        hop_counts,
        [1, 2],
        "one call direct (local), one through the east peer: {vias:?}"
    );
    // (The loser is cancelled mid-flight, so east need not count it as
    // forwarded; the two-hop Via above is the proof it went through east.)
    drop(east);

    sentinel(&sdk, &origin, &sink, "race");
    assert_eq!(at(&sink, "/hook").len(), 1, "one webhook for a race");
    assert_eq!(origin.count("/v1/race"), 2);
    let job = job_until(&ez, &id, "success", |j| j["status"] == "success");
    assert_eq!(job["response"]["status_code"], 201, "{job}");
}

#[test]
fn race_takes_the_first_2xx_not_the_first_answer() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let (ez, _east) = two_regions();
    let sdk = Sdk::new(&ez, "any-token");

    // Whichever region arrives first gets a 500 (after 400 ms); the other
    // gets the 201 (after 400 ms too, so later). No retries: the race alone
    // must find the success.
    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/first-2xx?delay_ms=400&fail_first=1&fail_status=500"),
        "regions": ["local", "east"],
        "execution_mode": "race",
        "retry_policy": {"max_retries": 0, "max_reroutes": 0},
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
    }));
    let id = job_id(&answer);
    let p = await_hooks(&sink, "/hook", 1)[0].json();
    assert_eq!(p["job_id"], id.as_str());
    assert_eq!(p["status"], "success", "the 2xx wins the race: {p}");
    assert_eq!(p["response"]["status_code"], 201, "{p}");
    sentinel(&sdk, &origin, &sink, "first-2xx");
    assert_eq!(origin.count("/v1/first-2xx"), 2, "one call per region");
    assert_eq!(at(&sink, "/hook").len(), 1);
}

#[test]
fn fanout_across_two_regions_reports_region_results() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let (ez, east) = two_regions();
    let sdk = Sdk::new(&ez, "any-token");

    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/fan"),
        "method": "POST",
        "body": "{\"n\":1}",
        "regions": ["local", "east"],
        "execution_mode": "fanout",
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
    }));
    let id = job_id(&answer);
    let p = await_hooks(&sink, "/hook", 1)[0].json();
    assert_eq!(p["job_id"], id.as_str());
    assert_eq!(p["status"], "success", "{p}");
    let results = &p["region_results"];
    assert!(
        !results.is_null(),
        "a fanout webhook carries region_results: {p}"
    );
    let text = results.to_string();
    assert!(
        text.contains("local") && text.contains("east"),
        "region_results names both regions: {p}"
    );
    sentinel(&sdk, &origin, &sink, "fanout");
    assert_eq!(origin.count("/v1/fan"), 2, "fanout runs every region");
    let mut hop_counts: Vec<usize> = origin.vias("/v1/fan").iter().map(|v| hops(v)).collect();
    hop_counts.sort();
    assert_eq!(hop_counts, [1, 2]);
    assert_eq!(forwarded_by(&east), 1.0);
    assert_eq!(at(&sink, "/hook").len(), 1, "one webhook for a fanout");
}

// ---------------------------------------------------------------------------
// 7. Webhook secrets through the SDK (create, get masked, rotate, delete),
//    per workspace, with auth on.

fn mask(s: &str) -> String {
    format!("{}****{}", &s[..4], &s[s.len() - 4..])
}

#[test]
fn webhook_secret_lifecycle_through_the_sdk() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder()
        .extra("[control.api_keys]\n\"tok_test\" = \"ws-a\"\n\"tok_other\" = \"ws-b\"")
        .start();
    let sdk = Sdk::new(&ez, "tok_test");
    let s1 = "first-secret-aaaa-0001";
    let s2 = "second-secret-bbbb-0002";
    let s3 = "rotated-secret-cccc-0003";

    let r = sdk.run(json!([
        {"op": "get_secret"},
        {"op": "create_secret", "primary": s1},
        {"op": "get_secret"},
        {"op": "create_secret", "primary": s1, "secondary": s2},
        {"op": "get_secret"},
        {"op": "rotate_secret", "new": s3},
        {"op": "get_secret"},
    ]));
    assert!(
        r[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("No webhook secrets configured"),
        "GET before any secret is the SDK's 404 path: {}",
        r[0]
    );
    assert_eq!(r[1]["status"], "ok", "{}", r[1]);
    assert_eq!(r[2]["primary_secret"], mask(s1).as_str(), "{}", r[2]);
    assert_eq!(r[2]["has_secondary"], false, "{}", r[2]);
    assert!(r[2]["secondary_secret"].is_null(), "{}", r[2]);
    assert_eq!(r[3]["status"], "ok", "{}", r[3]);
    assert_eq!(r[4]["primary_secret"], mask(s1).as_str());
    assert_eq!(r[4]["secondary_secret"], mask(s2).as_str());
    assert_eq!(r[4]["has_secondary"], true);
    // rotate_webhook_secret reads the (masked) primary, so it sets the new
    // secret alone.
    assert_eq!(r[5]["status"], "ok", "{}", r[5]);
    assert_eq!(r[6]["primary_secret"], mask(s3).as_str(), "{}", r[6]);
    assert_eq!(r[6]["has_secondary"], false, "{}", r[6]);
    let all = serde_json::to_string(&r).unwrap();
    for s in [s1, s2, s3] {
        assert!(!all.contains(s), "a secret value was echoed: {all}");
    }

    // Secrets are per workspace: the other token sees none.
    let other = Sdk::new(&ez, "tok_other").one(json!({"op": "get_secret"}));
    assert!(other["error"].is_string(), "ws-b has no secret: {other}");

    // A webhook after the rotation is signed with the new secret only.
    let answer = sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/signed"),
        "webhooks": [{"url": sink.url("/hook"), "has_quorum_vote": true}],
    }));
    let d = await_hooks(&sink, "/hook", 1).remove(0);
    assert_eq!(d.json()["job_id"], job_id(&answer).as_str());
    assert_eq!(sdk.verify(&d, s3), (true, "valid".to_string()));
    assert!(!sdk.verify(&d, s1).0, "the old secret no longer verifies");

    // Delete; then GET is 404 again and webhooks go unsigned.
    let r = sdk.run(json!([{"op": "delete_secret"}, {"op": "get_secret"}]));
    assert_eq!(r[0]["status"], "ok", "{}", r[0]);
    assert!(r[1]["error"].is_string(), "{}", r[1]);
    sdk.step(json!({
        "url": origin.http_url("api.test", "/v1/unsigned"),
        "webhooks": [{"url": sink.url("/unsigned"), "has_quorum_vote": true}],
    }));
    let d = await_hooks(&sink, "/unsigned", 1).remove(0);
    assert_eq!(
        d.header("x-ezthrottle-signature"),
        None,
        "no secret, no signature"
    );

    // The SDK with an unknown token is refused (401 from the envelope).
    let bad = Sdk::new(&ez, "tok_wrong").one(json!({
        "op": "step",
        "step": {"url": origin.http_url("api.test", "/v1/refused")},
    }));
    let err = bad["error"].as_str().unwrap_or_default();
    assert!(err.contains("unauthorized"), "{bad}");
    assert_eq!(origin.count("/v1/refused"), 0);
}

// ---------------------------------------------------------------------------
// The envelope itself: routed on the PATH of target_url, host ignored.

#[test]
fn proxy_envelope_routes_on_the_target_path_and_is_always_allowed() {
    let origin = ApiOrigin::start();
    let ez = builder().start();
    // The hosted service's URLs, as an unconfigured SDK would send them.
    let envelope = json!({
        "scope": "customer",
        "metric_name": "",
        "target_url": "https://ezthrottle.fly.dev/api/v1/jobs",
        "method": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": json!({
            "url": origin.http_url("api.test", "/v1/env"),
            "idempotent_key": "env-1",
        }).to_string(),
    })
    .to_string();
    let r = common::raw::request(
        ez.control,
        &format!(
            "POST /api/v1/proxy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{envelope}",
            envelope.len()
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "allowed", "{v}");
    assert_eq!(v["forwarded_response"]["status_code"], 201, "{v}");
    let inner = json(
        v["forwarded_response"]["body"]
            .as_str()
            .unwrap_or_else(|| panic!("forwarded_response.body must be a string: {v}"))
            .as_bytes(),
    );
    assert_eq!(inner["idempotent_key"], "env-1", "{inner}");
    let id = job_id(&inner);
    job_until(&ez, &id, "success", |j| j["status"] == "success");
    assert_eq!(origin.count("/v1/env"), 1);
}
