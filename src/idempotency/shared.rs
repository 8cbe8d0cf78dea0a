//! In-flight claims shared by every replica (`[storage] backend = "redis"`).
//!
//! A claim is one key, `<prefix>:idem:{<scope>}:claim`, set with `NX` to
//! `<owner-token>|<fingerprint>` for a lease ([`LEASE`]). The token is new
//! for every claim, so an owner only ever renews or deletes its own claim:
//! a task renews it every lease/3 while the request runs (compare and
//! `PEXPIRE`), and at the end deletes it (compare and `DEL`) and publishes
//! [`DONE`] with the scope, which wakes the waiters of every replica at once.
//! An owner that dies stops renewing, so its claim expires after the lease.
//!
//! A duplicate that finds the claim held for the same body waits for that
//! event or a bounded backoff re-check (a lost message or an expired lease
//! is still noticed), then tries again. Any Redis error is
//! [`Refused::Unavailable`]: a keyed request never runs without a claim.

use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use super::claim::Refused;
use super::inflight::{self, InFlightTable};
use crate::metrics::Metrics;
use crate::store::redis::conn::Event;
use crate::store::redis::Redis;
use crate::store::StoreError;

/// How long a claim outlives its owner's last renewal.
pub const LEASE: Duration = Duration::from_secs(10);
/// Event kind published when a claim is released; the payload is the scope.
pub const DONE: &str = "idem-done";
/// A waiter looks again after this long without an event, doubling…
const FIRST_RECHECK: Duration = Duration::from_millis(50);
/// … up to this.
const MAX_RECHECK: Duration = Duration::from_millis(500);

/// `SET NX PX`; when the key is taken, its value.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
            return {1, ''}
        end
        return {0, redis.call('GET', KEYS[1])}",
    )
});

/// `PEXPIRE` only while the value is still ours.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
        end
        return 0",
    )
});

/// `DEL` only while the value is still ours.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        return 0",
    )
});

pub struct SharedClaims {
    redis: Arc<Redis>,
    /// This replica's claims and the waits of its local duplicates.
    table: Arc<InFlightTable>,
    lease: Duration,
    metrics: Arc<Metrics>,
}

/// One `SET NX` attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Won,
    /// Held by someone else for a body with this fingerprint.
    Held(String),
}

impl SharedClaims {
    pub fn new(redis: Arc<Redis>, metrics: Arc<Metrics>) -> Self {
        SharedClaims {
            redis,
            table: Arc::new(InFlightTable::default()),
            lease: LEASE,
            metrics,
        }
    }

    pub fn set_lease(&mut self, lease: Duration) {
        self.lease = lease.max(Duration::from_millis(30));
    }

    pub fn table(&self) -> &Arc<InFlightTable> {
        &self.table
    }

    fn key(&self, scope: &str) -> String {
        self.redis.key(&format!("idem:{{{scope}}}:claim"))
    }

    fn lease_ms(&self) -> String {
        self.lease.as_millis().to_string()
    }

    async fn try_claim(&self, key: &str, value: &str) -> Result<Attempt, StoreError> {
        let (won, theirs): (i64, String) = self
            .redis
            .script(&CLAIM, &[key], &[value, &self.lease_ms()])
            .await?;
        if won == 1 {
            return Ok(Attempt::Won);
        }
        let fingerprint = theirs.rsplit_once('|').map_or("", |(_, fp)| fp);
        Ok(Attempt::Held(fingerprint.to_string()))
    }

