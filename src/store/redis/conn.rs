//! The one Redis client of a process, shared by the store, admission and
//! idempotency (docs/distributed.md).
//!
//! Why a runtime of its own: the `redis` crate's multiplexed connection runs
//! a driver task on the runtime that created it, and pingora's runtimes are
//! per-service and built after start-up. A one-thread runtime that lives as
//! long as this client keeps the connection, its reconnects and the
//! background tasks (health, heartbeat, pub/sub) in one place; callers on any
//! runtime just await commands, which travel over a channel to that driver.
//!
//! Redis being down is a normal state, not a start-up failure: the
//! connection is lazy, every command has a short timeout, `is_up` says what
//! the last command saw, and the health task reconnects with backoff.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisFuture, ToRedisArgs};
use tokio::sync::broadcast;

use super::super::StoreError;
use crate::config::RedisConfig;

/// How often a replica says it is alive and counts its live peers.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica not heard from for this long no longer counts as live.
pub const REPLICA_TTL: Duration = Duration::from_secs(5);

/// A message on the shared events channel: `(kind, payload)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub payload: String,
}

/// A single server (reconnecting through the connection manager), or a
/// Redis Cluster (commands routed by key slot; every key a script touches
/// carries one hash tag, so each script runs on one node).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct Redis {
    /// For the events subscription: the server, or with a cluster its seed
    /// node (Redis Cluster delivers every PUBLISH to subscribers on any node).
    client: redis::Client,
    conn: Conn,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    prefix: String,
    /// This process's id among the replicas (heartbeat, lease owners).
    replica: String,
    up: AtomicBool,
    /// Live replicas seen at the last heartbeat (at least 1: this one).
    replicas: AtomicU32,
    events: broadcast::Sender<Event>,
    shown_url: String,
    /// SHA-256 of this replica's CA certificate, checked against the one
    /// every replica records ([`Redis::check_ca`]).
    ca: std::sync::OnceLock<String>,
    /// The peers' CA fingerprint when it differs from ours.
    ca_mismatch: std::sync::Mutex<Option<String>>,
}

/// What [`Redis::check_ca`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCheck {
    /// No CA was recorded: ours now is.
    Recorded,
    Same,
    /// The peers mint from another CA (its fingerprint).
    Differs(String),
}

/// Channel (under the prefix) every replica subscribes to.
const EVENTS: &str = "events";

impl Redis {
    /// A client for `cfg`. Never waits for Redis: the first command (or the
    /// health task, right away) connects. Errors only on a URL the client
    /// library refuses or a runtime that cannot start.
    pub fn open(cfg: &RedisConfig) -> Result<Arc<Redis>, StoreError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| StoreError::Backend(format!("redis url: {}", e.category())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ezt-redis")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("redis runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = {
            let _guard = handle.enter();
            if cfg.cluster {
                let cluster = redis::cluster::ClusterClient::builder(vec![cfg.url.as_str()])
                    .connection_timeout(cfg.timeout.max(Duration::from_millis(100)))
                    .response_timeout(cfg.timeout)
                    .build()
                    .map_err(|e| StoreError::Backend(format!("redis cluster: {}", e.category())))?;
                // Connects in the background: a cluster that is down at start
                // is no start-up failure either.
                Conn::Cluster(
                    cluster.get_pending_async_connection_with_config(
                        redis::cluster::ClusterConfig::new()
                            .set_connection_timeout(cfg.timeout.max(Duration::from_millis(100)))
                            .set_response_timeout(cfg.timeout),
                    ),
                )
            } else {
                Conn::Single(
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                        .map_err(|e| {
                            StoreError::Backend(format!("redis client: {}", e.category()))
                        })?,
                )
            }
        };
        let (events, _) = broadcast::channel(1024);
        let redis = Arc::new(Redis {
            client,
            conn,
            runtime: Some(runtime),
            handle,
            timeout: cfg.timeout,
            prefix: cfg.prefix.clone(),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            up: AtomicBool::new(false),
            replicas: AtomicU32::new(1),
            events,
            shown_url: cfg.shown_url(),
            ca: std::sync::OnceLock::new(),
            ca_mismatch: std::sync::Mutex::new(None),
        });
        // Connect now, on this client's runtime (the lazy connection is made
        // by whoever polls it first; a caller's runtime may not outlive it),
        // waiting at most the command timeout: a Redis that is down at start
        // is reported by the health task, not a start-up failure.
        let first = {
            let (r, handle) = (redis.clone(), redis.handle.clone());
            std::thread::spawn(move || {
                handle.block_on(async move { r.query::<String>(redis::cmd("PING").clone()).await })
            })
            .join()
        };
        if let Ok(Err(e)) = first {
            tracing::warn!(url = %redis.shown_url, error = %e, "redis not reachable at start; retrying in the background");
        }
        redis.handle.spawn(health_forever(Arc::downgrade(&redis)));
        redis
            .handle
            .spawn(subscribe_forever(Arc::downgrade(&redis)));
        Ok(redis)
    }

