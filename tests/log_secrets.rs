//! No log level prints credentials, cookies, API keys, query strings or
//! bodies — ours or pingora's, hyper's, rustls'…
//!
//! The real binary runs at `debug` (text) and at `trace` for every crate
//! (JSON, with explicit `pingora_*=trace`, `hyper=trace`… directives that a
//! user might write); secrets are planted in `Authorization`, `Cookie`,
//! `X-Api-Key`, `Proxy-Authorization`, query strings, request bodies, the
//! origin's response body and `Set-Cookie`, and the webhook signing secret,
//! through a plain proxied request, an intercepted HTTPS request, a request
//! to a closed port (pingora's error line carries the request target), a
//! parked request (its stored headers replayed by the job runner) and a job
//! API submission. Then stderr is searched for every one of them.

mod common;

use std::time::Duration;

use base64::Engine;
use common::harness::EzBuilder;
use common::secret_origin::SecretOrigin;
use common::webhook_sink::WebhookSink;
use common::{closed_addr, curl, Ezthrottle, Origin};

/// Every planted secret contains this, so one search finds any of them.
const MARK: &str = "S3CR3T";
const WAIT: Duration = Duration::from_secs(60);

fn s(what: &str) -> String {
    format!("{what}-{MARK}-{}", std::process::id())
}

