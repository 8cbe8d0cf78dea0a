//! Idempotency-Key (SPEC §6) through the real binary, plain and intercepted,
//! with curl and Python `requests` as clients and an API origin that numbers
//! every call it serves (so a replay can never be faked by a second call).

mod common;

use std::time::{Duration, Instant};

use common::api_origin::ApiOrigin;
use common::curl::{assert_replay_of, without_replay};
use common::harness::EzBuilder;
use common::{curl, error_code, json, metrics, Ezthrottle, Fetch};

const REUSED_BODY: &str = r#"{"error":{"code":"idempotency_key_reused","message":"Idempotency-Key was already used with a different request body. Generate a new key for new operations."}}"#;

/// One worker thread: the proxy then runs on a single-threaded runtime
/// (`work_stealing` off), where storing a response cannot block its worker
/// and must be awaited in `response_body_end`. `builder_threads` picks
/// another count (tokio's multi-threaded scheduler).
fn builder(origin: &ApiOrigin) -> EzBuilder {
    builder_threads(origin, 1)
}

fn builder_threads(origin: &ApiOrigin, threads: usize) -> EzBuilder {
    EzBuilder::new()
        .proxy(&format!("threads = {threads}"))
        .upstream_ca(&origin.pki.ca_path)
        .connect_port(origin.tls_addr.port())
        .resolve("api.test", "127.0.0.1")
        .resolve("other.test", "127.0.0.1")
        .limits("rps = 1000.0\nmax_concurrent = 100")
        // 5xx answers must reach the client as they are here (each frees the
        // key); the proxy's own retries are tested in tests/retries.rs.
        .extra("\n[retry]\nmax_retries = 0\nmax_reroutes = 0\n")
}

fn start(origin: &ApiOrigin) -> Ezthrottle {
    builder(origin).start()
}

/// POST `body` with `Idempotency-Key: key` (when given) and extra headers.
fn send(
    ez: &Ezthrottle,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: &str,
    extra: &[&str],
) -> Fetch {
    let mut c = curl()
        .proxy(ez)
        .cacert(&ez.ca_path)
        .arg("-X")
        .arg(method)
        .arg("-H")
        .arg("Content-Type: application/json")
        .arg("--data-binary")
        .arg(body);
    if let Some(k) = key {
        c = c.arg("-H").arg(format!("Idempotency-Key: {k}"));
    }
    for h in extra {
        c = c.arg("-H").arg(*h);
    }
    c.fetch(url)
}

fn post(ez: &Ezthrottle, url: &str, key: &str, body: &str) -> Fetch {
    send(ez, "POST", url, Some(key), body, &[])
}

fn call_no(f: &Fetch) -> u64 {
    json(&f.body)["call"]
        .as_u64()
        .unwrap_or_else(|| panic!("no call number: {}", f.describe()))
}

#[test]
fn replay_is_byte_for_byte_and_the_origin_is_called_once() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let url = origin.http_url("api.test", "/v1/charges");
    let body = r#"{"amount":100,"currency":"USD"}"#;
    let first = post(&ez, &url, "key-1", body);
    assert_eq!(first.code, 201, "{}", first.describe());
    let second = post(&ez, &url, "key-1", body);
    assert_replay_of(&second, &first);
    // Set-Cookie twice, in order, survives the round trip through the store.
    assert_eq!(second.headers_all("set-cookie").len(), 2);
    assert_eq!(origin.count("/v1/charges"), 1);
    // The key is still forwarded upstream.
    assert_eq!(first.header("x-echo-key"), Some("key-1"));

    let text = metrics::text_once(
        &ez,
        "ezthrottle_requests_total",
        &[("domain", "api.test"), ("outcome", "replayed")],
        1.0,
    );
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_idempotency_total",
            &[("result", "stored")]
        ),
        Some(1.0)
    );
}

#[test]
fn intercepted_https_replays_for_python_requests() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let url = origin.https_url("/v1/orders");
    let script = r#"
import json, os, sys, requests
url = sys.argv[1]
out = []
for _ in range(2):
    r = requests.post(url, json={"sku": "A-1", "qty": 2}, headers={"Idempotency-Key": "py-key"}, timeout=30)
    out.append({"status": r.status_code, "body": r.text, "replay": r.headers.get("Idempotency-Replay"),
                "call": r.headers.get("X-Call")})
