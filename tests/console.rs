//! The operator console (issue 16, docs/console.md) against the real
//! binary with real traffic: its JSON API with a raw HTTP client (auth,
//! workspaces, filters, paging, what is withheld, redelivery), and the page
//! itself in headless Chromium driven over the DevTools protocol
//! (tests/py/cdp.py: real mouse clicks, real typing): it asks for the
//! token, draws the charts with data points, shows a paused domain's
//! reason, a failed job's attempts, and its Retry button re-queues the job.
//! Screenshots are kept under the target dir (`console-*.png`).
//!
//! Chromium comes from the Debian package `chromium` (scripts/test installs
//! it); without it the browser test fails unless `EZT_SKIP_BROWSER=1`. The
//! browser is kept off the network: only 127.0.0.1 resolves, and anything
//! not on loopback goes to a closed local port.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::api_origin::ApiOrigin;
use common::harness::EzBuilder;
use common::limit_origin::LimitOrigin;
use common::proc::{run, show};
use common::webhook_sink::WebhookSink;
use common::{closed_addr, eventually, raw, Ezthrottle, RawResponse};

const WAIT: Duration = Duration::from_secs(45);
const TOKEN_A: &str = "tok_console_a";
const TOKEN_B: &str = "tok_console_b";
/// Credentials a job carries: none may reach the console.
const SECRET_AUTH: &str = "Bearer sk_live_SECRETAUTH123";
const SECRET_KEY: &str = "SECRETAPIKEY456";
const SECRET_QUERY: &str = "SECRETQUERY789";
const WEBHOOK_SECRET: &str = "whsec_SECRETSIGNING_0123456789";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn keys() -> String {
    format!("[control.api_keys]\n\"{TOKEN_A}\" = \"ws-a\"\n\"{TOKEN_B}\" = \"ws-b\"\n")
}

/// `method path` on the control port with an optional JSON body and token.
fn call(
    ez: &Ezthrottle,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> RawResponse {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        ez.control
    );
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    if !body.is_empty() {
        head += "Content-Type: application/json\r\n";
    }
    head += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    raw::request(ez.control, &head)
}

fn ok_json(r: RawResponse, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.json()
}

fn submit(ez: &Ezthrottle, job: &Value, token: &str) -> String {
    let r = call(ez, "POST", "/api/v1/jobs", Some(job), Some(token));
    assert_eq!(r.status, 201, "submit: {}", r.text());
    r.json()["job_id"].as_str().expect("job_id").to_string()
}

fn job_until(
    ez: &Ezthrottle,
    id: &str,
    token: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(WAIT, &format!("job {id}: {what}"), || {
        let v = ok_json(
            call(ez, "GET", &format!("/api/v1/jobs/{id}"), None, Some(token)),
            "job",
        );
        done(&v).then_some(v)
    })
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in [
        SECRET_AUTH,
        "sk_live_SECRETAUTH123",
        SECRET_KEY,
        SECRET_QUERY,
        WEBHOOK_SECRET,
        TOKEN_A,
        TOKEN_B,
    ] {
        assert!(
            !text.contains(secret),
            "{what} contains the credential {secret:?}:\n{text}"
        );
    }
}

fn builder(api: &ApiOrigin) -> EzBuilder {
    let _ = api;
    EzBuilder::new()
        .resolve("api.test", "127.0.0.1")
        .resolve("other.test", "127.0.0.1")
        .resolve("busy.test", "127.0.0.1")
        .resolve("paused.test", "127.0.0.1")
        .egress_loopback()
}

