//! The durable job engine (SPEC §7 parking, §8 jobs): a queue on the store,
//! ordered by next-attempt time and claimed with a lease, so an attempt cut
//! short by a crash runs again after restart (at least once; the job's
//! `Idempotency-Key` travels upstream so a repeat is safe end to end).
//!
//! | module | what it does |
//! |---|---|
//! | [`spec`] | what a job sends and where its result goes |
//! | [`attempt`] | one attempt, through our own proxy listener |
//! | this file | accepting jobs, the runner loop, finishing with webhooks |

pub mod attempt;
pub mod execute;
pub mod history;
pub mod request;
pub mod spec;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{now_ms, JobEnd, JobRecord, JobStatus, NewDelivery, Store, StoreError};
use crate::webhooks::payload::{self, ResponseParts};
use attempt::AttemptResponse;
use execute::{Run, Runner};
use spec::JobSpec;

/// Jobs attempted at the same time; the domain throttles pace them anyway.
const MAX_RUNNING: usize = 256;
/// Runs that could not even reach our own listener before a job fails.
const MAX_UNREACHABLE: u32 = 10;

/// A job accepted into the queue (or found there already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub job_id: String,
    pub idempotent_key: String,
    pub status: JobStatus,
    pub queued_at: u64,
    /// The key was known: nothing new was queued.
    pub duplicate: bool,
}

pub struct Jobs {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// The config in force (reloaded live: retry policies, deadlines).
    config: Arc<arc_swap::ArcSwap<Config>>,
    /// Our proxy listener, reached over loopback by every attempt.
    proxy: SocketAddr,
    /// Proves our attempts to the pipeline (`pipeline::identify::caller`).
    internal_token: Arc<str>,
    wake: Notify,
    running: Arc<Semaphore>,
    /// Called when finished jobs created webhook deliveries.
    deliveries_created: Box<dyn Fn() + Send + Sync>,
    /// Each attempt this process made, per job (the console's job page).
    history: history::History,
}

