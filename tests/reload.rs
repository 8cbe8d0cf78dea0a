//! Config changes without a restart (issue 14, item 7), through the real
//! binary: `SIGHUP` and a change of the file reload limits while requests
//! wait in the queue (none is lost); a config that does not validate is
//! refused and the running one stays; keys that need a restart are named
//! and keep their running values; `/readyz` shows the hash of the config
//! in force and `ezthrottle_config_reloads_total{result}` counts.

mod common;

use std::time::Duration;

use common::harness::EzBuilder;
use common::limit_origin::LimitOrigin;
use common::{curl, eventually, json, metrics, Ezthrottle};

fn domain_rps(ez: &Ezthrottle, domain: &str) -> Option<f64> {
    let all = json(common::harness::control_get(ez, "/api/v1/domains").as_bytes());
    all["domains"]
        .as_array()?
        .iter()
        .find(|d| d["domain"] == domain)?["rps"]
        .as_f64()
}

fn ready_hash(ez: &Ezthrottle) -> String {
    let r = json(common::harness::control_get(ez, "/readyz").as_bytes());
    r["config"].as_str().expect("config hash").to_string()
}

fn rewrite(ez: &Ezthrottle, from: &str, to: &str) {
    let text = std::fs::read_to_string(&ez.config_path).expect("read config");
    assert!(text.contains(from), "{from:?} not in:\n{text}");
    std::fs::write(&ez.config_path, text.replacen(from, to, 1)).expect("write config");
}

fn hup(ez: &Ezthrottle) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &ez.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -HUP");
}

fn reloads(ez: &Ezthrottle, result: &str, want: f64) {
    metrics::text_once(
        ez,
        "ezthrottle_config_reloads_total",
        &[("result", result)],
        want,
    );
}

#[test]
fn sighup_and_file_changes_reload_limits_without_losing_queued_requests() {
    let origin = LimitOrigin::start();
    let ez = EzBuilder::new()
        .resolve("slow.test", "127.0.0.1")
        .extra("[limits.domains.\"slow.test\"]\nrps = 0.2\nmax_concurrent = 10\n")
        .start();
    let before = ready_hash(&ez);
    let url = origin.url("slow.test", "/q");
    // One goes at once; at 0.2/s the other two would wait 5 and 10 s.
    let results = std::thread::scope(|s| {
        let clients: Vec<_> = (0..3)
            .map(|_| s.spawn(|| curl().proxy(&ez).fetch(&url)))
            .collect();
        eventually(Duration::from_secs(10), "two requests queued", || {
            let all = json(common::harness::control_get(&ez, "/api/v1/domains").as_bytes());
            (all["domains"][0]["waiting"] == 2).then_some(())
        });
        rewrite(&ez, "rps = 0.2", "rps = 50.0");
        hup(&ez);
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect::<Vec<_>>()
    });
    for r in &results {
        r.assert_status(200);
    }
    assert_eq!(domain_rps(&ez, "slow.test"), Some(50.0));
    reloads(&ez, "ok", 1.0);
    let after = ready_hash(&ez);
    assert_ne!(before, after, "/readyz shows the new config");

    // A change of the file alone (a ConfigMap update) is picked up too.
    rewrite(&ez, "rps = 50.0", "rps = 7.0");
    eventually(Duration::from_secs(15), "the file change applied", || {
        (domain_rps(&ez, "slow.test") == Some(7.0)).then_some(())
    });
    reloads(&ez, "ok", 2.0);
}

#[test]
fn a_bad_config_is_refused_and_the_running_one_stays() {
    let origin = LimitOrigin::start();
    let ez = EzBuilder::new()
        .resolve("keep.test", "127.0.0.1")
        .extra("[limits.domains.\"keep.test\"]\nrps = 9.0\n")
        .start();
    curl()
        .proxy(&ez)
        .fetch(&origin.url("keep.test", "/a"))
        .assert_status(200);
    let before = ready_hash(&ez);
    rewrite(&ez, "rps = 9.0", "rps = -1.0");
    hup(&ez);
    reloads(&ez, "error", 1.0);
    assert_eq!(domain_rps(&ez, "keep.test"), Some(9.0));
    assert_eq!(ready_hash(&ez), before, "the running config is still shown");
    // The log writer is asynchronous: the line may land just after the
    // metric counted the refusal.
    eventually(Duration::from_secs(15), "the log names the key", || {
        let log = ez.stderr_log();
        (log.contains("config reload refused") && log.contains("limits.domains.\"keep.test\".rps"))
            .then_some(())
    });
    curl()
        .proxy(&ez)
        .fetch(&origin.url("keep.test", "/b"))
        .assert_status(200);
}

#[test]
fn keys_that_need_a_restart_are_named_and_keep_their_values() {
    let origin = LimitOrigin::start();
    let ez = EzBuilder::new().resolve("lis.test", "127.0.0.1").start();
    let port = ez.proxy.port();
    let other = common::free_port();
    rewrite(
        &ez,
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{other}"),
    );
    hup(&ez);
    reloads(&ez, "ok", 1.0);
    eventually(Duration::from_secs(10), "the restart warning", || {
        ez.stderr_log().contains("need a restart").then_some(())
    });
    assert!(ez.stderr_log().contains("proxy.listen"));
    // Still serving where it was.
    curl()
        .proxy(&ez)
        .fetch(&origin.url("lis.test", "/x"))
        .assert_status(200);
}

/// Egress rules change live: a host denied by a reloaded `[egress] deny`
/// is refused from the next request on.
#[test]
fn egress_rules_reload() {
    let origin = LimitOrigin::start();
    let ez = EzBuilder::new()
        .resolve("egress.test", "127.0.0.1")
        .egress("deny = []")
        .start();
    let url = origin.url("egress.test", "/e");
    curl().proxy(&ez).fetch(&url).assert_status(200);
    rewrite(&ez, "deny = []", "deny = [\"egress.test\"]");
    hup(&ez);
    reloads(&ez, "ok", 1.0);
    let r = curl().proxy(&ez).fetch(&url);
    assert_eq!(
        (r.code, common::error_code(&r.body).as_str()),
        (403, "egress_denied"),
        "{}",
        r.describe()
    );
}

/// API keys change live: a key removed by a reload is refused, a key added
/// is accepted, from the next request on.
#[test]
fn api_keys_reload() {
    let ez = EzBuilder::new()
        .extra("[control.api_keys]\n\"tok_old\" = \"ws-a\"\n")
        .start();
    let list = |token: &str| {
        curl()
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .fetch(&ez.control_url("/api/v1/jobs"))
            .code
    };
    assert_eq!((list("tok_old"), list("tok_new")), (200, 401));
    rewrite(&ez, "\"tok_old\" = \"ws-a\"", "\"tok_new\" = \"ws-a\"");
    hup(&ez);
    reloads(&ez, "ok", 1.0);
    assert_eq!((list("tok_old"), list("tok_new")), (401, 200));
}
