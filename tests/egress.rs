//! The egress policy and identity rules of issue 10 (SPEC §13, docs/security.md),
//! through the real binary: a proxy listening on 127.0.0.2 (standing in for a
//! gateway's network address) with its client on 127.0.0.2, curl as the
//! client, the control API as the target an attacker wants.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};

use common::curl::{curl, Fetch};
use common::harness::control_get;
use common::harness::EzBuilder;
use common::{metrics, Ezthrottle, Origin, RawResponse};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A request through the proxy from the "remote" client address.
fn via(ez: &Ezthrottle, args: &[&str], url: &str) -> Fetch {
    curl()
        .proxy(ez)
        .args(["--interface", "127.0.0.2", "--noproxy", ""])
        .args(args.iter().copied())
        .fetch(url)
}

fn assert_refused(f: &Fetch, status: u16, code: &str, what: &str) {
    assert_eq!(f.code, status, "{what}: {}", f.describe());
    assert_eq!(f.header("x-ezthrottle-error"), Some(code), "{what}");
    assert_eq!(common::error_code(&f.body), code, "{what}");
}

fn control(ez: &Ezthrottle, method: &str, path: &str, body: Option<&str>) -> RawResponse {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        ez.control,
        body.len()
    );
    common::raw::request(ez.control, &head)
}

fn metric(ez: &Ezthrottle, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::value(&control_get(ez, "/metrics"), name, labels).unwrap_or(0.0)
}

#[test]
fn the_control_api_cannot_be_reached_through_the_proxy() {
    let ez = EzBuilder::new()
        .proxy_ip(GATEWAY)
        .resolve("ctl.test", "127.0.0.1")
        .start();
    let c = ez.control.port();
    let p = ez.proxy.port();
    let secret = r#"{"primary_secret":"attacker-chosen-secret-0123456789"}"#;
    // The reproduction from the issue, and every other spelling of "us".
    for url in [
        format!("http://127.0.0.1:{c}/api/v1/webhook-secrets"),
        format!("http://0.0.0.0:{c}/api/v1/webhook-secrets"),
        format!("http://[::1]:{c}/api/v1/webhook-secrets"),
        format!("http://[::ffff:127.0.0.1]:{c}/api/v1/webhook-secrets"),
        format!("http://2130706433:{c}/api/v1/webhook-secrets"),
        format!("http://ctl.test:{c}/api/v1/webhook-secrets"),
        format!("http://127.0.0.2:{p}/api/v1/webhook-secrets"),
        format!("http://127.0.0.1:{p}/api/v1/webhook-secrets"),
    ] {
        let f = via(&ez, &["-X", "POST", "--data", secret], &url);
        assert_refused(&f, 508, "proxy_loop", &url);
    }
    let f = via(&ez, &[], &format!("http://127.0.0.1:{c}/api/v1/jobs"));
    assert_refused(&f, 508, "proxy_loop", "job list");
    // The secret was never written.
    let r = control(&ez, "GET", "/api/v1/webhook-secrets", None);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        metric(
            &ez,
            "ezthrottle_egress_denied_total",
            &[("purpose", "proxy"), ("reason", "loop")]
        ) >= 8.0
    );
}

#[test]
fn metadata_addresses_are_refused_on_the_proxy_path() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .proxy_ip(GATEWAY)
        .resolve("meta.test", "169.254.169.254")
        .start();
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://2852039166/latest/meta-data/".to_string(),
        "http://[::ffff:169.254.169.254]/latest/".to_string(),
        "http://[fe80::1]/x".to_string(),
        "http://metadata.google.internal/computeMetadata/v1/".to_string(),
        "http://meta.test/latest/".to_string(),
    ] {
        let f = via(&ez, &[], &url);
        assert_refused(&f, 403, "egress_denied", &url);
    }
    // A CONNECT to it is refused before 200.
    let f = via(&ez, &[], "https://169.254.169.254/latest/");
    assert_eq!(f.connect_code, 403, "{}", f.describe());
    // The proxy path still reaches loopback services (a sidecar's neighbours).
    via(&ez, &[], &origin.http_url("/echo")).assert_status(200);
    assert!(
        metric(
            &ez,
            "ezthrottle_egress_denied_total",
            &[("purpose", "proxy"), ("reason", "denied")]
        ) >= 5.0
    );
}

#[test]
fn a_deny_list_closes_what_the_defaults_leave_open() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .egress("deny = [\"127.0.0.1/32\"]")
        .start();
    let f = via(&ez, &[], &origin.http_url("/echo"));
    assert_refused(&f, 403, "egress_denied", "denied origin");
    assert!(common::error_message(&f.body).contains("[egress] deny"));
    assert_eq!(origin.count("/echo"), 0, "the origin was called");
}

