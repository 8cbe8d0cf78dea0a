//! Micro-benchmark: the cost of one admission on the fast path (a pace slot
//! and a concurrency slot are free), and of learning from response headers.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ezthrottle::admission::domain::{DomainThrottle, Gauges, Initial, Source};
use ezthrottle::admission::learn;

fn throttle() -> std::sync::Arc<DomainThrottle> {
    DomainThrottle::new(
        "bench.test".into(),
        Initial {
            rps: 1e9,
            rps_source: Source::Config,
            max_concurrent: 1_000_000,
            concurrency_source: Source::Config,
            burst: 1_000_000,
            queue_capacity: 10_000,
            pinned: false,
            rps_ceiling: 1e9,
            concurrency_ceiling: 1_000_000,
        },
        Gauges::detached(),
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = throttle();
    c.bench_function("admit_and_release", |b| {
        b.iter(|| {
            rt.block_on(async {
                let permit = t.acquire(Duration::from_secs(1)).await;
                drop(permit);
            })
        })
    });
    let mut headers = http::HeaderMap::new();
    headers.insert("x-ezthrottle-rps", http::HeaderValue::from_static("25.5"));
    headers.insert(
        "x-ezthrottle-max-concurrent",
        http::HeaderValue::from_static("8"),
    );
    c.bench_function("read_limit_headers", |b| {
        b.iter(|| learn::read(200, &headers, std::time::SystemTime::now()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