impl Jobs {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: Arc<arc_swap::ArcSwap<Config>>,
        internal_token: Arc<str>,
        deliveries_created: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        let listen = config.load().proxy.listen;
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Jobs {
            store,
            metrics,
            config,
            proxy: SocketAddr::new(ip, listen.port()),
            internal_token,
            wake: Notify::new(),
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            deliveries_created,
            history: history::History::default(),
        }
    }

    /// Durably queue a job; returns once it is committed. A known
    /// `(workspace, idempotent_key)` returns the existing job instead.
    pub async fn submit(
        &self,
        workspace: &str,
        idempotent_key: &str,
        spec: &JobSpec,
        not_before_ms: u64,
        attempts: u32,
    ) -> Result<Accepted, StoreError> {
        let record = new_record(workspace, idempotent_key, spec, not_before_ms, attempts)?;
        let now = record.created_at;
        let accepted = match self.store.job_insert(record.clone()).await? {
            Some(existing) => Accepted {
                job_id: existing.id,
                idempotent_key: existing.idempotent_key,
                status: existing.status,
                queued_at: existing.created_at,
                duplicate: true,
            },
            None => {
                self.wake.notify_one();
                Accepted {
                    job_id: record.id,
                    idempotent_key: record.idempotent_key,
                    status: JobStatus::Queued,
                    queued_at: now,
                    duplicate: false,
                }
            }
        };
        self.refresh_gauge().await;
        Ok(accepted)
    }

    /// The runner: claims due jobs and runs them, sleeping until the next
    /// one is due or a new job arrives. Never returns.
    pub async fn run(self: Arc<Self>) {
        // The embedded store belongs to this process alone: a job still
        // leased at start-up was cut short by a crash, so it is due now.
        match self.store.jobs_release_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "resuming jobs interrupted by a restart"),
            Err(e) => tracing::warn!(error = %e, "cannot release job leases"),
        }
        self.refresh_gauge().await;
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before looking, so a job queued meanwhile wakes us.
            woken.as_mut().enable();
            let free = self.running.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self
                    .store
                    .jobs_claim(
                        now_ms(),
                        self.config.load().jobs.lease.as_millis() as u64,
                        free,
                    )
                    .await
                {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim jobs");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            };
            let full = !claimed.is_empty() && claimed.len() == free;
            for job in claimed {
                let Ok(permit) = self.running.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.run_one(job).await;
                    drop(permit);
                    me.wake.notify_one();
                });
            }
            self.refresh_gauge().await;
            if full {
                continue;
            }
            let next = match self.store.jobs_next_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the job queue");
                    Some(now_ms() + 1000)
                }
            };
            // Another replica's jobs can become due (or its lapsed leases
            // claimable) without anyone telling us: look again regularly.
            let cap = self.store.shared().then_some(crate::store::SHARED_POLL);
            let wait = match (next, cap) {
                (Some(at), cap) => {
                    let w = Duration::from_millis(at.saturating_sub(now_ms()));
                    Some(cap.map_or(w, |c| w.min(c)))
                }
                (None, cap) => cap,
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// How long one attempt may take: its wait for admission and retries,
    /// plus every upstream attempt running to its read timeout.
    fn attempt_timeout(&self, spec: &JobSpec) -> Duration {
        let r = &self.config.load().retry;
        let attempts = 1 + r.max_retries + r.max_reroutes;
        Duration::from_millis(spec.max_wait_ms)
            + (self.config.load().proxy.read_timeout + self.config.load().proxy.connect_timeout)
                * attempts
    }

    async fn run_one(&self, job: JobRecord) {
        let spec: JobSpec = match serde_json::from_str(&job.spec) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(job_id = %job.id, error = %e, "unreadable job spec; failing the job");
                let run = Run::Unreachable("unreadable job spec".into());
                self.finish(&job, &JobSpec::request("GET", "", 0), &run, 0)
                    .await;
                return;
            }
        };
        let calls = AtomicU32::new(0);
        let runner = Runner {
            proxy: self.proxy,
            internal_token: &self.internal_token,
            job_id: &job.id,
            workspace: &job.workspace,
            timeout: self.attempt_timeout(&spec),
            max_body: self.config.load().idempotency.max_stored_body as usize,
            calls: &calls,
            history: &self.history,
            base_key: &job.idempotent_key,
        };
        let run = runner.chain(&spec, job.idempotent_key.clone(), 0);
        // on_failure also fires when no success came within its timeout.
        let run = async {
            match (spec.on_failure.as_deref(), spec.on_failure_timeout_ms) {
                (Some(child), Some(ms)) => {
                    let mut run = run;
                    let timer = tokio::time::sleep(Duration::from_millis(ms));
                    tokio::select! {
                        r = &mut run => r,
                        _ = timer => {
                            self.spawn_child(&job, child, "on_failure").await;
                            run.await
                        }
                    }
                }
                _ => run.await,
            }
        };
        let Some(run) = self.holding_lease(&job, run).await else {
            return;
        };
        let calls = calls.load(Ordering::Relaxed);
        let deadline = job.created_at.saturating_add(
            u64::try_from(self.config.load().jobs.deadline.as_millis()).unwrap_or(u64::MAX),
        );
        match next_step(
            &self.config.load(),
            &spec,
            &job,
            &run,
            calls,
            now_ms(),
            deadline,
        ) {
            Step::Again(after) => {
                tracing::info!(job_id = %job.id, retry_in_ms = after.as_millis() as u64, upstream_calls = job.attempts.saturating_add(calls), "job will run again");
                self.reschedule(&job, after, calls).await;
            }
            Step::Finish => self.finish(&job, &spec, &run, calls).await,
        }
    }

    /// Run `work` while renewing the job's lease; `None` (the work dropped)
    /// when the lease was lost — the job was cancelled, or taken over by
    /// another runner after this one stalled — so it never writes twice.
    async fn holding_lease<T>(
        &self,
        job: &JobRecord,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        // A claimed job is another runner's once its lease lapses; renewed
        // every third of it, only a dead runner loses its jobs — whatever
        // the job's own max wait, fallback chain or on_failure_timeout.
        let lease = self.config.load().jobs.lease;
        let every = (lease / 3).max(Duration::from_millis(100));
        tokio::pin!(work);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tick.tick() => {
                    let until = now_ms().saturating_add(lease.as_millis() as u64);
                    match self.store.job_renew(&job.id, job.claims, until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(job_id = %job.id, claim = job.claims, "job lease lost (cancelled or taken over); stopping this run");
                            return None;
                        }
                        Err(e) => tracing::warn!(job_id = %job.id, error = %e, "cannot renew the job lease"),
                    }
                }
            }
        }
    }

    /// Queue `child` (on_success / on_failure) with `parent_job_id` in its
    /// metadata. Its key derives from the parent's, so a repeat (after a
    /// crash, or the on_failure timeout followed by the failure) is a
    /// duplicate, not a second job.
    async fn spawn_child(&self, parent: &JobRecord, child: &JobSpec, why: &str) {
        let (spec, key) = child_spec(parent, child, why);
        match self.submit(&parent.workspace, &key, &spec, 0, 0).await {
            Ok(a) => {
                tracing::info!(parent = %parent.id, job_id = %a.job_id, trigger = why, duplicate = a.duplicate, "spawned a follow-up job")
            }
            Err(e) => tracing::warn!(parent = %parent.id, error = %e, "cannot spawn the {why} job"),
        }
    }

    async fn reschedule(&self, job: &JobRecord, after: Duration, calls: u32) {
        let at = now_ms().saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        match self
            .store
            .job_reschedule(&job.id, job.claims, JobStatus::Retrying, at, calls)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(job_id = %job.id, "job was cancelled or claimed again; not rescheduled")
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "cannot reschedule job; its lease will bring it back")
            }
        }
    }

    /// End the job and queue its webhooks, in one transaction; then its
    /// follow-up job, if any.
    async fn finish(&self, job: &JobRecord, spec: &JobSpec, run: &Run, calls: u32) {
        let (resp, region_results) = match run {
            Run::Answer {
                resp,
                region_results,
            } => (resp.clone(), region_results.clone()),
            other => (
                AttemptResponse {
                    status: 502,
                    headers: Vec::new(),
                    body: match other {
                        Run::Unreachable(e) => e.clone().into_bytes(),
                        _ => b"not admitted".to_vec(),
                    },
                    proxy_error: Some("upstream_failed".into()),
                    retry_after: None,
                },
                None,
            ),
        };
        let success = execute::is_success(&resp);
        let status = if success {
            JobStatus::Success
        } else {
            JobStatus::Failed
        };
        let result = json!({
            "status_code": resp.status,
            "headers": resp.headers,
            "body": String::from_utf8_lossy(&resp.body),
            "error": resp.proxy_error,
            "region_results": region_results,
            "attempt_log": self.history.of(&job.id),
        })
        .to_string();
        let extra = region_results.map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("region_results".into(), serde_json::Value::Array(r));
            m
        });
        let body = payload::build(
            &job.id,
            &job.idempotent_key,
            success,
            ResponseParts {
                status_code: resp.status,
                headers: &resp.headers,
                body: &resp.body,
            },
            spec.metadata.clone(),
            extra,
        );
        let deliveries: Vec<NewDelivery> = spec
            .webhooks
            .iter()
            .map(|w| NewDelivery {
                url: w.url.clone(),
                has_quorum_vote: w.has_quorum_vote,
            })
            .collect();
        let any = !deliveries.is_empty();
        let child = if success {
            spec.on_success.as_deref().map(|c| (c, "on_success"))
        } else {
            spec.on_failure.as_deref().map(|c| (c, "on_failure"))
        };
        let mut children = Vec::new();
        if let Some((child, why)) = child {
            let (child_spec, key) = child_spec(job, child, why);
            match new_record(&job.workspace, &key, &child_spec, 0, 0) {
                Ok(r) => children.push(r),
                Err(e) => {
                    tracing::warn!(parent = %job.id, error = %e, "cannot build the {why} job")
                }
            }
        }
        let spawned = !children.is_empty();
        let end = JobEnd {
            status,
            result,
            payload: body,
            deliveries,
            calls,
            children,
        };
        match self.store.job_finish(&job.id, Some(job.claims), end).await {
            Ok(true) => {
                tracing::info!(job_id = %job.id, status = status.as_str(), upstream_status = resp.status, upstream_calls = job.attempts.saturating_add(calls), "job finished");
                if any {
                    (self.deliveries_created)();
                }
                if spawned {
                    self.wake.notify_one();
                }
            }
            Ok(false) => {
                tracing::debug!(job_id = %job.id, "job had already ended (cancelled)");
                self.refresh_gauge().await;
                return;
            }
            Err(e) => {
                // Not recorded: the lease brings the job back and it runs
                // again (its key makes that a replay).
                tracing::warn!(job_id = %job.id, error = %e, "cannot record the job result");
                return;
            }
        }
        self.refresh_gauge().await;
    }

    /// The attempts this process made for each recent job.
    pub fn history(&self) -> &history::History {
        &self.history
    }

    /// `ezthrottle_jobs{status}` from the store's counts.
    pub async fn refresh_gauge(&self) {
        let Ok(counts) = self.store.job_counts().await else {
            return;
        };
        for status in JobStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            self.metrics
                .jobs
                .with_label_values(&[status.as_str()])
                .set(n as i64);
        }
    }

    /// Deletes finished jobs older than `[jobs] retention` (whose webhooks
    /// are settled), hourly. Never returns.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let before =
                now_ms().saturating_sub(self.config.load().jobs.retention.as_millis() as u64);
            match self.store.jobs_sweep(before).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(jobs = n, "deleted finished jobs past their retention");
                    self.refresh_gauge().await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot sweep finished jobs"),
            }
        }
    }

    /// Wake the runner (a job was queued or became due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A new queued job record.
