//! The delivery worker: POSTs stored webhook deliveries (SPEC §8) until a
//! 2xx or `max_attempts`, persisting every attempt's outcome.
//!
//! Event-driven: [`Webhooks::run`] sleeps until the earliest due delivery,
//! a [`Webhooks::notify`] (the job engine calls it after `job_finish`), or
//! the end of an attempt; it never polls. Each pass reads the pending
//! deliveries in due order, starts the due ones that are not already being
//! attempted (at most [`CONCURRENCY`] at a time) and sleeps until the next
//! one is due.
//!
//! No double delivery within the process: only the run loop starts attempts
//! and marks ids in progress, and an id leaves that set only when the loop
//! reads the attempt's completion, which is sent after the outcome was
//! written. So a row the loop reads as "not in progress" carries its latest
//! state. Across a crash delivery is at-least-once: an attempt whose outcome
//! was not yet written is sent again after restart (receivers dedupe on
//! `job_id`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::backoff::RetryPolicy;
use super::client::{self, REQUEST_TIMEOUT};
use super::secrets::Secrets;
use super::sign::{self, SIGNATURE_HEADER};
use super::WebhooksError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{now_ms, Delivery, DeliveryState, Store};

/// Attempts in flight at once.
pub const CONCURRENCY: usize = 16;
/// Deliveries read per pass (beyond those in progress).
const BATCH: usize = 64;
/// Wait before reading the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How long one attempt holds a delivery in a shared store before another
/// replica may try it (its sender died): longer than the request may take.
const ATTEMPT_LEASE_MS: u64 = (super::client::REQUEST_TIMEOUT.as_millis() as u64) * 2;
/// Tries to persist an attempt's outcome before giving up on it (the
/// delivery is then attempted again: at-least-once).
const UPDATE_TRIES: u32 = 3;

/// What happened to one delivery attempt, for subscribers of
/// [`Webhooks::events`] (e.g. the job engine checking its quorum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    pub delivery_id: i64,
    pub job_id: String,
    /// `Pending` means "will be retried".
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_status: Option<u16>,
}

/// The webhook service: signing secrets, the HTTP client and the worker.
pub struct Webhooks {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    secrets: Secrets,
    client: client::WebhookClient,
    policy: RetryPolicy,
    wake: Notify,
    limit: Arc<Semaphore>,
    running: AtomicBool,
    /// Deliveries with an attempt in flight (touched by the run loop only).
    in_progress: Mutex<HashSet<i64>>,
    events: broadcast::Sender<DeliveryEvent>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("policy", &self.policy)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

enum Outcome {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer (connect, timeout, ...), or we could not even try: retry.
    Transient(String),
    /// It can never work (bad URL): fail now.
    Permanent(String),
}

impl Webhooks {
    /// Build from the config; reads `EZTHROTTLE_WEBHOOK_SECRET`.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Webhooks, WebhooksError> {
        let secrets = Secrets::from_env(store.clone(), &config.webhooks)?;
        Self::with_secrets(config, store, metrics, secrets)
    }

    /// Build with an explicit [`Secrets`] (tests, embedding).
    pub fn with_secrets(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        secrets: Secrets,
    ) -> Result<Webhooks, WebhooksError> {
        Ok(Webhooks {
            client: client::build(config)?,
            policy: RetryPolicy::from_config(&config.webhooks),
            store,
            metrics,
            secrets,
            wake: Notify::new(),
            limit: Arc::new(Semaphore::new(CONCURRENCY)),
            running: AtomicBool::new(false),
            in_progress: Mutex::new(HashSet::new()),
            events: broadcast::channel(1024).0,
        })
    }

    /// Wake the worker: new deliveries may be due (call after `job_finish`).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Every attempt's outcome, after it was persisted.
    pub fn events(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.events.subscribe()
    }

