//! Webhook secrets are 16 characters to 1 KiB wherever they come from: the
//! secrets API (precise `400` naming the field), `[webhooks] secret` (config
//! error naming the key) and `EZTHROTTLE_WEBHOOK_SECRET` (refused at start).

mod common;

use std::time::Duration;

use common::harness::EzBuilder;
use common::{curl, ezthrottle_cmd, proc, Fetch};

fn post(ez: &common::Ezthrottle, body: &str) -> Fetch {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).expect("write body");
    curl()
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg("Content-Type: application/json")
        .data_file(&file)
        .fetch(&ez.control_url("/api/v1/webhook-secrets"))
}

fn assert_refused(f: &Fetch, field: &str, len: usize) {
    f.assert_status(400);
    let v: serde_json::Value = serde_json::from_slice(&f.body).expect("JSON error body");
    let text = v.to_string();
    assert!(text.contains("invalid_webhook_secret"), "{text}");
    assert!(
        text.contains(&format!("{field} must be at most 1024 bytes (got {len})")),
        "{text}"
    );
    assert!(
        !text.contains("xxxxxxxx"),
        "the value is never echoed: {text}"
    );
}

#[test]
fn the_secrets_api_takes_1024_bytes_and_refuses_more_naming_the_field() {
    let mut ez = EzBuilder::new().start();
    let ok = "x".repeat(1024);
    post(
        &ez,
        &format!(r#"{{"primary_secret":"{ok}","secondary_secret":"{ok}"}}"#),
    )
    .assert_status(200);
    for n in [1025, 1 << 20] {
        let big = "x".repeat(n);
        assert_refused(
            &post(&ez, &format!(r#"{{"primary_secret":"{big}"}}"#)),
            "primary_secret",
            n,
        );
    }
    assert_refused(
        &post(
            &ez,
            &format!(
                r#"{{"primary_secret":"{}","secondary_secret":"{}"}}"#,
                "x".repeat(16),
                "x".repeat(1025)
            ),
        ),
        "secondary_secret",
        1025,
    );
    // The refused posts changed nothing: still the 1024-byte pair.
    let f = curl().fetch(&ez.control_url("/api/v1/webhook-secrets"));
    f.assert_status(200);
    assert!(String::from_utf8_lossy(&f.body).contains(r#""has_secondary":true"#));
    ez.stop_sigterm();
}

#[test]
fn config_and_environment_secrets_over_1_kib_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ezthrottle.toml");
    std::fs::write(
        &config,
        format!("[webhooks]\nsecret = \"{}\"\n", "s".repeat(1024)),
    )
    .expect("write");
    let out = proc::run(
        ezthrottle_cmd()
            .arg("config")
            .arg("check")
            .arg("--config")
            .arg(&config),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "1024 bytes accepted: {out:?}");
    std::fs::write(
        &config,
        format!("[webhooks]\nsecret = \"{}\"\n", "s".repeat(1025)),
    )
    .expect("write");
    let out = proc::run(
        ezthrottle_cmd()
            .arg("config")
            .arg("check")
            .arg("--config")
            .arg(&config),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("webhooks.secret: must be at most 1024 bytes (got 1025)"),
        "{err}"
    );
    assert!(!err.contains("ssssssss"), "never echoes the secret: {err}");

    // The environment variable: the server refuses to start, naming it.
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[proxy]\nlisten = \"127.0.0.1:{}\"\n[control]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("data").display().to_string(),
            common::free_port(),
            common::free_port()
        ),
    )
    .expect("write");
    let out = proc::run(
        ezthrottle_cmd()
            .env("EZTHROTTLE_WEBHOOK_SECRET", "e".repeat(1025))
            .arg("run")
            .arg("--config")
            .arg(&config),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a 1025-byte secret: {err}"
    );
    assert!(
        err.contains("EZTHROTTLE_WEBHOOK_SECRET") && err.contains("at most 1024 bytes"),
        "{err}"
    );
    assert!(!err.contains("eeeeeeee"), "never echoes the secret: {err}");
}
