//! Micro-benchmarks of the per-request pieces the CPU pass changed (issue
//! 17, docs/performance.md), each beside what it replaced where that can
//! still be run, so a regression shows up as a number:
//!
//! - the access line: our formatter vs the same event through
//!   `tracing_subscriber`'s fmt layer (to a sink, no I/O in either);
//! - reading limits from a response with no limit headers (the pre-check)
//!   and from one with a budget;
//! - checking a request head (the authority shortcut);
//! - the egress check of a plain host name (no URL-parser IDNA pass);
//! - counting a request in the domain's cached series vs a label look-up;
//! - scrubbing a clean access line (the memchr pre-check);
//! - looking our headers up in a usual request's headers by parsed
//!   `HeaderName` vs by `&str` (which parses the name on every look-up);
//! - the request target of an absolute-form request (byte searches for the
//!   port) and the Via loop check of a request without Via;
//! - a per-domain map look-up keyed by the domain, SipHash vs ahash;
//! - adding our two response headers to a parsed response (the header-map
//!   headroom of the vendored pingora-http: no rehash), by `&str` name and
//!   by names parsed once (`insert_static_header`);
//! - what following the upstream connection cost on every request before
//!   it moved to the error path (a `dup` and a `close` of a socket);
//! - an `ArcSwap` load with no guards held vs with the thread's fast slots
//!   taken by guards held elsewhere (what a connection holding its config
//!   guard for its whole life did to every other load on its thread);
//! - boxing a hook-sized future (a ~1 KiB session captured, 16 KiB of
//!   state) the way async_trait does, `Box::pin(async move { .. })`, vs
//!   `box_future_in_place` (vendored pingora-proxy), built and dropped
//!   unpolled. Here, alone in a small function, LLVM builds the
//!   `Box::pin` form in its box too, and the in-place form is the slower
//!   one (it pays a call and a move of the captured session); inside
//!   pingora's request path LLVM did not, and copied the whole future
//!   (16 KiB for `process_new_http`) into the box. So this pair measures
//!   the helper's own overhead, and `benches/instructions.sh`'s memcpy
//!   column is the figure for the real request path.
//! - the seventh pass (allocations, look-ups and timers): one pass over a
//!   usual request's header names for any `X-EZThrottle-*` header vs the
//!   eight look-ups it spares; a response header value for a small number
//!   from the static table vs `HeaderValue::from(u64)` (formats into a new
//!   allocation); a default domain's retry route (the shared `["local"]`);
//!   registering a fast timeout in the bucket registered just before (the
//!   vendored pingora-timeout's cached last bucket) vs in alternating
//!   buckets (a search of the thread's tree of ~6,000 buckets each time,
//!   which every registration paid before).
//! - the eighth pass (the runtime): one request-and-answer round trip
//!   between two tasks of one runtime, over a loopback TCP connection (each
//!   side parks in epoll and is woken, as a proxy's worker is on every
//!   request when it is not saturated) and over channels (the scheduler's
//!   wake-up path alone), on a single-threaded runtime (what one worker now
//!   runs) vs tokio's multi-threaded scheduler with one worker (before).
//! - the eleventh pass (vendored pingora-core): an upstream connection put
//!   down for reuse and taken back by the next request to the same peer,
//!   through the recently idle list vs through pingora's pool (its
//!   idle-watch task spawned, woken and waited for), which the list passes
//!   by for idle timeouts under its one second.
//!
//! `cargo bench --bench hot_path`

use std::time::{Duration, SystemTime};

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ezthrottle::admission::learn;
use ezthrottle::logging::access::{render, via_tracing, Access};
use ezthrottle::wire::names;

fn access() -> Access<'static> {
    Access {
        method: "GET",
        domain: "api.example.com",
        path: "/v1/charges",
        status: 200,
        outcome: "forwarded",
        error: "",
        attempts: 1,
        wait_ms: 0,
        duration_ms: 3,
        workspace: "default",
    }
}

fn access_line(c: &mut Criterion) {
    let a = access();
    let now = SystemTime::now();
    let mut line = String::with_capacity(256);
    c.bench_function("access_line_text", |b| {
        b.iter(|| {
            line.clear();
            render(black_box(&a), false, now, &mut line);
            black_box(ezthrottle::logging::scrub(&line).len())
        })
    });
    c.bench_function("access_line_json", |b| {
        b.iter(|| {
            line.clear();
            render(black_box(&a), true, now, &mut line);
            black_box(line.len())
        })
    });
    // What the line cost before: the same event through the fmt layer,
    // written to a sink.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("access_line_via_tracing_fmt", |b| {
            b.iter(|| via_tracing(black_box(&a)))
        });
    });
}

fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            h.append(*k, v);
        }
    }
    h
}

/// How many of `names` the request carries, one hashed look-up each.
fn count_present<K: http::header::AsHeaderName + Copy>(
    req: &http::HeaderMap,
    names: &[K],
) -> usize {
    names
        .iter()
        .filter(|n| black_box(req).contains_key(**n))
        .count()
}