fn new_record(
    workspace: &str,
    idempotent_key: &str,
    spec: &JobSpec,
    not_before_ms: u64,
    attempts: u32,
) -> Result<JobRecord, StoreError> {
    let now = now_ms();
    Ok(JobRecord {
        id: format!("job_{}", uuid::Uuid::new_v4().simple()),
        workspace: workspace.to_string(),
        idempotent_key: idempotent_key.to_string(),
        status: JobStatus::Queued,
        spec: serde_json::to_string(spec).map_err(|e| StoreError::Backend(e.to_string()))?,
        attempts,
        claims: 0,
        next_attempt_at: not_before_ms.max(now),
        lease_until: 0,
        created_at: now,
        updated_at: now,
        result: None,
    })
}

/// `child` (on_success / on_failure) with `parent_job_id` in its metadata,
/// and its key: derived from the parent's, so a repeat (after a crash, or
/// the on_failure timeout followed by the failure) is a duplicate, not a
/// second job.
fn child_spec(parent: &JobRecord, child: &JobSpec, why: &str) -> (JobSpec, String) {
    let mut spec = child.clone();
    let mut meta = match spec.metadata.take() {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    meta.insert(
        "parent_job_id".into(),
        serde_json::Value::String(parent.id.clone()),
    );
    spec.metadata = serde_json::Value::Object(meta);
    (spec, format!("{}:{why}", parent.idempotent_key))
}

/// What to do after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Run the job again after this long (stored as `retrying`).
    Again(Duration),
    Finish,
}

