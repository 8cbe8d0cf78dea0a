//! Parking (SPEC §7): requests that name a webhook and cannot (or need not)
//! be answered now become durable jobs, answered `202` at once and finished
//! later with a signed webhook — across a `kill -9` too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::api_origin::ApiOrigin;
use common::harness::EzBuilder;
use common::webhook_sink::{Delivery, WebhookSink};
use common::{curl, error_code, json, metrics, Ezthrottle, Fetch};

const SECRET: &str = "whsec_parking_test_0123456789";
const WEBHOOK_WAIT: Duration = Duration::from_secs(60);

fn builder(origin: &ApiOrigin, limits: &str) -> EzBuilder {
    EzBuilder::new()
        .egress_loopback()
        .upstream_ca(&origin.pki.ca_path)
        .connect_port(origin.tls_addr.port())
        .resolve("api.test", "127.0.0.1")
        .limits(limits)
        .extra(&format!("\n[webhooks]\nsecret = \"{SECRET}\"\n"))
}

fn post(ez: &Ezthrottle, url: &str, headers: &[String]) -> Fetch {
    let mut c = curl()
        .proxy(ez)
        .cacert(&ez.ca_path)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg("Content-Type: application/json")
        .arg("--data-binary")
        .arg(r#"{"amount":100}"#);
    for h in headers {
        c = c.arg("-H").arg(h);
    }
    c.fetch(url)
}

/// `SDK verify_webhook_signature(payload, header, secret)` from the real
/// PyPI package (venv made by scripts/test).
fn sdk_verifies(d: &Delivery, secret: &str) -> String {
    let python = common::py::sdk_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, &d.body).expect("write payload");
    let sig = d
        .header("x-ezthrottle-signature")
        .unwrap_or_else(|| panic!("delivery has no X-EZThrottle-Signature: {:?}", d.headers));
    let code = "import sys\nfrom ezthrottle.webhook_utils import verify_webhook_signature\nok, why = verify_webhook_signature(open(sys.argv[1], 'rb').read(), sys.argv[2], sys.argv[3])\nprint(ok, why)";
    let out = common::proc::run(
        Command::new(python)
            .arg("-c")
            .arg(code)
            .arg(&payload)
            .arg(sig)
            .arg(secret),
        common::CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "SDK script failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn respond_async_parks_at_once_and_the_signed_webhook_carries_the_result() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder(&origin, "rps = 1000.0\nmax_concurrent = 100").start();
    let f = post(
        &ez,
        &origin.http_url("api.test", "/v1/orders"),
        &[
            format!("X-EZThrottle-Webhook: {}", sink.url("/hook")),
            "Prefer: respond-async".into(),
            r#"X-EZThrottle-Metadata: {"order":42,"who":"test"}"#.into(),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let accepted = json(&f.body);
    let job_id = accepted["job_id"].as_str().expect("job_id").to_string();
    let key = accepted["idempotent_key"]
        .as_str()
        .expect("idempotent_key")
        .to_string();
    assert_eq!(accepted["status"], "queued");
    assert!(!key.is_empty());

    let d = sink.next(WEBHOOK_WAIT);
    assert_eq!(d.path, "/hook");
    assert_eq!(d.header("content-type"), Some("application/json"));
    let p = d.json();
    assert_eq!(p["job_id"], job_id.as_str(), "{p}");
    assert_eq!(p["idempotent_key"], key.as_str());
    assert_eq!(p["status"], "success");
    assert_eq!(p["response"]["status_code"], 201);
    assert_eq!(
        p["metadata"],
        serde_json::json!({"order": 42, "who": "test"})
    );
    // The origin got the body and the job's key.
    let body = json(
        p["response"]["body"]
            .as_str()
            .expect("body string")
            .as_bytes(),
    );
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body_len"], 14);
    assert_eq!(p["response"]["headers"]["x-echo-key"], key.as_str());
    assert_eq!(origin.count("/v1/orders"), 1);

    assert_eq!(sdk_verifies(&d, SECRET), "True valid");
    assert!(sdk_verifies(&d, "some-other-secret-0123").starts_with("False"));

    metrics::text_once(
        &ez,
        "ezthrottle_requests_total",
        &[("domain", "api.test"), ("outcome", "parked")],
        1.0,
    );
    common::eventually(Duration::from_secs(10), "jobs{status=success} = 1", || {
        let text = common::harness::control_get(&ez, "/metrics");
        (metrics::value(&text, "ezthrottle_jobs", &[("status", "success")]) == Some(1.0))
            .then_some(())
    });
}

#[test]
fn bad_parking_headers_are_400_and_nothing_is_queued() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin, "rps = 1000.0\nmax_concurrent = 100").start();
    let url = origin.http_url("api.test", "/v1/bad");
    let f = post(&ez, &url, &["X-EZThrottle-Webhook: ftp://h.test/x".into()]);
    assert_eq!(f.code, 400, "{}", f.describe());
    assert_eq!(error_code(&f.body), "bad_request");
    let f = post(
        &ez,
        &url,
        &[
            "X-EZThrottle-Webhook: http://127.0.0.1:9999/h".into(),
            "X-EZThrottle-Metadata: [1,2]".into(),
        ],
    );
    assert_eq!(f.code, 400, "{}", f.describe());
    assert!(common::error_message(&f.body).contains("X-EZThrottle-Metadata"));
    assert_eq!(origin.calls(), 0);
}

#[test]
fn an_exhausted_wait_parks_with_a_webhook_and_fails_fast_without() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder(&origin, "rps = 1000.0\nmax_concurrent = 1").start();
    // Hold the domain's only slot.
    let slow_url = origin.http_url("api.test", "/v1/slow?delay_ms=1500");
    let proxy = ez.proxy_url();
    let slow = std::thread::spawn(move || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "60",
                "-x",
                &proxy,
                &slow_url,
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    assert_eq!(origin.wait_arrival(Duration::from_secs(30)), "/v1/slow");

    let url = origin.http_url("api.test", "/v1/waits");
    let f = post(&ez, &url, &["X-EZThrottle-Max-Wait: 0.2".into()]);
    assert_eq!(f.code, 429, "{}", f.describe());
    assert_eq!(error_code(&f.body), "throttle_wait_timeout");

    let f = post(
        &ez,
        &url,
        &[
            "X-EZThrottle-Max-Wait: 0.2".into(),
            format!("X-EZThrottle-Webhook: {}", sink.url("/waited")),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let job_id = json(&f.body)["job_id"]
        .as_str()
        .expect("job_id")
        .to_string();
    assert_eq!(slow.join().expect("slow request"), "201");

    // The job keeps the request's short max wait, so its first attempts may
    // be refused for capacity; it waits in the queue until it gets through.
    let d = sink.next(WEBHOOK_WAIT);
    let p = d.json();
    assert_eq!(p["job_id"], job_id.as_str());
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(origin.count("/v1/waits"), 1);
}

#[test]
fn a_retry_that_would_outlast_the_max_wait_parks() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder(&origin, "rps = 1000.0\nmax_concurrent = 100").start();
    let f = post(
        &ez,
        &origin.http_url("api.test", "/v1/busy?fail_first=1&retry_after=3"),
        &[
            "X-EZThrottle-Max-Wait: 1".into(),
            "Idempotency-Key: busy-1".into(),
            format!("X-EZThrottle-Webhook: {}", sink.url("/busy")),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let accepted = json(&f.body);
    // The client's key is the job's key.
    assert_eq!(accepted["idempotent_key"], "busy-1");
    let d = sink.next(WEBHOOK_WAIT);
    let p = d.json();
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(p["response"]["headers"]["x-echo-key"], "busy-1");
    assert_eq!(origin.count("/v1/busy"), 2);
}

#[test]
fn a_request_parked_for_a_long_retry_after_keeps_retrying_until_it_succeeds() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder(&origin, "rps = 1000.0\nmax_concurrent = 100").start();
    // The API answers "wait 2 s" three times; the request may wait 1 s. Its
    // synchronous call parks it; the job must not give up after one more.
    let f = post(
        &ez,
        &origin.http_url("api.test", "/v1/patient?fail_first=3&retry_after=2"),
        &[
            "X-EZThrottle-Max-Wait: 1".into(),
            "Idempotency-Key: patient-1".into(),
            format!("X-EZThrottle-Webhook: {}", sink.url("/patient")),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let job_id = json(&f.body)["job_id"]
        .as_str()
        .expect("job_id")
        .to_string();
    let d = sink.next(WEBHOOK_WAIT);
    let p = d.json();
    assert_eq!(p["job_id"], job_id.as_str());
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(origin.count("/v1/patient"), 4);
    // The job's attempts continue the synchronous call's: 4 upstream calls.
    let view = common::harness::control_get(&ez, &format!("/api/v1/jobs/{job_id}"));
    let v: serde_json::Value = serde_json::from_str(&view).expect("job JSON");
    assert_eq!(v["attempts"], 4, "{v}");
}

#[test]
fn parked_jobs_survive_kill_9_and_every_webhook_arrives() {
    const N: usize = 200;
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let data = tempfile::tempdir().expect("data dir");
    let limits = "rps = 1000.0\nmax_concurrent = 4";
    let mut ez = builder(&origin, limits).data_dir(data.path()).start();

    // 200 parked requests over one keep-alive connection (curl, many URLs).
    let urls: Vec<String> = (0..N)
        .map(|i| origin.http_url("api.test", &format!("/v1/slow/{i}?delay_ms=100")))
        .collect();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "120",
            "-x",
            &ez.proxy_url(),
            "-X",
            "POST",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "{}",
        ])
        .args(["-H", "Prefer: respond-async"])
        .args([
            "-H",
            &format!("X-EZThrottle-Webhook: {}", sink.url("/crash")),
        ])
        .args(["-w", "\n"])
        .args(&urls)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let accepted: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            json(l.as_bytes())["job_id"]
                .as_str()
                .expect("job_id")
                .to_string()
        })
        .collect();
    assert_eq!(accepted.len(), N, "every request answered 202: {text}");
    let expected: BTreeSet<String> = accepted.into_iter().collect();
    assert_eq!(expected.len(), N, "distinct job ids");

    // Kill mid-way.
    sink.until(WEBHOOK_WAIT, "the first 20 webhooks", |all| all.len() >= 20);
    let status = ez.stop_with("KILL");
    assert!(!status.success());
    let before = sink.all().len();
    assert!(
        before < N,
        "killed too late to test anything ({before} delivered)"
    );

    let ez2 = builder(&origin, limits).data_dir(data.path()).start();
    sink.until(
        Duration::from_secs(180),
        "a webhook for every parked job",
        |all| {
            all.iter()
                .filter_map(|d| d.json()["job_id"].as_str().map(str::to_string))
                .collect::<BTreeSet<_>>()
                .is_superset(&expected)
        },
    );
    let all = sink.all();
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for d in &all {
        let p = d.json();
        assert_eq!(p["status"], "success", "{p}");
        *per_job
            .entry(p["job_id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let repeats = per_job.values().filter(|n| **n > 1).count();
    println!(
        "parked {N}; delivered before kill {before}; webhooks {} for {} jobs ({repeats} delivered more than once); origin calls {}",
        all.len(),
        per_job.len(),
        origin.calls()
    );
    assert_eq!(per_job.len(), N);
    drop(ez2);
}

#[test]
fn a_webhook_that_fails_twice_gets_exactly_the_payload_on_the_third_try() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::failing_first(2);
    let ez = EzBuilder::new()
        .egress_loopback()
        .resolve("api.test", "127.0.0.1")
        .extra(&format!(
            "\n[webhooks]\nsecret = \"{SECRET}\"\nbackoff = \"100ms\"\n"
        ))
        .start();
    let f = post(
        &ez,
        &origin.http_url("api.test", "/v1/flaky-hook"),
        &[
            format!("X-EZThrottle-Webhook: {}", sink.url("/flaky")),
            "Prefer: respond-async".into(),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let tries: Vec<Delivery> = (0..3).map(|_| sink.next(WEBHOOK_WAIT)).collect();
    assert_eq!(
        tries.iter().map(|d| d.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    assert_eq!(tries[0].body, tries[2].body, "the same bytes every time");
    assert_eq!(tries[1].body, tries[2].body);
    assert_eq!(tries[2].json()["job_id"], json(&f.body)["job_id"]);
    assert_eq!(sdk_verifies(&tries[2], SECRET), "True valid");

    common::eventually(Duration::from_secs(10), "webhook metrics", || {
        let text = common::harness::control_get(&ez, "/metrics");
        let delivered = metrics::value(
            &text,
            "ezthrottle_webhook_deliveries_total",
            &[("result", "delivered")],
        );
        let retried = metrics::value(
            &text,
            "ezthrottle_webhook_deliveries_total",
            &[("result", "retry")],
        );
        (delivered == Some(1.0) && retried == Some(2.0)).then_some(())
    });
    // No fourth delivery once one succeeded.
    assert_eq!(sink.all().len(), 3);
}

#[test]
fn a_quorum_that_cannot_be_met_shows_in_the_job_and_in_metrics() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::failing_first(usize::MAX);
    let ez = EzBuilder::new()
        .egress_loopback()
        .resolve("api.test", "127.0.0.1")
        .extra("\n[webhooks]\nmax_attempts = 2\nbackoff = \"50ms\"\n")
        .start();
    let f = post(
        &ez,
        &origin.http_url("api.test", "/v1/unheard"),
        &[
            format!("X-EZThrottle-Webhook: {}", sink.url("/down")),
            "Prefer: respond-async".into(),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let job_id = json(&f.body)["job_id"]
        .as_str()
        .expect("job_id")
        .to_string();
    let view = common::eventually(
        Duration::from_secs(30),
        "the delivery to fail for good",
        || {
            let text = common::harness::control_get(&ez, &format!("/api/v1/jobs/{job_id}"));
            let v = json(text.as_bytes());
            (v["webhooks"][0]["state"] == "failed").then_some(v)
        },
    );
    assert_eq!(
        view["status"], "success",
        "the job itself succeeded: {view}"
    );
    assert_eq!(view["webhooks"][0]["attempts"], 2);
    assert_eq!(view["webhook_quorum"]["met"], false);
    assert_eq!(view["webhook_quorum"]["impossible"], true);
    assert_eq!(sink.all().len(), 2);
    // Counted right after the failed attempt is recorded.
    common::eventually(Duration::from_secs(10), "quorum_failed_total = 1", || {
        let text = common::harness::control_get(&ez, "/metrics");
        (metrics::value(&text, "ezthrottle_webhook_quorum_failed_total", &[]) == Some(1.0))
            .then_some(())
    });
}

#[test]
fn an_intercepted_https_request_parks_and_its_job_calls_the_tls_origin() {
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder(&origin, "rps = 1000.0\nmax_concurrent = 100").start();
    let f = post(
        &ez,
        &origin.https_url("/v1/tls-parked"),
        &[
            format!("X-EZThrottle-Webhook: {}", sink.url("/tls")),
            "Prefer: respond-async".into(),
            "Authorization: Bearer app-token".into(),
        ],
    );
    assert_eq!(f.code, 202, "{}", f.describe());
    let job_id = json(&f.body)["job_id"]
        .as_str()
        .expect("job_id")
        .to_string();
    let p = sink.next(WEBHOOK_WAIT).json();
    assert_eq!(p["job_id"], job_id.as_str());
    assert_eq!(p["status"], "success", "{p}");
    let body = json(p["response"]["body"].as_str().expect("body").as_bytes());
    assert_eq!(body["path"], "/v1/tls-parked");
    assert_eq!(body["body_len"], 14);
    assert_eq!(origin.count("/v1/tls-parked"), 1);
}