fn limits(c: &mut Criterion) {
    let plain = headers(&[
        ("server", "nginx/1.22.1"),
        ("date", "Mon, 30 Nov 2026 17:00:00 GMT"),
        ("content-type", "application/json"),
        ("content-length", "1024"),
        ("connection", "keep-alive"),
        ("x-request-id", "req_8f1d2c"),
    ]);
    let budget = headers(&[
        ("content-type", "application/json"),
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4999"),
        ("x-ratelimit-reset", "1764522000"),
        ("x-ratelimit-used", "1"),
    ]);
    let now = SystemTime::now();
    c.bench_function("learn_plain_response", |b| {
        b.iter(|| black_box(learn::read(200, black_box(&plain), now)))
    });
    c.bench_function("learn_budget_response", |b| {
        b.iter(|| black_box(learn::read(200, black_box(&budget), now)))
    });
}

fn head(c: &mut Criterion) {
    let limits = ezthrottle::config::HeadLimits::default();
    let head = b"GET http://api.example.com:8080/v1/charges?limit=10 HTTP/1.1\r\n\
Host: api.example.com:8080\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\
Authorization: Bearer abc\r\nProxy-Connection: keep-alive\r\n\r\n";
    c.bench_function("inspect_head_absolute_form", |b| {
        b.iter(|| {
            black_box(ezthrottle::accept::framing::inspect_head(black_box(head), &limits).is_ok())
        })
    });
}

fn egress(c: &mut Criterion) {
    let Ok(config) = ezthrottle::config::Config::from_toml_str("", "bench.toml") else {
        return;
    };
    let egress = ezthrottle::egress::Egress::new(&config);
    c.bench_function("egress_check_name_plain_host", |b| {
        b.iter(|| {
            black_box(egress.check_name(
                ezthrottle::egress::Purpose::Proxy,
                black_box("api.example.com"),
                443,
            ))
        })
    });
    // What a request to an address costs in the egress policy: the literal
    // is read, checked as an address (loop, classes, port) and handed back
    // without the resolver (an address is resolved without awaiting).
    let Ok(resolver) = ezthrottle::resolve::Resolver::new(&config) else {
        return;
    };
    c.bench_function("egress_resolve_ip_literal", |b| {
        b.iter(|| {
            let fut = egress.resolve(
                &resolver,
                ezthrottle::egress::Purpose::Proxy,
                black_box("203.0.113.7"),
                8080,
            );
            black_box(futures::FutureExt::now_or_never(fut).map(|r| r.is_ok()))
        })
    });
}

fn metrics(c: &mut Criterion) {
    let m = ezthrottle::metrics::Metrics::new(500);
    c.bench_function("count_request_cached_series", |b| {
        b.iter(|| m.series(black_box("api.example.com")).request("forwarded"))
    });
    c.bench_function("count_request_label_lookup", |b| {
        b.iter(|| {
            let label = m.domain_label(black_box("api.example.com"));
            m.requests_total
                .with_label_values(&[label.as_str(), "forwarded"])
                .inc()
        })
    });
}

