//! Idempotency-Key (SPEC §6): a keyed request is run upstream once; a retry
//! with the same key and body gets the stored response byte-for-byte, a
//! different body gets `409`, and a duplicate of a request still in flight
//! waits for it.
//!
//! The pipeline phase that drives this is `pipeline::idempotent`; this module
//! owns the rules and talks to the [`Store`].

pub mod claim;
pub mod fingerprint;
pub mod inflight;
pub mod key;
pub mod shared;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::IdempotencyConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::store::redis::Redis;
use crate::store::{now_ms, IdempotencyRecord, Store};
pub use claim::Claim;
use claim::{Claims, Refused};
use inflight::InFlightTable;
use shared::SharedClaims;

/// How often expired records are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What a keyed request does next.
pub enum Begin {
    /// Nothing stored: run it upstream, holding the scope.
    Proceed(Claim),
    /// Answer with this stored response.
    Replay(IdempotencyRecord),
}

pub struct Idempotency {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Who runs a scope upstream right now: this replica's table, or
    /// claims in Redis shared by every replica.
    claims: Claims,
    /// Claims held by requests of this replica.
    held: Arc<AtomicUsize>,
    pub config: IdempotencyConfig,
}

/// The scope tuple (workspace, key, method, host + path), hashed so that
/// records have a fixed-size primary key. Parts are length-prefixed so no
/// two tuples collide by concatenation.
pub fn scope(workspace: &str, key: &str, method: &str, host: &str, path: &str) -> String {
    let mut h = Sha256::new();
    for part in [workspace, key, method, host, path] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    fingerprint::hex(&h.finalize())
}

impl Idempotency {
    /// One replica on its own: in-flight claims live in this process.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, config: IdempotencyConfig) -> Self {
        Self::with_redis(store, metrics, config, None)
    }

    /// With `Some(redis)` (`[storage] backend = "redis"`), in-flight claims
    /// are shared by every replica on that Redis (see [`shared`]); with
    /// `None`, as [`Idempotency::new`].
    pub fn with_redis(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: IdempotencyConfig,
        redis: Option<Arc<Redis>>,
    ) -> Self {
        let claims = match redis {
            Some(redis) => Claims::Shared(SharedClaims::new(redis, metrics.clone())),
            None => Claims::Local(Arc::new(InFlightTable::default())),
        };
        Idempotency {
            store,
            metrics,
            claims,
            held: Arc::new(AtomicUsize::new(0)),
            config,
        }
    }

    /// How long a shared claim outlives its owner's last renewal (default
    /// [`shared::LEASE`], 10 s); no effect on local claims.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        if let Claims::Shared(shared) = &mut self.claims {
            shared.set_lease(lease);
        }
        self
    }

    fn count(&self, result: &str) {
        self.metrics
            .idempotency_total
            .with_label_values(&[result])
            .inc();
    }

    /// Decide what a keyed request does: replay, conflict, wait for an
    /// identical request in flight (up to `max_wait`), or go upstream.
    pub async fn begin(
        &self,
        scope: &str,
        fingerprint: &str,
        max_wait: Duration,
    ) -> Result<Begin, ProxyError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut waited = false;
        let acquired = self
            .claims
            .acquire(scope, fingerprint, deadline, &mut waited, &self.held)
            .await;
        let claim = match acquired {
            Ok(claim) => claim,
            Err(Refused::Conflict) => {
                self.count("conflict");
                return Err(ProxyError::IdempotencyKeyReused);
            }
            Err(Refused::InFlight) => {
                self.count("in_flight");
                return Err(ProxyError::IdempotencyKeyInFlight);
            }
            Err(Refused::Unavailable(e)) => {
                // Never run a keyed request without a claim: it could run
                // twice.
                tracing::error!(error = %e, "idempotency claim failed");
                self.count("store_error");
                return Err(ProxyError::StoreUnavailable);
            }
        };
        // Claim first, then look: a request finishing in between has
        // already stored its record, so we replay it.
        let stored = self.store.idempotency_get(scope, now_ms()).await;
        match stored {
            Ok(Some(rec)) if rec.fingerprint == fingerprint => {
                self.count(if waited {
                    "replayed_after_wait"
                } else {
                    "replayed"
                });
                Ok(Begin::Replay(rec))
            }
            Ok(Some(_)) => {
                self.count("conflict");
                Err(ProxyError::IdempotencyKeyReused)
            }
            Ok(None) => {
                self.count("miss");
                Ok(Begin::Proceed(claim))
            }
            Err(e) => {
                tracing::error!(error = %e, "idempotency store lookup failed");
                self.count("store_error");
                Err(ProxyError::StoreUnavailable)
            }
        }
    }

    /// Store the response of a claimed request, then free the scope (waking
    /// duplicates, which will replay it). Returns once the record is durable.
    pub async fn complete(&self, claim: Claim, response: StoredResponse) {
        let now = now_ms();
        let record = IdempotencyRecord {
            scope: claim.scope.clone(),
            fingerprint: claim.fingerprint().to_string(),
            status: response.status,
            reason: response.reason,
            headers: response.headers,
            body: response.body,
            created_at: now,
            expires_at: now.saturating_add(self.config.ttl.as_millis() as u64),
        };
        match self.store.idempotency_put(record).await {
            Ok(()) => self.count("stored"),
            Err(e) => {
                tracing::error!(error = %e, "could not store idempotency record; key freed");
                self.count("store_error");
            }
        }
        drop(claim);
    }

    /// Free the scope without storing (5xx, 429, no response, too large).
    pub fn release(&self, claim: Claim, why: &'static str) {
        self.count(why);
        drop(claim);
    }

    /// Claims held by requests of this replica (waiting duplicates hold
    /// none).
    pub fn in_flight(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Delete expired records every minute until the process ends.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            match self.store.idempotency_sweep(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "swept expired idempotency records"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
    }
}