print(json.dumps(out))
"#;
    let out = common::py::run_script(
        script,
        &[&url],
        &[
            ("HTTPS_PROXY", &ez.proxy_url()),
            ("REQUESTS_CA_BUNDLE", ez.ca_path.to_str().expect("utf8")),
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v[0]["status"], 201, "{out}");
    assert_eq!(v[1]["status"], 201, "{out}");
    assert_eq!(v[0]["body"], v[1]["body"]);
    assert_eq!(v[0]["call"], v[1]["call"]);
    assert_eq!(v[0]["replay"], serde_json::Value::Null);
    assert_eq!(v[1]["replay"], "true");
    assert_eq!(origin.count("/v1/orders"), 1);
}

#[test]
fn different_body_conflicts_but_formatting_does_not() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let url = origin.http_url("api.test", "/v1/pay");
    let first = post(&ez, &url, "k", r#"{"amount":100,"meta":{"a":1,"b":[1,2]}}"#);
    assert_eq!(first.code, 201);

    // One value differs: 409 with exactly the SPEC body.
    let clash = post(&ez, &url, "k", r#"{"amount":101,"meta":{"a":1,"b":[1,2]}}"#);
    assert_eq!(clash.code, 409, "{}", clash.describe());
    assert_eq!(clash.text(), REUSED_BODY);
    // Array order is data.
    let clash = post(&ez, &url, "k", r#"{"amount":100,"meta":{"a":1,"b":[2,1]}}"#);
    assert_eq!(clash.code, 409);

    // Key order and whitespace only: a replay.
    let same = post(
        &ez,
        &url,
        "k",
        "{ \"meta\" : { \"b\" : [1, 2], \"a\" : 1 },\n \"amount\" : 100 }",
    );
    assert_replay_of(&same, &first);
    assert_eq!(origin.count("/v1/pay"), 1);

    metrics::text_once(
        &ez,
        "ezthrottle_requests_total",
        &[("domain", "api.test"), ("outcome", "conflict")],
        2.0,
    );
}

#[test]
fn scope_is_workspace_key_method_host_and_path() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let body = r#"{"x":1}"#;
    let a = post(&ez, &origin.http_url("api.test", "/a"), "shared", body);
    let calls = [
        post(&ez, &origin.http_url("api.test", "/b"), "shared", body),
        post(&ez, &origin.http_url("other.test", "/a"), "shared", body),
        send(
            &ez,
            "PUT",
            &origin.http_url("api.test", "/a"),
            Some("shared"),
            body,
            &[],
        ),
        send(
            &ez,
            "POST",
            &origin.http_url("api.test", "/a"),
            Some("shared"),
            body,
            &["X-EZThrottle-Workspace: team-b"],
        ),
    ];
    let mut seen = vec![call_no(&a)];
    for f in &calls {
        assert_eq!(f.code, 201, "{}", f.describe());
        assert_eq!(f.header("idempotency-replay"), None, "{}", f.describe());
        seen.push(call_no(f));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "every scope reached the origin");
    // The query string is not part of the scope: same path, same key → replay.
    let q = post(
        &ez,
        &origin.http_url("api.test", "/a?page=2"),
        "shared",
        body,
    );
    assert_eq!(q.header("idempotency-replay"), Some("true"));
    // Safe methods ignore the header.
    for _ in 0..2 {
        let g = curl()
            .proxy(&ez)
            .arg("-H")
            .arg("Idempotency-Key: shared")
            .fetch(&origin.http_url("api.test", "/a"));
        assert_eq!(g.header("idempotency-replay"), None);
    }
    assert_eq!(origin.calls(), 7);
}

#[test]
fn invalid_keys_are_400_and_never_reach_the_origin() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let url = origin.http_url("api.test", "/v1/x");
    let long = "k".repeat(256);
    for bad in ["has space", long.as_str()] {
        let f = post(&ez, &url, bad, "{}");
        assert_eq!(f.code, 400, "{bad:?}: {}", f.describe());
        assert_eq!(error_code(&f.body), "idempotency_key_invalid");
    }
    // Empty value: curl sends `Idempotency-Key:` with `-H "Idempotency-Key;"`.
    let f = curl()
        .proxy(&ez)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg("Idempotency-Key;")
        .fetch(&url);
    assert_eq!(f.code, 400, "{}", f.describe());
    assert_eq!(error_code(&f.body), "idempotency_key_invalid");
    let ok = post(&ez, &url, &"k".repeat(255), "{}");
    assert_eq!(ok.code, 201);
    assert_eq!(origin.count("/v1/x"), 1);
}

