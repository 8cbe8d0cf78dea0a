//! Webhooks (SPEC §8): the secrets API through the real binary, and durable
//! signed delivery against a real loopback receiver, verified with the real
//! PyPI SDK (`EZT_SDK_PYTHON`, set by `scripts/test`).

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use common::harness::EzBuilder;
use common::proc::{run, show};
use common::serve::Loopback;
use common::{curl, error_code, error_message, json, Ezthrottle, Fetch};
use ezthrottle::config::Config;
use ezthrottle::metrics::Metrics;
use ezthrottle::store::{
    now_ms, DeliveryState, EmbeddedStore, JobEnd, JobRecord, JobStatus, NewDelivery, Store,
    WebhookSecrets,
};
use ezthrottle::webhooks::{
    build_payload, quorum, DeliveryEvent, Secrets, Webhooks, SIGNATURE_HEADER,
};

/// Bound on waiting for one webhook event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A real HTTP receiver on loopback.

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }
}

struct ReceiverState {
    /// Statuses to answer, in order; `then` once they run out.
    script: Mutex<(VecDeque<u16>, u16)>,
    seen: Mutex<mpsc::Sender<Received>>,
}

/// An axum server on 127.0.0.1 on its own runtime that answers from a
/// script and reports every request through a channel.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    rx: mpsc::Receiver<Received>,
    _server: Loopback,
}

