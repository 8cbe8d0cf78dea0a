//! Embedded store benchmark, printing figures (no pass/fail), with
//! 100,000 jobs stored:
//!
//! 1. filling: `Store::job_insert` of 100,000 jobs (8 concurrent tasks);
//! 2. job submissions per second through `Jobs::submit` (the `POST
//!    /api/v1/jobs` path minus HTTP: insert + the `ezthrottle_jobs` gauge
//!    refresh), 1 and 8 concurrent submitters;
//! 3. `jobs_list` latency (first page of 50, a page deep in the list, and a
//!    page filtered by a rare status), `jobs_list_by_domain` (a page of 50
//!    of a domain of 0.1 % of the jobs, and of the common domain at a deep
//!    cursor) and `job_counts` latency;
//! 4. `idempotency_get` latency of a small record while 10 MiB records are
//!    being stored back to back, and how long each 10 MiB put takes;
//! 5. through the real binary on that data dir: `GET /api/v1/jobs` latency,
//!    the console's job list (first page, by status, deep by time, by a
//!    rare and by the common domain) and a job's page, and `POST
//!    /api/v1/jobs` submissions per second over one keep-alive connection.
//!
//! Run: `cargo bench --bench store` (`-- --n 20000` for a quick look).
//! Without `--bench` (as under `cargo test --all-targets`) it does nothing.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ezthrottle::config::Config;
use ezthrottle::jobs::{request, Jobs};
use ezthrottle::metrics::Metrics;
use ezthrottle::store::{EmbeddedStore, IdempotencyRecord, JobRecord, JobStatus, Store};

const WS: &str = "default";

/// Job `i` of the fill: 90% ended successfully, 9% queued far in the
/// future (so a runner leaves them alone), 1% failed.
fn stored_job(i: usize, base: u64) -> JobRecord {
    let status = match i % 100 {
        0 => JobStatus::Failed,
        1..=9 => JobStatus::Queued,
        _ => JobStatus::Success,
    };
    let t = base + i as u64;
    JobRecord {
        id: format!("job_{i:08}"),
        workspace: WS.into(),
        idempotent_key: format!("fill-{i}"),
        status,
        // One job in 1,000 targets another host (the console's domain filter).
        spec: format!(
            r#"{{"url":"https://{}/v1/x","method":"POST","headers":[["Content-Type","application/json"]],"body":"{{\"n\":1}}","regions":[],"webhooks":[]}}"#,
            if i % 1000 == 500 {
                "rare.test"
            } else {
                "api.test"
            }
        ),
        attempts: 1,
        claims: 1,
        next_attempt_at: u64::MAX / 4,
        lease_until: 0,
        created_at: t,
        updated_at: t,
        result: status
            .is_final()
            .then(|| r#"{"status":200,"body":"ok"}"#.to_string()),
    }
}

fn fill(rt: &tokio::runtime::Runtime, store: &Arc<EmbeddedStore>, n: usize, base: u64) {
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(8) {
                    store.job_insert(stored_job(i, base)).await.expect("insert");
                }
            }));
        }
        for t in tasks {
            t.await.expect("filler");
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fill: {n} job_insert in {secs:.2} s = {:.0} inserts/s (8 tasks)",
        n as f64 / secs
    );
}