    /// `<prefix>:<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// The key of one domain's state: `<prefix>:{<domain>}:<what>`. The hash
    /// tag keeps every key of a domain in one Redis Cluster slot, so one
    /// script may touch them all.
    pub fn domain_key(&self, domain: &str, what: &str) -> String {
        format!("{}:{{{domain}}}:{what}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last command (or health check) reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Live replicas at the last heartbeat, this one included (≥ 1). Kept
    /// while Redis is down: it is what the fallback pace divides by.
    pub fn live_replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// Run one command with the timeout.
    pub async fn query<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let fut = async move { cmd.query_async::<T>(&mut conn).await };
        self.finish(tokio::time::timeout(self.timeout, fut).await)
    }

    /// Run a pipeline (`MULTI`/`EXEC` when built atomic) with the timeout.
    pub async fn pipe<T: FromRedisValue + Send + 'static>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let fut = async move { pipe.query_async::<T>(&mut conn).await };
        self.finish(tokio::time::timeout(self.timeout, fut).await)
    }

    /// Run a Lua script by its SHA (`EVALSHA`; loaded on the first
    /// `NOSCRIPT`, so normally one round trip) with the timeout.
    pub async fn script<T, K, A>(
        &self,
        script: &redis::Script,
        keys: &[K],
        args: &[A],
    ) -> Result<T, StoreError>
    where
        T: FromRedisValue + Send + 'static,
        K: ToRedisArgs,
        A: ToRedisArgs,
    {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let mut conn = self.conn.clone();
        let fut = async move { invocation.invoke_async::<T>(&mut conn).await };
        self.finish(tokio::time::timeout(self.timeout, fut).await)
    }

