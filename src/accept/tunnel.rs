//! Tunnel mode (`tls = "tunnel"`): a blind byte tunnel for clients that pin
//! the origin's certificate. Opening the tunnel is one request: it waits for
//! the domain's pace and a concurrency slot, and gives the slot back once
//! the tunnel is established (unless `hold_slot_while_open`), so open
//! tunnels cannot starve the domain's other requests. A tunnel that carries
//! nothing for `[proxy] idle_timeout` is closed (`idle.rs`).

use std::time::Duration;

use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;

use super::connect;
use crate::admission::Denied;
use crate::error::ProxyError;
use crate::pipeline::ctx::ConnectTarget;
use crate::pipeline::upstream;
use crate::state::Shared;

pub async fn run(
    shared: &Shared,
    mut client: Stream,
    target: &ConnectTarget,
    shutdown: &ShutdownWatch,
) {
    let _inflight = shared.inflight.enter();
    let metrics = &shared.metrics;
    let domain = metrics.domain_label(&target.host);
    let max_wait = shared.config.load().limits_for(&target.host).max_wait;
    let permit = match shared.admission.admit(&target.host, max_wait).await {
        Ok((permit, _)) => permit,
        Err(denied) => {
            let err = match denied {
                Denied::QueueFull { retry_after } => ProxyError::ThrottleQueueFull {
                    domain: target.host.clone(),
                    retry_after,
                },
                Denied::WaitTimeout { retry_after } => ProxyError::ThrottleWaitTimeout {
                    domain: target.host.clone(),
                    retry_after,
                },
            };
            metrics
                .requests_total
                .with_label_values(&[domain.as_str(), "rejected"])
                .inc();
            connect::refuse(&mut client, &err).await;
            return;
        }
    };
    let mut upstream = match open(shared, target).await {
        Ok(s) => s,
        Err(err) => {
            metrics
                .proxy_errors_total
                .with_label_values(&[err.code()])
                .inc();
            metrics
                .requests_total
                .with_label_values(&[domain.as_str(), "error"])
                .inc();
            tracing::info!(domain = %target.host, error = err.code(), "tunnel refused");
            connect::refuse(&mut client, &err).await;
            return;
        }
    };
    if connect::established(&mut client).await.is_err() {
        return;
    }
    let hold = shared
        .config
        .load()
        .domain(&target.host)
        .is_some_and(|d| d.hold_slot_while_open);
    let _permit = if hold {
        Some(permit)
    } else {
        drop(permit);
        None
    };
    let mut client = super::idle::Idle::new(client, shared.config.load().proxy.idle_timeout);
    metrics
        .requests_total
        .with_label_values(&[domain.as_str(), "forwarded"])
        .inc();
    let mut shutdown = shutdown.clone();
    let started = std::time::Instant::now();
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => r.ok(),
        // A tunnel has no request boundary to finish at: close it on shutdown.
        _ = shutdown.changed() => None,
    };
    let (up, down) = result.unwrap_or_default();
    tracing::info!(
        target: "ezthrottle::access",
        domain = %target.host,
        bytes_up = up,
        bytes_down = down,
        duration_ms = started.elapsed().as_millis() as u64,
        "tunnel closed"
    );
}

async fn open(shared: &Shared, target: &ConnectTarget) -> Result<TcpStream, ProxyError> {
    let addr = upstream::resolve_one(
        shared,
        crate::egress::Purpose::Proxy,
        &target.host,
        target.port,
    )
    .await?;
    let timeout: Duration = shared.config.load().proxy.connect_timeout;
    let failed = || ProxyError::UpstreamConnectFailed {
        host: target.host.clone(),
        port: target.port,
    };
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(_)) | Err(_) => Err(failed()),
    }
}