    /// Claim `scope` in Redis for the holder of its local slot, waiting for
    /// an identical request on another replica until `deadline`. Returns
    /// what keeps the claim: dropping it releases the claim (and then the
    /// local slot).
    pub async fn acquire(
        &self,
        local: inflight::Claim,
        scope: &str,
        fingerprint: &str,
        deadline: Instant,
        waited: &mut bool,
    ) -> Result<oneshot::Sender<()>, Refused> {
        let key = self.key(scope);
        let value = format!(
            "{}.{}|{fingerprint}",
            self.redis.replica(),
            uuid::Uuid::new_v4().simple()
        );
        // Subscribed before the first look, so a release between the look
        // and the wait is not missed.
        let mut events = self.redis.events();
        let mut recheck = FIRST_RECHECK;
        loop {
            // Should this future be dropped (the client went away) while
            // the `SET` is on its way, a claim nobody holds would block the
            // scope for a whole lease: the guard then releases it.
            let mut pending = Pending {
                redis: &self.redis,
                key: &key,
                value: &value,
                scope,
                armed: true,
            };
            let attempt = self.try_claim(&key, &value).await;
            pending.armed = false;
            drop(pending);
            match attempt.map_err(Refused::Unavailable)? {
                Attempt::Won => return Ok(self.hold(local, key, value, scope)),
                Attempt::Held(theirs) if theirs != fingerprint => return Err(Refused::Conflict),
                Attempt::Held(_) => {
                    *waited = true;
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep_until(deadline) => return Err(Refused::InFlight),
                        _ = done(&mut events, scope) => {}
                        _ = tokio::time::sleep(recheck) => {}
                    }
                    recheck = (recheck * 2).min(MAX_RECHECK);
                }
            }
        }
    }

    /// Start the task that renews the claim while its sender lives and
    /// releases it after.
    fn hold(
        &self,
        local: inflight::Claim,
        key: String,
        value: String,
        scope: &str,
    ) -> oneshot::Sender<()> {
        let (stop, stopped) = oneshot::channel();
        self.redis.spawn(keep(
            Arc::downgrade(&self.redis),
            self.metrics.clone(),
            Lease {
                key,
                value,
                scope: scope.to_string(),
                lease_ms: self.lease_ms(),
                every: self.lease / 3,
            },
            stopped,
            local,
        ));
        stop
    }
}

/// A claim attempt in progress; see [`SharedClaims::acquire`].
struct Pending<'a> {
    redis: &'a Arc<Redis>,
    key: &'a str,
    value: &'a str,
    scope: &'a str,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let redis = Arc::downgrade(self.redis);
        let (key, value) = (self.key.to_string(), self.value.to_string());
        let scope = self.scope.to_string();
        self.redis.spawn(async move {
            let Some(r) = redis.upgrade() else { return };
            if let Ok(1) = r.script::<i64, _, _>(&RELEASE, &[&key], &[&value]).await {
                let _ = r.publish(DONE, &scope).await;
            }
        });
    }
}

