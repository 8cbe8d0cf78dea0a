//! Replicas on one Redis (`[storage] backend = "redis"`) behave as one proxy:
//! real processes only — one private `redis-server` per test, two or three
//! `ezthrottle` replicas on it (one shared CA), real clients (curl) through
//! the proxies to loopback origins that record what they saw.
//!
//! Timing assertions are the limits themselves and lower bounds the design
//! guarantees (a pace of R req/s spaces starts by 1/R, a pause holds the
//! next request back); never upper bounds on speed, except the throughput
//! floor of the pace test (the shared pace must not be trivially slow).

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::api_origin::ApiOrigin;
use common::curl::assert_replay_of;
use common::exchange_origin::{windows, ExchangeOrigin};
use common::harness::{control_get, ezthrottle_cmd, EzBuilder, SharedCa};
use common::limit_origin::LimitOrigin;
use common::webhook_sink::WebhookSink;
use common::{curl, error_code, metrics, Ezthrottle, Fetch, RedisServer};

/// Host names the replicas resolve to 127.0.0.1 (each test its own).
const HOSTS: &[&str] = &[
    "pace.test",
    "conc.test",
    "hang.test",
    "learn.test",
    "retry.test",
    "api.test",
    "deg.test",
    "idem.test",
];

/// Timing slack for arrival gaps measured at the origin (scheduling jitter
/// between a replica's start and the origin's accept, both directions).
const SLACK: Duration = Duration::from_millis(60);

/// Bound on waiting for one arrival at an origin.
const ARRIVAL_WAIT: Duration = Duration::from_secs(30);

/// Replicas on `redis` with fast defaults (1000 req/s, 100 concurrent), no
/// proxy retries (the origins answer 429 to teach pauses; the throttle is
/// what is watched here), `extra` appended (per-domain tables, `[jobs]`...).
fn builder(redis: &RedisServer, extra: &str) -> EzBuilder {
    let mut b = EzBuilder::new()
        .redis(redis)
        .limits("rps = 1000.0\nmax_concurrent = 100")
        .extra(&format!(
            "{extra}\n[retry]\nmax_retries = 0\nmax_reroutes = 0\n"
        ));
    for h in HOSTS {
        b = b.resolve(h, "127.0.0.1");
    }
    b
}

fn get(ez: &Ezthrottle, url: &str) -> Fetch {
    curl().proxy(ez).fetch(url)
}