    fn finish<T>(
        &self,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match r {
            Ok(Ok(v)) => {
                self.up.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                // A lost connection is an outage; one slow answer is not (the
                // heartbeat decides that), and a script or type error is a bug
                // of ours.
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.up.store(false, Ordering::Relaxed);
                }
                Err(StoreError::Backend(format!("redis: {}", describe(&e))))
            }
            Err(_) => Err(StoreError::Backend(format!(
                "redis: no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Tell every replica (this one too, through its subscription).
    pub async fn publish(&self, kind: &str, payload: &str) -> Result<(), StoreError> {
        let message = format!("{kind}\n{payload}");
        self.query::<i64>(
            redis::cmd("PUBLISH")
                .arg(self.key(EVENTS))
                .arg(message)
                .clone(),
        )
        .await
        .map(|_| ())
    }

    /// Events published by any replica, from now on. A receiver that falls
    /// behind loses the oldest (they are hints to look again, not data).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Spawn a task on the Redis runtime (kept off pingora's runtimes).
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }

    /// Redis's `maxmemory-policy`, when the server lets us read it (managed
    /// services often disable `CONFIG`).
    async fn eviction_policy(&self) -> Option<String> {
        let pair: Vec<String> = self
            .query(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .clone(),
            )
            .await
            .ok()?;
        pair.get(1).cloned()
    }

    /// One heartbeat: say we are alive, forget the dead, count the live.
    async fn heartbeat(&self) -> Result<u32, StoreError> {
        let key = self.key("replicas");
        let now: (u64, u64) = self.query(redis::cmd("TIME").clone()).await?;
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let stale = now_ms.saturating_sub(REPLICA_TTL.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(now_ms)
            .arg(&self.replica)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({stale}"))
            .ignore()
            .cmd("ZCARD")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(REPLICA_TTL.as_millis() as u64 * 4)
            .ignore();
        let (live,): (u32,) = self.pipe(pipe).await?;
        Ok(live.max(1))
    }

    /// Compare our CA with the one the replicas record under
    /// `<prefix>:ca:sha256` (the first replica records its own).
    pub async fn check_ca(&self, fingerprint: &str) -> Result<CaCheck, StoreError> {
        let _ = self.ca.set(fingerprint.to_string());
        let key = self.key("ca:sha256");
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(fingerprint)
                    .arg("NX")
                    .clone(),
            )
            .await?;
        let result = if set.is_some() {
            CaCheck::Recorded
        } else {
            let theirs: Option<String> = self.query(redis::cmd("GET").arg(&key).clone()).await?;
            match theirs {
                Some(t) if t != fingerprint => CaCheck::Differs(t),
                _ => CaCheck::Same,
            }
        };
        *self.ca_mismatch.lock().unwrap_or_else(|p| p.into_inner()) = match &result {
            CaCheck::Differs(t) => Some(t.clone()),
            _ => None,
        };
        Ok(result)
    }

    /// The peers' CA fingerprint, when it is not ours.
    pub fn ca_mismatch(&self) -> Option<String> {
        self.ca_mismatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Run `fut` to completion on this client's runtime from synchronous
    /// start-up code (a thread of its own, so it works inside or outside
    /// another runtime).
    pub fn block_on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let handle = self.handle.clone();
        std::thread::spawn(move || handle.block_on(fut)).join().ok()
    }

    /// Leave the replica set at shutdown so peers re-divide at once.
    pub async fn leave(&self) {
        let _ = self
            .query::<i64>(
                redis::cmd("ZREM")
                    .arg(self.key("replicas"))
                    .arg(&self.replica)
                    .clone(),
            )
            .await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code (tests
        // drop stores there); let its thread wind down on its own.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The error without anything of the URL (passwords) in it.
fn describe(e: &redis::RedisError) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.category()),
        None => e.category().to_string(),
    }
}

/// Heartbeat every second: keeps `up` and `live_replicas` current,
/// reconnecting through the connection manager with its backoff, and logs
/// each change of state once.
async fn health_forever(redis: std::sync::Weak<Redis>) {
    let mut was_up: Option<bool> = None;
    let mut warned_policy = false;
    loop {
        let Some(r) = redis.upgrade() else { return };
        let up = match r.heartbeat().await {
            Ok(live) => {
                r.replicas.store(live, Ordering::Relaxed);
                true
            }
            Err(e) => {
                r.up.store(false, Ordering::Relaxed);
                if was_up != Some(false) {
                    tracing::warn!(url = %r.shown_url, error = %e, "redis unreachable: running degraded (each replica paces at its share; idempotency-keyed requests and job submissions answer 503)");
                }
                false
            }
        };
        if up && was_up != Some(true) {
            tracing::info!(url = %r.shown_url, replicas = r.live_replicas(), "redis connected");
            if let Some(fp) = r.ca.get().cloned() {
                if let Ok(CaCheck::Differs(theirs)) = r.check_ca(&fp).await {
                    tracing::error!(ours = %fp, theirs = %theirs, "this replica's CA differs from the one its peers mint from: clients trusting theirs reject ours; give every replica the same [tls] ca_cert and ca_key (docs/distributed.md). /readyz reports not ready");
                }
            }
            if !warned_policy {
                warned_policy = true;
                match r.eviction_policy().await.as_deref() {
                    Some("noeviction") | None => {}
                    Some(other) => tracing::warn!(
                        policy = other,
                        "redis maxmemory-policy is not noeviction: under memory pressure Redis deletes keys, and evicted keys are lost jobs, idempotency records and limits (docs/distributed.md)"
                    ),
                }
            }
        }
        was_up = Some(up);
        drop(r);
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Keep a subscription to the events channel, re-subscribing with backoff
/// after any failure, and fan messages out to local receivers.
async fn subscribe_forever(redis: std::sync::Weak<Redis>) {
    use futures::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(r) = redis.upgrade() else { return };
        let client = r.client.clone();
        let channel = r.key(EVENTS);
        let events = r.events.clone();
        let timeout = r.timeout.max(Duration::from_millis(100));
        drop(r);
        let connected = tokio::time::timeout(timeout, client.get_async_pubsub()).await;
        if let Ok(Ok(mut pubsub)) = connected {
            if pubsub.subscribe(&channel).await.is_ok() {
                backoff = Duration::from_millis(100);
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    if redis.strong_count() == 0 {
                        return;
                    }
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let (kind, payload) = text.split_once('\n').unwrap_or((&text, ""));
                    let _ = events.send(Event {
                        kind: kind.to_string(),
                        payload: payload.to_string(),
                    });
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real `redis-server` per test, on a free port with its own directory.

    use std::process::{Child, Command, Stdio};

    /// Why [`Server::start_on`] gave up.
    #[derive(Debug)]
    pub enum Lost {
        /// Another process answers on the port.
        Port,
        /// `redis-server` could not be run.
        NotInstalled,
    }

    pub struct Server {
        child: Child,
        pub port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        /// Start one; `None` when no `redis-server` is installed (the test
        /// then says so and is skipped by its caller).
        ///
        /// The port is picked free and then handed to `redis-server`, so
        /// another test's server can take it in between: ours then exits
        /// on "address in use" while the other answers on the port, and a
        /// test would run on a neighbour's keys and commands. So the server
        /// answering must be the process we started (`INFO server`'s
        /// `process_id`); if not, ours is stopped and another port tried.
        pub fn start() -> Option<Server> {
            for _ in 0..5 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .ok()?
                    .local_addr()
                    .ok()?
                    .port();
                match Server::start_on(port) {
                    Ok(server) => return Some(server),
                    Err(Lost::Port) => continue,
                    Err(Lost::NotInstalled) => return None,
                }
            }
            None
        }

        /// Start one on `port`; [`Lost::Port`] when the server answering
        /// there is not the one started.
        pub fn start_on(port: u16) -> Result<Server, Lost> {
            let dir = tempfile::tempdir().map_err(|_| Lost::NotInstalled)?;
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                ])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|_| Lost::NotInstalled)?;
            let mut server = Server {
                child,
                port,
                _dir: dir,
            };
            for _ in 0..200 {
                if let Some(pid) = process_id(port) {
                    if pid == server.child.id() {
                        return Ok(server);
                    }
                    // Someone else's server: ours lost the port (dropping
                    // it stops ours).
                    return Err(Lost::Port);
                }
                if matches!(server.child.try_wait(), Ok(Some(_))) {
                    return Err(Lost::Port);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(Lost::Port)
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        pub fn config(&self, prefix: &str) -> crate::config::RedisConfig {
            crate::config::RedisConfig {
                url: self.url(),
                url_source: "config".into(),
                // Generous: unit tests share two cores with a dozen
                // redis-servers; an answer late under that load is not what
                // they test.
                timeout: std::time::Duration::from_secs(2),
                prefix: prefix.into(),
                cluster: false,
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The `process_id` of the Redis answering on `port`, if one answers.
    fn process_id(port: u16) -> Option<u32> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // A bulk reply: read until the field is in (bounded by the timeout).
        while got.len() < 64 * 1024 {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(rest) = text.split("process_id:").nth(1) {
                if let Some((pid, _)) = rest.split_once("\r\n") {
                    return pid.trim().parse().ok();
                }
            }
        }
        None
    }

    /// A real three-node Redis Cluster (three `redis-server --cluster-enabled
    /// yes`, joined by `redis-cli --cluster create`), for checking that every
    /// script touches one slot.
    pub struct Cluster {
        nodes: Vec<Child>,
        pub ports: Vec<u16>,
        _dir: tempfile::TempDir,
    }

    /// A free port whose cluster bus port (+10000) is free too.
    fn cluster_port() -> Option<u16> {
        for _ in 0..200 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let p = l.local_addr().ok()?.port();
            if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                return Some(p);
            }
        }
        None
    }

    impl Cluster {
        pub fn start() -> Option<Cluster> {
            let dir = tempfile::tempdir().ok()?;
            let mut cluster = Cluster {
                nodes: Vec::new(),
                ports: Vec::new(),
                _dir: dir,
            };
            for i in 0..3 {
                let port = cluster_port()?;
                let node_dir = cluster._dir.path().join(format!("n{i}"));
                std::fs::create_dir_all(&node_dir).ok()?;
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .args(["--cluster-config-file", "nodes.conf", "--dir"])
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()?;
                cluster.nodes.push(child);
                cluster.ports.push(port);
            }
            for &port in &cluster.ports {
                let mut up = false;
                for _ in 0..500 {
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        up = true;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                if !up {
                    return None;
                }
            }
            let addrs: Vec<String> = cluster
                .ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            let created = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            if !created.success() {
                return None;
            }
            // Every node agrees the cluster is whole.
            for &port in &cluster.ports {
                let mut ok = false;
                for _ in 0..1000 {
                    let out = Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "cluster", "info"])
                        .output()
                        .ok()?;
                    if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                        ok = true;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                if !ok {
                    return None;
                }
            }
            Some(cluster)
        }

        pub fn config(&self, prefix: &str) -> crate::config::RedisConfig {
            crate::config::RedisConfig {
                url: format!("redis://127.0.0.1:{}", self.ports[0]),
                url_source: "config".into(),
                timeout: std::time::Duration::from_millis(1000),
                prefix: prefix.into(),
                cluster: true,
            }
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for c in &mut self.nodes {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test server started on a port another server already holds is
    /// refused, not mistaken for ours (two tests would share one Redis).
    #[test]
    fn a_test_server_on_a_taken_port_is_not_taken_for_ours() {
        let first = testing::Server::start().expect("redis-server (scripts/test installs it)");
        match testing::Server::start_on(first.port) {
            Err(testing::Lost::Port) => {}
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a second server claimed the first one's port"),
        }
        // The first still answers, and start() still finds a port.
        let second = testing::Server::start().expect("another port");
        assert_ne!(second.port, first.port);
    }

    #[tokio::test]
    async fn commands_scripts_and_events_round_trip() {
        let Some(server) = testing::Server::start() else {
            panic!("redis-server is not installed (scripts/test installs it)");
        };
        let r = Redis::open(&server.config("t")).expect("open");
        let mut events = r.events();
        // The subscription comes up in the background: publish until heard.
        let mut heard = None;
        for _ in 0..100 {
            r.publish("hello", "world").await.expect("publish");
            if let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(50), events.recv()).await
            {
                heard = Some(e);
                break;
            }
        }
        assert_eq!(
            heard,
            Some(Event {
                kind: "hello".into(),
                payload: "world".into()
            })
        );
        let _: () = r
            .query(redis::cmd("SET").arg(r.key("k")).arg("v").clone())
            .await
            .expect("set");
        let v: String = r
            .query(redis::cmd("GET").arg("t:k").clone())
            .await
            .expect("get");
        assert_eq!(v, "v");
        let script = redis::Script::new("return tonumber(ARGV[1]) + 1");
        let n: i64 = r
            .script(&script, &[] as &[&str], &[41])
            .await
            .expect("script");
        assert_eq!(n, 42);
        assert!(r.is_up());
        assert_eq!(r.domain_key("api.test", "gcra"), "t:{api.test}:gcra");
    }

    #[tokio::test]
    async fn a_server_that_is_down_gives_a_prompt_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let cfg = crate::config::RedisConfig {
            url: format!("redis://:secretpw@127.0.0.1:{port}"),
            url_source: "config".into(),
            timeout: Duration::from_millis(200),
            prefix: "t".into(),
            cluster: false,
        };
        let r = Redis::open(&cfg).expect("open without a server");
        let started = std::time::Instant::now();
        let err = r
            .query::<String>(redis::cmd("PING").clone())
            .await
            .expect_err("nothing listens");
        assert!(started.elapsed() < Duration::from_secs(5), "bounded");
        assert!(!err.to_string().contains("secretpw"), "{err}");
        assert!(!r.is_up());
    }
}