#[test]
fn the_job_api_refuses_internal_targets_naming_the_field() {
    let ez = EzBuilder::new().start();
    let c = ez.control.port();
    let control_url = format!("http://127.0.0.1:{c}/api/v1/webhook-secrets");
    let bad_targets = [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/",
        control_url.as_str(),
        "http://0.0.0.0/",
        "http://127.0.0.1/",
        "http://10.1.2.3/",
        "http://[fd00:ec2::254]/",
        "https://api.example.com:22/",
    ];
    for target in bad_targets {
        let body = json!({"url": target}).to_string();
        let r = control(&ez, "POST", "/api/v1/jobs", Some(&body));
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert_eq!(r.error_code(), "egress_denied", "{target}");
        assert!(
            r.error_message().starts_with("url: "),
            "{target}: {}",
            r.error_message()
        );

        let body = json!({"url": "https://api.example.com/", "webhooks": [{"url": "https://h.example/ok"}, {"url": target}]}).to_string();
        let r = control(&ez, "POST", "/api/v1/jobs", Some(&body));
        assert_eq!(r.status, 400, "webhook {target}: {}", r.text());
        assert!(
            r.error_message().starts_with("webhooks[1].url: "),
            "{}",
            r.error_message()
        );
    }
    let body = json!({"url": "https://api.example.com/", "fallback_job": {"url": "http://169.254.169.254/", "trigger": {"type": "on_error"}}}).to_string();
    let r = control(&ez, "POST", "/api/v1/jobs", Some(&body));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.error_message().starts_with("fallback_job.url: "),
        "{}",
        r.error_message()
    );
    // Nothing was queued.
    let list = control(&ez, "GET", "/api/v1/jobs", None);
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(
        !list.text().contains("job_"),
        "a refused job was stored: {}",
        list.text()
    );
}

#[test]
fn a_parked_requests_webhook_is_checked_at_submission() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();
    for hook in [
        "http://169.254.169.254/hook",
        "http://2852039166/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://127.0.0.1:9/hook",
        "http://192.168.1.10/hook",
    ] {
        let header = format!("X-EZThrottle-Webhook: {hook}");
        let f = via(
            &ez,
            &[
                "-X",
                "POST",
                "--data",
                "{}",
                "-H",
                &header,
                "-H",
                "Prefer: respond-async",
            ],
            &origin.http_url("/echo"),
        );
        assert_refused(&f, 400, "egress_denied", hook);
        assert!(common::error_message(&f.body).contains("X-EZThrottle-Webhook"));
    }
    assert_eq!(origin.count("/echo"), 0);
}

