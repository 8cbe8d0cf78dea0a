//! `[storage] encryption_key_file`: the stored requests of parked and API
//! jobs (with their `Authorization`), webhook secrets and results are
//! encrypted in the SQLite file — and still replayed right after a restart.
//!
//! Real binary, real SQLite file: jobs are held unfinished by an origin that
//! does not answer, the raw bytes of `ezthrottle.db`, `-wal` and `-shm` are
//! searched for the planted secrets, the proxy is killed and restarted with
//! the same key (the jobs complete with the right `Authorization` at the
//! origin), then with a wrong key and with none (refused at start).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::harness::EzBuilder;
use common::proc;
use common::secret_origin::SecretOrigin;
use common::webhook_sink::WebhookSink;
use common::{curl, ezthrottle_cmd, Ezthrottle, Fetch};

const MARK: &str = "S3CR3T";
const WAIT: Duration = Duration::from_secs(60);

fn s(what: &str) -> String {
    format!("{what}-{MARK}-{}", std::process::id())
}

/// Every byte SQLite keeps on disk for the store.
fn disk_bytes(data: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["ezthrottle.db", "ezthrottle.db-wal", "ezthrottle.db-shm"] {
        if let Ok(b) = std::fs::read(data.join(f)) {
            all.extend(b);
        }
    }
    all
}