/// Run every `(replica, url)` at once (one curl each); results in order.
fn parallel(ez: &[Ezthrottle], reqs: &[(usize, String)]) -> Vec<Fetch> {
    std::thread::scope(|s| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|(r, u)| {
                let e = &ez[*r];
                s.spawn(move || get(e, u))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

fn assert_all_ok(results: &[Fetch]) {
    for r in results {
        assert_eq!(r.code, 200, "{}", r.describe());
    }
}

fn domain(ez: &Ezthrottle, name: &str) -> Value {
    let f = curl().fetch(&ez.control_url("/api/v1/domains"));
    assert_eq!(f.code, 200, "{}", f.describe());
    let all = common::json(&f.body);
    all["domains"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["domain"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} not in /api/v1/domains of {}: {all}", ez.control))
}

/// An unlabelled sample of `/metrics`.
fn metric(ez: &Ezthrottle, name: &str) -> Option<f64> {
    metrics::value(&control_get(ez, "/metrics"), name, &[])
}

fn readyz(ez: &Ezthrottle) -> (u16, Value) {
    let r = common::raw::get(ez.control, "/readyz");
    (r.status, r.json())
}

fn assert_min_gaps(arrivals: &[Instant], min: Duration, what: &str) {
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate() {
        assert!(
            *g + SLACK >= min,
            "{what}: gap {i} was {g:?}, expected >= {min:?} (all: {gaps:?})"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. The pace is one pace, whichever replica a request goes through.

#[test]
fn three_replicas_keep_one_domain_pace() {
    const RPS: f64 = 10.0;
    const BURST: f64 = 1.0;
    const RUN: Duration = Duration::from_secs(8);
    const CLIENTS_PER_REPLICA: usize = 4;
    let redis = RedisServer::start();
    let origin = LimitOrigin::start();
    let ez = builder(
        &redis,
        "[limits.domains.\"pace.test\"]\nrps = 10.0\nburst = 1",
    )
    .start_replicas(3);

    let started = Instant::now();
    let stop = started + RUN;
    let per_replica: Vec<Vec<Fetch>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ez.len())
            .flat_map(|r| (0..CLIENTS_PER_REPLICA).map(move |c| (r, c)))
            .map(|(r, c)| {
                let e = &ez[r];
                let origin = &origin;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut k = 0;
                    // Bounded: each transfer is bounded by curl's max time.
                    while Instant::now() < stop {
                        out.push((
                            r,
                            get(e, &origin.url("pace.test", &format!("/p?id=r{r}-c{c}-{k}"))),
                        ));
                        k += 1;
                    }
                    out
                })
            })
            .collect();
        let mut by_replica: Vec<Vec<Fetch>> = (0..ez.len()).map(|_| Vec::new()).collect();
        for h in handles {
            for (r, f) in h.join().expect("client thread") {
                by_replica[r].push(f);
            }
        }
        by_replica
    });
    for results in &per_replica {
        assert_all_ok(results);
    }
    let sent: usize = per_replica.iter().map(Vec::len).sum();
    let visits = origin.visits("pace.test");
    assert_eq!(visits.len(), sent, "every request reached the origin once");
    let arrivals: Vec<Instant> = visits.iter().map(|v| v.arrived).collect();
    let n = arrivals.len();
    assert!(n >= 2, "only {n} requests");
    let span = arrivals[n - 1] - arrivals[0];
    let rate = (n - 1) as f64 / span.as_secs_f64();
    let through: Vec<usize> = (0..ez.len())
        .map(|r| {
            visits
                .iter()
                .filter(|v| v.id.starts_with(&format!("r{r}-")))
                .count()
        })
        .collect();
    let (window, _) = windows(&arrivals, Duration::from_secs(1), (RPS + BURST) as usize);
    println!(
        "pace across 3 replicas: {n} requests in {span:?} at the origin = {rate:.3} req/s summed \
         (limit {RPS}); per replica {through:?}; most in any 1 s window {window} (allowed {})",
        RPS + BURST
    );
    for (r, c) in through.iter().enumerate() {
        assert!(*c > 0, "no request went through replica {r}: {through:?}");
    }
    // Over any 1 s window: at most rps·w + burst.
    assert!(
        window as f64 <= RPS + BURST,
        "{window} arrivals within one second (limit {RPS} req/s, burst {BURST})"
    );
    // Over the whole run: at most rps·T + burst. T is measured between the
    // first and the last arrival at the origin, so at the exact pace the
    // count sits on the bound and trip jitter at either end (the first
    // arrival a little late) tips it over by a fraction of a request:
    // JITTER (half an interval) absorbs that, while one request too many
    // (a whole interval) still fails.
    const JITTER: Duration = Duration::from_millis(50);
    assert!(
        n as f64 <= (RPS * (span + JITTER).as_secs_f64()).floor() + BURST,
        "{n} arrivals in {span:?}: over {RPS} req/s (+ burst {BURST})"
    );
    // ...and not trivially slow: the clients kept a backlog all along.
    assert!(
        span >= RUN - Duration::from_secs(2),
        "arrivals spanned only {span:?}"
    );
    assert!(
        n as f64 >= 0.9 * RPS * span.as_secs_f64(),
        "{n} arrivals in {span:?} ({rate:.2} req/s): under 0.9 x {RPS} req/s"
    );
}

// ---------------------------------------------------------------------------
// 2. The concurrency cap is one cap, also when clients hang up.

#[test]
fn three_replicas_keep_one_concurrency_cap_even_when_clients_hang_up() {
    let redis = RedisServer::start();
    let ez = builder(
        &redis,
        "[limits.domains.\"conc.test\"]\nmax_concurrent = 2\n\n[limits.domains.\"hang.test\"]\nmax_concurrent = 2",
    )
    .start_replicas(3);

    // 12 slow requests, 4 through each replica, all at once.
    let origin = ExchangeOrigin::start();
    let reqs: Vec<(usize, String)> = (0..12)
        .map(|i| {
            (
                i % 3,
                origin.url("conc.test", &format!("/p?id=c{i}&delay_ms=500")),
            )
        })
        .collect();
    let results = parallel(&ez, &reqs);
    assert_all_ok(&results);
    assert_eq!(origin.arrivals().len(), 12);
    let peak = origin.peak();
    println!("max_concurrent 2 across 3 replicas: origin peak {peak}");
    assert_eq!(peak, 2, "peak concurrency at the origin (cap 2)");

    // Two clients hang up while their slow exchanges hold both slots; the
    // origin (which, like most API servers, does not watch the connection
    // while it works) keeps working on them, so the slots must stay taken
    // until it has answered.
    let hang = ExchangeOrigin::start();
    std::thread::scope(|s| {
        let quitters: Vec<_> = (0..2)
            .map(|i| {
                let e = &ez[i];
                let url = hang.url("hang.test", &format!("/p?id=q{i}&delay_ms=1500"));
                s.spawn(move || curl().proxy(e).args(["--max-time", "0.4"]).fetch(&url))
            })
            .collect();
        let mut ids = vec![
            hang.next_arrival(ARRIVAL_WAIT),
            hang.next_arrival(ARRIVAL_WAIT),
        ];
        ids.sort();
        assert_eq!(ids, vec!["q0", "q1"]);
        for q in quitters {
            let q = q.join().expect("quitter");
            assert_eq!(q.exit, 28, "curl should time out: {}", q.describe());
        }
        // Both clients are gone, both exchanges are still open at the origin.
        assert_eq!(hang.open(), 2, "the abandoned exchanges ended early");
        let reqs: Vec<(usize, String)> = (0..6)
            .map(|i| {
                (
                    i % 3,
                    hang.url("hang.test", &format!("/p?id=p{i}&delay_ms=300")),
                )
            })
            .collect();
        let results = parallel(&ez, &reqs);
        assert_all_ok(&results);
    });
    assert_eq!(hang.arrivals().len(), 8);
    let hang_peak = hang.peak();
    println!("after 2 hang-ups mid-request across 3 replicas: origin peak {hang_peak}");
    assert!(hang_peak <= 2, "peak {hang_peak} over the cap of 2");
    // Every lease is given back (none is left to expire).
    common::eventually(Duration::from_secs(5), "leases released", || {
        let held: i64 = redis.cmd(&["ZCARD", "ezt:{hang.test}:leases"]);
        let held_c: i64 = redis.cmd(&["ZCARD", "ezt:{conc.test}:leases"]);
        (held == 0 && held_c == 0).then_some(())
    });
}

// ---------------------------------------------------------------------------
// 3. A limit learned through one replica paces all of them.

#[test]
fn a_limit_learned_through_one_replica_paces_the_others() {
    let redis = RedisServer::start();
    let origin = LimitOrigin::start();
    let ez = builder(&redis, "").start_replicas(3);

    let r = get(
        &ez[0],
        &origin.url("learn.test", "/p?id=teach&h=X-EZTHROTTLE-RPS:2"),
    );
    assert_eq!(r.code, 200, "{}", r.describe());
    // One request through B: B then reports the learned limit.
    let r = get(&ez[1], &origin.url("learn.test", "/p?id=b0"));
    assert_eq!(r.code, 200, "{}", r.describe());
    let d = domain(&ez[1], "learn.test");
    assert_eq!(
        (d["rps"].as_f64(), d["rps_source"].as_str()),
        (Some(2.0), Some("learned")),
        "B: {d}"
    );

    // Six at once through B and C: paced at 2/s together.
    let n = 6;
    let reqs: Vec<(usize, String)> = (0..n)
        .map(|i| (1 + i % 2, origin.url("learn.test", &format!("/p?id=bc{i}"))))
        .collect();
    let t = Instant::now();
    let results = parallel(&ez, &reqs);
    let elapsed = t.elapsed();
    assert_all_ok(&results);
    let min = Duration::from_millis(500 * (n as u64 - 1));
    println!("learned 2 req/s via A: {n} requests through B and C took {elapsed:?} (>= {min:?})");
    assert!(
        elapsed >= min,
        "{n} requests at a learned 2 req/s took {elapsed:?}"
    );
    // Every arrival after the teaching one is 1/2 s after the previous.
    let arrivals: Vec<Instant> = origin
        .visits("learn.test")
        .iter()
        .skip(1)
        .map(|v| v.arrived)
        .collect();
    assert_eq!(arrivals.len(), n + 1);
    assert_min_gaps(
        &arrivals,
        Duration::from_millis(500),
        "learn.test via B and C",
    );
    let d = domain(&ez[2], "learn.test");
    assert_eq!(
        (d["rps"].as_f64(), d["rps_source"].as_str()),
        (Some(2.0), Some("learned")),
        "C: {d}"
    );
    // A, which learned it (and admitted nothing since), shows it too.
    let d = domain(&ez[0], "learn.test");
    assert_eq!(
        (d["rps"].as_f64(), d["rps_source"].as_str()),
        (Some(2.0), Some("learned")),
        "A: {d}"
    );
}

// ---------------------------------------------------------------------------
// 4. A Retry-After seen through one replica pauses the domain on the others.

#[test]
fn retry_after_through_one_replica_pauses_the_others() {
    let redis = RedisServer::start();
    let origin = LimitOrigin::start();
    let ez = builder(&redis, "").start_replicas(2);

    let r = get(
        &ez[0],
        &origin.url("retry.test", "/p?id=429&status=429&h=Retry-After:2"),
    );
    assert_eq!(r.code, 429, "{}", r.describe());
    let t = Instant::now();
    let r = get(&ez[1], &origin.url("retry.test", "/p?id=after"));
    let waited = t.elapsed();
    assert_eq!(r.code, 200, "{}", r.describe());
    let visits = origin.visits("retry.test");
    assert_eq!(visits.len(), 2, "{visits:?}");
    let gap = visits[1].arrived - visits[0].arrived;
    println!("Retry-After 2 via A: the request through B waited {waited:?} (origin gap {gap:?})");
    assert!(
        waited >= Duration::from_millis(1500),
        "the request through B went on after {waited:?}"
    );
    assert!(
        gap + SLACK >= Duration::from_secs(2),
        "B's request reached the origin {gap:?} after the 429 with Retry-After: 2"
    );
}

// ---------------------------------------------------------------------------
// 5. Idempotency-Key records and in-flight claims are shared.

fn post_key(ez: &Ezthrottle, url: &str, key: &str, body: &str) -> Fetch {
    curl()
        .proxy(ez)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg("Content-Type: application/json")
        .arg("-H")
        .arg(format!("Idempotency-Key: {key}"))
        .arg("--data-binary")
        .arg(body)
        .fetch(url)
}

fn await_api_arrival(origin: &ApiOrigin, path: &str) {
    for _ in 0..20 {
        if origin.wait_arrival(ARRIVAL_WAIT) == path {
            return;
        }
    }
    panic!("{path} never reached the api origin");
}

#[test]
fn idempotency_keys_are_shared_by_replicas() {
    let redis = RedisServer::start();
    let origin = ApiOrigin::start();
    let ez = builder(&redis, "").start_replicas(2);
    let url = origin.http_url("api.test", "/v1/charges");
    let body = r#"{"amount":100,"currency":"USD"}"#;

    let first = post_key(&ez[0], &url, "dist-1", body);
    assert_eq!(first.code, 201, "{}", first.describe());
    let replay = post_key(&ez[1], &url, "dist-1", body);
    assert_replay_of(&replay, &first);
    assert_eq!(origin.count("/v1/charges"), 1);

    let other = post_key(&ez[1], &url, "dist-1", r#"{"amount":999}"#);
    assert_eq!(other.code, 409, "{}", other.describe());
    assert_eq!(error_code(&other.body), "idempotency_key_reused");
    assert_eq!(origin.count("/v1/charges"), 1);

    // In flight on A: the duplicate through B waits for it, then replays.
    let slow = origin.http_url("api.test", "/slow?delay_ms=1500");
    let body = r#"{"p":1}"#;
    std::thread::scope(|s| {
        let first = s.spawn(|| post_key(&ez[0], &slow, "dist-2", body));
        await_api_arrival(&origin, "/slow");
        let t = Instant::now();
        let dup = post_key(&ez[1], &slow, "dist-2", body);
        let waited = t.elapsed();
        let first = first.join().expect("first");
        assert_eq!(first.code, 201, "{}", first.describe());
        assert_replay_of(&dup, &first);
        println!("in-flight duplicate through B waited {waited:?} and replayed");
    });
    assert_eq!(origin.count("/slow"), 1);
}

// ---------------------------------------------------------------------------
// 6. Jobs of a replica killed with -9 are finished by the others.

fn job_get(ez: &Ezthrottle, id: &str) -> Value {
    let r = common::raw::get(ez.control, &format!("/api/v1/jobs/{id}"));
    assert_eq!(
        r.status,
        200,
        "GET job {id} on {}: {}",
        ez.control,
        r.text()
    );
    r.json()
}

#[test]
fn jobs_of_a_killed_replica_finish_on_the_others() {
    const JOBS: usize = 40;
    let redis = RedisServer::start();
    let origin = ApiOrigin::start();
    let sink = WebhookSink::start();
    let mut ez = builder(
        &redis,
        "[limits.domains.\"api.test\"]\nmax_concurrent = 3\n\n[jobs]\nlease = \"2s\"",
    )
    .egress_loopback()
    .start_replicas(3);

    let mut ids = Vec::new();
    for i in 0..JOBS {
        let f = ez[0].submit_job(&json!({
            "url": origin.http_url("api.test", &format!("/v1/job/{i}?delay_ms=300")),
            "method": "POST",
            "body": format!("{{\"n\":{i}}}"),
            "metadata": {"n": i},
            "webhooks": [{"url": sink.url(&format!("/hook/{i}"))}],
        }));
        assert_eq!(f.code, 201, "submit {i}: {}", f.describe());
        let v = common::json(&f.body);
        ids.push(
            v["job_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no job_id: {v}"))
                .to_string(),
        );
    }
    // Mid-way: some jobs have reached the origin, most have not.
    for _ in 0..6 {
        origin.wait_arrival(ARRIVAL_WAIT);
    }
    let calls_at_kill = origin.calls();
    let status = ez[0].stop_with("KILL");
    assert!(!status.success(), "kill -9: {status:?}");
    let killed_at = Instant::now();

    let (b, c) = (&ez[1], &ez[2]);
    let done: Vec<Value> = ids
        .iter()
        .map(|id| {
            common::eventually(
                Duration::from_secs(60),
                &format!("job {id} success"),
                || {
                    let v = job_get(b, id);
                    let s = v["status"].as_str().unwrap_or_default().to_string();
                    assert!(s != "failed" && s != "cancelled", "job {id} ended {s}: {v}");
                    (s == "success").then_some(v)
                },
            )
        })
        .collect();
    let all_done = killed_at.elapsed();
    for i in 0..JOBS {
        assert!(
            origin.count(&format!("/v1/job/{i}")) >= 1,
            "job {i} never reached the origin"
        );
    }
    sink.until(
        Duration::from_secs(60),
        "one delivered webhook per job",
        |all| {
            (0..JOBS).all(|i| {
                let p = format!("/hook/{i}");
                all.iter().any(|d| d.path == p && d.status == 200)
            })
        },
    );
    // Each webhook carries its job's id and status.
    for (i, id) in ids.iter().enumerate() {
        let p = format!("/hook/{i}");
        let d = sink
            .all()
            .into_iter()
            .find(|d| d.path == p && d.status == 200)
            .expect("delivered");
        let v = d.json();
        assert_eq!(v["job_id"].as_str(), Some(id.as_str()), "{v}");
        assert_eq!(v["status"], "success", "{v}");
    }
    // B and C both show every job, delivered. A webhook A sent just before
    // the kill, with its outcome not yet written, is sent again once its
    // attempt lease (twice the 30 s webhook timeout) lapses: the wait covers
    // that lease (a CI run killed A inside one attempt and timed out at 30 s
    // with every webhook received).
    for id in &ids {
        common::eventually(Duration::from_secs(90), "delivery recorded", || {
            let v = job_get(c, id);
            (v["status"] == "success" && v["webhooks"][0]["state"] == "delivered").then_some(())
        });
    }
    let list = common::raw::get(c.control, "/api/v1/jobs?limit=500");
    assert_eq!(list.status, 200, "{}", list.text());
    let listed: Vec<String> = list.json()["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job_id"].as_str().map(String::from))
        .collect();
    for id in &ids {
        assert!(listed.contains(id), "{id} not listed by C");
    }
    let retaken = done
        .iter()
        .filter(|v| v["claims"].as_u64().unwrap_or(0) >= 2)
        .count();
    let calls = origin.calls();
    let deliveries = sink.all().len();
    // A held some when it died: those were taken over once their lease lapsed.
    assert!(
        retaken >= 1,
        "no job was claimed twice: A died holding none, nothing was taken over"
    );
    println!(
        "jobs: {JOBS} submitted to A, A killed after {calls_at_kill} origin calls; all success on B/C \
         {all_done:?} after the kill; {retaken} jobs claimed more than once; {calls} origin calls; \
         {deliveries} webhook deliveries"
    );
}

// ---------------------------------------------------------------------------
// 7. Redis down: each replica paces at its share; back up: shared again.

#[test]
fn redis_down_degrades_to_a_share_of_the_pace_and_recovers() {
    let mut redis = RedisServer::start();
    let origin = LimitOrigin::start();
    let ez = builder(
        &redis,
        "[limits.domains.\"deg.test\"]\nrps = 10.0\nburst = 1",
    )
    .egress_loopback()
    .start_replicas(2);
    for e in &ez {
        common::eventually(Duration::from_secs(10), "2 live replicas", || {
            let (status, body) = readyz(e);
            assert_eq!(status, 200, "{body}");
            (body["replicas"] == 2).then_some(())
        });
        let r = get(e, &origin.url("deg.test", "/p?id=warm"));
        assert_eq!(r.code, 200, "{}", r.describe());
        assert_eq!(metric(e, "ezthrottle_store_up"), Some(1.0));
        assert_eq!(metric(e, "ezthrottle_admissions_degraded_total"), Some(0.0));
    }

    redis.stop();
    // A burst through one replica: alone it may use 1/2 of 10 req/s.
    let n = 6;
    let reqs: Vec<(usize, String)> = (0..n)
        .map(|i| (0, origin.url("deg.test", &format!("/p?id=down{i}"))))
        .collect();
    let t = Instant::now();
    let results = parallel(&ez, &reqs);
    let elapsed = t.elapsed();
    assert_all_ok(&results);
    let min = Duration::from_millis(200 * (n as u64 - 1));
    let down: Vec<Instant> = origin
        .visits("deg.test")
        .iter()
        .filter(|v| v.id.starts_with("down"))
        .map(|v| v.arrived)
        .collect();
    println!("redis down: {n} requests through one of 2 replicas took {elapsed:?} (>= {min:?})");
    assert!(
        elapsed >= min,
        "{n} requests through one replica of 2 at 10 req/s, Redis down, took {elapsed:?}"
    );
    assert_min_gaps(&down, Duration::from_millis(200), "deg.test, Redis down");

    let a = &ez[0];
    let text = control_get(a, "/metrics");
    assert_eq!(
        metrics::value(&text, "ezthrottle_store_up", &[]),
        Some(0.0),
        "store_up with Redis down"
    );
    let degraded = metrics::value(&text, "ezthrottle_admissions_degraded_total", &[])
        .expect("ezthrottle_admissions_degraded_total");
    assert!(degraded >= n as f64, "degraded admissions {degraded}");
    let (status, body) = readyz(a);
    assert_eq!(status, 200, "/readyz with Redis down: {body}");
    assert!(
        body["degraded"].as_array().is_some_and(|d| !d.is_empty()),
        "/readyz names what is degraded: {body}"
    );
    assert_eq!(body["replicas"], 2, "{body}");

    let r = curl()
        .proxy(a)
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg("Idempotency-Key: down-1")
        .arg("--data-binary")
        .arg("{}")
        .fetch(&origin.url("idem.test", "/p?id=keyed"));
    assert_eq!(r.code, 503, "{}", r.describe());
    assert_eq!(error_code(&r.body), "store_unavailable");
    assert_eq!(origin.count("idem.test"), 0);
    let job = a.submit_job(&json!({"url": origin.url("idem.test", "/job")}));
    assert_eq!(
        job.code,
        503,
        "job submission, Redis down: {}",
        job.describe()
    );

    redis.restart();
    let t = Instant::now();
    for e in &ez {
        common::eventually(Duration::from_secs(15), "store_up 1 again", || {
            (metric(e, "ezthrottle_store_up") == Some(1.0)).then_some(())
        });
    }
    println!(
        "redis back: store_up 1 on both replicas after {:?}",
        t.elapsed()
    );
    let before: Vec<f64> = ez
        .iter()
        .map(|e| metric(e, "ezthrottle_admissions_degraded_total").unwrap_or(0.0))
        .collect();
    let n = 10;
    let reqs: Vec<(usize, String)> = (0..n)
        .map(|i| (i % 2, origin.url("deg.test", &format!("/p?id=up{i}"))))
        .collect();
    let t = Instant::now();
    let results = parallel(&ez, &reqs);
    let elapsed = t.elapsed();
    assert_all_ok(&results);
    let after: Vec<f64> = ez
        .iter()
        .map(|e| metric(e, "ezthrottle_admissions_degraded_total").unwrap_or(0.0))
        .collect();
    let up: Vec<Instant> = origin
        .visits("deg.test")
        .iter()
        .filter(|v| v.id.starts_with("up"))
        .map(|v| v.arrived)
        .collect();
    println!(
        "redis back: {n} requests through both replicas took {elapsed:?}; degraded admissions {before:?} -> {after:?}"
    );
    assert_eq!(
        before, after,
        "admissions decided without Redis after it came back"
    );
    assert!(
        !redis.keys("ezt:{deg.test}:*").is_empty(),
        "no shared state for deg.test in Redis after it came back"
    );
    assert!(elapsed >= Duration::from_millis(100 * (n as u64 - 1)));
    assert_min_gaps(&up, Duration::from_millis(100), "deg.test, Redis back");
    let (status, body) = readyz(a);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("degraded").is_none(),
        "/readyz after recovery: {body}"
    );
}

