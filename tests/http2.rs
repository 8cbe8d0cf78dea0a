//! HTTP/2 and gRPC through interception (issue 14, item 1), with real
//! clients: curl (`--http2`, several streams multiplexed on one
//! connection) and Python `grpcio` from PyPI (a real gRPC server behind
//! the proxy, TLS and plaintext h2c, unary and server-streaming calls).
//!
//! Every h2 stream must run through the same pipeline as an HTTP/1.1
//! request: paced by the domain's throttle, replayed by idempotency,
//! answered with our JSON errors, retried on a gRPC RESOURCE_EXHAUSTED or
//! UNAVAILABLE as on a 429 or 503.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::origin::Echo;
use common::{curl, error_code, py_script, python, Ezthrottle, Fetch, Origin, CLIENT_TIMEOUT};

fn h2_fetch(ez: &Ezthrottle, url: &str) -> Fetch {
    curl()
        .proxy(ez)
        .cacert(&ez.ca_path)
        .arg("--http2")
        .fetch(url)
}

fn http_version(f: &Fetch) -> String {
    f.info["http_version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// curl offers h2 through the proxy and gets it; the request runs the
/// pipeline (our response headers) and, on `upstream_protocol = "auto"`,
/// reaches an h2-capable origin over h2. An HTTP/1.1 client stays on
/// HTTP/1.1 upstream, and a domain set to `http1` never gets h2.
#[test]
fn curl_http2_runs_the_pipeline_and_the_origin_protocol_follows_the_domain() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .resolve("other.test", "127.0.0.1")
        .extra("[limits.domains.\"other.test\"]\nupstream_protocol = \"http1\"")
        .start();

    let f = h2_fetch(&ez, &origin.https_url("/echo?q=1"));
    f.assert_status(200);
    assert_eq!(http_version(&f), "2", "{}", f.describe());
    assert_eq!(
        f.header("x-ezthrottle-attempts"),
        Some("1"),
        "{:?}",
        f.headers
    );
    assert!(
        f.header("x-ezthrottle-wait-ms").is_some(),
        "{:?}",
        f.headers
    );
    let echo = Echo::parse(&f.body);
    assert_eq!(
        echo.version(),
        "HTTP/2.0",
        "auto: h2 from the client, h2 upstream"
    );
    assert_eq!(echo.target(), "/echo?q=1");
    let via = echo
        .headers()
        .into_iter()
        .find(|(k, _)| k == "via")
        .map(|(_, v)| v);
    assert!(
        via.is_some_and(|v| v.contains("ezthrottle-")),
        "our Via hop"
    );

    // An HTTP/1.1 client: HTTP/1.1 upstream too.
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("--http1.1")
        .fetch(&origin.https_url("/echo"));
    f.assert_status(200);
    assert_eq!(http_version(&f), "1.1");
    assert_eq!(Echo::parse(&f.body).version(), "HTTP/1.1");

    // upstream_protocol = "http1": h2 to us, HTTP/1.1 to the origin.
    let url = format!("https://other.test:{}/echo", origin.tls_addr.port());
    let f = h2_fetch(&ez, &url);
    f.assert_status(200);
    assert_eq!(http_version(&f), "2");
    assert_eq!(Echo::parse(&f.body).version(), "HTTP/1.1");

    // A large upload and download over one h2 stream each.
    let data = common::upload_bytes(1 << 20);
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("--http2")
        .upload(&data)
        .fetch(&origin.https_url("/echo"));
    f.assert_status(200);
    let echo = Echo::parse(&f.body);
    assert_eq!(echo.body_len(), 1 << 20);
    assert_eq!(echo.body_sha256(), common::sha256_hex(&data));
    let f = h2_fetch(&ez, &origin.https_url("/bytes?n=3000000"));
    f.assert_status(200);
    assert_eq!(f.body.len(), 3_000_000);
    assert_eq!(f.body, common::pattern_bytes(3_000_000));
}

/// `[tls] http2 = false`: the client is offered HTTP/1.1 only.
#[test]
fn http2_can_be_turned_off() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).tls("http2 = false").start();
    let f = h2_fetch(&ez, &origin.https_url("/echo"));
    f.assert_status(200);
    assert_eq!(http_version(&f), "1.1", "{}", f.describe());
}