fn found(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn builder(data: &Path, storage: &str) -> EzBuilder {
    EzBuilder::new()
        // About the SQLite file's bytes: always the embedded store.
        .storage_embedded()
        .data_dir(data)
        .extra(storage)
        .egress_loopback()
}

fn park(ez: &Ezthrottle, origin: &SecretOrigin, sink: &WebhookSink, tag: &str) -> Fetch {
    curl()
        .proxy(ez)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg(format!(
            "Authorization: Bearer {}",
            s(&format!("{tag}-auth"))
        ))
        .arg("-H")
        .arg(format!("X-EZThrottle-Webhook: {}", sink.url("/parked")))
        .arg("-H")
        .arg("Prefer: respond-async")
        .arg("--data-binary")
        .arg(format!(r#"{{"card":"{}"}}"#, s(&format!("{tag}-body"))))
        .fetch(&origin.url(&format!("/v1/{tag}?api_key={}", s(&format!("{tag}-query")))))
}

/// Requests for `path` seen by the origin.
fn seen_for(origin: &SecretOrigin, path: &str) -> Vec<common::secret_origin::Seen> {
    origin
        .seen()
        .into_iter()
        .filter(|x| x.target().starts_with(path))
        .collect()
}

fn wait_seen(origin: &SecretOrigin, path: &str, more_than: usize) -> common::secret_origin::Seen {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = seen_for(origin, path);
        if seen.len() > more_than {
            return seen[seen.len() - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{path} not seen more than {more_than} times"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn job_status(ez: &Ezthrottle, id: &str) -> String {
    let f = curl().fetch(&ez.control_url(&format!("/api/v1/jobs/{id}")));
    f.assert_status(200);
    let v: serde_json::Value = serde_json::from_slice(&f.body).expect("job JSON");
    v["status"].as_str().unwrap_or_default().to_string()
}

fn wait_status(ez: &Ezthrottle, id: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = job_status(ez, id);
        if st == want {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} is {st}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ezthrottle run` with `config` must exit non-zero at start; returns stderr.
fn refused(config: &Path) -> String {
    let out = proc::run(
        ezthrottle_cmd().arg("run").arg("--config").arg(config),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "started anyway: {stdout}");
    assert!(!stdout.contains("ezthrottle ready"), "{stdout}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_a_key_stored_credentials_are_in_clear_text() {
    // The control for the test below: the same parked request, no key.
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let origin = SecretOrigin::start("{}", "c", false);
    let sink = WebhookSink::start();
    let mut ez = builder(&data, "").start();
    park(&ez, &origin, &sink, "plain").assert_status(202);
    wait_seen(&origin, "/v1/plain", 0);
    assert!(found(&disk_bytes(&data), &s("plain-auth")));
    ez.stop_with("KILL");
    assert!(ez
        .stderr_log()
        .contains("stored job request headers (incl. Authorization), bodies and webhook secrets are kept in clear text"));
}

#[test]
fn with_a_key_stored_credentials_are_encrypted_and_still_replayed() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let key_file = work.path().join("storage.key");
    // `openssl rand -base64 32` style.
    std::fs::write(&key_file, "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\n").expect("key");
    let storage = format!(
        "[storage]\nencryption_key_file = {:?}\n",
        key_file.display().to_string()
    );
    let origin = SecretOrigin::start("{\"ok\":true}", "c", false);
    let sink = WebhookSink::start();
    let mut ez = builder(&data, &storage).start();
    assert!(!ez.stderr_log().contains("kept in clear text"));

    // A parked request and a job API submission, both held by the origin.
    let f = park(&ez, &origin, &sink, "parked");
    f.assert_status(202);
    let parked: serde_json::Value = serde_json::from_slice(&f.body).expect("202 JSON");
    let parked_id = parked["job_id"].as_str().expect("job_id").to_string();
    let job = serde_json::json!({
        "url": origin.url(&format!("/v1/api?api_key={}", s("api-query"))),
        "method": "POST",
        "headers": {"Authorization": format!("Bearer {}", s("api-auth"))},
        "body": format!(r#"{{"card":"{}"}}"#, s("api-body")),
        "webhooks": [{"url": sink.url("/api")}],
    });
    let f = ez.submit_job(&job);
    f.assert_status(201);
    let api: serde_json::Value = serde_json::from_slice(&f.body).expect("201 JSON");
    let api_id = api["job_id"].as_str().expect("job_id").to_string();
    // And a webhook secret for a workspace.
    curl()
        .arg("-X")
        .arg("POST")
        .arg("--data-binary")
        .arg(format!(r#"{{"primary_secret":"{}"}}"#, s("whsec-primary")))
        .fetch(&ez.control_url("/api/v1/webhook-secrets"))
        .assert_status(200);

    let first = wait_seen(&origin, "/v1/parked", 0);
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {}", s("parked-auth")))
    );
    wait_seen(&origin, "/v1/api", 0);
    assert_eq!(job_status(&ez, &parked_id), "in_flight");
    assert_eq!(job_status(&ez, &api_id), "in_flight");

    // Nothing planted is in the database files, in any form we sent it.
    let bytes = disk_bytes(&data);
    assert!(
        bytes.len() > 8192,
        "the store is on disk ({} bytes)",
        bytes.len()
    );
    assert!(
        !found(&bytes, MARK),
        "a planted secret is in the SQLite files in clear text"
    );

    // kill -9 with both jobs in flight; the origin answers from now on.
    ez.stop_with("KILL");
    origin.set_answer(true);
    let parked_before = seen_for(&origin, "/v1/parked").len();
    let api_before = seen_for(&origin, "/v1/api").len();

    // Same key: both jobs run again with their stored Authorization.
    let mut ez = builder(&data, &storage).start();
    let again = wait_seen(&origin, "/v1/parked", parked_before);
    assert_eq!(
        again.header("authorization"),
        Some(format!("Bearer {}", s("parked-auth")))
    );
    assert_eq!(
        again.body,
        format!(r#"{{"card":"{}"}}"#, s("parked-body")).as_bytes()
    );
    assert!(again.target().ends_with(&s("parked-query")));
    let again = wait_seen(&origin, "/v1/api", api_before);
    assert_eq!(
        again.header("authorization"),
        Some(format!("Bearer {}", s("api-auth")))
    );
    wait_status(&ez, &parked_id, "success");
    wait_status(&ez, &api_id, "success");
    sink.until(WAIT, "both webhooks", |all| {
        all.iter().any(|d| d.path == "/parked") && all.iter().any(|d| d.path == "/api")
    });
    curl()
        .fetch(&ez.control_url("/api/v1/webhook-secrets"))
        .assert_status(200);
    assert!(!found(&disk_bytes(&data), MARK));
    let config = std::fs::read_to_string(&ez.config_path).expect("config");
    ez.stop_sigterm();

    // A wrong key: refused at start with the clear error.
    let wrong_key = work.path().join("wrong.key");
    std::fs::write(&wrong_key, "00".repeat(32)).expect("key");
    let wrong = work.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        config.replace(
            &key_file.display().to_string(),
            &wrong_key.display().to_string(),
        ),
    )
    .expect("config");
    let err = refused(&wrong);
    assert!(
        err.contains("storage.encryption_key does not decrypt existing data"),
        "{err}"
    );
    // No key at all: refused too, naming the keys to set.
    let none = work.path().join("none.toml");
    std::fs::write(&none, config.replace(&storage, "")).expect("config");
    let err = refused(&none);
    assert!(err.contains("encryption_key_file"), "{err}");
    // The right key still works after both refusals.
    let mut ez = builder(&data, &storage).start();
    wait_status(&ez, &parked_id, "success");
    ez.stop_sigterm();
}