#[test]
fn failures_free_the_key_at_once() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let body = r#"{"n":1}"#;
    // 5xx: not stored; the next attempt goes upstream and is stored.
    let f = post(
        &ez,
        &origin.http_url("api.test", "/s?status=500"),
        "k5",
        body,
    );
    assert_eq!(f.code, 500);
    let f = post(
        &ez,
        &origin.http_url("api.test", "/s?status=502"),
        "k5",
        body,
    );
    assert_eq!(f.code, 502);
    let ok = post(&ez, &origin.http_url("api.test", "/s"), "k5", body);
    assert_eq!(ok.code, 201);
    assert_eq!(ok.header("idempotency-replay"), None);
    let again = post(
        &ez,
        &origin.http_url("api.test", "/s?status=500"),
        "k5",
        body,
    );
    assert_replay_of(&again, &ok);
    assert_eq!(origin.count("/s"), 3);

    // 429: the API did not do it; not stored either.
    let f = post(
        &ez,
        &origin.http_url("api.test", "/r?status=429"),
        "k4",
        body,
    );
    assert_eq!(f.code, 429);
    let ok = post(&ez, &origin.http_url("api.test", "/r"), "k4", body);
    assert_eq!((ok.code, ok.header("idempotency-replay")), (201, None));

    // No response at all (connection dropped): free.
    let f = post(&ez, &origin.http_url("api.test", "/d?abort=1"), "kd", body);
    assert!(f.code >= 500, "{}", f.describe());
    let ok = post(&ez, &origin.http_url("api.test", "/d"), "kd", body);
    assert_eq!((ok.code, ok.header("idempotency-replay")), (201, None));
    assert_eq!(origin.count("/d"), 2);

    // 4xx other than 429 is an answer, and is replayed.
    let f = post(
        &ez,
        &origin.http_url("api.test", "/e?status=422"),
        "ke",
        body,
    );
    let g = post(&ez, &origin.http_url("api.test", "/e"), "ke", body);
    assert_eq!(f.code, 422);
    assert_replay_of(&g, &f);
}

#[test]
fn duplicates_in_flight_wait_then_replay_or_get_409() {
    let origin = ApiOrigin::start();
    let ez = start(&origin);
    let url = origin.http_url("api.test", "/slow?delay_ms=1500");
    let body = r#"{"p":1}"#;
    std::thread::scope(|s| {
        let first = s.spawn(|| post(&ez, &url, "kf", body));
        assert_eq!(origin.wait_arrival(Duration::from_secs(30)), "/slow");
        let waiter = s.spawn(|| post(&ez, &url, "kf", body));
        let t = Instant::now();
        let impatient = send(
            &ez,
            "POST",
            &url,
            Some("kf"),
            body,
            &["X-EZThrottle-Max-Wait: 0.2"],
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(impatient.code, 409, "{}", impatient.describe());
        assert_eq!(error_code(&impatient.body), "idempotency_key_in_flight");
        assert_eq!(impatient.header("retry-after"), Some("1"));
        let first = first.join().expect("first");
        let waiter = waiter.join().expect("waiter");
        assert_eq!(first.code, 201);
        assert_replay_of(&waiter, &first);
    });
    assert_eq!(origin.count("/slow"), 1);
}

/// On both runtimes: one worker (single-threaded) and three (work stealing).
#[test]
fn twenty_parallel_requests_one_key_one_upstream_call() {
    for threads in [1, 3] {
        twenty_parallel_requests_on(threads);
    }
}

fn twenty_parallel_requests_on(threads: usize) {
    let origin = ApiOrigin::start();
    let ez = builder_threads(&origin, threads).start();
    let url = origin.http_url("api.test", "/burst?delay_ms=300");
    let body = r#"{"order":42}"#;
    let results: Vec<Fetch> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| s.spawn(|| post(&ez, &url, "burst", body)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    assert_eq!(origin.count("/burst"), 1);
    let originals: Vec<&Fetch> = results
        .iter()
        .filter(|f| f.header("idempotency-replay").is_none())
        .collect();
    assert_eq!(
        originals.len(),
        1,
        "exactly one response came from upstream"
    );
    for f in &results {
        assert_eq!(f.code, 201, "{}", f.describe());
        assert_eq!(f.body, originals[0].body);
        assert_eq!(without_replay(f), without_replay(originals[0]));
    }
}

#[test]
fn key_is_free_after_the_ttl() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin)
        .extra("[idempotency]\nttl = \"1s\"")
        .start();
    let url = origin.http_url("api.test", "/ttl");
    let a = post(&ez, &url, "kt", "{}");
    let b = post(&ez, &url, "kt", "{}");
    assert_eq!(b.header("idempotency-replay"), Some("true"));
    // Waiting out a TTL is waiting for time itself, not for an event.
    std::thread::sleep(Duration::from_millis(1100));
    let c = post(&ez, &url, "kt", "{}");
    assert_eq!(c.header("idempotency-replay"), None, "{}", c.describe());
    assert_ne!(call_no(&c), call_no(&a));
    assert_eq!(origin.count("/ttl"), 2);
}