/// Five streams multiplexed on ONE connection are admitted one by one at
/// the domain's pace: 2 req/s with a burst of 1 starts them at 0, 0.5, 1,
/// 1.5 and 2 s, so the last answer cannot come before 2 s.
#[test]
fn multiplexed_streams_are_paced_like_requests() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .limits("rps = 2.0\nburst = 1\nmax_concurrent = 10")
        .start();
    let urls: Vec<String> = (0..5)
        .map(|i| origin.https_url(&format!("/echo?i={i}")))
        .collect();
    let began = Instant::now();
    let run = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .args(["--http2", "--parallel", "--parallel-max", "5", "-s"])
        .args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"])
        .args(
            urls.iter()
                .flat_map(|u| ["-o".to_string(), "/dev/null".to_string(), u.clone()]),
        )
        .run();
    let took = began.elapsed();
    assert_eq!(run.exit, 0, "curl: {}", run.stderr);
    let out = String::from_utf8_lossy(&run.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let mut connects = 0;
    for l in &lines {
        let parts: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(parts[..2], ["2", "200"], "{out}");
        connects += parts[2].parse::<u32>().expect("num_connects");
    }
    assert_eq!(connects, 1, "all five streams on one connection: {out}");
    assert_eq!(origin.count("/echo"), 5);
    assert!(
        took >= Duration::from_millis(1900),
        "5 streams at 2 req/s (burst 1) finished in {took:?}"
    );
}

/// A client that goes away while its stream waits for admission leaves
/// the queue at once (counted `cancelled`), and the domain's next request
/// is not held up by it.
#[test]
fn a_stream_abandoned_while_waiting_leaves_the_queue() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .limits("rps = 0.2\nburst = 1\nmax_concurrent = 10\nmax_wait = \"60s\"")
        .start();
    // Takes the burst: the next start is 5 s away.
    h2_fetch(&ez, &origin.https_url("/echo?first")).assert_status(200);
    let gone = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .args(["--http2", "--max-time", "1"])
        .fetch(&origin.https_url("/echo?abandoned"));
    assert_eq!(gone.exit, 28, "curl gave up waiting: {}", gone.describe());
    let snapshot = || {
        let v = common::json(common::harness::control_get(&ez, "/api/v1/domains").as_bytes());
        v["domains"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["domain"] == "origin.test").cloned())
    };
    common::eventually(
        Duration::from_secs(10),
        "the abandoned stream to leave",
        || {
            let metrics = common::harness::control_get(&ez, "/metrics");
            let cancelled = metrics.lines().any(|l| {
                l.starts_with("ezthrottle_requests_total{")
                    && l.contains("origin.test")
                    && l.contains("outcome=\"cancelled\"")
                    && l.ends_with(" 1")
            });
            let waiting = snapshot().and_then(|d| d["waiting"].as_u64());
            (cancelled && waiting == Some(0)).then_some(())
        },
    );
    assert_eq!(
        origin.count("/echo"),
        1,
        "the abandoned request never went upstream"
    );
}

/// Idempotency and our own errors work per stream.
#[test]
fn idempotency_and_errors_over_h2() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();
    let post = || {
        curl()
            .proxy(&ez)
            .cacert(&ez.ca_path)
            .arg("--http2")
            .args(["-H", "Idempotency-Key: h2-key-1"])
            .upload(b"same body")
            .fetch(&origin.https_url("/echo"))
    };
    let first = post();
    first.assert_status(200);
    let again = post();
    again.assert_status(200);
    assert_eq!(http_version(&again), "2");
    assert!(
        again.header("idempotency-replay").is_some(),
        "second POST replayed: {:?}",
        again.headers
    );
    assert_eq!(again.body, first.body, "byte for byte");
    assert_eq!(origin.count("/echo"), 1, "the origin saw one POST");

    // A bad control header: our JSON 400, on the stream, over h2.
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("--http2")
        .args(["-H", "X-EZThrottle-Max-Wait: forever"])
        .fetch(&origin.https_url("/echo"));
    f.assert_status(400);
    assert_eq!(http_version(&f), "2");
    assert_eq!(error_code(&f.body), "bad_request");
}