/// Resolves on a [`DONE`] event for `scope` (or when events were lost).
async fn done(events: &mut broadcast::Receiver<Event>, scope: &str) {
    loop {
        match events.recv().await {
            Ok(e) if e.kind == DONE && e.payload == scope => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            // No more events: the backoff re-check is all there is.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

struct Lease {
    key: String,
    value: String,
    scope: String,
    lease_ms: String,
    every: Duration,
}

/// Renew the claim every lease/3 until `stopped` fires (the claim was
/// dropped), then release it, tell every replica, and free the local slot
/// last, so local duplicates find the shared claim gone.
async fn keep(
    redis: Weak<Redis>,
    metrics: Arc<Metrics>,
    lease: Lease,
    mut stopped: oneshot::Receiver<()>,
    local: inflight::Claim,
) {
    let mut ours = true;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tokio::time::sleep(lease.every), if ours => {
                let Some(r) = redis.upgrade() else { return };
                match r
                    .script::<i64, _, _>(&RENEW, &[&lease.key], &[&lease.value, &lease.lease_ms])
                    .await
                {
                    Ok(1) => {}
                    Ok(_) => {
                        // Expired (Redis unreachable for a whole lease) and
                        // perhaps claimed by another replica: the request
                        // may now run twice; nothing to do but say so.
                        ours = false;
                        tracing::warn!(
                            "idempotency claim lost (its lease expired while the request ran)"
                        );
                        metrics
                            .idempotency_total
                            .with_label_values(&["claim_lost"])
                            .inc();
                    }
                    Err(e) => tracing::debug!(error = %e, "idempotency claim renewal failed"),
                }
            }
        }
    }
    if let Some(r) = redis.upgrade() {
        match r
            .script::<i64, _, _>(&RELEASE, &[&lease.key], &[&lease.value])
            .await
        {
            Ok(1) => {
                if let Err(e) = r.publish(DONE, &lease.scope).await {
                    tracing::debug!(error = %e, "idempotency release not published");
                }
            }
            // Expired, perhaps claimed by another: not ours to delete.
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "idempotency claim not released; it expires after its lease"
            ),
        }
    }
    drop(local);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdempotencyConfig;
    use crate::error::ProxyError;
    use crate::idempotency::{Begin, Idempotency};
    use crate::store::redis::conn::testing::Server;
    use crate::store::{EmbeddedStore, Store};

    fn config() -> IdempotencyConfig {
        IdempotencyConfig {
            ttl: Duration::from_secs(3600),
            max_stored_body: 1024,
            max_request_body: 1024,
        }
    }

    /// A replica: its own Redis client and service, on the shared store.
    fn replica(
        server: &Server,
        store: &Arc<dyn Store>,
        lease: Duration,
    ) -> (Arc<Redis>, Arc<Idempotency>) {
        let redis = Redis::open(&server.config("t")).expect("open");
        let idem = Idempotency::with_redis(
            store.clone(),
            Arc::new(Metrics::new(10)),
            config(),
            Some(redis.clone()),
        )
        .with_lease(lease);
        (redis, Arc::new(idem))
    }

    struct Cluster {
        server: Server,
        _dir: tempfile::TempDir,
        a: (Arc<Redis>, Arc<Idempotency>),
        b: (Arc<Redis>, Arc<Idempotency>),
    }

    fn cluster(lease: Duration) -> Cluster {
        let server = Server::start().expect("redis-server is not installed");
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let a = replica(&server, &store, lease);
        let b = replica(&server, &store, lease);
        Cluster {
            server,
            _dir: dir,
            a,
            b,
        }
    }

    use crate::idempotency::tests::response;

    async fn proceed(idem: &Idempotency, scope: &str, fp: &str) -> crate::idempotency::Claim {
        match idem.begin(scope, fp, Duration::ZERO).await {
            Ok(Begin::Proceed(claim)) => claim,
            Ok(Begin::Replay(_)) => panic!("replayed"),
            Err(e) => panic!("{e:?}"),
        }
    }

    async fn claim_value(r: &Redis, scope: &str) -> Option<String> {
        r.query(
            redis::cmd("GET")
                .arg(r.key(&format!("idem:{{{scope}}}:claim")))
                .clone(),
        )
        .await
        .unwrap()
    }

    /// Both replicas hear events (the subscription comes up in the
    /// background), so a test's timing is about the claim, not start-up.
    async fn subscribed(c: &Cluster) {
        for r in [&c.a.0, &c.b.0] {
            let mut events = r.events();
            for _ in 0..100 {
                r.publish("ping", "").await.unwrap();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(50), events.recv()).await
                {
                    break;
                }
            }
        }
    }

    #[tokio::test]
    async fn duplicate_on_another_replica_waits_then_replays() {
        let c = cluster(LEASE);
        subscribed(&c).await;
        let claim = proceed(&c.a.1, "s", "fp").await;
        let value = claim_value(&c.a.0, "s").await.expect("claimed in redis");
        assert!(value.ends_with("|fp") && value.starts_with(c.a.0.replica()));
        assert_eq!(c.a.1.in_flight(), 1);
        let b = c.b.1.clone();
        let dup = tokio::spawn(async move { b.begin("s", "fp", Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!dup.is_finished(), "waits while A holds the claim");
        let started = std::time::Instant::now();
        c.a.1.complete(claim, response()).await;
        let Ok(Begin::Replay(rec)) = dup.await.unwrap() else {
            panic!("B replays A's response")
        };
        assert_eq!((rec.status, rec.body.as_slice()), (201, b"{}".as_slice()));
        // Woken by the event, not by the 500 ms re-check it has reached.
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(c.a.1.in_flight(), 0);
        assert_eq!(c.b.1.in_flight(), 0);
    }

    #[tokio::test]
    async fn duplicate_on_another_replica_proceeds_after_a_release_without_record() {
        let c = cluster(LEASE);
        let claim = proceed(&c.a.1, "s", "fp").await;
        let b = c.b.1.clone();
        let dup = tokio::spawn(async move { b.begin("s", "fp", Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!dup.is_finished());
        c.a.1.release(claim, "not_stored_status");
        let Ok(Begin::Proceed(claim_b)) = dup.await.unwrap() else {
            panic!("B now owns the key and goes upstream itself")
        };
        assert_eq!(c.b.1.in_flight(), 1);
        let value = claim_value(&c.b.0, "s").await.expect("B's claim");
        assert!(value.starts_with(c.b.0.replica()), "{value}");
        // A, in turn, waits for B.
        assert!(matches!(
            c.a.1.begin("s", "fp", Duration::from_millis(50)).await,
            Err(ProxyError::IdempotencyKeyInFlight)
        ));
        drop(claim_b);
    }

    #[tokio::test]
    async fn different_body_on_another_replica_is_a_conflict_at_once() {
        let c = cluster(LEASE);
        let _claim = proceed(&c.a.1, "s", "fp").await;
        let started = std::time::Instant::now();
        assert!(matches!(
            c.b.1.begin("s", "other", Duration::from_secs(30)).await,
            Err(ProxyError::IdempotencyKeyReused)
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        // The refused request leaves A's claim alone.
        assert!(claim_value(&c.a.0, "s").await.unwrap().ends_with("|fp"));
    }

    #[tokio::test]
    async fn waiter_on_another_replica_times_out_in_flight() {
        let c = cluster(LEASE);
        let _claim = proceed(&c.a.1, "s", "fp").await;
        let started = std::time::Instant::now();
        assert!(matches!(
            c.b.1.begin("s", "fp", Duration::from_millis(300)).await,
            Err(ProxyError::IdempotencyKeyInFlight)
        ));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(c.b.1.in_flight(), 0);
        assert!(matches!(
            c.b.1.begin("s", "fp", Duration::ZERO).await,
            Err(ProxyError::IdempotencyKeyInFlight)
        ));
    }

    #[tokio::test]
    async fn a_running_claim_is_renewed_past_its_lease() {
        let c = cluster(Duration::from_millis(300));
        let claim = proceed(&c.a.1, "s", "fp").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(matches!(
            c.b.1.begin("s", "fp", Duration::ZERO).await,
            Err(ProxyError::IdempotencyKeyInFlight)
        ));
        drop(claim);
        let Ok(Begin::Proceed(_)) = c.b.1.begin("s", "fp", Duration::from_secs(5)).await else {
            panic!("free after the release")
        };
    }

    #[tokio::test]
    async fn claim_of_a_dead_replica_is_taken_after_its_lease() {
        let c = cluster(Duration::from_millis(600));
        let claim = proceed(&c.a.1, "s", "fp").await;
        // Replica A dies: its client and service go, renewals stop, nothing
        // is released.
        let (redis_a, idem_a) = c.a;
        drop(idem_a);
        drop(redis_a);
        let died = std::time::Instant::now();
        let Ok(Begin::Proceed(_claim_b)) = c.b.1.begin("s", "fp", Duration::from_secs(10)).await
        else {
            panic!("B takes the expired claim")
        };
        let took = died.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
        drop(claim);
    }

    #[tokio::test]
    async fn release_of_a_claim_no_longer_ours_keeps_the_new_owners() {
        let c = cluster(Duration::from_millis(200));
        let shared = SharedClaims {
            redis: c.a.0.clone(),
            table: Arc::new(InFlightTable::default()),
            lease: Duration::from_millis(200),
            metrics: Arc::new(Metrics::new(10)),
        };
        let key = shared.key("s");
        // A claims and then stops renewing (a pause longer than the lease).
        assert_eq!(
            shared.try_claim(&key, "tokA|fp").await.unwrap(),
            Attempt::Won
        );
        assert_eq!(
            shared.try_claim(&key, "tokX|fp").await.unwrap(),
            Attempt::Held("fp".into())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _claim_b = proceed(&c.b.1, "s", "fp").await;
        let b_value = claim_value(&c.b.0, "s").await.expect("B's claim");
        // A's late renewal and release leave B's claim alone.
        let renewed: i64 =
            c.a.0
                .script(&RENEW, &[&key], &["tokA|fp", "10000"])
                .await
                .unwrap();
        let released: i64 = c.a.0.script(&RELEASE, &[&key], &["tokA|fp"]).await.unwrap();
        assert_eq!((renewed, released), (0, 0));
        assert_eq!(claim_value(&c.b.0, "s").await, Some(b_value));

        // The same through a whole claim: A's claim is deleted under it and
        // taken by B; A's release (and renewal) then leave B's alone.
        let claim_a = proceed(&c.a.1, "t", "fp").await;
        let _: i64 =
            c.a.0
                .query(redis::cmd("DEL").arg(shared.key("t")).clone())
                .await
                .unwrap();
        let _claim_b = proceed(&c.b.1, "t", "fp").await;
        let b_value = claim_value(&c.b.0, "t").await.expect("B's claim");
        drop(claim_a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(claim_value(&c.b.0, "t").await, Some(b_value));
    }

    #[tokio::test]
    async fn local_duplicates_wait_on_the_local_slot() {
        let c = cluster(LEASE);
        subscribed(&c).await;
        let claim = proceed(&c.a.1, "s", "fp").await;
        let a = c.a.1.clone();
        let dups: Vec<_> = (0..5)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.begin("s", "fp", Duration::from_secs(30)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.a.1.in_flight(), 1, "waiters hold no claim");
        c.a.1.complete(claim, response()).await;
        for d in dups {
            assert!(matches!(d.await.unwrap(), Ok(Begin::Replay(_))));
        }
        // The last replayer's release runs in the background.
        let mut left = claim_value(&c.a.0, "s").await;
        for _ in 0..100 {
            if left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = claim_value(&c.a.0, "s").await;
        }
        assert_eq!(left, None, "all released");
        // A conflict on the same replica is found locally too.
        let claim = proceed(&c.a.1, "u", "fp").await;
        assert!(matches!(
            c.a.1.begin("u", "fp2", Duration::from_secs(5)).await,
            Err(ProxyError::IdempotencyKeyReused)
        ));
        drop(claim);
        drop(c.server);
    }

    /// However a claiming request is cut short (before, during or after
    /// its `SET`), the scope is free again at once, not after the lease.
    #[tokio::test]
    async fn a_cancelled_claim_attempt_frees_the_scope() {
        let c = cluster(LEASE);
        for i in 0..20u64 {
            let a = c.a.1.clone();
            let attempt =
                tokio::spawn(async move { a.begin("s", "fp", Duration::from_secs(5)).await });
            tokio::time::sleep(Duration::from_micros(i * 150)).await;
            attempt.abort();
            let _ = attempt.await;
            let started = std::time::Instant::now();
            let Ok(Begin::Proceed(claim)) = c.b.1.begin("s", "fp", Duration::from_secs(5)).await
            else {
                panic!("free")
            };
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "attempt {i}: {:?}",
                started.elapsed()
            );
            drop(claim);
            let a = c.a.1.clone();
            let Ok(Begin::Proceed(claim)) = a.begin("s", "fp", Duration::from_secs(5)).await else {
                panic!("free again")
            };
            drop(claim);
        }
    }

    #[tokio::test]
    async fn redis_down_is_store_unavailable() {
        let c = cluster(LEASE);
        let claim = proceed(&c.a.1, "s", "fp").await;
        let Cluster { server, a, b, .. } = c;
        drop(server);
        for idem in [&a.1, &b.1] {
            assert!(matches!(
                idem.begin("t", "fp", Duration::from_secs(5)).await,
                Err(ProxyError::StoreUnavailable)
            ));
        }
        assert_eq!(b.1.in_flight(), 0);
        // Releasing while Redis is down does not hang the caller.
        let started = std::time::Instant::now();
        a.1.release(claim, "not_stored_status");
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(a.1.in_flight(), 0);
    }
}