impl Receiver {
    fn start(script: &[u16], then: u16) -> Receiver {
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(ReceiverState {
            script: Mutex::new((script.iter().copied().collect(), then)),
            seen: Mutex::new(tx),
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/hook/{*rest}", post(receive))
            .with_state(state.clone());
        let server = Loopback::new("receiver");
        let addr = server.spawn(|listener| async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            state,
            rx,
            _server: server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// From now on answer `status` to everything.
    fn answer_always(&self, status: u16) {
        let mut s = self.state.script.lock().unwrap();
        s.0.clear();
        s.1 = status;
    }

    /// The next request, within `EVENT_TIMEOUT`.
    fn next(&self) -> Received {
        self.rx
            .recv_timeout(EVENT_TIMEOUT)
            .unwrap_or_else(|_| panic!("the receiver got no webhook within {EVENT_TIMEOUT:?}"))
    }

    /// Requests that already arrived.
    fn drain(&self) -> Vec<Received> {
        self.rx.try_iter().collect()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = {
        let mut s = state.script.lock().unwrap();
        let then = s.1;
        s.0.pop_front().unwrap_or(then)
    };
    let _ = state.seen.lock().unwrap().send(Received {
        at: Instant::now(),
        headers,
        body: body.to_vec(),
    });
    StatusCode::from_u16(status).unwrap()
}

// ---------------------------------------------------------------------------
// The real SDK.

const SDK_VERIFY: &str = r#"
import sys
from ezthrottle import verify_webhook_signature, try_verify_with_secrets
body = open(sys.argv[1], "rb").read()
header, secret = sys.argv[2], sys.argv[3]
ok, reason = verify_webhook_signature(body, header, secret)
if len(sys.argv) > 4:
    ok, reason = try_verify_with_secrets(body, header, sys.argv[4], secret)
print("ok" if ok else "refused", reason)
"#;

/// What the SDK's `verify_webhook_signature(body, header, secret)` says
/// (`try_verify_with_secrets(body, header, primary, secret)` when `primary`
/// is given): `"ok valid..."` or `"refused <reason>"`.
fn sdk_verify(body: &[u8], header: &str, secret: &str, primary: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body.json");
    std::fs::write(&body_path, body).unwrap();
    let mut cmd = Command::new(common::py::sdk_python());
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-c")
        .arg(SDK_VERIFY)
        .arg(&body_path)
        .arg(header)
        .arg(secret);
    if let Some(p) = primary {
        cmd.arg(p);
    }
    let out = run(&mut cmd, common::CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "SDK verify script failed:\n{}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------
// The worker, at library level.

struct Lib {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    webhooks: Arc<Webhooks>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Lib {
    /// A store under `dir` and a running worker configured by `webhooks_toml`
    /// (the body of `[webhooks]`).
    fn start(dir: &Path, webhooks_toml: &str) -> Lib {
        Self::start_with(dir, &format!("[webhooks]\n{webhooks_toml}\n"))
    }

    /// Same with a whole config file.
    fn start_with(dir: &Path, config_toml: &str) -> Lib {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // The receivers are on loopback: open it as a user would (SPEC §13).
        let config = Config::from_toml_str(
            &format!("{config_toml}\n[egress]\nallow = [\"127.0.0.0/8\"]\nallow_ports = [\"1024-65535\"]\n"),
            "test.toml",
        )
        .expect("test config");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).expect("store"));
        let metrics = Arc::new(Metrics::new(100));
        let secrets = Secrets::new(store.clone(), &config.webhooks, None).unwrap();
        let webhooks = Arc::new(
            Webhooks::with_secrets(&config, store.clone(), metrics.clone(), secrets).unwrap(),
        );
        let worker = Some(rt.spawn(webhooks.clone().run()));
        Lib {
            rt,
            store,
            metrics,
            webhooks,
            worker,
        }
    }

    /// Insert a job and finish it with deliveries to `urls`, then notify.
    fn finish_job(&self, id: &str, workspace: &str, payload: &[u8], urls: &[&str]) {
        let now = now_ms();
        let job = queued_job(id, workspace, now);
        let deliveries = urls
            .iter()
            .map(|u| NewDelivery {
                url: u.to_string(),
                has_quorum_vote: true,
            })
            .collect();
        self.rt.block_on(async {
            assert!(self.store.job_insert(job).await.unwrap().is_none());
            assert!(self
                .store
                .job_finish(id, None, ended(payload, deliveries))
                .await
                .unwrap());
        });
        self.webhooks.notify();
    }

    /// The next event for which `pred` holds, within `EVENT_TIMEOUT`.
    fn wait_event(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<DeliveryEvent>,
        what: &str,
        pred: impl Fn(&DeliveryEvent) -> bool,
    ) -> DeliveryEvent {
        self.rt.block_on(async {
            tokio::time::timeout(EVENT_TIMEOUT, async {
                loop {
                    match events.recv().await {
                        Ok(e) if pred(&e) => return e,
                        Ok(_) => continue,
                        Err(e) => panic!("event stream: {e}"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no {what} event within {EVENT_TIMEOUT:?}"))
        })
    }

    fn metric(&self, result: &str) -> u64 {
        self.metrics
            .webhook_deliveries_total
            .with_label_values(&[result])
            .get()
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.abort();
        }
    }
}

fn sample_payload(job_id: &str) -> Vec<u8> {
    build_payload(
        job_id,
        &format!("key-{job_id}"),
        true,
        200,
        &[
            ("content-type".to_string(), "application/json".to_string()),
            ("x-request-id".to_string(), "r-1".to_string()),
        ],
        "{\"charge\":\"ch_1\",\"note\":\"caf\u{e9} \u{2713}\"}".as_bytes(),
        serde_json::json!({"order": 42, "tenant": "acme"}),
        None,
    )
}

#[test]
fn delivery_retries_until_2xx_with_the_exact_signed_payload() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::start(
        dir.path(),
        "backoff = \"100ms\"\nbackoff_cap = \"1s\"\nmax_attempts = 8",
    );
    let secret = "whsec_primary_0123456789";
    lib.rt
        .block_on(lib.store.secrets_put(WebhookSecrets {
            workspace: "ws-b".into(),
            primary: secret.into(),
            secondary: None,
        }))
        .unwrap();
    let receiver = Receiver::start(&[500, 500], 200);
    let mut events = lib.webhooks.events();
    let payload = sample_payload("job_b");
    lib.finish_job("job_b", "ws-b", &payload, &[&receiver.url("/hook")]);

    let tries = [receiver.next(), receiver.next(), receiver.next()];
    let delivered = lib.wait_event(&mut events, "delivered", |e| {
        e.state == DeliveryState::Delivered
    });
    assert_eq!(delivered.job_id, "job_b");
    assert_eq!(delivered.attempts, 3);
    assert_eq!(delivered.last_status, Some(200));
    assert!(receiver.drain().is_empty(), "no attempt after the 2xx");

    for t in &tries {
        assert_eq!(
            t.body, payload,
            "every attempt carries the exact payload bytes"
        );
        assert_eq!(
            t.header("content-type").as_deref(),
            Some("application/json")
        );
    }
    // Backoff: 100 ms, then 200 ms (a little slack for timer granularity).
    let gap1 = tries[1].at - tries[0].at;
    let gap2 = tries[2].at - tries[1].at;
    assert!(
        gap1 >= Duration::from_millis(90),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(190),
        "second retry after {gap2:?}"
    );

    // The stored record.
    let ds = lib
        .rt
        .block_on(lib.store.deliveries_for_job("job_b"))
        .unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].state, DeliveryState::Delivered);
    assert_eq!(ds[0].attempts, 3);
    assert_eq!(ds[0].last_status, Some(200));
    assert_eq!(ds[0].last_error, None);
    let q = lib
        .rt
        .block_on(quorum(lib.store.as_ref(), "job_b", 1))
        .unwrap();
    assert!(q.met && !q.impossible, "{q:?}");
    assert_eq!(
        (
            lib.metric("retry"),
            lib.metric("delivered"),
            lib.metric("failed")
        ),
        (2, 1, 0)
    );

    // The real SDK accepts the signature of the delivered attempt...
    let last = &tries[2];
    let header = last
        .header(SIGNATURE_HEADER)
        .expect("signed: the workspace has a secret");
    assert!(
        header.starts_with("t=") && header.contains(",v1="),
        "{header}"
    );
    assert_eq!(
        sdk_verify(&last.body, &header, secret, None),
        "ok valid",
        "SDK verify_webhook_signature"
    );
    // ...and of every earlier attempt (each is signed when sent).
    assert!(sdk_verify(
        &tries[0].body,
        &tries[0].header(SIGNATURE_HEADER).unwrap(),
        secret,
        None
    )
    .starts_with("ok"));
    // It refuses a wrong secret and a changed body, so the check means something.
    assert!(sdk_verify(&last.body, &header, "whsec_other_0123456789", None).starts_with("refused"));
    let mut tampered = last.body.clone();
    tampered[10] ^= 1;
    assert!(sdk_verify(&tampered, &header, secret, None).starts_with("refused"));
    // During a rotation the receiver verifies against new and old secret.
    assert!(
        sdk_verify(&last.body, &header, secret, Some("whsec_new_primary_01234"))
            .starts_with("ok valid_secondary")
    );
}

#[test]
fn exhausted_attempts_fail_the_delivery_and_the_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::start(
        dir.path(),
        "backoff = \"50ms\"\nbackoff_cap = \"100ms\"\nmax_attempts = 3",
    );
    let receiver = Receiver::start(&[], 503);
    let refused = format!("http://{}/hook", common::closed_addr());
    let mut events = lib.webhooks.events();
    let payload = sample_payload("job_c");
    lib.finish_job(
        "job_c",
        "default",
        &payload,
        &[&receiver.url("/hook"), &refused],
    );

    let mut failed = Vec::new();
    while failed.len() < 2 {
        failed.push(lib.wait_event(&mut events, "failed", |e| e.state == DeliveryState::Failed));
    }
    assert!(failed.iter().all(|e| e.attempts == 3), "{failed:?}");
    let got: Vec<Received> = receiver.drain();
    assert_eq!(
        got.len(),
        3,
        "exactly max_attempts requests reached the receiver"
    );
    assert!(
        got.iter().all(|r| r.header(SIGNATURE_HEADER).is_none()),
        "no secret for the workspace: unsigned"
    );

    let ds = lib
        .rt
        .block_on(lib.store.deliveries_for_job("job_c"))
        .unwrap();
    let by_url = |u: &str| ds.iter().find(|d| d.url == u).unwrap().clone();
    let http = by_url(&receiver.url("/hook"));
    assert_eq!(
        (http.state, http.attempts, http.last_status),
        (DeliveryState::Failed, 3, Some(503))
    );
    assert!(
        http.last_error.as_deref().unwrap().contains("503"),
        "{:?}",
        http.last_error
    );
    let conn = by_url(&refused);
    assert_eq!(
        (conn.state, conn.attempts, conn.last_status),
        (DeliveryState::Failed, 3, None)
    );
    let err = conn.last_error.unwrap();
    assert!(err.contains("connect"), "{err}");
    assert!(!err.contains(&refused), "no URL in the error text: {err}");

    assert_eq!(
        lib.rt.block_on(lib.store.deliveries_next_due()).unwrap(),
        None
    );
    let q = lib
        .rt
        .block_on(quorum(lib.store.as_ref(), "job_c", 1))
        .unwrap();
    assert!(!q.met && q.impossible && q.failed_votes == 2, "{q:?}");
    assert_eq!(
        (
            lib.metric("retry"),
            lib.metric("failed"),
            lib.metric("delivered")
        ),
        (4, 2, 0)
    );
}

#[test]
fn a_non_http_url_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::start(dir.path(), "max_attempts = 8");
    let mut events = lib.webhooks.events();
    lib.finish_job("job_f", "default", b"{}", &["ftp://127.0.0.1/hook"]);
    let e = lib.wait_event(&mut events, "failed", |e| e.state == DeliveryState::Failed);
    assert_eq!(e.attempts, 1);
    let ds = lib
        .rt
        .block_on(lib.store.deliveries_for_job("job_f"))
        .unwrap();
    assert!(
        ds[0].last_error.as_deref().unwrap().contains("http"),
        "{:?}",
        ds[0].last_error
    );
}

#[test]
fn many_deliveries_are_each_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::start(dir.path(), "backoff = \"50ms\"");
    let receiver = Receiver::start(&[], 200);
    let mut events = lib.webhooks.events();
    let n = 40;
    for i in 0..n {
        let id = format!("job_m{i}");
        lib.finish_job(
            &id,
            "default",
            &sample_payload(&id),
            &[&receiver.url(&format!("/hook/{i}"))],
        );
    }
    for _ in 0..n {
        lib.wait_event(&mut events, "delivered", |e| {
            e.state == DeliveryState::Delivered
        });
    }
    let got = receiver.drain();
    assert_eq!(got.len(), n, "one request per delivery, none twice");
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| json(&r.body)["job_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn a_restarted_worker_delivers_what_a_dropped_one_left_pending() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[503], 200);
    let payload = sample_payload("job_r");
    {
        let lib = Lib::start(dir.path(), "backoff = \"200ms\"\nbackoff_cap = \"200ms\"");
        let mut events = lib.webhooks.events();
        lib.finish_job("job_r", "default", &payload, &[&receiver.url("/hook")]);
        let e = lib.wait_event(&mut events, "retry", |e| e.state == DeliveryState::Pending);
        assert_eq!(e.attempts, 1);
        // `lib` (worker, runtime, store handle) is dropped here, mid-backoff.
    }
    assert_eq!(receiver.next().body, payload);
    let lib = Lib::start(dir.path(), "backoff = \"200ms\"\nbackoff_cap = \"200ms\"");
    let got = receiver.next();
    assert_eq!(got.body, payload);
    let ds = common::eventually(EVENT_TIMEOUT, "the delivery to be recorded", || {
        let ds = lib
            .rt
            .block_on(lib.store.deliveries_for_job("job_r"))
            .unwrap();
        (ds[0].state == DeliveryState::Delivered).then_some(ds)
    });
    assert_eq!(ds[0].attempts, 2);
}

#[test]
fn https_webhooks_trust_upstream_ca_file_and_follow_resolve_overrides() {
    let origin = common::Origin::start();
    let url = origin.https_url("/status/204");
    let resolve = "[resolve]\n\"origin.test\" = \"127.0.0.1\"\n[webhooks]\nmax_attempts = 1\n";

    // Trusting the origin's CA: delivered, to 127.0.0.1 through [resolve].
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::start_with(
        dir.path(),
        &format!(
            "[tls]\nupstream_ca_file = {}\n{resolve}",
            common::toml_str(&origin.pki.ca_path.to_string_lossy())
        ),
    );
    let mut events = lib.webhooks.events();
    lib.finish_job("job_t", "default", b"{}", &[&url]);
    let e = lib.wait_event(&mut events, "outcome", |e| {
        e.state != DeliveryState::Pending
    });
    assert_eq!(
        (e.state, e.last_status),
        (DeliveryState::Delivered, Some(204))
    );
    assert_eq!(origin.count("/status/204"), 1);
    drop(lib);

    // System roots only: the certificate is refused, nothing is sent.
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::start_with(dir.path(), resolve);
    let mut events = lib.webhooks.events();
    lib.finish_job("job_u", "default", b"{}", &[&url]);
    let e = lib.wait_event(&mut events, "outcome", |e| {
        e.state != DeliveryState::Pending
    });
    assert_eq!((e.state, e.last_status), (DeliveryState::Failed, None));
    let ds = lib
        .rt
        .block_on(lib.store.deliveries_for_job("job_u"))
        .unwrap();
    let err = ds[0].last_error.clone().unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(origin.count("/status/204"), 1);
}

// ---------------------------------------------------------------------------
// The real binary.

fn request(ez: &Ezthrottle, method: &str, body: Option<&str>, token: Option<&str>) -> Fetch {
    let mut c = curl().arg("-X").arg(method);
    if let Some(b) = body {
        c = c
            .arg("-H")
            .arg("Content-Type: application/json")
            .arg("--data-binary")
            .arg(b);
    }
    if let Some(t) = token {
        c = c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    c.fetch(&ez.control_url("/api/v1/webhook-secrets"))
}

fn assert_ok(f: &Fetch) {
    f.assert_status(200);
    let v = json(&f.body);
    assert_eq!(v["status"], "ok", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

const PRIMARY: &str = "abcd_first_secret_wxyz";
const ROTATED: &str = "efgh_second_secret_9876";

#[test]
fn secrets_api_lifecycle_through_the_binary() {
    let ez = EzBuilder::new().start();

    let r = request(&ez, "GET", None, None);
    r.assert_status(404);
    assert_eq!(error_code(&r.body), "webhook_secrets_not_found");

    // Validation: 400 naming the field.
    let r = request(&ez, "POST", Some(r#"{"primary_secret":"too-short"}"#), None);
    r.assert_status(400);
    assert!(
        error_message(&r.body).contains("primary_secret"),
        "{}",
        r.text()
    );
    let r = request(
        &ez,
        "POST",
        Some(&format!(
            r#"{{"primary_secret":"{PRIMARY}","secondary_secret":"short"}}"#
        )),
        None,
    );
    r.assert_status(400);
    assert!(
        error_message(&r.body).contains("secondary_secret"),
        "{}",
        r.text()
    );
    let r = request(&ez, "POST", Some("{not json"), None);
    r.assert_status(400);
    assert_eq!(error_code(&r.body), "invalid_json");
    let r = request(&ez, "POST", Some("{}"), None);
    r.assert_status(400);
    assert!(error_message(&r.body).contains("primary_secret"));

    // Create, read masked.
    assert_ok(&request(
        &ez,
        "POST",
        Some(&format!(r#"{{"primary_secret":"{PRIMARY}"}}"#)),
        None,
    ));
    let r = request(&ez, "GET", None, None);
    r.assert_status(200);
    assert_eq!(
        json(&r.body),
        serde_json::json!({"primary_secret": "abcd****wxyz", "secondary_secret": null, "has_secondary": false})
    );

    // Rotate: new primary, old one as secondary.
    assert_ok(&request(
        &ez,
        "POST",
        Some(&format!(
            r#"{{"primary_secret":"{ROTATED}","secondary_secret":"{PRIMARY}"}}"#
        )),
        None,
    ));
    let r = request(&ez, "GET", None, None);
    assert_eq!(
        json(&r.body),
        serde_json::json!({"primary_secret": "efgh****9876", "secondary_secret": "abcd****wxyz", "has_secondary": true})
    );

    // Delete; then it is gone.
    assert_ok(&request(&ez, "DELETE", None, None));
    request(&ez, "GET", None, None).assert_status(404);
    request(&ez, "DELETE", None, None).assert_status(404);

    // Secrets never reach logs or metrics.
    let metrics = curl().fetch(&ez.control_url("/metrics"));
    metrics.assert_status(200);
    for s in [PRIMARY, ROTATED] {
        assert!(!ez.stderr_log().contains(s), "secret in the log");
        assert!(!metrics.text().contains(s), "secret in /metrics");
    }
}

#[test]
fn secrets_api_requires_a_known_token_when_api_keys_are_set() {
    let ez = EzBuilder::new()
        .extra("[control.api_keys]\n\"tok_alpha_0001\" = \"ws-a\"\n\"tok_beta_0002\" = \"ws-b\"\n")
        .start();
    for token in [None, Some("tok_wrong"), Some("")] {
        let r = request(&ez, "GET", None, token);
        r.assert_status(401);
        assert_eq!(error_code(&r.body), "unauthorized");
        let r = request(
            &ez,
            "POST",
            Some(&format!(r#"{{"primary_secret":"{PRIMARY}"}}"#)),
            token,
        );
        r.assert_status(401);
        assert_eq!(error_code(&r.body), "unauthorized");
    }
    assert_ok(&request(
        &ez,
        "POST",
        Some(&format!(r#"{{"primary_secret":"{PRIMARY}"}}"#)),
        Some("tok_alpha_0001"),
    ));
    let r = request(&ez, "GET", None, Some("tok_alpha_0001"));
    r.assert_status(200);
    assert_eq!(json(&r.body)["primary_secret"], "abcd****wxyz");
    // Workspaces are separate.
    request(&ez, "GET", None, Some("tok_beta_0002")).assert_status(404);
    assert!(
        !ez.stderr_log().contains("tok_alpha_0001"),
        "token in the log"
    );
}

/// A successful end of a job with these deliveries.
fn ended(payload: &[u8], deliveries: Vec<NewDelivery>) -> JobEnd {
    JobEnd {
        status: JobStatus::Success,
        result: "{}".into(),
        payload: payload.to_vec(),
        deliveries,
        calls: 1,
        children: vec![],
    }
}

/// A queued job record (the webhook tests only need one to finish).
fn queued_job(id: &str, workspace: &str, now: u64) -> JobRecord {
    JobRecord {
        id: id.into(),
        workspace: workspace.into(),
        idempotent_key: format!("key-{id}"),
        status: JobStatus::Queued,
        spec: "{}".into(),
        attempts: 0,
        claims: 0,
        next_attempt_at: now,
        lease_until: 0,
        created_at: now,
        updated_at: now,
        result: None,
    }
}

/// Write a finished job with one pending delivery into the store under `data_dir`.
fn seed_delivery(data_dir: &Path, job_id: &str, payload: &[u8], url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(data_dir).unwrap();
        let now = now_ms();
        store
            .job_insert(queued_job(job_id, "default", now))
            .await
            .unwrap();
        assert!(store
            .job_finish(
                job_id,
                None,
                ended(
                    payload,
                    vec![NewDelivery {
                        url: url.into(),
                        has_quorum_vote: true,
                    }],
                ),
            )
            .await
            .unwrap());
    });
}

fn stored_delivery(data_dir: &Path, job_id: &str) -> ezthrottle::store::Delivery {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(data_dir).unwrap();
        store.deliveries_for_job(job_id).await.unwrap().remove(0)
    })
}

#[test]
fn a_pending_delivery_survives_sigkill_and_is_delivered_after_restart() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let receiver = Receiver::start(&[], 500);
    let payload = sample_payload("job_k");
    seed_delivery(&data_dir, "job_k", &payload, &receiver.url("/hook"));

    let env_secret = "env_secret_0123456789_abc";
    let builder = EzBuilder::new()
        // Seeds and reads the delivery in the embedded store file itself.
        .storage_embedded()
        .egress_loopback()
        .data_dir(&data_dir)
        .env("EZTHROTTLE_WEBHOOK_SECRET", env_secret)
        .extra("[webhooks]\nbackoff = \"300ms\"\nbackoff_cap = \"300ms\"\nmax_attempts = 50\n");
    let mut ez = builder.clone().start();
    // The default workspace's secret comes from the environment (masked).
    let r = request(&ez, "GET", None, None);
    r.assert_status(200);
    assert_eq!(json(&r.body)["primary_secret"], "env_****_abc");

    let first = receiver.next();
    assert_eq!(first.body, payload);
    // Kill once the failed attempt is on record (bounded poll of the store).
    common::eventually(
        EVENT_TIMEOUT,
        "the first attempt's outcome to be recorded",
        || (stored_delivery(&data_dir, "job_k").last_status.is_some()).then_some(()),
    );
    let status = ez.stop_with("KILL");
    assert!(!status.success(), "killed: {status:?}");
    let before = stored_delivery(&data_dir, "job_k");
    assert_eq!(before.state, DeliveryState::Pending);
    assert!(
        before.attempts >= 1 && before.last_status == Some(500),
        "{before:?}"
    );
    assert!(!ez.stderr_log().contains(env_secret), "secret in the log");
    drop(ez);

    receiver.drain();
    receiver.answer_always(200);
    let ez = builder.start();
    let got = receiver.next();
    assert_eq!(got.body, payload);
    let header = got
        .header(SIGNATURE_HEADER)
        .expect("signed with the env secret");
    assert_eq!(sdk_verify(&got.body, &header, env_secret, None), "ok valid");
    let after = common::eventually(EVENT_TIMEOUT, "the delivery to be recorded", || {
        let d = stored_delivery(&data_dir, "job_k");
        (d.state == DeliveryState::Delivered).then_some(d)
    });
    assert!(after.attempts > before.attempts, "{after:?}");
    assert_eq!(after.last_status, Some(200));
    let metrics = curl().fetch(&ez.control_url("/metrics")).text();
    assert!(
        metrics.contains("ezthrottle_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(!ez.stderr_log().contains(env_secret), "secret in the log");
}

/// A receiver that holds its first request open without answering (the
/// delivery is in flight when the proxy dies) and answers 200 afterwards.
fn hang_then_ok() -> (SocketAddr, mpsc::Receiver<usize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, conn) in listener.incoming().enumerate().take(20) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            // Head and body (the payload is small): read until the body is in.
            while let Ok(k) = conn.read(&mut buf) {
                if k == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..k]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = tx.send(n);
            if n == 0 {
                held.push(conn); // never answered
            } else {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    (addr, rx)
}

#[test]
fn a_delivery_cut_short_by_a_crash_counts_both_tries() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let (addr, arrivals) = hang_then_ok();
    let payload = sample_payload("job_c");
    seed_delivery(&data_dir, "job_c", &payload, &format!("http://{addr}/hook"));
    // Seeds and reads the delivery in the embedded store file itself.
    let builder = EzBuilder::new()
        .storage_embedded()
        .egress_loopback()
        .data_dir(&data_dir);
    let mut ez = builder.clone().start();
    // The first try reached the receiver, which never answers; then -9.
    assert_eq!(arrivals.recv_timeout(EVENT_TIMEOUT).expect("first try"), 0);
    let status = ez.stop_with("KILL");
    assert!(!status.success(), "killed: {status:?}");
    assert_eq!(
        stored_delivery(&data_dir, "job_c").attempts,
        1,
        "the try in flight is on record"
    );
    drop(ez);

    let _ez = builder.start();
    assert_eq!(arrivals.recv_timeout(EVENT_TIMEOUT).expect("second try"), 1);
    let after = common::eventually(EVENT_TIMEOUT, "the delivery to be recorded", || {
        let d = stored_delivery(&data_dir, "job_c");
        (d.state == DeliveryState::Delivered).then_some(d)
    });
    assert_eq!(
        after.attempts, 2,
        "delivered twice across the crash: {after:?}"
    );
}
