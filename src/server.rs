//! Assembles the running proxy: the shared state, the pingora server with the
//! proxy listener (our front door) and the control listener, signal handling
//! and the drain on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::accept::FrontDoor;
use crate::admission::{Admission, SharedSlots};
use crate::config::{Config, StorageBackend};
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::resolve::Resolver;
use crate::state::{InFlight, Shared};
use crate::store::redis::{Redis, RedisStore};
use crate::store::{EmbeddedStore, Store};
use crate::tls::{upstream_roots, LeafCache, LocalCa};

/// A start-up failure, reported by the CLI with a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key} {addr}: cannot listen: {reason}")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("{0}")]
    Webhooks(#[from] crate::webhooks::WebhooksError),
    #[error("{0}")]
    CaMismatch(String),
}

/// A small runtime for the async start-up steps that run before pingora's
/// own runtimes exist.
fn startup_runtime() -> Result<tokio::runtime::Runtime, StartError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(e.to_string()))
}

/// Build the long-lived state from a validated config.
pub fn build_shared(config: Config) -> Result<Arc<Shared>, StartError> {
    let config = Arc::new(config);
    let ca = Arc::new(LocalCa::load_or_create(&config)?);
    let leaves = Arc::new(LeafCache::new(ca.clone(), config.tls.http2));
    let resolver =
        Arc::new(Resolver::new(&config).map_err(|e| StartError::Resolver(e.to_string()))?);
    let metrics = Arc::new(Metrics::new(config.metrics.max_domains));
    let (store, redis): (Arc<dyn Store>, Option<Arc<Redis>>) = match &config.storage.backend {
        StorageBackend::Embedded => (
            Arc::new(EmbeddedStore::open_with(
                &config.data_dir,
                config.storage.encryption_key.as_ref(),
            )?),
            None,
        ),
        StorageBackend::Redis(rc) => {
            let redis = Redis::open(rc)?;
            crate::store::redis::check_shared_ca(&redis, ca.cert_der().as_ref())
                .map_err(StartError::CaMismatch)?;
            let store = Arc::new(RedisStore::new(
                redis.clone(),
                config.storage.encryption_key.as_ref(),
            ));
            // Jobs stored by an older version get their domain and parent
            // indexed (the console's domain filter and follow-up children).
            store.index_old_jobs_in_background();
            (store, Some(redis))
        }
    };
    let learned = match startup_runtime()?.block_on(store.learned_limits()) {
        Ok(learned) => learned,
        // Shared state: Redis may come later; the limits are read from it
        // on every admission anyway.
        Err(e) if redis.is_some() => {
            tracing::warn!(error = %e, "cannot read learned limits from redis at start");
            Vec::new()
        }
        Err(e) => return Err(StartError::Store(e)),
    };
    let mut admission = Admission::new(config.clone(), metrics.clone(), store.clone(), learned);
    if let Some(redis) = &redis {
        admission = admission.with_shared(SharedSlots::new(redis.clone()));
    }
    let admission = Arc::new(admission);
    let idempotency = Arc::new(Idempotency::with_redis(
        store.clone(),
        metrics.clone(),
        config.idempotency.clone(),
        redis.clone(),
    ));
    let webhooks = Arc::new(crate::webhooks::Webhooks::new(
        &config,
        store.clone(),
        metrics.clone(),
    )?);
    let notify = webhooks.clone();
    // 256 random bits, never written anywhere: only this process knows it.
    let internal_token: Arc<str> = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
    .into();
    let live = Arc::new(arc_swap::ArcSwap::new(config.clone()));
    let jobs = Arc::new(crate::jobs::Jobs::new(
        store.clone(),
        metrics.clone(),
        live.clone(),
        internal_token.clone(),
        Box::new(move || notify.notify()),
    ));
    let egress = arc_swap::ArcSwap::from_pointee(crate::egress::Egress::new(&config));
    let instance_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let config_hash = crate::reload::file_hash(config.source.as_deref()).unwrap_or_default();
    Ok(Arc::new(Shared {
        config: live,
        config_hash: arc_swap::ArcSwap::from_pointee(config_hash),
        metrics,
        ca,
        leaves,
        resolver,
        store,
        redis,
        admission,
        idempotency,
        webhooks,
        jobs,
        instance_id,
        egress,
        internal_token,
        inflight: Arc::new(InFlight::default()),
        proxy_ready: Default::default(),
    }))
}