#[test]
fn large_bodies() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin)
        .extra("[idempotency]\nmax_stored_body = \"4KiB\"\nmax_request_body = \"1MiB\"")
        .start();
    // A response over max_stored_body passes through whole, unstored.
    let url = origin.http_url("api.test", "/big?pad=20000");
    let a = post(&ez, &url, "kb", "{}");
    assert_eq!(a.code, 201);
    assert!(a.body.len() > 20000);
    let b = post(&ez, &url, "kb", "{}");
    assert_eq!(b.header("idempotency-replay"), None);
    assert_eq!(origin.count("/big"), 2);
    let text = common::harness::control_get(&ez, "/metrics");
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_idempotency_total",
            &[("result", "not_stored_too_large")]
        ),
        Some(2.0)
    );

    // A 300 KiB request body (past pingora's 64 KiB retry buffer) reaches the
    // origin whole, plain and intercepted, and replays.
    let data = common::upload_bytes(300 * 1024);
    for url in [
        origin.http_url("api.test", "/upload"),
        origin.https_url("/upload"),
    ] {
        let send_it = || {
            curl()
                .proxy(&ez)
                .cacert(&ez.ca_path)
                .arg("-H")
                .arg("Idempotency-Key: up")
                .upload(&data)
                .fetch(&url)
        };
        let first = send_it();
        assert_eq!(first.code, 201, "{}", first.describe());
        assert_eq!(json(&first.body)["body_sha256"], common::sha256_hex(&data));
        assert_eq!(json(&first.body)["body_len"], data.len());
        assert_replay_of(&send_it(), &first);
    }
    assert_eq!(origin.count("/upload"), 2);

    // Over max_request_body: 413 before anything goes upstream.
    let huge = common::upload_bytes(1024 * 1024 + 1);
    let f = curl()
        .proxy(&ez)
        .arg("-H")
        .arg("Idempotency-Key: huge")
        .upload(&huge)
        .fetch(&origin.http_url("api.test", "/huge"));
    assert_eq!(f.code, 413, "{}", f.describe());
    assert_eq!(error_code(&f.body), "request_body_too_large");
    assert_eq!(origin.count("/huge"), 0);

    // Chunked: small bodies work; past 64 KiB the client is told to send
    // Content-Length.
    let chunked = |n: usize, key: &str| {
        curl()
            .proxy(&ez)
            .arg("-H")
            .arg("Transfer-Encoding: chunked")
            .arg("-H")
            .arg(format!("Idempotency-Key: {key}"))
            .upload(&common::upload_bytes(n))
            .fetch(&origin.http_url("api.test", "/chunked"))
    };
    let small = chunked(1000, "c1");
    assert_eq!(small.code, 201, "{}", small.describe());
    assert_eq!(json(&small.body)["body_len"], 1000);
    assert_replay_of(&chunked(1000, "c1"), &small);
    let big = chunked(100 * 1024, "c2");
    assert_eq!(big.code, 413, "{}", big.describe());
    assert_eq!(origin.count("/chunked"), 1);
}