// ---------------------------------------------------------------------------
// 8. A replica minting from another CA than its peers refuses to start.

#[test]
fn a_replica_with_another_ca_refuses_to_start() {
    let redis = RedisServer::start();
    let ez = builder(&redis, "").start_replicas(2);
    assert_eq!(ez[0].ca_pem(), ez[1].ca_pem());

    let other = SharedCa::new();
    assert_ne!(other.pem(), ez[0].ca_pem());
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let text = builder(&redis, "")
        .ca_files(&other.cert, &other.key)
        .render_config(&data);
    // The config names `<work>/shared-ca/ca.{pem,key}` (what `start` copies).
    let ca_dir = work.path().join("shared-ca");
    std::fs::create_dir_all(&ca_dir).expect("ca dir");
    std::fs::copy(&other.cert, ca_dir.join("ca.pem")).expect("copy cert");
    std::fs::copy(&other.key, ca_dir.join("ca.key")).expect("copy key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            ca_dir.join("ca.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod key");
    }
    let cfg = work.path().join("ezthrottle.toml");
    std::fs::write(&cfg, &text).expect("write config");
    let out = common::proc::run(
        ezthrottle_cmd().arg("run").arg("--config").arg(&cfg),
        Duration::from_secs(60),
    );
    let shown = common::proc::show(&out);
    assert!(!out.status.success(), "started with another CA: {shown}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CA"), "{shown}");
    assert!(stderr.contains("ca_cert"), "{shown}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ezthrottle ready"),
        "{shown}"
    );
    // The peers are unaffected.
    for e in &ez {
        let (status, body) = readyz(e);
        assert_eq!(status, 200, "{body}");
    }
    println!(
        "replica with another CA: {}; stderr: {}",
        common::proc::describe(&out.status),
        stderr.lines().last().unwrap_or_default()
    );
}