/// A job carrying every kind of credential, to a URL answering `status`
/// once (then 201), with no retry: it fails at its first answer.
fn secret_job(api: &ApiOrigin, path: &str, status: u16, webhook: Option<String>) -> Value {
    let mut job = json!({
        "url": api.http_url("api.test", &format!("{path}?fail_first=1&fail_status={status}&api_key={SECRET_QUERY}")),
        "retry_policy": {"max_retries": 0, "max_reroutes": 0},
        "method": "POST",
        "headers": {
            "Authorization": SECRET_AUTH,
            "X-Api-Key": SECRET_KEY,
            "Content-Type": "application/json",
        },
        "body": "{\"hello\":\"world\"}",
    });
    if let Some(w) = webhook {
        job["webhooks"] = json!([{ "url": w }]);
    }
    job
}

#[test]
fn console_api_scopes_jobs_to_the_token_filters_pages_and_withholds_credentials() {
    let api = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = builder(&api).extra(&keys()).start();

    // Every console call needs a known token.
    for path in [
        "/console/api/overview",
        "/console/api/jobs",
        "/console/api/jobs/x",
    ] {
        let r = call(&ez, "GET", path, None, None);
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.error_code(), "unauthorized");
        assert_eq!(call(&ez, "GET", path, None, Some("tok_nope")).status, 401);
    }
    // The page itself holds no data and loads without one.
    let page = call(&ez, "GET", "/console", None, None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .unwrap_or("")
        .contains("script-src 'self'"));

    let r = call(
        &ez,
        "POST",
        "/api/v1/webhook-secrets",
        Some(&json!({"primary_secret": WEBHOOK_SECRET})),
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let failed = submit(
        &ez,
        &secret_job(&api, "/v1/fails", 400, Some(sink.url("/hook"))),
        TOKEN_A,
    );
    let theirs = submit(
        &ez,
        &json!({"url": api.http_url("api.test", "/v1/theirs")}),
        TOKEN_B,
    );
    job_until(&ez, &failed, TOKEN_A, "failed", |v| v["status"] == "failed");
    job_until(&ez, &theirs, TOKEN_B, "ended", |v| v["status"] == "success");
    sink.until(WAIT, "the failed job's webhook", |all| all.len() == 1);

    // ws-a sees its job and never ws-b's; naming ws-b is refused.
    let list = ok_json(
        call(&ez, "GET", "/console/api/jobs", None, Some(TOKEN_A)),
        "list",
    );
    assert_eq!(list["workspace"], "ws-a");
    assert_eq!(list["workspace_fixed"], true);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(ids, vec![failed.as_str()], "{list}");
    let r = call(
        &ez,
        "GET",
        "/console/api/jobs?workspace=ws-b",
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "workspace_forbidden");
    let r = call(
        &ez,
        "GET",
        &format!("/console/api/jobs/{theirs}"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "job_not_found");
    let r = call(
        &ez,
        "POST",
        &format!("/console/api/jobs/{theirs}/retry"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(
        r.status,
        404,
        "another workspace's job cannot be retried: {}",
        r.text()
    );

    // A browser on another site cannot make the operator's browser act.
    let r = raw::request(
        ez.control,
        &format!(
            "POST /console/api/jobs/{failed}/retry HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.test\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ez.control
        ),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "cross_site_request");

    // Precise 400s.
    for (q, field) in [
        ("status=nope", "status"),
        ("limit=0", "limit"),
        ("since=x", "since"),
        ("cursor=zz", "cursor"),
    ] {
        let r = call(
            &ez,
            "GET",
            &format!("/console/api/jobs?{q}"),
            None,
            Some(TOKEN_A),
        );
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_request");
        assert!(
            r.error_message().starts_with(field),
            "{q}: {}",
            r.error_message()
        );
    }

    // The detail: request, attempts, response, delivery — no credential.
    let detail = call(
        &ez,
        "GET",
        &format!("/console/api/jobs/{failed}"),
        None,
        Some(TOKEN_A),
    );
    let text = detail.text();
    let d = ok_json(detail, "detail");
    assert_no_secret(&text, "the job detail");
    assert_eq!(d["status"], "failed");
    let headers = d["request"]["headers"].as_array().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .map(|h| h[1].clone())
    };
    assert_eq!(header("authorization"), Some(json!("(withheld)")), "{d}");
    assert_eq!(header("x-api-key"), Some(json!("(withheld)")), "{d}");
    assert_eq!(
        header("content-type"),
        Some(json!("application/json")),
        "{d}"
    );
    assert_eq!(d["request"]["body"], "{\"hello\":\"world\"}");
    let attempts = d["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{d}");
    assert_eq!(attempts[0]["status_code"], 400, "{d}");
    assert_eq!(attempts[0]["part"], "primary");
    assert!(attempts[0]["wait_ms"].is_u64(), "{d}");
    assert_eq!(d["response"]["status_code"], 400);
    assert_eq!(d["actions"], json!({"cancel": false, "retry": true}));
    let delivery = &d["webhooks"][0];
    assert_eq!(delivery["state"], "delivered", "{d}");
    assert_eq!(delivery["last_status"], 200);
    // The signature (HMAC with the secret) never reaches the console either.
    let sent = &sink.all()[0];
    let sig = sent
        .header("x-ezthrottle-signature")
        .expect("signed")
        .to_string();
    assert!(!text.contains(&sig));

    // Redeliver: through the job API's new endpoint and the console's.
    let did = delivery["delivery_id"].as_i64().expect("delivery_id");
    let r = call(
        &ez,
        "POST",
        &format!("/api/v1/jobs/{failed}/webhooks/{did}/redeliver"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    sink.until(WAIT, "the redelivered webhook", |all| all.len() == 2);
    assert_eq!(
        sink.all()[1].body,
        sink.all()[0].body,
        "the same payload is sent again"
    );
    let r = call(
        &ez,
        "POST",
        &format!("/console/api/jobs/{failed}/deliveries/999999/redeliver"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "delivery_not_found");
    eventually(WAIT, "the redelivery to end", || {
        let d = ok_json(
            call(
                &ez,
                "GET",
                &format!("/console/api/jobs/{failed}"),
                None,
                Some(TOKEN_A),
            ),
            "detail",
        );
        (d["webhooks"][0]["state"] == "delivered").then_some(())
    });
    let r = call(
        &ez,
        "POST",
        &format!("/console/api/jobs/{failed}/deliveries/{did}/redeliver"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    sink.until(WAIT, "the second redelivery", |all| all.len() == 3);

    // Cancel a queued job (not before tomorrow) from the console; a second
    // cancel is the job API's 409.
    let tomorrow = now_ms() + 86_400_000;
    let later = submit(
        &ez,
        &json!({"url": api.http_url("api.test", "/v1/later"), "retry_at": tomorrow}),
        TOKEN_A,
    );
    let d = ok_json(
        call(
            &ez,
            "GET",
            &format!("/console/api/jobs/{later}"),
            None,
            Some(TOKEN_A),
        ),
        "queued job",
    );
    assert_eq!(d["actions"], json!({"cancel": true, "retry": false}), "{d}");
    let r = call(
        &ez,
        "POST",
        &format!("/console/api/jobs/{later}/cancel"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    let r = call(
        &ez,
        "POST",
        &format!("/console/api/jobs/{later}/cancel"),
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "job_finished");
    let page = ok_json(
        call(
            &ez,
            "GET",
            "/console/api/jobs?status=cancelled",
            None,
            Some(TOKEN_A),
        ),
        "cancelled",
    );
    assert_eq!(page["jobs"][0]["job_id"], later.as_str(), "{page}");
    assert_eq!(api.count("/v1/later"), 0, "a cancelled job never ran");

    // The overview answers with the capped rings' figures.
    let o = ok_json(
        call(&ez, "GET", "/console/api/overview", None, Some(TOKEN_A)),
        "overview",
    );
    assert_no_secret(&o.to_string(), "the overview");
    assert!(o["rings"]["bytes_per_domain"].as_u64().unwrap() > 0, "{o}");
    let r = call(
        &ez,
        "GET",
        "/console/api/overview?limit=0",
        None,
        Some(TOKEN_A),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn console_job_list_filters_and_pages_by_keyset() {
    let api = ApiOrigin::start();
    // No API keys: loopback-only, every workspace selectable.
    let ez = builder(&api).start();
    let mut ids = Vec::new();
    for i in 0..5 {
        let host = if i % 2 == 0 { "api.test" } else { "other.test" };
        let url = api.http_url(host, &format!("/v1/list{i}"));
        let r = call(
            &ez,
            "POST",
            "/api/v1/jobs",
            Some(&json!({"url": url})),
            None,
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["job_id"].as_str().unwrap().to_string());
        // Not a wait for anything: created_at is in ms, and the time-window
        // check below needs each job in a millisecond of its own.
        std::thread::sleep(Duration::from_millis(3));
    }
    for id in &ids {
        job_until(&ez, id, "any", "ended", |v| v["status"] == "success");
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    // Pages of 2, newest first, chained by the cursor.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = ok_json(
            call(
                &ez,
                "GET",
                &format!("/console/api/jobs?limit=2&cursor={cursor}"),
                None,
                None,
            ),
            "page",
        );
        assert_eq!(page["workspace"], "default");
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["job_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    // Domain filter.
    let page = ok_json(
        call(
            &ez,
            "GET",
            "/console/api/jobs?domain=other.test",
            None,
            None,
        ),
        "domain",
    );
    let got: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[3].as_str(), ids[1].as_str()], "{page}");
    assert_eq!(page["jobs"][0]["domain"], "other.test");
    // The domain filter pages by the same cursor, any case, with a status.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = ok_json(
            call(
                &ez,
                "GET",
                &format!("/console/api/jobs?domain=API.Test&limit=1&cursor={cursor}"),
                None,
                None,
            ),
            "domain page",
        );
        for j in page["jobs"].as_array().unwrap() {
            assert_eq!(j["domain"], "api.test", "{page}");
            seen.push(j["job_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, [ids[4].clone(), ids[2].clone(), ids[0].clone()]);
    let page = ok_json(
        call(
            &ez,
            "GET",
            "/console/api/jobs?domain=api.test&status=success&limit=2",
            None,
            None,
        ),
        "domain and status",
    );
    let got: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[2].as_str()], "{page}");
    let page = ok_json(
        call(
            &ez,
            "GET",
            "/console/api/jobs?domain=api.test&status=failed",
            None,
            None,
        ),
        "domain and a status none has",
    );
    assert_eq!(page["jobs"], json!([]));
    // Status filter.
    let page = ok_json(
        call(&ez, "GET", "/console/api/jobs?status=failed", None, None),
        "status",
    );
    assert_eq!(page["jobs"], json!([]));
    // Time window: created at or before the third job, after the first.
    let all = ok_json(call(&ez, "GET", "/console/api/jobs", None, None), "all");
    let created = |id: &str| {
        all["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job_id"] == id)
            .unwrap()["created_at"]
            .as_u64()
            .unwrap()
    };
    let (since, until) = (created(&ids[1]), created(&ids[2]));
    let page = ok_json(
        call(
            &ez,
            "GET",
            &format!("/console/api/jobs?since={since}&until={until}"),
            None,
            None,
        ),
        "window",
    );
    let got: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()], "{page}");
    // Another workspace is empty (and selectable without keys).
    let page = ok_json(
        call(
            &ez,
            "GET",
            "/console/api/jobs?workspace=elsewhere",
            None,
            None,
        ),
        "ws",
    );
    assert_eq!(page["workspace"], "elsewhere");
    assert_eq!(page["jobs"], json!([]));
}

/// The follow-up chain both ways: the parent's page lists the job its
/// `on_success` spawned (with the trigger and a link target), the child's
/// page names its parent.
#[test]
fn console_job_page_lists_the_jobs_it_spawned() {
    let api = ApiOrigin::start();
    let ez = builder(&api).start();
    let r = call(
        &ez,
        "POST",
        "/api/v1/jobs",
        Some(&json!({
            "url": api.http_url("api.test", "/v1/parent"),
            "on_success": {"url": api.http_url("other.test", "/v1/child"), "method": "POST"},
        })),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let parent = r.json()["job_id"].as_str().unwrap().to_string();
    let detail = eventually(WAIT, "the parent lists its child", || {
        let v = ok_json(
            call(
                &ez,
                "GET",
                &format!("/console/api/jobs/{parent}"),
                None,
                None,
            ),
            "parent",
        );
        // The job and its children are two reads of the store: wait for a
        // page on which both show the finished run.
        let listed = v["chain"]["children"].as_array().map_or(0, Vec::len) == 1;
        (listed && v["status"] == "success").then_some(v)
    });
    assert_eq!(detail["status"], "success", "{detail}");
    let child = &detail["chain"]["children"][0];
    assert_eq!(child["trigger"], "on_success", "{detail}");
    assert_eq!(child["method"], "POST");
    assert!(
        child["url"].as_str().unwrap().contains("/v1/child"),
        "{detail}"
    );
    let child_id = child["job_id"].as_str().unwrap().to_string();
    assert_ne!(child_id, parent);
    let c = ok_json(
        call(
            &ez,
            "GET",
            &format!("/console/api/jobs/{child_id}"),
            None,
            None,
        ),
        "child",
    );
    assert_eq!(c["chain"]["parent_job_id"], parent.as_str(), "{c}");
    assert_eq!(c["chain"]["children"], json!([]), "{c}");
    // The list row of the child names its parent too.
    let page = ok_json(
        call(
            &ez,
            "GET",
            "/console/api/jobs?domain=other.test",
            None,
            None,
        ),
        "child row",
    );
    assert_eq!(page["jobs"][0]["job_id"], child_id.as_str(), "{page}");
    assert_eq!(page["jobs"][0]["parent_job_id"], parent.as_str(), "{page}");
}

// ---- the page in a real browser ------------------------------------------

/// `EZT_CHROMIUM`, else `chromium` / `chromium-browser` on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EZT_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// `$CARGO_TARGET_DIR` (relative to the manifest dir if relative), else `target/`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

/// Run `steps` in one headless Chromium session; the steps' results.
fn browse(chromium: &Path, steps: Vec<Value>) -> Vec<Value> {
    let profile = tempfile::tempdir().expect("profile dir");
    let plan = json!({
        "chromium": chromium,
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-default-apps", "--disable-extensions",
            "--disable-sync", "--metrics-recording-only", "--hide-scrollbars",
            "--window-size=1400,1000",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            format!("--proxy-server=http://{}", closed_addr()),
            format!("--user-data-dir={}", profile.path().display()),
        ],
        "steps": steps,
    });
    let plan_path = profile.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).expect("write plan");
    let out = run(
        Command::new(common::python())
            .arg(common::py_script("cdp.py"))
            .arg(&plan_path),
        Duration::from_secs(240),
    );
    assert!(
        out.status.success(),
        "browser session failed: {}",
        show(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cdp.py output: {e}: {}", show(&out)));
    v["results"].as_array().cloned().unwrap_or_default()
}

/// A JS expression: the `data-points` of `selector`'s first match, as a number (0 if none).
fn points(selector: &str) -> String {
    format!("(function(){{var e=document.querySelector({}); return e ? Number(e.getAttribute('data-points')) : 0;}})()", json!(selector))
}

#[test]
fn console_in_headless_chromium_charts_traffic_shows_a_pause_and_retries_a_failed_job() {
    let Some(chromium) = chromium() else {
        if std::env::var("EZT_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("chromium not found; skipped because EZT_SKIP_BROWSER=1");
            return;
        }
        panic!("chromium not found on PATH (nor EZT_CHROMIUM): install the Debian package `chromium` (scripts/test does), or set EZT_SKIP_BROWSER=1");
    };
    let api = ApiOrigin::start();
    let limits = LimitOrigin::start();
    let ez = builder(&api)
        .extra(&format!(
            "{}[limits.domains.\"busy.test\"]\nrps = 40.0\nmax_concurrent = 4\n",
            keys()
        ))
        .start();

    // Traffic: busy.test answers 200 and a few 404s, paused.test says its
    // budget is spent for five minutes (the domain pauses).
    for i in 0..30 {
        let path = if i % 10 == 9 { "/x?status=404" } else { "/x" };
        let r = raw::proxy_get(ez.proxy, &limits.url("busy.test", path));
        assert!(r.status == 200 || r.status == 404, "{}", r.text());
    }
    let r = raw::proxy_get(
        ez.proxy,
        &limits.url(
            "paused.test",
            "/x?h=RateLimit-Limit:100&h=RateLimit-Remaining:0&h=RateLimit-Reset:300",
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A failed job in ws-a: 503 once, then the API would answer 201. (A
    // 5xx, because a 4xx is stored under the job's Idempotency-Key and a
    // retry would get it replayed.)
    // Its `on_failure` follow-up is the child its page lists.
    let mut flaky = secret_job(&api, "/v1/flaky", 503, None);
    flaky["on_failure"] = json!({"url": api.http_url("other.test", "/v1/alert")});
    let failed = submit(&ez, &flaky, TOKEN_A);
    job_until(&ez, &failed, TOKEN_A, "failed", |v| v["status"] == "failed");
    let detail = ok_json(
        call(
            &ez,
            "GET",
            &format!("/console/api/jobs/{failed}"),
            None,
            Some(TOKEN_A),
        ),
        "failed job",
    );
    // Spawned in the transaction that ended the parent.
    let child = detail["chain"]["children"][0]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no child listed: {detail}"))
        .to_string();
    // The sampler has seen the domains (once a second): wait for it.
    eventually(WAIT, "the overview to hold samples of busy.test", || {
        let o = ok_json(
            call(
                &ez,
                "GET",
                "/console/api/overview?domains=busy.test",
                None,
                Some(TOKEN_A),
            ),
            "overview",
        );
        let p = &o["domains"][0]["points"];
        let sampled = p["rps_limit"]
            .as_array()?
            .iter()
            .any(|v| v.as_f64() == Some(40.0));
        let admitted: u64 = p["admitted"]
            .as_array()?
            .iter()
            .filter_map(Value::as_u64)
            .sum();
        (sampled && admitted >= 30).then_some(())
    });

    let shots = target_dir();
    std::fs::create_dir_all(&shots).expect("target dir");
    let overview_png = shots.join("console-overview.png");
    let job_png = shots.join("console-job.png");
    let busy = "article[data-domain=\"busy.test\"]";
    let console = ez.control_url("/console");
    let results = browse(
        &chromium,
        vec![
            json!({"goto": console}),
            // With api_keys the page asks for a token before anything else.
            json!({"wait": "!document.getElementById('login').classList.contains('hidden')"}),
            json!({"type": "#token", "text": TOKEN_A}),
            json!({"click": "#login-form button"}),
            json!({"wait": format!("{} > 0 && {} > 0 && {} > 0 && {} > 0",
                points(&format!("{busy} polyline.s-admitted")),
                points(&format!("{busy} polyline.s-2xx")),
                points(&format!("{busy} polyline.s-p50")),
                points(&format!("{busy} polyline.s-cap")))}),
            json!({"eval": format!("[{}, {}, {}, {}]",
                points(&format!("{busy} polyline.s-admitted")),
                points(&format!("{busy} polyline.s-limit")),
                points(&format!("{busy} polyline.s-2xx")),
                points(&format!("{busy} polyline.s-inflight")))}),
            json!({"wait": "(function(){var e=document.querySelector('article[data-domain=\"paused.test\"] .pause'); return e && e.textContent;})()"}),
            json!({"eval": "document.querySelector(\"article[data-domain='busy.test'] .limits\").textContent"}),
            json!({"screenshot": overview_png}),
            // The jobs page lists ws-a's failed job.
            json!({"click": "#nav-jobs"}),
            json!({"wait": format!("(function(){{var r=document.querySelector('tr[data-job=\"{failed}\"]'); return r && r.textContent;}})()")}),
            json!({"click": format!("tr[data-job=\"{failed}\"] a")}),
            json!({"wait": "document.querySelectorAll('#attempt-rows tr.attempt').length > 0 && document.getElementById('job-status').textContent === 'failed'"}),
            json!({"eval": "[document.getElementById('attempt-rows').textContent, document.getElementById('job-request-headers').textContent]"}),
            json!({"screenshot": job_png}),
            json!({"eval": "document.documentElement.outerHTML"}),
            // Retry, as a person would.
            json!({"click": "#job-retry"}),
            json!({"wait": "document.getElementById('job-message').textContent === 're-queued'"}),
            json!({"eval": "document.getElementById('job-status').textContent"}),
            // The chain both ways: the spawned job is listed and linked, and
            // its own page links back to the parent.
            json!({"wait": "(function(){var e=document.querySelector('#job-chain li.child'); return e && e.textContent;})()"}),
            json!({"click": "#job-chain li.child a"}),
            json!({"wait": format!("document.getElementById('job-id').textContent === {} && document.getElementById('job-chain').textContent.indexOf('follow-up of') >= 0", json!(child))}),
            json!({"eval": "document.querySelector('#job-chain a').textContent"}),
        ],
    );
    let admitted_etc = &results[5];
    for (i, n) in admitted_etc.as_array().expect("points").iter().enumerate() {
        assert!(
            n.as_u64().unwrap_or(0) > 0,
            "series {i} of busy.test has no points: {admitted_etc}"
        );
    }
    let pause = results[6].as_str().unwrap_or("");
    assert!(
        pause.contains("HTTP 200: dialect:ietf requests budget at 0"),
        "{pause}"
    );
    let limits_text = results[7].as_str().unwrap_or("");
    assert!(
        limits_text.contains("40 req/s") && limits_text.contains("config"),
        "{limits_text}"
    );
    let row = results[10].as_str().unwrap_or("");
    assert!(row.contains("failed") && row.contains("POST"), "{row}");
    let attempt_text = results[13][0].as_str().unwrap_or("");
    assert!(
        attempt_text.contains("503") && attempt_text.contains("primary"),
        "{attempt_text}"
    );
    let header_text = results[13][1].as_str().unwrap_or("");
    assert!(header_text.contains("(withheld)"), "{header_text}");
    let dom = results[15].as_str().unwrap_or("");
    assert_no_secret(dom, "the job page");
    assert_ne!(
        results[18].as_str(),
        Some("failed"),
        "after Retry the job is no longer failed"
    );
    let child_row = results[19].as_str().unwrap_or("");
    assert!(
        child_row.contains("spawned (on failure)") && child_row.contains(&child),
        "{child_row}"
    );
    assert_eq!(
        results[22].as_str(),
        Some(failed.as_str()),
        "the child's page links its parent"
    );

    // The retried job ran again: this time the API answered 201.
    let done = job_until(&ez, &failed, TOKEN_A, "success after retry", |v| {
        v["status"] == "success"
    });
    assert_eq!(done["claims"], 2, "{done}");
    for png in [&overview_png, &job_png] {
        let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5000,
            "{}",
            png.display()
        );
        eprintln!("console screenshot: {}", png.display());
    }
}