/// Decide after a run. A job is retried durably — whatever the Retry-After,
/// across restarts — while its upstream answer is one its retry policy
/// retries (`retry_codes`, `reroute_codes`), its upstream calls so far are
/// within the policy's budget (1 + max_retries + max_reroutes), and the next
/// run would start before its deadline. The delay is the API's Retry-After,
/// else the backoff of the calls made. "Not now" answers (capacity) and an
/// unreachable listener come back too, within the deadline.
fn next_step(
    config: &Config,
    spec: &JobSpec,
    job: &JobRecord,
    run: &Run,
    calls: u32,
    now: u64,
    deadline: u64,
) -> Step {
    let within = |after: Duration| {
        now.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX)) <= deadline
    };
    let total = job.attempts.saturating_add(calls);
    let again = match run {
        Run::NotNow(after) => Some(*after),
        Run::Unreachable(_) if job.claims < MAX_UNREACHABLE => {
            Some(crate::backoff::RETRY.ceiling(job.claims.saturating_sub(1)))
        }
        Run::Answer {
            resp,
            region_results: None,
        } if !execute::is_success(resp) => {
            let domain = url::Url::parse(&spec.url)
                .ok()
                .and_then(|u| {
                    u.host_str()
                        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
                })
                .unwrap_or_default();
            let mut policy = crate::retry::route::retry_config(config, &domain).clone();
            if let Some(p) = &spec.retry_policy {
                p.apply(&mut policy);
            }
            let retryable = policy.retry_codes.contains(&resp.status)
                || policy.reroute_codes.contains(&resp.status);
            let budget = 1 + policy.max_retries.saturating_add(policy.max_reroutes);
            (retryable && total < budget).then(|| {
                resp.retry_after
                    .unwrap_or_else(|| crate::backoff::RETRY.full_jitter(total.saturating_sub(1)))
            })
        }
        _ => None,
    };
    match again {
        Some(after) if within(after) => Step::Again(after),
        _ => Step::Finish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempts: u32, claims: u32) -> JobRecord {
        let mut r = new_record(
            "w",
            "k",
            &JobSpec::request("POST", "https://api.test/x", 60_000),
            0,
            attempts,
        )
        .unwrap();
        r.claims = claims;
        r
    }

    fn answer(status: u16, retry_after: Option<u64>) -> Run {
        Run::Answer {
            resp: AttemptResponse {
                status,
                headers: vec![],
                body: vec![],
                proxy_error: None,
                retry_after: retry_after.map(Duration::from_secs),
            },
            region_results: None,
        }
    }

    #[test]
    fn a_long_retry_after_puts_the_job_back_instead_of_failing_it() {
        let config = Config::from_toml_str("", "t.toml").unwrap();
        let spec = JobSpec::request("POST", "https://api.test/x", 60_000);
        let now = 1_000_000;
        let day = now + 86_400_000;
        // Retry-After 70 s, longer than the 60 s max wait: back in 70 s.
        assert_eq!(
            next_step(
                &config,
                &spec,
                &job(0, 1),
                &answer(503, Some(70)),
                1,
                now,
                day
            ),
            Step::Again(Duration::from_secs(70))
        );
        assert_eq!(
            next_step(
                &config,
                &spec,
                &job(0, 1),
                &answer(429, Some(3600 * 20)),
                1,
                now,
                day
            ),
            Step::Again(Duration::from_secs(3600 * 20))
        );
        // Past the deadline: finished with this answer.
        assert_eq!(
            next_step(
                &config,
                &spec,
                &job(0, 1),
                &answer(503, Some(3600 * 25)),
                1,
                now,
                day
            ),
            Step::Finish
        );
        // The budget (1 + 3 retries + 2 reroutes by default) counts every
        // upstream call, including a parked request's synchronous ones.
        assert!(matches!(
            next_step(
                &config,
                &spec,
                &job(4, 2),
                &answer(503, Some(1)),
                1,
                now,
                day
            ),
            Step::Again(_)
        ));
        assert_eq!(
            next_step(
                &config,
                &spec,
                &job(5, 2),
                &answer(503, Some(1)),
                1,
                now,
                day
            ),
            Step::Finish
        );
        // Not retryable, or a success: finished.
        for run in [answer(400, Some(5)), answer(404, None), answer(200, None)] {
            assert_eq!(
                next_step(&config, &spec, &job(0, 1), &run, 1, now, day),
                Step::Finish
            );
        }
        // Without Retry-After: the backoff of the calls made (at most 30 s).
        match next_step(&config, &spec, &job(0, 1), &answer(502, None), 1, now, day) {
            Step::Again(d) => assert!(d <= Duration::from_secs(30), "{d:?}"),
            s => panic!("{s:?}"),
        }
        // The job's own retry_policy decides.
        let mut strict = spec.clone();
        strict.retry_policy = Some(spec::RetryPolicySpec {
            max_retries: Some(0),
            max_reroutes: Some(0),
            ..Default::default()
        });
        assert_eq!(
            next_step(
                &config,
                &strict,
                &job(0, 1),
                &answer(503, Some(70)),
                1,
                now,
                day
            ),
            Step::Finish
        );
        // Capacity ("not now") comes back within the deadline, uncounted.
        assert_eq!(
            next_step(
                &config,
                &spec,
                &job(9, 1),
                &Run::NotNow(Duration::from_secs(2)),
                0,
                now,
                day
            ),
            Step::Again(Duration::from_secs(2))
        );
        assert_eq!(
            next_step(
                &config,
                &spec,
                &job(0, 1),
                &Run::NotNow(Duration::from_secs(2)),
                0,
                day,
                day
            ),
            Step::Finish
        );
    }

    /// A stand-in for our proxy listener: answers every request `200` and
    /// keeps each request's `Idempotency-Key`; the list is watched, so a
    /// test awaits a count instead of polling.
    async fn listener() -> (
        std::net::SocketAddr,
        tokio::sync::watch::Receiver<Vec<String>>,
    ) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        let tx = Arc::new(tx);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(head) = crate::testing::read_request(&mut conn).await else {
                        return;
                    };
                    let key = head
                        .lines()
                        .find_map(|l| l.strip_prefix("idempotency-key:"))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    tx.send_modify(|keys| keys.push(key));
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        (addr, rx)
    }

    /// The store cannot record a finished run (its disk or Redis is gone
    /// at that moment): the job is not lost. It stays in flight under its
    /// lease, the runner carries on, and once the lease lapses the job is
    /// claimed and run again (with the same Idempotency-Key, so upstream
    /// sees a repeat, not a new request); when the store is back, that run
    /// is recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finish_the_store_cannot_record_runs_again_and_is_recorded_later() {
        use crate::store::faulty::Faulty;
        use crate::store::EmbeddedStore;

        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
        let store: Arc<dyn Store> = faulty.clone();
        let (proxy, mut seen) = listener().await;
        let config = Config::from_toml_str(
            &format!("[proxy]\nlisten = \"{proxy}\"\n[jobs]\nlease = \"300ms\"\n"),
            "t.toml",
        )
        .unwrap();
        let jobs = Arc::new(Jobs::new(
            store.clone(),
            Arc::new(Metrics::new(10)),
            Arc::new(arc_swap::ArcSwap::from_pointee(config)),
            Arc::from("unit-test-token"),
            Box::new(|| {}),
        ));
        faulty.fail_always("job_finish");
        let accepted = jobs
            .submit(
                "w",
                "key-1",
                &JobSpec::request("POST", "http://api.test/x", 5_000),
                0,
                0,
            )
            .await
            .unwrap();
        let runner = tokio::spawn(jobs.clone().run());

        // Run, its result not recorded, run again after the lease, and that
        // result not recorded either.
        tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|k| k.len() >= 2))
            .await
            .expect("run again after its finish was lost")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            while faulty.calls("job_finish") < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the second run tried to finish");
        let job = store
            .job_get(&accepted.job_id)
            .await
            .unwrap()
            .expect("kept");
        assert_eq!(job.status, JobStatus::InFlight, "never recorded as ended");
        assert!(job.result.is_none());
        assert!(job.claims >= 2, "claimed again: {}", job.claims);
        assert!(!runner.is_finished(), "the runner carries on");

        faulty.heal("job_finish");
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let job = store
                    .job_get(&accepted.job_id)
                    .await
                    .unwrap()
                    .expect("kept");
                if job.status != JobStatus::InFlight {
                    return job;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("recorded once the store is back");
        assert_eq!(done.status, JobStatus::Success);
        let result: serde_json::Value =
            serde_json::from_str(done.result.as_deref().expect("a result")).unwrap();
        assert_eq!(result["status_code"], 200);
        assert_eq!(result["body"], "ok");
        // Every run sent the job's own key.
        let keys = seen.borrow().clone();
        assert!(keys.len() >= 3, "{keys:?}");
        assert!(
            keys.iter().all(|k| *k == accepted.idempotent_key),
            "{keys:?}"
        );
        assert!(faulty.calls("job_finish") >= 3);
        runner.abort();
    }
}
