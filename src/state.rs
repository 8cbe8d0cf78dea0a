//! `Shared`: the long-lived parts that every phase of a request uses. Built
//! once at start-up by `server.rs` and handed out as `Arc<Shared>`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::admission::Admission;
use crate::config::Config;
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::resolve::Resolver;
use crate::store::Store;
use crate::tls::{LeafCache, LocalCa};
use crate::webhooks::Webhooks;

pub struct Shared {
    /// The config in force: swapped whole on a reload (`config::reload`),
    /// so a request sees one consistent config from start to end of a read.
    pub config: Arc<arc_swap::ArcSwap<Config>>,
    /// Short SHA-256 of the config file in force (`defaults` without one),
    /// shown by `/readyz`.
    pub config_hash: arc_swap::ArcSwap<String>,
    pub metrics: Arc<Metrics>,
    pub ca: Arc<LocalCa>,
    pub leaves: Arc<LeafCache>,
    pub resolver: Arc<Resolver>,
    pub store: Arc<dyn Store>,
    /// The Redis client when state is shared with other replicas.
    pub redis: Option<Arc<crate::store::redis::Redis>>,
    pub admission: Arc<Admission>,
    pub idempotency: Arc<Idempotency>,
    /// Webhook secrets and the delivery worker (SPEC §8).
    pub webhooks: Arc<Webhooks>,
    /// The durable job queue and its runner (SPEC §7 parking, §8 jobs).
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Token in our `Via` header; a request that already carries it looped back to us.
    pub instance_id: String,
    /// Where this process may connect (SPEC §13).
    pub egress: arc_swap::ArcSwap<crate::egress::Egress>,
    /// Per-process secret the job runner proves itself with on the loopback
    /// hop through our own proxy listener (`pipeline::identify::caller`).
    pub internal_token: Arc<str>,
    pub inflight: Arc<InFlight>,
    /// Set once the proxy listener accepts connections (checked by `/readyz`).
    pub proxy_ready: AtomicBool,
}

/// Requests (and tunnels) currently being served; shutdown waits for zero.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves when nothing is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking so a drop to zero in between is not missed.
            notified.as_mut().enable();
            if self.current() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held for as long as one request or tunnel is being served.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