/// A response being captured for storage.
#[derive(Debug, Clone, Default)]
pub struct StoredResponse {
    pub status: u16,
    pub reason: Option<String>,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
}

/// Whether a response with this status may be stored for replay. 5xx are
/// never stored (SPEC §6). 429 is not stored either: the API did not perform
/// the operation, and pinning "slow down" to the key for 24 h would stop the
/// client's retry with the same key from ever succeeding.
pub fn storable(status: u16) -> bool {
    (200..500).contains(&status) && status != 429
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn service(dir: &std::path::Path) -> Arc<Idempotency> {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
        Arc::new(Idempotency::new(
            store,
            Arc::new(Metrics::new(10)),
            IdempotencyConfig {
                ttl: Duration::from_secs(3600),
                max_stored_body: 1024,
                max_request_body: 1024,
            },
        ))
    }

    /// A small stored response (also used by `shared`'s tests).
    pub(in crate::idempotency) fn response() -> StoredResponse {
        StoredResponse {
            status: 201,
            reason: None,
            headers: b"X-Id: 1\r\n".to_vec(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn scope_parts_do_not_run_together() {
        assert_ne!(
            scope("ab", "c", "POST", "h", "/p"),
            scope("a", "bc", "POST", "h", "/p")
        );
        assert_ne!(
            scope("w", "k", "POST", "h", "/p"),
            scope("w", "k", "PUT", "h", "/p")
        );
        assert_eq!(scope("w", "k", "POST", "h", "/p").len(), 64);
    }

    /// The store is gone: a keyed request is refused `503 store_unavailable`
    /// (never run without knowing whether it ran before), the key is not
    /// left claimed, and once the store is back the same key proceeds.
    #[tokio::test]
    async fn a_store_that_cannot_be_read_refuses_the_key_and_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let faulty =
            crate::store::faulty::Faulty::new(Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
        let idem = Idempotency::new(
            faulty.clone(),
            Arc::new(Metrics::new(10)),
            IdempotencyConfig {
                ttl: Duration::from_secs(3600),
                max_stored_body: 1024,
                max_request_body: 1024,
            },
        );
        faulty.fail_always("idempotency_get");
        let refused = idem.begin("s", "fp", Duration::from_secs(5)).await;
        let Err(err) = refused else {
            panic!("a keyed request ran without its store")
        };
        assert!(matches!(err, ProxyError::StoreUnavailable), "{err:?}");
        assert_eq!((err.status(), err.code()), (503, "store_unavailable"));
        assert_eq!(idem.in_flight(), 0, "no claim left behind");
        faulty.heal("idempotency_get");
        let Begin::Proceed(claim) = idem.begin("s", "fp", Duration::ZERO).await.unwrap() else {
            panic!("nothing stored: the request may go")
        };
        // The record cannot be written: the key is freed (a retry runs
        // again rather than waiting forever), and nothing is replayed.
        faulty.fail("idempotency_put", 1);
        idem.complete(claim, response()).await;
        assert_eq!(idem.in_flight(), 0);
        assert!(matches!(
            idem.begin("s", "fp", Duration::ZERO).await,
            Ok(Begin::Proceed(_))
        ));
        assert_eq!(faulty.calls("idempotency_put"), 1);
    }

    #[test]
    fn what_is_stored() {
        assert!(storable(200) && storable(201) && storable(404) && storable(409));
        assert!(!storable(429) && !storable(500) && !storable(503) && !storable(101));
    }

    #[tokio::test]
    async fn miss_then_store_then_replay_or_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let idem = service(dir.path());
        let Begin::Proceed(claim) = idem.begin("s", "fp", Duration::ZERO).await.unwrap() else {
            panic!("nothing stored yet")
        };
        idem.complete(claim, response()).await;
        let Begin::Replay(rec) = idem.begin("s", "fp", Duration::ZERO).await.unwrap() else {
            panic!("stored")
        };
        assert_eq!((rec.status, rec.body.as_slice()), (201, b"{}".as_slice()));
        assert!(matches!(
            idem.begin("s", "other", Duration::ZERO).await,
            Err(ProxyError::IdempotencyKeyReused)
        ));
    }

    #[tokio::test]
    async fn duplicate_waits_then_replays_or_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let idem = service(dir.path());
        let Begin::Proceed(claim) = idem.begin("s", "fp", Duration::ZERO).await.unwrap() else {
            panic!()
        };
        // Past its max wait: in flight.
        assert!(matches!(
            idem.begin("s", "fp", Duration::from_millis(20)).await,
            Err(ProxyError::IdempotencyKeyInFlight)
        ));
        // A different body is a conflict even while in flight.
        assert!(matches!(
            idem.begin("s", "fp2", Duration::from_secs(5)).await,
            Err(ProxyError::IdempotencyKeyReused)
        ));
        let idem2 = idem.clone();
        let dup =
            tokio::spawn(async move { idem2.begin("s", "fp", Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        idem.complete(claim, response()).await;
        assert!(matches!(dup.await.unwrap(), Ok(Begin::Replay(_))));
    }

    #[tokio::test]
    async fn released_key_is_free_for_the_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let idem = service(dir.path());
        let Begin::Proceed(claim) = idem.begin("s", "fp", Duration::ZERO).await.unwrap() else {
            panic!()
        };
        let idem2 = idem.clone();
        let dup =
            tokio::spawn(async move { idem2.begin("s", "fp", Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        idem.release(claim, "not_stored_status");
        // The waiter now owns the key and goes upstream itself.
        assert!(matches!(dup.await.unwrap(), Ok(Begin::Proceed(_))));
    }
}