fn scrub_and_lookups(c: &mut Criterion) {
    let mut line = String::with_capacity(256);
    render(&access(), false, SystemTime::now(), &mut line);
    c.bench_function("scrub_clean_access_line", |b| {
        b.iter(|| black_box(ezthrottle::logging::scrub(black_box(&line)).len()))
    });
    // A usual request: Host, User-Agent, Accept, none of ours.
    let req = headers(&[
        ("host", "api.example.com"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
    ]);
    use ezthrottle::wire::names;
    let parsed = [
        &names::MAX_WAIT,
        &names::INTERNAL,
        &names::WORKSPACE,
        &names::JOB,
        &names::RETRY_POLICY,
        &names::REGION,
        &names::WEBHOOK,
        &names::METADATA,
        &ezthrottle::idempotency::key::HEADER_NAME,
    ];
    // The same names as strings, looked up the old way.
    let by_str: Vec<&str> = parsed.iter().map(|n| n.as_str()).collect();
    c.bench_function("our_headers_lookup_parsed_names", |b| {
        b.iter(|| count_present(&req, &parsed))
    });
    c.bench_function("our_headers_lookup_by_str", |b| {
        b.iter(|| count_present(&req, &by_str))
    });
}

fn identify_and_maps(c: &mut Criterion) {
    use ezthrottle::pipeline::identify;
    use pingora::http::{RequestHeader, ResponseHeader};
    let control: std::net::SocketAddr = "127.0.0.1:4001".parse().expect("addr");
    let Ok(mut req) = RequestHeader::build(
        "GET",
        b"http://api.example.com:8080/v1/charges?limit=10",
        None,
    ) else {
        return;
    };
    for (k, v) in [
        ("Host", "api.example.com:8080"),
        ("User-Agent", "bench/1.0"),
    ] {
        let _ = req.insert_header(k, v);
    }
    c.bench_function("identify_target_absolute_form", |b| {
        b.iter(|| black_box(identify::target(black_box(&req), None, control).is_ok()))
    });
    c.bench_function("loop_check_without_via", |b| {
        b.iter(|| black_box(identify::looped(black_box(&req), "a1b2c3d4")))
    });
    let sip: dashmap::DashMap<String, u64> = dashmap::DashMap::new();
    let fast: dashmap::DashMap<String, u64, ahash::RandomState> =
        dashmap::DashMap::with_hasher(ahash::RandomState::new());
    for i in 0..50 {
        sip.insert(format!("api{i}.example.com"), i);
        fast.insert(format!("api{i}.example.com"), i);
    }
    c.bench_function("domain_map_get_siphash", |b| {
        b.iter(|| black_box(sip.get(black_box("api7.example.com")).map(|v| *v)))
    });
    c.bench_function("domain_map_get_ahash", |b| {
        b.iter(|| black_box(fast.get(black_box("api7.example.com")).map(|v| *v)))
    });
    // The mechanism alone, on a bare http::HeaderMap (pingora keeps two
    // such maps per head, values and case): sized to exactly the five
    // parsed headers, as unpatched pingora-http did, vs with headroom.
    let five = [
        (http::header::SERVER, "nginx"),
        (http::header::DATE, "Mon, 30 Nov 2026 17:00:00 GMT"),
        (http::header::CONTENT_TYPE, "text/plain"),
        (http::header::CONTENT_LENGTH, "1024"),
        (http::header::CONNECTION, "keep-alive"),
    ];
    let ours = [
        http::HeaderName::from_static("x-ezthrottle-wait-ms"),
        http::HeaderName::from_static("x-ezthrottle-attempts"),
    ];
    for (name, capacity) in [
        ("header_map_sized_exactly_add_two", 5),
        ("header_map_with_headroom_add_two", 9),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut m = http::HeaderMap::with_capacity(black_box(capacity));
                for (k, v) in &five {
                    m.append(k.clone(), http::HeaderValue::from_static(v));
                }
                for k in &ours {
                    m.insert(k.clone(), http::HeaderValue::from_static("1"));
                }
                black_box(m.len())
            })
        });
    }
    // A response as pingora parses it (sized to its five headers), then
    // ours added: by `&str` name (parsed, and for a name `http` does not
    // know allocated, on every insert) and by names parsed once
    // (`insert_static_header`, vendored pingora-http), as the pipeline does.
    let parsed = || {
        let mut resp = ResponseHeader::build(200, Some(5)).ok()?;
        for (k, v) in [
            ("Server", "nginx"),
            ("Date", "Mon, 30 Nov 2026 17:00:00 GMT"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "1024"),
            ("Connection", "keep-alive"),
        ] {
            resp.append_header(k, v).ok()?;
        }
        Some(resp)
    };
    c.bench_function("response_add_our_two_headers", |b| {
        b.iter(|| {
            let Some(mut resp) = parsed() else {
                return 0;
            };
            let _ = resp.insert_header("X-EZThrottle-Wait-Ms", http::HeaderValue::from(0u64));
            let _ = resp.insert_header("X-EZThrottle-Attempts", http::HeaderValue::from(1u32));
            black_box(resp.headers.len())
        })
    });
    c.bench_function("response_add_our_two_headers_static_names", |b| {
        b.iter(|| {
            let Some(mut resp) = parsed() else {
                return 0;
            };
            resp.insert_static_header(&names::WAIT_MS, http::HeaderValue::from(0u64));
            resp.insert_static_header(&names::ATTEMPTS, http::HeaderValue::from(1u32));
            black_box(resp.headers.len())
        })
    });
}

fn descriptors_and_guards(c: &mut Criterion) {
    use std::os::fd::AsFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let Ok(socket) = std::net::TcpStream::connect(addr) else {
        return;
    };
    c.bench_function("socket_dup_and_close", |b| {
        b.iter(|| {
            let dup = socket.as_fd().try_clone_to_owned();
            black_box(dup.is_ok())
        })
    });
    let shared = arc_swap::ArcSwap::from_pointee(42u64);
    c.bench_function("arc_swap_load_no_guards_held", |b| {
        b.iter(|| black_box(**shared.load()))
    });
    // More guards than the thread has fast slots (8 in arc-swap 1.x).
    let held: Vec<_> = (0..16).map(|_| shared.load()).collect();
    c.bench_function("arc_swap_load_fast_slots_taken", |b| {
        b.iter(|| black_box(**shared.load()))
    });
    drop(held);
}

/// Stands in for the session a hook future captures (pingora's is ~1 KiB).
struct Captured {
    head: [u64; 115],
    body: Vec<u8>,
}

async fn hook_body(c: Captured) -> u64 {
    let state = [c.head[3] as u8; 16 * 1024];
    tokio::task::yield_now().await;
    state.iter().map(|&b| u64::from(b)).sum::<u64>() + c.body.len() as u64
}

fn captured() -> Captured {
    Captured {
        head: [black_box(7); 115],
        body: Vec::new(),
    }
}

fn boxed_futures(c: &mut Criterion) {
    use std::future::Future;
    use std::pin::Pin;
    type Boxed = Pin<Box<dyn Future<Output = u64> + Send>>;
    c.bench_function("box_hook_future_async_trait_style", |b| {
        b.iter(|| {
            let cap = captured();
            let fut: Boxed = Box::pin(async move { hook_body(cap).await });
            black_box(fut)
        })
    });
    c.bench_function("box_hook_future_in_place", |b| {
        b.iter(|| {
            let cap = captured();
            let fut: Boxed = pingora::proxy::box_future_in_place(move || hook_body(cap));
            black_box(fut)
        })
    });
}