fn submissions(rt: &tokio::runtime::Runtime, store: Arc<EmbeddedStore>, dir: &std::path::Path) {
    let config = Arc::new(
        Config::from_toml_str(&format!("data_dir = {dir:?}\n"), "<bench>").expect("config"),
    );
    let jobs = Arc::new(Jobs::new(
        store,
        Arc::new(Metrics::new(10)),
        Arc::new(arc_swap::ArcSwap::new(config.clone())),
        Arc::from("bench-token"),
        Box::new(|| {}),
    ));
    let retry_at = ezthrottle::store::now_ms() + 86_400_000;
    let body = format!(
        r#"{{"url":"https://api.test/v1/charges","method":"POST","body":"{{}}","retry_at":{retry_at}}}"#
    );
    let sub = request::parse(body.as_bytes(), &config).expect("job");
    for tasks in [1usize, 8] {
        let n = 2000;
        let start = Instant::now();
        rt.block_on(async {
            let mut handles = Vec::new();
            for t in 0..tasks {
                let jobs = jobs.clone();
                let spec = sub.spec.clone();
                handles.push(tokio::spawn(async move {
                    for i in (t..n).step_by(tasks) {
                        let key = format!("submit-{tasks}-{i}");
                        let a = jobs
                            .submit(WS, &key, &spec, retry_at, 0)
                            .await
                            .expect("submit");
                        assert!(!a.duplicate);
                    }
                }));
            }
            for h in handles {
                h.await.expect("submitter");
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "Jobs::submit ({tasks} task{}): {n} in {secs:.2} s = {:.0} submissions/s",
            if tasks == 1 { "" } else { "s" },
            n as f64 / secs
        );
    }
}

fn list_latency(rt: &tokio::runtime::Runtime, store: &Arc<EmbeddedStore>, n: usize, base: u64) {
    let samples = 300;
    rt.block_on(async {
        let mut first = Vec::new();
        let mut deep = Vec::new();
        let mut failed = Vec::new();
        let mut rare = Vec::new();
        let mut common_deep = Vec::new();
        let mut counts = Vec::new();
        for k in 0..samples {
            let t = Instant::now();
            let page = store.jobs_list(WS, None, 50, None).await.expect("list");
            first.push(t.elapsed());
            assert_eq!(page.len(), 50);
            let i = (k * 7919) % n;
            let cursor = (base + i as u64, format!("job_{i:08}"));
            let t = Instant::now();
            store
                .jobs_list(WS, None, 50, Some(cursor))
                .await
                .expect("list");
            deep.push(t.elapsed());
            let t = Instant::now();
            store
                .jobs_list(WS, Some(JobStatus::Failed), 50, None)
                .await
                .expect("list");
            failed.push(t.elapsed());
            let t = Instant::now();
            let page = store
                .jobs_list_by_domain(WS, "rare.test", None, 50, None)
                .await
                .expect("list");
            rare.push(t.elapsed());
            assert_eq!(page.len(), 50.min(n / 1000));
            let cursor = (base + i as u64, format!("job_{i:08}"));
            let t = Instant::now();
            store
                .jobs_list_by_domain(WS, "api.test", None, 50, Some(cursor))
                .await
                .expect("list");
            common_deep.push(t.elapsed());
            let t = Instant::now();
            store.job_counts().await.expect("counts");
            counts.push(t.elapsed());
        }
        println!(
            "jobs_list first page of 50:        {}",
            support::percentiles(first)
        );
        println!(
            "jobs_list page of 50 at a cursor:  {}",
            support::percentiles(deep)
        );
        println!(
            "jobs_list status=failed (1%), 50:  {}",
            support::percentiles(failed)
        );
        println!(
            "jobs_list_by_domain rare.test (0.1%), 50:      {}",
            support::percentiles(rare)
        );
        println!(
            "jobs_list_by_domain api.test at a cursor, 50:  {}",
            support::percentiles(common_deep)
        );
        println!(
            "job_counts:                        {}",
            support::percentiles(counts)
        );
    });
}

fn big(scope: String, len: usize) -> IdempotencyRecord {
    IdempotencyRecord {
        scope,
        fingerprint: "f".repeat(64),
        status: 200,
        reason: None,
        headers: b"Content-Type: application/octet-stream\r\n".to_vec(),
        body: vec![b'x'; len],
        created_at: 1,
        expires_at: u64::MAX / 2,
    }
}

fn get_during_big_puts(rt: &tokio::runtime::Runtime, store: &Arc<EmbeddedStore>) {
    rt.block_on(async {
        store
            .idempotency_put(big("small".into(), 512))
            .await
            .expect("put");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut puts = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    store
                        .idempotency_put(big(format!("big-{i}"), 10 << 20))
                        .await
                        .expect("put");
                    puts.push(t.elapsed());
                    i += 1;
                }
                puts
            })
        };
        // Let the first big put start.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut gets = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let t = Instant::now();
            let r = store
                .idempotency_get("small", 2)
                .await
                .expect("get")
                .expect("stored");
            gets.push(t.elapsed());
            assert_eq!(r.body.len(), 512);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let puts = writer.await.expect("writer");
        println!(
            "idempotency_get during 10 MiB puts ({} gets): {}",
            gets.len(),
            support::percentiles(gets)
        );
        println!(
            "idempotency_put of 10 MiB ({} puts):         {}",
            puts.len(),
            support::percentiles(puts)
        );
    });
}

