//! `ezthrottle presets` (issue 13): the built-in table of well-known API
//! hosts, as aligned text for people and as JSON for scripts, from the real
//! binary.

mod common;

use std::process::Output;
use std::time::Duration;

use common::ezthrottle_cmd;
use common::proc::{run, show};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn ez(args: &[&str]) -> Output {
    let mut cmd = ezthrottle_cmd();
    cmd.args(args);
    run(&mut cmd, CMD_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn presets_prints_an_aligned_table() {
    let out = ez(&["presets"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.first().copied().unwrap_or_default();
    for col in [
        "HOST",
        "DIALECT",
        "RPS",
        "MAX_CONCURRENT",
        "BUDGET_KEY",
        "NOTE",
    ] {
        assert!(header.contains(col), "no {col} column: {header:?}");
    }
    let row = |host: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{text}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        row("api.openai.com")[..5],
        ["api.openai.com", "openai", "-", "-", "authorization"]
    );
    assert_eq!(
        row("api.anthropic.com")[..5],
        ["api.anthropic.com", "anthropic", "-", "-", "x-api-key"]
    );
    assert_eq!(
        row("api.github.com")[..5],
        [
            "api.github.com",
            "x-ratelimit",
            "1.389",
            "100",
            "authorization"
        ]
    );
    assert_eq!(
        row("*.myshopify.com")[..5],
        [
            "*.myshopify.com",
            "shopify",
            "2",
            "-",
            "x-shopify-access-token"
        ]
    );
    assert_eq!(row("discord.com")[..3], ["discord.com", "discord", "50"]);
    assert!(row("api.stripe.com").contains(&"retry-after"));
    assert!(row("api.github.com").join(" ").contains("5,000"));

    // Aligned: on every row, a cell starts (a blank, then a non-blank) at
    // each header column's offset.
    let offsets: Vec<usize> = ["DIALECT", "RPS", "MAX_CONCURRENT", "BUDGET_KEY", "NOTE"]
        .iter()
        .filter_map(|c| header.find(c))
        .collect();
    assert_eq!(offsets.len(), 5, "{header:?}");
    for l in &lines[1..] {
        let b = l.as_bytes();
        for &at in &offsets {
            assert!(
                b.len() > at && b[at - 1] == b' ' && b[at] != b' ',
                "misaligned at {at}: {l:?}"
            );
        }
    }
}

#[test]
fn presets_json_is_an_array_of_every_preset() {
    let out = ez(&["presets", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}):\n{}", stdout(&out)));
    let hosts: Vec<&str> = rows.iter().filter_map(|r| r["host"].as_str()).collect();
    for want in [
        "api.openai.com",
        "api.anthropic.com",
        "api.github.com",
        "*.myshopify.com",
        "api.stripe.com",
        "slack.com",
        "discord.com",
        "api.twitter.com",
        "api.x.com",
    ] {
        assert!(hosts.contains(&want), "{want} missing from {hosts:?}");
    }
    assert_eq!(hosts.len(), rows.len(), "a row without a host");
    let by_host = |h: &str| {
        rows.iter()
            .find(|r| r["host"] == h)
            .unwrap_or_else(|| panic!("no {h}"))
    };
    let gh = by_host("api.github.com");
    assert_eq!(gh["dialect"], "x-ratelimit");
    assert_eq!(gh["max_concurrent"], 100);
    assert_eq!(gh["budget_key"], serde_json::json!(["authorization"]));
    let rps = gh["rps"].as_f64().expect("github rps");
    assert!((rps * 3600.0 - 5000.0).abs() < 1e-6, "{rps}");
    let openai = by_host("api.openai.com");
    assert!(openai["rps"].is_null() && openai["max_concurrent"].is_null());
    assert_eq!(by_host("*.myshopify.com")["rps"], 2.0);
    assert_eq!(
        by_host("hooks.slack.com")["budget_key"],
        serde_json::json!([])
    );
    for r in &rows {
        assert!(r["note"].as_str().is_some_and(|n| !n.is_empty()), "{r}");
        assert!(r["dialect"].as_str().is_some(), "{r}");
    }
}

#[test]
fn config_check_shows_the_presets_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[limits]\npresets = false\n\n[limits.domains.\"api.example.com\"]\nbudget_key = \"header:X-Api-Key\"\n",
    )
    .expect("write config");
    let out = ez(&["config", "check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("presets = false"), "{text}");
    assert!(text.contains("\"header:x-api-key\""), "{text}");

    std::fs::write(
        &path,
        "[limits.domains.\"api.example.com\"]\nbudget_key = \"cookie:session\"\n",
    )
    .expect("write config");
    let out = ez(&["config", "check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits.domains.\"api.example.com\".budget_key")
            && err.contains("unknown form"),
        "{err}"
    );
}