fn seventh_pass(c: &mut Criterion) {
    use http::HeaderValue;
    let req = headers(&[
        ("host", "api.example.com"),
        ("user-agent", "python-requests/2.32"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("authorization", "Bearer sk_test_123"),
    ]);
    let control = [
        &names::INTERNAL,
        &names::JOB,
        &names::RETRY_POLICY,
        &names::REGION,
        &names::MAX_WAIT,
        &names::WEBHOOK,
        &names::RETRY_POLICY,
        &names::REGION,
    ];
    c.bench_function("control_headers_one_pass", |b| {
        b.iter(|| black_box(ezthrottle::wire::any_control_header(black_box(&req))))
    });
    c.bench_function("control_headers_eight_lookups", |b| {
        b.iter(|| count_present(&req, &control))
    });
    c.bench_function("number_value_static_table", |b| {
        b.iter(|| {
            (
                ezthrottle::wire::number_value(black_box(0)),
                ezthrottle::wire::number_value(black_box(1)),
            )
        })
    });
    c.bench_function("number_value_header_value_from_u64", |b| {
        b.iter(|| {
            (
                HeaderValue::from(black_box(0u64)),
                HeaderValue::from(black_box(1u64)),
            )
        })
    });
    if let Ok(config) = ezthrottle::config::Config::from_toml_str("", "bench.toml") {
        c.bench_function("retry_route_default_domain", |b| {
            b.iter(|| {
                black_box(ezthrottle::retry::route::Route::for_domain(
                    &config,
                    black_box("api.example.com"),
                ))
            })
        });
    }
    // A thread's timer tree as a busy proxy with a 60 s read timeout has it:
    // a bucket every 10 ms for the next minute.
    let timers = pingora_timeout::timer::TimerManager::new();
    let mut held = Vec::with_capacity(6000);
    for ms in (10..=60_000).step_by(10) {
        held.push(timers.register_timer(Duration::from_millis(ms)));
    }
    c.bench_function("fast_timeout_register_same_bucket", |b| {
        b.iter(|| black_box(timers.register_timer(black_box(Duration::from_secs(60)))))
    });
    let mut flip = false;
    c.bench_function("fast_timeout_register_alternating_buckets", |b| {
        b.iter(|| {
            flip = !flip;
            let d = if flip { 59 } else { 60 };
            black_box(timers.register_timer(black_box(Duration::from_secs(d))))
        })
    });
    drop(held);
}

/// Run `f` as a task of `rt` (on a multi-threaded runtime `block_on`'s own
/// future runs on the calling thread, not on a worker, unlike a proxy's
/// connection tasks).
fn in_task<F: std::future::Future<Output = Duration> + Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: F,
) -> Duration {
    rt.block_on(async move { tokio::spawn(f).await.expect("task") })
}

/// A loopback listener, and a task that accepts one connection on it and
/// hands it to `serve`.
async fn one_connection_server<F, Fut>(
    serve: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        serve(s).await
    });
    (addr, server)
}