#[test]
fn a_job_whose_name_resolves_inside_is_refused_when_it_connects() {
    let origin = Origin::start();
    // Ports opened, loopback not: "inside.test" passes the check by name at
    // submission; its address is refused when the attempt connects.
    let ez = Ezthrottle::for_origin(&origin)
        .resolve("inside.test", "127.0.0.1")
        .egress("allow_ports = [\"1024-65535\"]")
        .start();
    let url = format!("http://inside.test:{}/echo", origin.http_addr.port());
    let r = control(
        &ez,
        "POST",
        "/api/v1/jobs",
        Some(&json!({"url": url}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job_id"].as_str().expect("job_id").to_string();
    let job: Value = common::eventually(Duration::from_secs(30), "job to fail", || {
        let v = control(&ez, "GET", &format!("/api/v1/jobs/{id}"), None).json();
        (v["status"] == "failed").then_some(v)
    });
    assert!(job.to_string().contains("egress_denied"), "{job}");
    assert_eq!(
        origin.count("/echo"),
        0,
        "the job reached a loopback service"
    );
    assert!(
        metric(
            &ez,
            "ezthrottle_egress_denied_total",
            &[("purpose", "job"), ("reason", "denied")]
        ) >= 1.0
    );

    // The same job with loopback opened, as the docs say, runs.
    let ez = Ezthrottle::for_origin(&origin)
        .resolve("inside.test", "127.0.0.1")
        .egress_loopback()
        .start();
    let r = control(
        &ez,
        "POST",
        "/api/v1/jobs",
        Some(&json!({"url": url}).to_string()),
    );
    let id = r.json()["job_id"].as_str().expect("job_id").to_string();
    common::eventually(Duration::from_secs(30), "job to succeed", || {
        let v = control(&ez, "GET", &format!("/api/v1/jobs/{id}"), None).json();
        (v["status"] == "success").then_some(v)
    });
    assert_eq!(origin.count("/echo"), 1);
}

#[test]
fn with_api_keys_a_client_cannot_borrow_another_workspace() {
    let origin = Origin::start();
    let keys = "[control.api_keys]\n\"tok_team_a_0001\" = \"team-a\"\n";
    let ez = Ezthrottle::for_origin(&origin).extra(keys).start();
    let url = origin.http_url("/echo");
    let post = |body: &str, extra: &[&str]| {
        let mut args = vec![
            "-X",
            "POST",
            "--data",
            body,
            "-H",
            "Idempotency-Key: order-1",
        ];
        args.extend_from_slice(extra);
        via(&ez, &args, &url)
    };
    let team_a = ["--proxy-user", "anyone:tok_team_a_0001"];
    // Team A, identified by its key as the proxy password.
    post("{\"amount\":1}", &team_a).assert_status(200);
    let replay = post("{\"amount\":1}", &team_a);
    replay.assert_status(200);
    assert_eq!(replay.header("idempotency-replay"), Some("true"));
    assert_eq!(origin.count("/echo"), 1);

    // Someone else naming team-a — by header, by user name, with a wrong
    // key — with another body under the same key: in team-a's scope that is
    // `409 idempotency_key_reused`; they must land in `default` instead.
    for attempt in [
        vec!["-H", "X-EZThrottle-Workspace: team-a"],
        vec!["--proxy-user", "team-a:guess"],
        vec![
            "--proxy-user",
            "team-a:tok_team_a_0002",
            "-H",
            "X-EZThrottle-Workspace: team-a",
        ],
    ] {
        let f = post("{\"amount\":2}", &attempt);
        assert_eq!(
            f.code,
            200,
            "{attempt:?} reached team-a's record: {}",
            f.describe()
        );
    }
    // The first of them ran upstream in `default`, the others replayed it.
    assert_eq!(origin.count("/echo"), 2);
    assert!(
        metric(
            &ez,
            "ezthrottle_untrusted_headers_ignored_total",
            &[("header", "x-ezthrottle-workspace")]
        ) >= 2.0
    );
    // Team A's own record is untouched.
    let replay = post("{\"amount\":1}", &team_a);
    assert_eq!(replay.header("idempotency-replay"), Some("true"));

    // A trusted network is believed, as before.
    let ez = Ezthrottle::for_origin(&origin)
        .extra(keys)
        .proxy("trusted_clients = [\"127.0.0.2/32\"]")
        .start();
    let call = |ws: &str| {
        let h = format!("X-EZThrottle-Workspace: {ws}");
        via(
            &ez,
            &[
                "-X",
                "POST",
                "--data",
                "{}",
                "-H",
                "Idempotency-Key: k2",
                "-H",
                &h,
            ],
            &url,
        )
    };
    call("team-b").assert_status(200);
    let f = call("team-b");
    assert_eq!(
        f.header("idempotency-replay"),
        Some("true"),
        "{}",
        f.describe()
    );
    assert_eq!(call("team-c").header("idempotency-replay"), None);
}

#[test]
fn a_client_cannot_set_the_job_runners_headers() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .extra("[retry]\nmax_retries = 1\nmax_reroutes = 0\n")
        .start();
    let f = via(
        &ez,
        &[
            "-H",
            "X-EZThrottle-Retry-Policy: {\"max_retries\": 6}",
            "-H",
            "X-EZThrottle-Region: mars",
            "-H",
            "X-EZThrottle-Max-Wait: 30",
        ],
        &origin.http_url("/status/503"),
    );
    assert_eq!(f.code, 503, "{}", f.describe());
    assert_eq!(
        f.header("x-ezthrottle-attempts"),
        Some("2"),
        "{}",
        f.describe()
    );
    assert_eq!(origin.count("/status/503"), 2);
    for h in ["x-ezthrottle-retry-policy", "x-ezthrottle-region"] {
        assert_eq!(
            metric(
                &ez,
                "ezthrottle_untrusted_headers_ignored_total",
                &[("header", h)]
            ),
            1.0,
            "{h}"
        );
    }
    // A forged internal token is just another client.
    let f = via(
        &ez,
        &[
            "-H",
            "X-EZThrottle-Internal: job 00000000000000000000000000000000",
            "-H",
            "X-EZThrottle-Retry-Policy: {\"max_retries\": 6}",
        ],
        &origin.http_url("/status/503"),
    );
    assert_eq!(
        f.header("x-ezthrottle-attempts"),
        Some("2"),
        "{}",
        f.describe()
    );
}