/// Parking per stream: `Prefer: respond-async` with a webhook is answered
/// `202` on the stream, and the job runs and delivers its webhook.
#[test]
fn a_stream_parks_as_a_job_and_its_webhook_arrives() {
    use common::api_origin::ApiOrigin;
    use common::webhook_sink::WebhookSink;
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let ez = common::EzBuilder::new()
        .egress_loopback()
        .upstream_ca(&origin.pki.ca_path)
        .connect_port(origin.tls_addr.port())
        .extra("\n[webhooks]\nsecret = \"whsec_h2_parking_0123456789\"\n")
        .start();
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("--http2")
        .args(["-H", "Content-Type: application/json"])
        .args([
            "-H",
            &format!("X-EZThrottle-Webhook: {}", sink.url("/hook")),
        ])
        .args(["-H", "Prefer: respond-async"])
        .args(["--data-binary", r#"{"amount":7}"#])
        .fetch(&origin.https_url("/v1/orders"));
    assert_eq!(f.code, 202, "{}", f.describe());
    assert_eq!(http_version(&f), "2");
    let accepted = common::json(&f.body);
    let job_id = accepted["job_id"].as_str().expect("job_id").to_string();
    let d = sink.next(Duration::from_secs(60));
    let p = d.json();
    assert_eq!(p["job_id"], job_id.as_str(), "{p}");
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(p["response"]["status_code"], 201);
    assert_eq!(origin.count("/v1/orders"), 1);
}

/// A grpcio server (`tests/py/grpc_pair.py serve`): TLS with the origin's
/// test certificate, and plaintext h2c. Stops when dropped.
struct GrpcServer {
    child: Child,
    stdin: Option<ChildStdin>,
    tls: u16,
    plain: u16,
}

impl GrpcServer {
    fn start(origin: &Origin, dir: &std::path::Path) -> GrpcServer {
        let cert = dir.join("grpc-leaf.pem");
        let key = dir.join("grpc-leaf.key");
        std::fs::write(&cert, &origin.pki.leaf_pem).expect("write cert");
        std::fs::write(&key, &origin.pki.leaf_key_pem).expect("write key");
        let mut child = Command::new(python())
            .arg(py_script("grpc_pair.py"))
            .arg("serve")
            .arg(&cert)
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the grpcio server");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(CLIENT_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the grpcio server did not start (is grpcio installed in {}? scripts/test installs it)",
                python()
            )
        });
        let ports: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("grpcio server said {line:?}: {e}"));
        GrpcServer {
            child,
            stdin,
            tls: ports["tls"].as_u64().expect("tls port") as u16,
            plain: ports["plain"].as_u64().expect("plain port") as u16,
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `plan` with the grpcio client through the proxy; one JSON result
/// per call.
fn grpc_calls(
    ez: &Ezthrottle,
    proxy_var: &str,
    target: &str,
    roots: Option<&std::path::Path>,
    plan: serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(python());
    for k in common::CLIENT_ENV {
        cmd.env_remove(k);
    }
    // grpc core reads the proxy from `grpc_proxy`, `https_proxy` or
    // `http_proxy`, and tunnels with CONNECT whatever the channel.
    cmd.env(proxy_var, ez.proxy_url())
        .arg(py_script("grpc_pair.py"))
        .arg("call")
        .arg(target)
        .arg(
            roots
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_else(|| "-".into()),
        )
        .arg(plan.to_string());
    let out = common::proc::run(&mut cmd, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "grpc client: {}",
        common::proc::show(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn by_method<'a>(results: &'a [serde_json::Value], method: &str) -> &'a serde_json::Value {
    results
        .iter()
        .find(|r| r["method"] == method)
        .unwrap_or_else(|| panic!("no {method} in {results:?}"))
}

/// gRPC end to end through interception: unary and server-streaming calls
/// with their trailers intact; RESOURCE_EXHAUSTED (a trailers-only answer)
/// is retried as a 429 and the client sees the success; UNAVAILABLE is
/// retried as a 503 until the retry budget is spent and then passed on
/// with its message; other statuses are passed on at once.
#[test]
fn grpc_through_interception_streams_trailers_and_retries() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = GrpcServer::start(&origin, dir.path());
    let ez = Ezthrottle::for_origin(&origin)
        .connect_port(server.tls)
        .egress_loopback()
        .start();
    let target = format!("origin.test:{}", server.tls);
    let results = grpc_calls(
        &ez,
        "https_proxy",
        &target,
        Some(&ez.ca_path),
        serde_json::json!([
            {"method": "Unary", "arg": "hello"},
            {"method": "Stream", "arg": "3"},
            {"method": "Flaky", "arg": "k1"},
            {"method": "Down"},
            {"method": "Missing", "arg": "thing"},
            {"method": "Count"}
        ]),
    );
    let unary = by_method(&results, "Unary");
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["reply"], "ok:hello");
    let stream = by_method(&results, "Stream");
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(
        stream["messages"],
        serde_json::json!(["msg-0", "msg-1", "msg-2"])
    );
    assert_eq!(stream["trailers"]["x-trailer"], "done", "trailers intact");
    let flaky = by_method(&results, "Flaky");
    assert_eq!(flaky["code"], "OK", "RESOURCE_EXHAUSTED retried: {flaky}");
    assert_eq!(flaky["reply"], "ok:k1");
    let down = by_method(&results, "Down");
    assert_eq!(down["code"], "UNAVAILABLE", "{down}");
    assert_eq!(down["details"], "backend down", "the server's message");
    let missing = by_method(&results, "Missing");
    assert_eq!(missing["code"], "NOT_FOUND", "{missing}");
    assert_eq!(missing["details"], "no such thing: thing");
    // What the server saw (the Count call itself is not counted).
    let counts: serde_json::Value = serde_json::from_str(
        by_method(&results, "Count")["reply"]
            .as_str()
            .expect("counts"),
    )
    .expect("counts json");
    assert_eq!(counts["Unary"], 1);
    assert_eq!(counts["Stream"], 1);
    assert_eq!(counts["Flaky"], 2, "one refusal, one retry");
    assert_eq!(counts["Down"], 4, "the first attempt and max_retries = 3");
    assert_eq!(counts["Missing"], 1, "NOT_FOUND is not retried");

    // The retries are ours, counted per domain.
    let metrics = common::harness::control_get(&ez, "/metrics");
    let retries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ezthrottle_retries_total{") && l.contains("origin.test"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(retries, 4.0, "1 for Flaky, 3 for Down:\n{metrics}");
}

/// gRPC's insecure channel through a proxy: CONNECT to a plaintext port,
/// then h2 with prior knowledge (h2c). The same pipeline, h2c upstream.
#[test]
fn grpc_h2c_through_a_plain_connect() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = GrpcServer::start(&origin, dir.path());
    let ez = Ezthrottle::for_origin(&origin)
        .connect_port(server.plain)
        .egress_loopback()
        .start();
    let target = format!("origin.test:{}", server.plain);
    let results = grpc_calls(
        &ez,
        "grpc_proxy",
        &target,
        None,
        serde_json::json!([
            {"method": "Unary", "arg": "plain"},
            {"method": "Stream", "arg": "2"},
            {"method": "Flaky", "arg": "k2"},
            {"method": "Count"}
        ]),
    );
    assert_eq!(by_method(&results, "Unary")["reply"], "ok:plain");
    let stream = by_method(&results, "Stream");
    assert_eq!(stream["messages"], serde_json::json!(["msg-0", "msg-1"]));
    assert_eq!(stream["trailers"]["x-trailer"], "done");
    assert_eq!(by_method(&results, "Flaky")["code"], "OK");
    let counts: serde_json::Value = serde_json::from_str(
        by_method(&results, "Count")["reply"]
            .as_str()
            .expect("counts"),
    )
    .expect("counts json");
    assert_eq!(counts["Flaky"], 2);
}