    /// The worker loop; runs until its task is dropped. A second concurrent
    /// call returns at once (one loop per service).
    pub async fn run(self: Arc<Self>) {
        if self.running.swap(true, Ordering::SeqCst) {
            tracing::warn!("webhooks: the delivery worker is already running");
            return;
        }
        let _running = RunningGuard(self.clone());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
        loop {
            // Ids whose outcome is written: they may be read again.
            while let Ok(id) = done_rx.try_recv() {
                self.in_progress_remove(id);
            }
            let wake_at = match self.pass(&done_tx).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read pending deliveries");
                    Wake::At(now_ms() + STORE_RETRY.as_millis() as u64)
                }
            };
            // Other replicas' deliveries (or theirs left behind by a crash)
            // appear without anyone telling us: look again regularly.
            let cap = self.store.shared().then_some(crate::store::SHARED_POLL);
            let sleep = async {
                match (wake_at, cap) {
                    (Wake::Now, _) => {}
                    (Wake::At(at), cap) => {
                        let d = Duration::from_millis(at.saturating_sub(now_ms()));
                        tokio::time::sleep(cap.map_or(d, |c| d.min(c))).await
                    }
                    (Wake::Idle, Some(c)) => tokio::time::sleep(c).await,
                    (Wake::Idle, None) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => {}
                Some(id) = done_rx.recv() => self.in_progress_remove(id),
            }
        }
    }

    /// Start the due deliveries; say when to look again.
    async fn pass(self: &Arc<Self>, done: &mpsc::UnboundedSender<i64>) -> Result<Wake, String> {
        let busy = self.in_progress_len();
        let limit = BATCH + busy;
        // All pending deliveries in due order (i64::MAX: the store compares signed).
        let rows = self
            .store
            .deliveries_due(i64::MAX as u64, limit)
            .await
            .map_err(|e| e.to_string())?;
        let full = rows.len() == limit;
        for d in rows {
            if self.in_progress_contains(d.id) {
                continue;
            }
            let now = now_ms();
            if d.next_attempt_at > now {
                return Ok(Wake::At(d.next_attempt_at));
            }
            #[allow(
                clippy::expect_used,
                reason = "the semaphore is owned here and never closed"
            )]
            let permit = self
                .limit
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            self.in_progress_insert(d.id);
            tokio::spawn(self.clone().attempt(d, permit, done.clone()));
        }
        Ok(if full { Wake::Now } else { Wake::Idle })
    }

    /// One attempt of `d`: send, record, report.
    async fn attempt(
        self: Arc<Self>,
        mut d: Delivery,
        _permit: OwnedSemaphorePermit,
        done: mpsc::UnboundedSender<i64>,
    ) {
        // The attempt is counted before it is sent: a delivery that reaches
        // its receiver and is then cut short by a crash is sent again after
        // restart, and `attempts` must say it was tried twice.
        d.attempts = d.attempts.saturating_add(1);
        d.updated_at = now_ms();
        match self.store.delivery_begin(&d, ATTEMPT_LEASE_MS).await {
            Ok(true) => {}
            Ok(false) => {
                // Another replica took this attempt (shared store).
                let _ = done.send(d.id);
                return;
            }
            Err(e) => {
                tracing::warn!(delivery = d.id, error = %e, "webhooks: cannot record the attempt before sending; trying later");
                tokio::time::sleep(STORE_RETRY).await;
                let _ = done.send(d.id);
                return;
            }
        }
        let outcome = self.send(&d).await;
        let now = now_ms();
        d.updated_at = now;
        let host = host_of(&d.url);
        let (status, error, permanent) = match outcome {
            Outcome::Status(code) => (
                Some(code),
                (!(200..300).contains(&code)).then(|| format!("receiver answered HTTP {code}")),
                false,
            ),
            Outcome::Transient(e) => (None, Some(e), false),
            Outcome::Permanent(e) => (None, Some(e), true),
        };
        d.last_status = status;
        d.last_error = error.clone();
        let result = match &error {
            None => {
                d.state = DeliveryState::Delivered;
                tracing::info!(delivery = d.id, job_id = %d.job_id, host = %host, attempts = d.attempts, status = ?status, "webhook delivered");
                "delivered"
            }
            Some(e) => match (permanent, self.policy.next_delay(d.attempts)) {
                (false, Some(delay)) => {
                    d.next_attempt_at =
                        now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    tracing::info!(delivery = d.id, job_id = %d.job_id, host = %host, attempts = d.attempts, error = %e, retry_in_ms = delay.as_millis() as u64, "webhook attempt failed; will retry");
                    "retry"
                }
                _ => {
                    d.state = DeliveryState::Failed;
                    tracing::warn!(delivery = d.id, job_id = %d.job_id, host = %host, attempts = d.attempts, error = %e, "webhook delivery failed for good");
                    "failed"
                }
            },
        };
        self.metrics
            .webhook_deliveries_total
            .with_label_values(&[result])
            .inc();
        let mut written = false;
        for i in 0..UPDATE_TRIES {
            match self.store.delivery_update(&d).await {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(delivery = d.id, error = %e, "webhooks: cannot record the attempt");
                    if i + 1 < UPDATE_TRIES {
                        tokio::time::sleep(STORE_RETRY).await;
                    }
                }
            }
        }
        if written && d.state == DeliveryState::Failed && d.has_quorum_vote {
            self.count_lost_quorum(&d.job_id).await;
        }
        if written {
            let _ = self.events.send(DeliveryEvent {
                delivery_id: d.id,
                job_id: d.job_id.clone(),
                state: d.state,
                attempts: d.attempts,
                last_status: d.last_status,
            });
        }
        let _ = done.send(d.id);
    }

    /// Count the job once if this failure is the one that made its quorum
    /// impossible (before it, the failed delivery was still pending).
    async fn count_lost_quorum(&self, job_id: &str) {
        let required = match self.store.job_get(job_id).await {
            Ok(Some(job)) => serde_json::from_str::<QuorumOfSpec>(&job.spec)
                .map(|s| s.webhook_quorum)
                .unwrap_or(1),
            _ => return,
        };
        let Ok(q) = super::quorum(self.store.as_ref(), job_id, required).await else {
            return;
        };
        let was_possible = q.delivered_votes + q.pending_votes + 1 >= required;
        if q.impossible && was_possible {
            tracing::warn!(job_id = %job_id, required, delivered = q.delivered_votes, "webhook quorum can no longer be met");
            self.metrics.webhook_quorum_failed_total.inc();
        }
    }

    async fn send(&self, d: &Delivery) -> Outcome {
        let url = match url::Url::parse(&d.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(_) => {
                return Outcome::Permanent("webhook URL must be an http:// or https:// URL".into())
            }
            Err(e) => return Outcome::Permanent(format!("webhook URL is not a valid URL: {e}")),
        };
        // Re-checked at send time: the policy may have changed since the
        // URL was accepted, and a name may now resolve elsewhere.
        if let Err(e) = self.client.check(&url).await {
            tracing::warn!(delivery = d.id, job_id = %d.job_id, host = %host_of(&d.url), error = %e, "webhook refused by the egress policy");
            return Outcome::Permanent(e);
        }
        let secret = match self.secrets.signing_secret(&d.workspace).await {
            Ok(s) => s,
            Err(e) => {
                // Never send unsigned what should be signed: try again later.
                tracing::warn!(delivery = d.id, error = %e, "webhooks: cannot read the workspace's secrets");
                return Outcome::Transient("cannot read the workspace's webhook secrets".into());
            }
        };
        let mut req = self
            .client
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(d.payload.clone());
        if let Some(secret) = secret {
            req = req.header(
                SIGNATURE_HEADER,
                sign::header_value(&secret, sign::unix_now(), &d.payload),
            );
        }
        match req.send().await {
            Ok(resp) => Outcome::Status(resp.status().as_u16()),
            Err(e) => Outcome::Transient(describe(e)),
        }
    }

    fn in_progress_insert(&self, id: i64) {
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    fn in_progress_remove(&self, id: i64) {
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn in_progress_contains(&self, id: i64) -> bool {
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    fn in_progress_len(&self) -> usize {
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

enum Wake {
    Now,
    At(u64),
    /// Nothing pending: wait for a notify or a finished attempt.
    Idle,
}

/// Lets a new `run` start after this one's task was dropped.
struct RunningGuard(Arc<Webhooks>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// The host of a URL, for logs (paths and queries may carry tokens).
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "<invalid url>".into())
}

/// A transport error without the URL (it may carry credentials) and with
/// its causes (e.g. "connection refused").
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no response within {}s", REQUEST_TIMEOUT.as_secs());
    }
    let kind = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    match causes.last() {
        Some(root) => format!("{kind}: {root}"),
        None => format!("{kind}: {e}"),
    }
}

/// The one field of a stored job spec (`jobs::spec::JobSpec`, JSON) a
/// delivery needs. Read here on its own so that webhooks do not depend on
/// jobs: jobs hand their results to webhooks, never the other way round.
#[derive(serde::Deserialize)]
struct QuorumOfSpec {
    #[serde(default = "one_vote")]
    webhook_quorum: u32,
}

fn one_vote() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::store::conformance::{end, job};
    use crate::store::faulty::Faulty;
    use crate::store::{EmbeddedStore, JobStatus, NewDelivery};

    /// A receiver that answers every request `200` and counts them (the
    /// count is watched, so a test awaits it instead of polling).
    async fn receiver() -> (
        String,
        Arc<AtomicUsize>,
        tokio::sync::watch::Receiver<usize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(0);
        let tx = Arc::new(tx);
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = count.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if crate::testing::read_request(&mut conn).await.is_none() {
                        return;
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    tx.send_replace(n);
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        (url, seen, rx)
    }

    /// Every write of an attempt's result fails (the store is gone after
    /// the webhook was sent): nothing is lost — the delivery stays pending
    /// and is sent again (at least once), and once the store is back it is
    /// recorded delivered.
    #[tokio::test]
    async fn a_result_that_cannot_be_written_is_sent_again_and_recorded_later() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
        let store: Arc<dyn Store> = faulty.clone();
        let (url, seen, mut sends) = receiver().await;
        let config = Config::from_toml_str(
            "[egress]\nallow = [\"127.0.0.0/8\"]\nallow_ports = [\"1024-65535\"]\n\
             [webhooks]\nsecret = \"whsec_unit_test_0123456789\"\n",
            "t.toml",
        )
        .unwrap();
        let now = now_ms();
        store.job_insert(job("j1", "k1", 0)).await.unwrap();
        let claimed = store.jobs_claim(now, 60_000, 1).await.unwrap();
        let delivery = NewDelivery {
            url: url.clone(),
            has_quorum_vote: true,
        };
        assert!(store
            .job_finish(
                "j1",
                Some(claimed[0].claims),
                end(JobStatus::Success, b"{\"ok\":true}", vec![delivery]),
            )
            .await
            .unwrap());

        faulty.fail_always("delivery_update");
        let metrics = Arc::new(Metrics::new(10));
        let secrets = Secrets::new(store.clone(), &config.webhooks, None).unwrap();
        let hooks =
            Arc::new(Webhooks::with_secrets(&config, store.clone(), metrics, secrets).unwrap());
        let mut events = hooks.events();
        tokio::spawn(hooks.clone().run());
        hooks.notify();

        // Sent, its result lost, and sent again.
        tokio::time::timeout(Duration::from_secs(30), sends.wait_for(|n| *n >= 2))
            .await
            .expect("sent again after its result was lost")
            .unwrap();
        assert!(faulty.calls("delivery_update") >= UPDATE_TRIES);
        let stored = store.deliveries_for_job("j1").await.unwrap();
        assert_eq!(
            stored[0].state,
            DeliveryState::Pending,
            "never recorded as sent"
        );

        faulty.heal("delivery_update");
        let delivered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await {
                    Ok(e) if e.state == DeliveryState::Delivered => return e,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(e) => panic!("events closed: {e}"),
                }
            }
        })
        .await
        .expect("recorded delivered once the store is back");
        assert_eq!(delivered.job_id, "j1");
        // Each send was counted before it went out, the lost ones too.
        let sends = seen.load(Ordering::SeqCst);
        assert!(sends >= 2);
        assert_eq!(delivered.attempts as usize, sends, "every send counted");
        let stored = store.deliveries_for_job("j1").await.unwrap();
        assert_eq!(stored[0].state, DeliveryState::Delivered);
        assert_eq!(stored[0].attempts as usize, sends);
    }
}