/// A Redis that evicts keys under memory pressure loses jobs and records:
/// a replica says so at start, and says nothing when the policy is right.
#[test]
fn a_redis_that_may_evict_keys_is_warned_about() {
    use common::redis_server::RedisOptions;
    let lru = RedisServer::start_with(RedisOptions {
        args: vec![("maxmemory-policy".into(), "allkeys-lru".into())],
        ..RedisOptions::default()
    });
    let ez = EzBuilder::new().redis(&lru).start();
    common::eventually(Duration::from_secs(10), "the eviction warning", || {
        ez.stderr_log()
            .contains("maxmemory-policy is not noeviction")
            .then_some(())
    });
    let good = RedisServer::start();
    let ez2 = EzBuilder::new().redis(&good).start();
    // Connected (the check runs right after), and no warning.
    common::eventually(Duration::from_secs(10), "store_up 1", || {
        control_get(&ez2, "/metrics")
            .lines()
            .any(|l| l == "ezthrottle_store_up 1")
            .then_some(())
    });
    assert!(
        !ez2.stderr_log().contains("maxmemory-policy"),
        "{}",
        ez2.stderr_log()
    );
}

/// A vendor budget read through one replica paces every replica: 50 Python
/// clients split over two replicas against a quota-enforcing origin (GitHub
/// style, fixed 10 s window of 50, no configuration for the host) for two
/// windows. The origin's limiter never refuses, and at least 90% of the
/// quota is used: together the replicas spend one budget, not two.
#[test]
fn replicas_share_a_vendor_budget() {
    use common::quota_origin::{Algorithm, Dialect, Quota, QuotaOrigin};
    let window = Duration::from_secs(10);
    let origin = QuotaOrigin::start(Quota {
        algorithm: Algorithm::FixedWindow,
        limit: 50,
        window,
        dialect: Dialect::GitHub,
        credential_header: None,
    });
    let redis = RedisServer::start();
    // Default pace and concurrency: the budget decides.
    let ez = EzBuilder::new()
        .redis(&redis)
        .resolve("budget.test", "127.0.0.1")
        .extra("[retry]\nmax_retries = 0\nmax_reroutes = 0\n")
        .start_replicas(2);
    let url = origin.url("budget.test", "/v1/things");
    let reports: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> = ez
            .iter()
            .map(|e| {
                let (url, proxy) = (url.clone(), e.proxy_url());
                s.spawn(move || common::py::quota_clients(&url, 25, 21.0, Some(&proxy), &[]))
            })
            .collect();
        runs.into_iter()
            .map(|h| h.join().expect("clients"))
            .collect()
    });
    let arrivals = origin.arrivals("budget.test");
    let first = arrivals.first().expect("requests arrived").at;
    let admitted = arrivals
        .iter()
        .filter(|a| a.status == 200 && a.at.saturating_duration_since(first) < window * 2)
        .count();
    let shown = control_get(&ez[1], "/api/v1/domains");
    // Where the time went, should this fail: admitted per window, every
    // pause of more than 400 ms between two arrivals and every refusal
    // (seconds from the first arrival).
    let timeline = {
        let secs = |at: std::time::Instant| at.saturating_duration_since(first).as_secs_f64();
        let (per_window, refused) = common::quota_origin::per_window(&arrivals, window, 3);
        let pauses: Vec<String> = arrivals
            .windows(2)
            .filter(|w| w[1].at.saturating_duration_since(w[0].at) > Duration::from_millis(400))
            .map(|w| format!("{:.2}s..{:.2}s", secs(w[0].at), secs(w[1].at)))
            .collect();
        format!("admitted per window {per_window:?}; pauses {pauses:?}; 429 at {refused:?}")
    };
    assert_eq!(
        origin.count_429("budget.test"),
        0,
        "the origin refused ({timeline}): {reports:?}\n{shown}"
    );
    assert!(
        admitted >= 90,
        "{admitted} of 100 in two windows ({timeline}): {reports:?}\n{shown}"
    );
    for r in &reports {
        assert_eq!(r["errors"], 0, "{r}");
    }
    for e in &ez {
        let d = json_domain(e, "budget.test");
        // What the API's headers said last, through this replica.
        assert_eq!(d["budget"]["source"], "dialect:x-ratelimit", "{d}");
        // That budget is the pace in force until its reset; after it, the
        // base pace comes back (a slow run can end past the last window's
        // reset: seen in CI). Asked after the snapshot was taken, with a
        // second to spare between the two clocks.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        if d["budget"]["resets_at"]
            .as_u64()
            .is_some_and(|at| at > now_ms + 1_000)
        {
            assert_eq!(d["rps_source"], "dialect:x-ratelimit", "{d}");
        }
    }
}

/// Requests on their way through two replicas spend one budget
/// (tests/common/on_their_way.rs): the starts after an answered request
/// are numbered across replicas in Redis, so neither replica sends one the
/// other's requests already spent.
#[test]
fn replicas_count_the_requests_on_their_way() {
    use common::on_their_way as otw;
    let origin = otw::origin();
    let redis = RedisServer::start();
    let ez = EzBuilder::new()
        .redis(&redis)
        .resolve(otw::HOST, "127.0.0.1")
        .limits(otw::CONFIG)
        .extra(otw::RETRY)
        .start_replicas(2);
    otw::run_and_check(&origin, &ez, 6);
}

fn json_domain(ez: &Ezthrottle, domain: &str) -> Value {
    let all: Value =
        serde_json::from_str(&control_get(ez, "/api/v1/domains")).expect("domains JSON");
    all["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .find(|d| d["domain"] == domain)
        .cloned()
        .unwrap_or_else(|| panic!("{domain} not shown: {all}"))
}