/// `n` round trips of one byte over a loopback TCP connection between two
/// tasks of `rt`: the client writes, the server reads and answers.
fn tcp_round_trips(rt: &tokio::runtime::Runtime, n: u64) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    in_task(rt, async move {
        let (addr, server) = one_connection_server(|mut s| async move {
            s.set_nodelay(true).expect("nodelay");
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).await.is_ok() {
                if s.write_all(&b).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.set_nodelay(true).expect("nodelay");
        let mut b = [7u8; 1];
        let start = std::time::Instant::now();
        for _ in 0..n {
            c.write_all(&b).await.expect("write");
            c.read_exact(&mut b).await.expect("read");
        }
        let took = start.elapsed();
        drop(c);
        let _ = server.await;
        took
    })
}

/// `n` round trips between two tasks of `rt` over a pair of channels.
fn channel_round_trips(rt: &tokio::runtime::Runtime, n: u64) -> Duration {
    in_task(rt, async move {
        let (to_server, mut server_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let (to_client, mut client_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let server = tokio::spawn(async move {
            while let Some(v) = server_rx.recv().await {
                if to_client.send(v).await.is_err() {
                    break;
                }
            }
        });
        let start = std::time::Instant::now();
        for i in 0..n {
            to_server.send(i).await.expect("send");
            black_box(client_rx.recv().await);
        }
        let took = start.elapsed();
        drop(to_server);
        let _ = server.await;
        took
    })
}

/// A single-threaded runtime, as one proxy worker runs.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn eighth_pass(c: &mut Criterion) {
    let current = current_thread_runtime();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    for (name, rt) in [
        ("current_thread", &current),
        ("multi_thread_1_worker", &multi),
    ] {
        c.bench_function(&format!("runtime_tcp_round_trip_{name}"), |b| {
            b.iter_custom(|n| tcp_round_trips(rt, n))
        });
        c.bench_function(&format!("runtime_channel_round_trip_{name}"), |b| {
            b.iter_custom(|n| channel_round_trips(rt, n))
        });
    }
}

/// `n` times: `stream`, a loopback TCP connection, put down for reuse with
/// `idle_timeout` and taken back for the same peer, in a task of `rt`.
fn release_and_reuse(
    rt: &tokio::runtime::Runtime,
    idle_timeout: Option<Duration>,
    n: u64,
) -> Duration {
    use pingora::connectors::TransportConnector;
    use pingora::upstreams::peer::{BasicPeer, Peer};
    in_task(rt, async move {
        // Held open, silent, until the connector is dropped.
        let (addr, server) = one_connection_server(|mut s| async move {
            let mut b = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut b).await;
        })
        .await;
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new(&addr.to_string());
        let key = peer.reuse_hash();
        let mut stream = connector.new_stream(&peer).await.expect("connect");
        let start = std::time::Instant::now();
        for _ in 0..n {
            connector.release_stream(stream, key, idle_timeout);
            stream = connector
                .reused_stream(&peer)
                .await
                .expect("the connection just put down");
        }
        let took = start.elapsed();
        drop(stream);
        drop(connector);
        let _ = server.await;
        took
    })
}

fn eleventh_pass(c: &mut Criterion) {
    let rt = current_thread_runtime();
    c.bench_function("upstream_release_and_reuse_recently_idle_list", |b| {
        b.iter_custom(|n| release_and_reuse(&rt, Some(Duration::from_secs(60)), n))
    });
    // Under the list's one second, so pingora's pool path, as before.
    c.bench_function("upstream_release_and_reuse_pool_idle_watch", |b| {
        b.iter_custom(|n| release_and_reuse(&rt, Some(Duration::from_millis(900)), n))
    });
}

/// One poll of `f`, then it is dropped: a wait that registers its timer
/// and is answered (here: abandoned) before the timer fires.
async fn poll_once<F: std::future::Future>(f: F) {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        let _ = f.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await
}

/// `n` waits for a client's next head, each under a 60 s deadline: the
/// connection's one timer moved later (`accept/deadline.rs`), or a
/// `tokio::time::timeout` per wait, as before the twelfth pass.
fn head_waits(rt: &tokio::runtime::Runtime, moved: bool, n: u64) -> Duration {
    use ezthrottle::accept::deadline::HeadDeadline;
    rt.block_on(async move {
        let mut deadline = HeadDeadline::default();
        let start = std::time::Instant::now();
        for _ in 0..n {
            if moved {
                deadline.arm(Duration::from_secs(60));
                poll_once(deadline.passed()).await;
            } else {
                poll_once(tokio::time::timeout(
                    Duration::from_secs(60),
                    std::future::pending::<()>(),
                ))
                .await;
            }
        }
        start.elapsed()
    })
}

/// `n` requests on one kept-alive upstream connection through pingora's
/// client session (the vendored pingora-core): written, the response read
/// to its end, the connection taken back for the next. The origin answers
/// each with `answer`, head and body in one write.
fn upstream_exchanges(rt: &tokio::runtime::Runtime, answer: &'static [u8], n: u64) -> Duration {
    use pingora::http::RequestHeader;
    use pingora::protocols::http::v1::client::HttpSession;
    use pingora::protocols::http::HttpTask;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    in_task(rt, async move {
        let (addr, server) = one_connection_server(move |mut s| async move {
            let mut buf = vec![0u8; 4096];
            let mut held = 0;
            loop {
                match s.read(&mut buf[held..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(got) => held += got,
                }
                // One request at a time: answer each complete head.
                while let Some(end) = buf[..held].windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.copy_within(end + 4..held, 0);
                    held -= end + 4;
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut stream: pingora::protocols::Stream =
            Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
        let start = std::time::Instant::now();
        for _ in 0..n {
            let mut session = HttpSession::new(stream);
            let mut req = RequestHeader::build("GET", b"/", Some(1)).expect("head");
            req.insert_header("Host", "bench.test").expect("host");
            session
                .write_request_header(Box::new(req))
                .await
                .expect("write");
            loop {
                match session.read_response_task().await.expect("read") {
                    HttpTask::Header(_, true) | HttpTask::Body(_, true) | HttpTask::Done => break,
                    _ => {}
                }
            }
            // As the proxy does: keep-alive as the response allows.
            session.respect_keepalive();
            stream = session.reuse().await.expect("kept alive");
        }
        let took = start.elapsed();
        drop(stream);
        let _ = server.await;
        took
    })
}

/// A response head as nginx writes it, parsed into pingora's header (case
/// kept): with every name in its default form no case map is made; with
/// one that is not (`x-Cache` here, last), it is made then.
fn parsed_response_head(names: &[&'static str]) -> pingora::http::ResponseHeader {
    let mut resp = pingora::http::ResponseHeader::build(200, Some(names.len())).expect("head");
    for name in names {
        resp.append_header(bytes::Bytes::from_static(name.as_bytes()), "v")
            .expect("append");
    }
    resp
}

const NGINX_NAMES: [&str; 8] = [
    "Server",
    "Date",
    "Content-Type",
    "Content-Length",
    "Last-Modified",
    "Connection",
    "ETag",
    "Accept-Ranges",
];

/// Hot-path pieces of the twelfth pass (docs/performance.md).
fn twelfth_pass(c: &mut Criterion) {
    let rt = current_thread_runtime();
    c.bench_function("client_head_wait_timer_moved", |b| {
        b.iter_custom(|n| head_waits(&rt, true, n))
    });
    c.bench_function("client_head_wait_timeout_per_wait", |b| {
        b.iter_custom(|n| head_waits(&rt, false, n))
    });
    // 1 KiB, as the comparison's origin answers: the body comes whole with
    // its head and is handed on as a slice of the head's buffer.
    static BODY_WITH_HEAD: std::sync::LazyLock<&'static [u8]> = std::sync::LazyLock::new(|| {
        let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n".to_vec();
        a.extend_from_slice(&[b'x'; 1024]);
        Box::leak(a.into_boxed_slice())
    });
    // The same body chunked: pingora's body buffer and copies, for scale.
    static CHUNKED: std::sync::LazyLock<&'static [u8]> = std::sync::LazyLock::new(|| {
        let mut a = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n".to_vec();
        a.extend_from_slice(&[b'x'; 1024]);
        a.extend_from_slice(b"\r\n0\r\n\r\n");
        Box::leak(a.into_boxed_slice())
    });
    c.bench_function("upstream_exchange_1k_body_with_head", |b| {
        b.iter_custom(|n| upstream_exchanges(&rt, &BODY_WITH_HEAD, n))
    });
    c.bench_function("upstream_exchange_1k_body_chunked", |b| {
        b.iter_custom(|n| upstream_exchanges(&rt, &CHUNKED, n))
    });
    c.bench_function("response_head_default_case_names", |b| {
        b.iter(|| black_box(parsed_response_head(&NGINX_NAMES)))
    });
    let mut mixed = NGINX_NAMES;
    mixed[7] = "x-Cache";
    c.bench_function("response_head_one_name_in_its_own_case", |b| {
        b.iter(|| black_box(parsed_response_head(&mixed)))
    });
    static DATE: http::HeaderName = http::header::DATE;
    static CONNECTION: http::HeaderName = http::header::CONNECTION;
    let date = http::HeaderValue::from_static("Wed, 02 Dec 2026 01:00:00 GMT");
    c.bench_function("response_date_and_connection_static", |b| {
        b.iter(|| {
            let mut resp = parsed_response_head(&NGINX_NAMES[..4]);
            resp.insert_static_header(&DATE, date.clone());
            resp.insert_static_header(&CONNECTION, http::HeaderValue::from_static("keep-alive"));
            black_box(resp)
        })
    });
    c.bench_function("response_date_and_connection_parsed", |b| {
        b.iter(|| {
            let mut resp = parsed_response_head(&NGINX_NAMES[..4]);
            resp.insert_header(http::header::DATE, date.clone())
                .expect("date");
            resp.insert_header(http::header::CONNECTION, "keep-alive")
                .expect("connection");
            black_box(resp)
        })
    });
}

/// A request head as curl writes it, parsed into pingora's header.
fn curl_request_head() -> pingora::http::RequestHeader {
    let mut req = pingora::http::RequestHeader::build("GET", b"/", Some(4)).expect("head");
    for (name, value) in [
        ("Host", "127.0.0.1:8080"),
        ("User-Agent", "curl/7.88.1"),
        ("Accept", "*/*"),
        ("X-Request-Id", "bench"),
    ] {
        req.append_header(name, value).expect("append");
    }
    req
}

/// The way pingora-http cloned a request head's parts before the
/// thirteenth pass: through `http::request::Builder`, moved by value at
/// every call.
fn parts_through_builder(me: &http::request::Parts) -> http::request::Parts {
    let mut parts = http::request::Builder::new()
        .method(me.method.clone())
        .uri(me.uri.clone())
        .version(me.version)
        .body(())
        .expect("parts")
        .into_parts()
        .0;
    parts.headers = me.headers.clone();
    parts.extensions = me.extensions.clone();
    parts
}

/// A value moved by four nested futures, as pingora moves its sessions and
/// contexts from one phase's future to the next, and given back.
async fn moved_through_futures<T>(value: T) -> T {
    async fn one<T>(v: T) -> T {
        two(black_box(v)).await
    }
    async fn two<T>(v: T) -> T {
        three(black_box(v)).await
    }
    async fn three<T>(v: T) -> T {
        tokio::task::yield_now().await;
        black_box(v)
    }
    one(value).await
}

fn bench_peer() -> pingora::upstreams::peer::HttpPeer {
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    pingora::upstreams::peer::HttpPeer::new(addr, false, "bench.test".to_string())
}

/// Hot-path pieces of the thirteenth pass (docs/performance.md): what
/// pingora copied whole a request.
fn thirteenth_pass(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let req = curl_request_head();
    c.bench_function("request_head_parts_cloned", |b| {
        b.iter(|| black_box(req.as_owned_parts()))
    });
    c.bench_function("request_head_parts_cloned_through_builder", |b| {
        b.iter(|| black_box(parts_through_builder(&req)))
    });
    // A peer (672 bytes), made and boxed as `upstream::peer` does.
    c.bench_function("peer_built_in_its_box", |b| {
        b.iter(|| black_box(pingora::utils::box_in_place(bench_peer)))
    });
    c.bench_function("peer_built_then_boxed", |b| {
        b.iter(|| black_box(Box::new(black_box(bench_peer()))))
    });
    // The same peer moved through a request's futures: whole, as the
    // sessions (680 and 584 bytes) were, or in its box.
    c.bench_function("peer_moved_through_futures_whole", |b| {
        b.iter(|| rt.block_on(moved_through_futures(bench_peer())))
    });
    c.bench_function("peer_moved_through_futures_boxed", |b| {
        b.iter(|| {
            rt.block_on(moved_through_futures(pingora::utils::box_in_place(
                bench_peer,
            )))
        })
    });
}

/// The fourteenth pass: the blocks a plain request allocates (two small
/// ones and the 1–9 KiB boxed futures of its sizes), allocated and freed
/// through the proxy's global allocator, which asks mimalloc as the system
/// allocator is asked, and through the `mimalloc` crate's, which asks for
/// every block with `mi_malloc_aligned`.
fn fourteenth_pass(c: &mut Criterion) {
    #[cfg(not(feature = "system-allocator"))]
    {
        use std::alloc::{GlobalAlloc, Layout};
        const SIZES: [usize; 8] = [48, 160, 1152, 1248, 1368, 1664, 1832, 9256];
        let layouts = SIZES.map(|size| Layout::from_size_align(size, 8).expect("a valid layout"));
        fn cycle<A: GlobalAlloc>(allocator: &A, layouts: &[Layout; 8]) {
            let mut blocks = [std::ptr::null_mut(); 8];
            for (block, layout) in blocks.iter_mut().zip(layouts) {
                // SAFETY: non-zero sizes; each block is freed below with
                // the layout it was allocated with.
                *block = unsafe { allocator.alloc(*layout) };
            }
            for (block, layout) in blocks.iter().zip(layouts) {
                // SAFETY: as above.
                unsafe { allocator.dealloc(black_box(*block), *layout) };
            }
        }
        c.bench_function("request_blocks_as_the_system_allocator", |b| {
            b.iter(|| cycle(&ezthrottle::allocator::MiMalloc, &layouts))
        });
        c.bench_function("request_blocks_all_aligned", |b| {
            b.iter(|| cycle(&mimalloc::MiMalloc, &layouts))
        });
    }
    #[cfg(feature = "system-allocator")]
    let _ = c;
}

/// nginx's answer to the benchmarks' GET, head only (eight headers).
const NGINX_RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Wed, 02 Dec 2026 11:00:00 GMT\r\nContent-Type: application/octet-stream\r\n\
Content-Length: 1024\r\nLast-Modified: Wed, 02 Dec 2026 10:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"6745f0a0-400\"\r\nAccept-Ranges: bytes\r\n\r\n";

/// Where each header sits in the buffer, as pingora-core's `KVRef` holds it.
type Offsets = (usize, usize, usize, usize);

fn offsets_of(base: usize, h: &httparse::Header) -> Offsets {
    (
        h.name.as_ptr() as usize - base,
        h.name.len(),
        h.value.as_ptr() as usize - base,
        h.value.len(),
    )
}

/// Hot-path pieces of the fifteenth pass (docs/performance.md): a response
/// head parsed as pingora-core parsed it (256 header slots written empty
/// first, the offsets pushed into a `Vec`) and as the vendored copy now
/// does (the slots left uninitialised, the offsets on the stack).
fn fifteenth_pass(c: &mut Criterion) {
    use std::mem::MaybeUninit;
    const SLOTS: usize = 256;
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    c.bench_function("response_head_parse_initialised_slots", |b| {
        b.iter(|| {
            let buf = black_box(NGINX_RESPONSE_HEAD);
            let mut headers = [httparse::EMPTY_HEADER; SLOTS];
            let mut resp = httparse::Response::new(&mut headers);
            let done = config.parse_response(&mut resp, buf).expect("parses");
            let base = buf.as_ptr() as usize;
            let mut refs = Vec::with_capacity(resp.headers.len());
            for h in resp.headers.iter().filter(|h| !h.name.is_empty()) {
                refs.push(offsets_of(base, h));
            }
            black_box((done, refs))
        })
    });
    c.bench_function("response_head_parse_uninitialised_slots", |b| {
        b.iter(|| {
            let buf = black_box(NGINX_RESPONSE_HEAD);
            let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; SLOTS];
            let mut resp = httparse::Response::new(&mut []);
            let done = config
                .parse_response_with_uninit_headers(&mut resp, buf, &mut headers)
                .expect("parses");
            let base = buf.as_ptr() as usize;
            let mut slots = [MaybeUninit::<Offsets>::uninit(); SLOTS];
            let mut written = 0;
            for (slot, h) in slots
                .iter_mut()
                .zip(resp.headers.iter().filter(|h| !h.name.is_empty()))
            {
                slot.write(offsets_of(base, h));
                written += 1;
            }
            black_box(&slots[..written]);
            black_box((done, written))
        })
    });
}

/// The sixteenth pass: pingora built a digest of the connection (a box, a
/// timing `Vec`, three `Arc` clones) for each HTTP/1 session, downstream
/// and upstream, whether or not anything read it; the vendored copy gathers
/// it on first use. An upstream session made on a kept-alive loopback
/// connection and given back, as a pooled connection is each request, with
/// its digest read (what every session used to pay) and untouched (what a
/// session pays now on ezthrottle's path). The hooks no longer called, each
/// a boxed future, are `box_hook_future_async_trait_style` above. And the
/// host of a request's authority, found by `http`'s char searcher and by
/// byte searches.
fn sixteenth_pass(c: &mut Criterion) {
    use pingora::protocols::http::v1::client::HttpSession;
    use pingora::protocols::l4::stream::Stream as L4;
    use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
    use std::os::unix::io::AsRawFd;

    let rt = current_thread_runtime();
    let (stream, _peer): (Stream, _) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("address");
        let (dialled, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(at), listener.accept());
        let dialled = dialled.expect("connect");
        let fd = dialled.as_raw_fd();
        let mut s = L4::from(dialled);
        s.set_socket_digest(SocketDigest::from_raw_fd(fd));
        (Box::new(s) as Stream, accepted.expect("accept"))
    });
    let mut stream = Some(stream);
    c.bench_function("upstream_session_digest_read", |b| {
        b.iter(|| {
            let session = HttpSession::new(stream.take().expect("given back"));
            black_box(session.digest());
            stream = Some(session.into_inner());
        })
    });
    // The host of a request's authority: `http`'s `Authority::host` (a char
    // searcher for its `rsplit('@')`) against `identify::host_of`'s byte
    // searches, for the same answer.
    let authority: http::uri::Authority = "api.example.com:8080".parse().expect("authority");
    c.bench_function("authority_host_http", |b| {
        b.iter(|| black_box(black_box(&authority).host().len()))
    });
    c.bench_function("authority_host_bytes", |b| {
        b.iter(|| {
            black_box(ezthrottle::pipeline::identify::host_of(black_box(&authority).as_str()).len())
        })
    });
    c.bench_function("upstream_session_digest_untouched", |b| {
        b.iter(|| {
            let session = black_box(HttpSession::new(stream.take().expect("given back")));
            stream = Some(session.into_inner());
        })
    });
}