fn through_binary(root: &std::path::Path, data: &std::path::Path, base: u64, n: u64) {
    let proxy_port = support::free_port();
    let control_port = support::free_port();
    let config = format!(
        "data_dir = {data:?}\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n[control]\nlisten = \"127.0.0.1:{control_port}\"\n"
    );
    let config_path = root.join("ezthrottle.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = support::spawn_ready(&config_path);
    let mut conn =
        BufReader::new(TcpStream::connect(("127.0.0.1", control_port)).expect("connect"));
    conn.get_mut().set_nodelay(true).expect("nodelay");
    let get =
        format!("GET /api/v1/jobs?limit=50 HTTP/1.1\r\nHost: 127.0.0.1:{control_port}\r\n\r\n");
    let mut lat = Vec::new();
    for i in 0..330 {
        let t = Instant::now();
        assert_eq!(support::exchange(&mut conn, get.as_bytes()), 200);
        if i >= 30 {
            lat.push(t.elapsed());
        }
    }
    println!(
        "binary GET /api/v1/jobs?limit=50:  {}",
        support::percentiles(lat)
    );
    // The console's job list (docs/console.md), 50 a page.
    for (what, query) in [
        ("first page", "limit=50".to_string()),
        ("status=failed (1%)", "limit=50&status=failed".to_string()),
        (
            "until = the middle",
            format!("limit=50&until={}", base + n / 2),
        ),
        (
            "domain=rare.test (0.1%)",
            "limit=50&domain=rare.test".to_string(),
        ),
        (
            "domain=api.test, until = middle",
            format!("limit=50&domain=api.test&until={}", base + n / 2),
        ),
    ] {
        let get = format!(
            "GET /console/api/jobs?{query} HTTP/1.1\r\nHost: 127.0.0.1:{control_port}\r\n\r\n"
        );
        let mut lat = Vec::new();
        for i in 0..110 {
            let t = Instant::now();
            assert_eq!(support::exchange(&mut conn, get.as_bytes()), 200);
            if i >= 10 {
                lat.push(t.elapsed());
            }
        }
        println!(
            "binary console jobs, {what:<30} {}",
            support::percentiles(lat)
        );
    }
    let get = format!(
        "GET /console/api/jobs/job_00000500 HTTP/1.1\r\nHost: 127.0.0.1:{control_port}\r\n\r\n"
    );
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        assert_eq!(support::exchange(&mut conn, get.as_bytes()), 200);
        lat.push(t.elapsed());
    }
    println!(
        "binary console job page:                  {}",
        support::percentiles(lat)
    );
    let retry_at = ezthrottle::store::now_ms() + 86_400_000;
    let n = 1000;
    let start = Instant::now();
    for i in 0..n {
        let body = format!(
            r#"{{"url":"https://api.test/v1/charges","method":"POST","body":"{{}}","idempotent_key":"post-{i}","retry_at":{retry_at}}}"#
        );
        let req = format!(
            "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{control_port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let status = support::exchange(&mut conn, req.as_bytes());
        assert!(status == 201 || status == 202, "status {status}");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "binary POST /api/v1/jobs (1 connection): {n} in {secs:.2} s = {:.0} submissions/s",
        n as f64 / secs
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let Some(n) = support::bench_arg::<usize>("store", "--n", 100_000) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let base = ezthrottle::store::now_ms() - 10 * n as u64;
    {
        let store = Arc::new(EmbeddedStore::open(&data).expect("open store"));
        fill(&rt, &store, n, base);
        list_latency(&rt, &store, n, base);
        submissions(&rt, store.clone(), &data);
        get_during_big_puts(&rt, &store);
    }
    through_binary(root.path(), &data, base, n as u64);
}