fn basic(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// The credential headers of one flow (`tag` tells the flows apart in a
/// failure message).
fn credential_headers(tag: &str) -> Vec<String> {
    vec![
        format!("Authorization: Bearer {}", s(&format!("{tag}-auth"))),
        format!("Cookie: session={}", s(&format!("{tag}-cookie"))),
        format!("X-Api-Key: {}", s(&format!("{tag}-apikey"))),
    ]
}

/// Run every flow against a proxy started with `log` / `format`; returns
/// its stderr and the base64 forms planted (which do not contain [`MARK`]).
fn run_flows(log: &str, format: &str) -> (String, Vec<String>) {
    let tls_origin = Origin::start();
    let origin = SecretOrigin::start(
        &format!(r#"{{"token":"{}"}}"#, s("respbody")),
        &s("respcookie"),
        true,
    );
    let sink = WebhookSink::start();
    let hook_secret = format!("whsec-{}", s("hook"));
    let mut ez: Ezthrottle = EzBuilder::new()
        .upstream_ca(&tls_origin.pki.ca_path)
        .connect_port(tls_origin.tls_addr.port())
        .extra(&format!("[webhooks]\nsecret = \"{hook_secret}\"\n"))
        .egress_loopback()
        .env("EZTHROTTLE_LOG", log)
        .env("EZTHROTTLE_LOG_FORMAT", format)
        .start();
    let mut b64 = Vec::new();

    // 1. Plain HTTP through the proxy: credentials, Proxy-Authorization,
    //    query and body.
    let pa = basic("user", &s("plain-proxyauth"));
    b64.push(pa.clone());
    let mut c = curl()
        .proxy(&ez)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg(format!("Proxy-Authorization: Basic {pa}"))
        .arg("-H")
        .arg("Content-Type: application/json")
        .arg("--data-binary")
        .arg(format!(r#"{{"card":"{}"}}"#, s("plain-body")));
    for h in credential_headers("plain") {
        c = c.arg("-H").arg(h);
    }
    let f = c.fetch(&origin.url(&format!("/v1/plain?api_key={}", s("plain-query"))));
    f.assert_status(200);
    assert!(String::from_utf8_lossy(&f.body).contains(&s("respbody")));
    let seen = origin.wait_for("/v1/plain", WAIT);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", s("plain-auth"))),
        "the secrets did pass through the proxy"
    );

    // 2. Intercepted HTTPS (CONNECT with Proxy-Authorization, then the
    //    inner request with credentials, query and body).
    let pa = basic("user", &s("tls-proxyauth"));
    b64.push(pa.clone());
    let mut c = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("--proxy-header")
        .arg(format!("Proxy-Authorization: Basic {pa}"))
        .arg("-X")
        .arg("POST")
        .arg("--data-binary")
        .arg(format!(r#"{{"card":"{}"}}"#, s("tls-body")));
    for h in credential_headers("tls") {
        c = c.arg("-H").arg(h);
    }
    let f = c.fetch(&tls_origin.https_url(&format!("/echo?api_key={}", s("tls-query"))));
    f.assert_status(200);
    // The origin's answer echoes the headers: a response body with secrets.
    assert!(String::from_utf8_lossy(&f.body).contains(&s("tls-auth")));

    // 3. A closed port: pingora logs the failed request with its target.
    let closed = closed_addr();
    let mut c = curl().proxy(&ez);
    for h in credential_headers("closed") {
        c = c.arg("-H").arg(h);
    }
    let f = c.fetch(&format!(
        "http://{closed}/v1/closed?api_key={}",
        s("closed-query")
    ));
    assert!(f.code >= 500, "{}", f.describe());

    // 4. A parked request: stored with its headers, replayed by the runner,
    //    its result (with the origin's body) delivered to a webhook.
    let mut c = curl()
        .proxy(&ez)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg(format!("X-EZThrottle-Webhook: {}", sink.url("/parked")))
        .arg("-H")
        .arg("Prefer: respond-async")
        .arg("--data-binary")
        .arg(format!(r#"{{"card":"{}"}}"#, s("parked-body")));
    for h in credential_headers("parked") {
        c = c.arg("-H").arg(h);
    }
    let f = c.fetch(&origin.url(&format!("/v1/parked?api_key={}", s("parked-query"))));
    f.assert_status(202);
    let seen = origin.wait_for("/v1/parked", WAIT);
    assert_eq!(
        seen.header("x-api-key"),
        Some(s("parked-apikey")),
        "the job replayed the stored headers"
    );

    // 5. A job API submission with credentials, query and body.
    let job = serde_json::json!({
        "url": origin.url(&format!("/v1/job?api_key={}", s("job-query"))),
        "method": "POST",
        "headers": {
            "Authorization": format!("Bearer {}", s("job-auth")),
            "Cookie": format!("session={}", s("job-cookie")),
            "X-Api-Key": s("job-apikey"),
        },
        "body": format!(r#"{{"card":"{}"}}"#, s("job-body")),
        "webhooks": [{"url": sink.url("/job")}],
    });
    let f = ez.submit_job(&job);
    f.assert_status(201);
    let seen = origin.wait_for("/v1/job", WAIT);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", s("job-auth")))
    );

    // Both webhooks delivered (signed with the secret, carrying the body).
    sink.until(WAIT, "two webhooks", |all| {
        all.iter().any(|d| d.path.starts_with("/parked"))
            && all.iter().any(|d| d.path.starts_with("/job"))
    });
    assert!(sink
        .all()
        .iter()
        .all(|d| String::from_utf8_lossy(&d.body).contains(&s("respbody"))));

    ez.stop_sigterm();
    (ez.stderr_log(), b64)
}

fn assert_clean(log: &str, b64: &[String], debug_marker: &str) {
    // `EZT_LOG_SECRETS_DUMP=/tmp/x` keeps the logs for a look (x.debug, x.trace).
    if let Ok(p) = std::env::var("EZT_LOG_SECRETS_DUMP") {
        let level = if debug_marker.contains('"') {
            "trace"
        } else {
            "debug"
        };
        let _ = std::fs::write(format!("{p}.{level}"), log);
    }
    assert!(
        log.lines().count() > 20,
        "the log is too short to mean anything:\n{log}"
    );
    let debug = log.lines().filter(|l| l.contains(debug_marker)).count();
    assert!(debug > 0, "no debug line ({debug_marker}) at all:\n{log}");
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(MARK) || b64.iter().any(|b| l.contains(b.as_str())))
        .collect();
    assert!(
        leaks.is_empty(),
        "{} log line(s) carry a planted secret:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // Nor a query string of any request target.
    assert!(!log.contains("api_key="), "a query string was logged");
}

#[test]
fn debug_text_log_carries_no_secret() {
    let (log, b64) = run_flows("debug", "text");
    assert_clean(&log, &b64, " DEBUG ");
}

#[test]
fn trace_json_log_for_every_crate_carries_no_secret() {
    let (log, b64) = run_flows(
        "trace,pingora=trace,pingora_core=trace,pingora_proxy=trace,pingora_pool=trace,hyper=trace,h2=trace,reqwest=trace,rustls=trace,rusqlite=trace",
        "json",
    );
    assert_clean(&log, &b64, "\"level\":\"DEBUG\"");
}