/// The seventeenth pass: an HTTP/1 head's `Transfer-Encoding` and
/// `Content-Length`, looked up by pingora's upstream session six times
/// with the length parsed twice (read, validate, frame the body), now
/// twice with one parse; the look-ups as `http`'s map does them on a
/// typical response head. And whether access lines are wanted: asked of
/// a subscriber built as `logging::init` builds it, per request before,
/// once now.
fn seventeenth_pass(c: &mut Criterion) {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    use tracing_subscriber::layer::SubscriberExt;

    let mut head = pingora::http::ResponseHeader::build(200, None).expect("head");
    for (name, value) in [
        ("Server", "nginx/1.22.1"),
        ("Date", "Wed, 02 Dec 2026 18:00:00 GMT"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "1024"),
        ("Connection", "keep-alive"),
        ("Accept-Ranges", "bytes"),
    ] {
        head.append_header(name, value).expect("header");
    }
    let headers = &head.headers;
    let length = |h: &http::HeaderMap| -> Option<usize> {
        let mut n = None;
        for v in h.get_all(CONTENT_LENGTH) {
            n = std::str::from_utf8(v.as_bytes()).ok()?.parse().ok();
        }
        n
    };
    c.bench_function("response_framing_six_lookups", |b| {
        b.iter(|| {
            let h = black_box(headers);
            let te = h.contains_key(TRANSFER_ENCODING);
            let cl = h.contains_key(CONTENT_LENGTH);
            let validated = h.get(TRANSFER_ENCODING).is_none() && length(h).is_some();
            let chunked = h.get_all(TRANSFER_ENCODING).iter().next_back().is_some();
            black_box((te, cl, validated, chunked, length(h)))
        })
    });
    c.bench_function("response_framing_two_lookups", |b| {
        b.iter(|| {
            let h = black_box(headers);
            let te = h.contains_key(TRANSFER_ENCODING);
            let cl = h.contains_key(CONTENT_LENGTH);
            let n = if cl && !te { length(h) } else { None };
            black_box((te, cl, n))
        })
    });

    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(
            ezthrottle::logging::allowed,
        ))
        .with(ezthrottle::logging::filter_from(None).expect("default filter"))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("access_wanted_asked", |b| {
            b.iter(|| {
                black_box(tracing::enabled!(
                    target: "ezthrottle::access",
                    tracing::Level::INFO
                ))
            })
        });
    });
    let settled = std::sync::OnceLock::new();
    let _ = settled.set(true);
    c.bench_function("access_wanted_settled", |b| {
        b.iter(|| black_box(*black_box(&settled).get().unwrap_or(&false)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = access_line, limits, head, egress, metrics, scrub_and_lookups, identify_and_maps, descriptors_and_guards, boxed_futures, seventh_pass, eighth_pass, eleventh_pass, twelfth_pass, thirteenth_pass, fourteenth_pass, fifteenth_pass, sixteenth_pass, seventeenth_pass
}
criterion_main!(benches);