/// The copy of a response kept for replay takes its memory from the same
/// process-wide budget as buffered request bytes (`[proxy] max_buffered`):
/// past it the response still reaches the client whole, unstored, counted
/// as `not_stored_budget`; the budget is given back afterwards.
#[test]
fn response_captures_come_from_the_buffer_budget() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin)
        .proxy("max_buffered = \"1MiB\"")
        .extra("[idempotency]\nmax_stored_body = \"10MiB\"")
        .start();
    let url = origin.http_url("api.test", "/big?pad=3000000");
    let a = post(&ez, &url, "over-budget", "{}");
    assert_eq!(a.code, 201, "{}", a.describe());
    assert!(a.body.len() > 3_000_000, "the client gets it whole");
    let b = post(&ez, &url, "over-budget", "{}");
    assert_eq!(b.code, 201, "{}", b.describe());
    assert_eq!(b.header("idempotency-replay"), None, "not stored");
    assert_eq!(origin.count("/big"), 2);
    let text = common::harness::control_get(&ez, "/metrics");
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_idempotency_total",
            &[("result", "not_stored_budget")]
        ),
        Some(2.0)
    );
    // The budget was given back: a response that fits is stored and replayed.
    let url = origin.http_url("api.test", "/small?pad=100000");
    let first = post(&ez, &url, "fits", "{}");
    assert_eq!(first.code, 201, "{}", first.describe());
    assert_replay_of(&post(&ez, &url, "fits", "{}"), &first);
    assert_eq!(origin.count("/small"), 1);
}

#[test]
fn records_survive_kill_9() {
    let origin = ApiOrigin::start();
    let data = tempfile::tempdir().expect("tempdir");
    let url = origin.http_url("api.test", "/durable");
    let first = {
        let mut ez = builder(&origin).data_dir(data.path()).start();
        let f = post(&ez, &url, "kk", r#"{"v":1}"#);
        assert_eq!(f.code, 201);
        ez.stop_with("KILL");
        f
    };
    let ez = builder(&origin).data_dir(data.path()).start();
    let again = post(&ez, &url, "kk", r#"{"v":1}"#);
    assert_replay_of(&again, &first);
    let clash = post(&ez, &url, "kk", r#"{"v":2}"#);
    assert_eq!(clash.code, 409);
    assert_eq!(origin.count("/durable"), 1);
}

/// Send a keyed POST over a raw connection and read its response to the
/// last byte of its `Content-Length` body; returns the head and the body.
fn raw_keyed_post(ez: &Ezthrottle, origin: &ApiOrigin, path: &str, key: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let body = r#"{"race":true}"#;
    let port = origin.http_addr.port();
    let mut s = std::net::TcpStream::connect(ez.proxy).expect("connect");
    // Past the Redis claim lease (10 s): a claim left by a killed proxy
    // makes the duplicate wait that long before it replays.
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "POST http://api.test:{port}{path} HTTP/1.1\r\nHost: api.test:{port}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "proxy closed before the response ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a Content-Length response");
        if got.len() >= end + 4 + len {
            return (head, got[end + 4..end + 4 + len].to_vec());
        }
    }
}

/// The record commits before the response's last byte reaches the client
/// (`response_body_end`), not after: a `kill -9` sent the moment the client
/// has the whole response still finds it stored after restart. Committing
/// afterwards (in `logging`) loses this race: the kill lands before the
/// store's write. On Redis (`EZT_TEST_BACKEND=redis`) the killed proxy's
/// claim stays until its lease ends (≤ 10 s, docs/idempotency.md), so the
/// replay after restart waits that long: two rounds there, five here.
#[test]
fn a_response_the_client_has_is_stored_before_a_kill_9() {
    let origin = ApiOrigin::start();
    let data = tempfile::tempdir().expect("tempdir");
    let path = "/race";
    let rounds = if std::env::var("EZT_TEST_BACKEND").as_deref() == Ok("redis") {
        2
    } else {
        5
    };
    for round in 0..rounds {
        let key = format!("race-{round}");
        let (head, body) = {
            let mut ez = builder(&origin).data_dir(data.path()).start();
            let got = raw_keyed_post(&ez, &origin, path, &key);
            ez.kill_9_now();
            got
        };
        assert!(head.starts_with("HTTP/1.1 201"), "round {round}: {head}");
        let ez = builder(&origin).data_dir(data.path()).start();
        let (again_head, again_body) = raw_keyed_post(&ez, &origin, path, &key);
        assert!(
            again_head
                .to_ascii_lowercase()
                .contains("idempotency-replay: true"),
            "round {round}: not replayed after kill -9:\n{again_head}"
        );
        assert_eq!(again_body, body, "round {round}: replay differs");
        assert_eq!(
            origin.count(path),
            round + 1,
            "round {round}: origin called twice"
        );
    }
}
