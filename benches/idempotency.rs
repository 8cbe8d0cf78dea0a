//! Idempotency benchmark, printing figures (no pass/fail):
//!
//! 1. store write throughput: `EmbeddedStore::idempotency_put` of 1 KiB
//!    responses into a fresh SQLite file, one writer and 8 concurrent
//!    writers (ops/s);
//! 2. replay latency through the real binary: one keyed POST stored, then
//!    N replays of it over one keep-alive connection, against N forwarded
//!    POSTs without a key to the same local origin (p50/p90/p99).
//!
//! Run: `cargo bench --bench idempotency` (`-- --n 500` for a quick look).
//! Without `--bench` (as under `cargo test --all-targets`) it does nothing.

#[path = "../tests/common/serve.rs"]
#[allow(dead_code)]
mod serve;

#[path = "../tests/common/limit_origin.rs"]
#[allow(dead_code)]
mod limit_origin;

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use ezthrottle::store::{EmbeddedStore, IdempotencyRecord, Store};
use limit_origin::LimitOrigin;

fn record(i: usize) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: format!("{i:064}"),
        fingerprint: "f".repeat(64),
        status: 201,
        reason: None,
        headers: b"Content-Type: application/json\r\nX-Request-Id: abc\r\n".to_vec(),
        body: vec![b'x'; 1024],
        created_at: 1,
        expires_at: u64::MAX / 2,
    }
}

fn store_throughput(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for writers in [1usize, 8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open store"));
        let start = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (w..n).step_by(writers) {
                        store.idempotency_put(record(i)).await.expect("put");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("writer");
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "store write (1 KiB body, {writers} writer{}): {n} puts in {secs:.2} s = {:.0} ops/s",
            if writers == 1 { "" } else { "s" },
            n as f64 / secs
        );
    }
}

fn replay_latency(n: usize) {
    let origin = LimitOrigin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy_port = support::free_port();
    let control_port = support::free_port();
    let config = format!(
        "data_dir = {:?}\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n[control]\nlisten = \"127.0.0.1:{control_port}\"\n\
         [resolve]\n\"api.test\" = \"127.0.0.1\"\n[limits]\nrps = 10000.0\nmax_concurrent = 1000\n",
        dir.path().join("data")
    );
    let config_path = dir.path().join("ezthrottle.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = support::spawn_ready(&config_path);
    let url = origin.url("api.test", "/v1/charges");
    let body = r#"{"amount":100,"currency":"USD"}"#;
    let request = |key: Option<&str>| {
        let key = key
            .map(|k| format!("Idempotency-Key: {k}\r\n"))
            .unwrap_or_default();
        format!(
            "POST {url} HTTP/1.1\r\nHost: api.test:{}\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n{body}",
            origin.addr.port(),
            body.len()
        )
        .into_bytes()
    };
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", proxy_port)).expect("connect"));
    conn.get_mut().set_nodelay(true).expect("nodelay");

    let keyed = request(Some("bench-key"));
    assert_eq!(support::exchange(&mut conn, &keyed), 200);
    let warm = n / 10;
    let mut replays = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        assert_eq!(support::exchange(&mut conn, &keyed), 200);
        if i >= warm {
            replays.push(t.elapsed());
        }
    }
    let plain = request(None);
    let mut forwarded = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        assert_eq!(support::exchange(&mut conn, &plain), 200);
        if i >= warm {
            forwarded.push(t.elapsed());
        }
    }
    let upstream_calls = origin.count("api.test");
    println!(
        "replay    ({n} keyed POSTs, 1 connection): {}",
        support::percentiles(replays)
    );
    println!(
        "forwarded ({n} POSTs without key, same path): {}",
        support::percentiles(forwarded)
    );
    println!(
        "origin saw {upstream_calls} calls (1 keyed + {} unkeyed expected)",
        n + warm
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let Some(n) = support::bench_arg::<usize>("idempotency", "--n", 2000) else {
        return;
    };
    store_throughput(n);
    replay_latency(n);
}