/// The most upstream attempts any request may make.
fn attempt_budget(cfg: &crate::config::Config) -> usize {
    let most = std::iter::once(&cfg.retry)
        .chain(cfg.limits.domains.values().filter_map(|d| d.retry.as_ref()))
        .map(|r| r.max_retries as usize + r.max_reroutes as usize)
        .max()
        .unwrap_or(0);
    1 + most + 4
}

/// Fail early with a clear message when an address cannot be bound: pingora
/// would panic on it later.
fn check_bind(key: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    std::net::TcpListener::bind(addr).map_err(|e| StartError::Listen {
        key,
        addr,
        reason: e.to_string(),
    })
}

/// Run until SIGTERM/SIGINT; returns after the drain.
pub fn run(config: Config) -> Result<(), StartError> {
    // The proxy port is bound by pingora; probe it first and release it.
    drop(check_bind("proxy.listen", config.proxy.listen)?);
    let control_listener = check_bind("control.listen", config.control.listen)?;
    control_listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Listen {
            key: "control.listen",
            addr: config.control.listen,
            reason: e.to_string(),
        })?;

    let ca_file = upstream_roots::bundle_path(&config)?;
    let shared = build_shared(config)?;
    let cfg = &shared.config.load();

    let threads = cfg.proxy.threads.max(1);
    let conf = ServerConf {
        threads,
        ca_file: ca_file.map(|p| p.to_string_lossy().into_owned()),
        // pingora sleeps this long after a graceful shutdown begins; our drain
        // watcher ends the process as soon as in-flight requests are done.
        grace_period_seconds: Some(cfg.proxy.drain_timeout.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        // pingora's attempt loop must outlast our retry policy (SPEC §7):
        // one attempt, every retry and reroute, and a few spare for its own
        // retries on stale pooled connections.
        max_retries: attempt_budget(cfg),
        // One worker has no one to steal from: a single-threaded runtime
        // then spares tokio's multi-threaded scheduler's cost on every
        // wake-up (11% of the CPU per plain request flat out,
        // docs/performance.md, "The eighth pass"). With more workers,
        // stealing keeps them balanced.
        work_stealing: threads > 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let proxy = Arc::new(pingora::proxy::http_proxy(
        &conf,
        Pipeline::new(shared.clone()),
    ));
    let mut front = Service::new(
        "ezthrottle proxy".to_string(),
        FrontDoor::new(shared.clone(), proxy),
    );
    // No L4 read buffer: the front door reads each head itself (in small
    // pieces, `accept::framing`) and pingora reads bodies with its own
    // buffers, so pingora's default 64 KiB read buffer per connection —
    // zero-filled at accept, held for the whole keep-alive life — would only
    // cost memory for every idle connection.
    front.add_listener(
        pingora::listeners::ListenerConfig::tcp(cfg.proxy.listen.to_string())
            .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::default().read(0)),
    );
    server.add_service(front);
    server.add_service(background_service(
        "ezthrottle control",
        ControlService {
            shared: shared.clone(),
            listener: std::sync::Mutex::new(Some(control_listener)),
        },
    ));

    spawn_drain_watcher(&server, shared.clone());
    tracing::info!(
        proxy = %cfg.proxy.listen,
        control = %cfg.control.listen,
        data_dir = %cfg.data_dir.display(),
        "ezthrottle starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    Ok(())
}

/// SIGTERM and SIGINT both drain gracefully (pingora's default makes SIGINT
/// a fast exit that drops in-flight requests).
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; waiting forever");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Once pingora has stopped accepting, wait for in-flight requests (bounded
/// by `drain_timeout`) and exit 0, instead of pingora's fixed grace sleep.
fn spawn_drain_watcher(server: &Server, shared: Arc<Shared>) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("ezthrottle-drain".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                loop {
                    match phases.recv().await {
                        Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
                let drain = shared.config.load().proxy.drain_timeout;
                let waiting = shared.inflight.current();
                tracing::info!(in_flight = waiting, "waiting for in-flight requests");
                if tokio::time::timeout(drain, shared.inflight.wait_idle())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        in_flight = shared.inflight.current(),
                        "drain timeout reached; exiting with requests still in flight"
                    );
                }
                crate::logging::access::flush();
                tracing::info!("ezthrottle stopped");
                std::process::exit(0);
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the drain watcher");
    }
}

/// The control listener, hosted as a pingora background service.
struct ControlService {
    shared: Arc<Shared>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let std_listener = match self.listener.lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        let Some(std_listener) = std_listener else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "control listener");
                return;
            }
        };
        let shared = self.shared.clone();
        tokio::spawn(announce_ready(shared.clone()));
        tokio::spawn(shared.idempotency.clone().sweep_forever());
        tokio::spawn(shared.webhooks.clone().run());
        tokio::spawn(shared.jobs.clone().run());
        tokio::spawn(shared.jobs.clone().sweep_forever());
        tokio::spawn(shared.admission.clone().forget_idle_forever());
        tokio::spawn(crate::control::console::sample_forever(shared.clone()));
        tokio::spawn(crate::reload::watch_forever(
            shared.clone(),
            shared.config.load().source.clone(),
        ));
        if let Some(redis) = shared.redis.clone() {
            tokio::spawn(wake_on_peer_events(redis, shared.clone()));
        }
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = crate::control::serve(listener, shared, stop).await {
            tracing::error!(error = %e, "control server failed");
        }
    }
}

/// Another replica queued a job or a delivery: look at once rather than at
/// the next regular look (`store::SHARED_POLL`).
async fn wake_on_peer_events(redis: Arc<Redis>, shared: Arc<Shared>) {
    let mut events = redis.events();
    loop {
        match events.recv().await {
            Ok(e) if e.kind == "jobs" => shared.jobs.wake(),
            Ok(e) if e.kind == "deliveries" => shared.webhooks.notify(),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                shared.jobs.wake();
                shared.webhooks.notify();
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Whether `probe` is this process's proxy listener. A connection alone
/// does not say: between our bind check and pingora's own bind, another
/// process may take the port (pingora then retries its bind), and a probe
/// that merely connected would announce us ready on someone else's
/// listener. Our front door answers an origin-form request with
/// `not_a_proxy_request` naming our control address, which only we know; a
/// loopback client that `allow_clients` refuses gets `client_not_allowed`
/// (counted as ours: nothing else answers so).
async fn probe_is_ours(probe: SocketAddr, control: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(probe).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: ezthrottle-ready-probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while buf.len() < 8192 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Some(buf)
    };
    let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(2), exchange).await else {
        return false;
    };
    let text = String::from_utf8_lossy(&answer);
    text.contains(&format!("listens on {control}")) || text.contains("client_not_allowed")
}

/// pingora gives no event when its listener is bound, so probe it with a
/// connection (bounded), then flag readiness and print the ready line that
/// supervisors and tests wait for.
async fn announce_ready(shared: Arc<Shared>) {
    let cfg = &shared.config.load();
    let mut probe = cfg.proxy.listen;
    if probe.ip().is_unspecified() {
        probe.set_ip(match probe {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    for _ in 0..3000 {
        if probe_is_ours(probe, cfg.control.listen).await {
            shared.proxy_ready.store(true, Ordering::SeqCst);
            tracing::info!(proxy = %cfg.proxy.listen, control = %cfg.control.listen, "ready");
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "ezthrottle ready proxy={} control={}",
                cfg.proxy.listen, cfg.control.listen
            );
            let _ = out.flush();
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::error!(proxy = %cfg.proxy.listen, "proxy listener never became reachable");
}
