//! Storage: everything that must outlive a crash goes through the one
//! [`Store`] trait (SPEC §11), with the embedded SQLite backend here and a
//! Redis backend slotting in behind the same trait.

#[cfg(test)]
pub(crate) mod conformance;
pub mod embedded;
#[cfg(test)]
pub mod faulty;
pub mod files;
pub mod pool;
pub mod redis;
pub mod seal;

use async_trait::async_trait;

pub use embedded::EmbeddedStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
}

/// A limit learned from a domain's response headers.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedLimit {
    pub domain: String,
    pub rps: Option<f64>,
    pub max_concurrent: Option<u32>,
    /// Unix milliseconds of the last change.
    pub updated_at: u64,
}

/// A response kept for replay under one idempotency scope (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the scope tuple (workspace, key, method, host + path).
    pub scope: String,
    /// SHA-256 (hex) of the canonicalised request body.
    pub fingerprint: String,
    pub status: u16,
    pub reason: Option<String>,
    /// The response header block exactly as first sent (HTTP/1 wire form,
    /// `Name: value\r\n` lines in order, names in their original case).
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub expires_at: u64,
}

/// Where a job is in its life (SPEC §8 statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Queued,
    Racing,
    InFlight,
    Retrying,
    Success,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Racing,
        JobStatus::InFlight,
        JobStatus::Retrying,
        JobStatus::Success,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Racing => "racing",
            JobStatus::InFlight => "in_flight",
            JobStatus::Retrying => "retrying",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job in the durable queue: a parked request (SPEC §7) or a submitted
/// job (SPEC §8). What to send and how is the engine's JSON `spec`, so the
/// store stays ignorant of request shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub workspace: String,
    /// Unique per workspace; a second insert with it is a duplicate.
    pub idempotent_key: String,
    pub status: JobStatus,
    pub spec: String,
    /// Upstream calls made for the job so far (every run's attempts, retries
    /// and reroutes; a parked request starts with its synchronous ones).
    pub attempts: u32,
    /// Times the job was claimed to run. Also the fencing token: every write
    /// of a run's outcome names the claim it belongs to, so a runner whose
    /// lease was taken over (or whose job was cancelled) writes nothing.
    pub claims: u32,
    /// Unix ms: not to be claimed before.
    pub next_attempt_at: u64,
    /// Unix ms: a claimed job whose lease ran out (its runner crashed) is
    /// claimed again.
    pub lease_until: u64,
    pub created_at: u64,
    pub updated_at: u64,
    /// The final result (engine JSON) once finished.
    pub result: Option<String>,
}

/// How a run of a job ended, written in one transaction by
/// [`Store::job_finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub status: JobStatus,
    pub result: String,
    /// The webhook payload every delivery carries.
    pub payload: Vec<u8>,
    pub deliveries: Vec<NewDelivery>,
    /// Upstream calls this run made (added to `attempts`).
    pub calls: u32,
    /// Follow-up jobs (`on_success` / `on_failure`), inserted with the end
    /// so a crash cannot lose them; a `(workspace, key)` already present is
    /// skipped.
    pub children: Vec<JobRecord>,
}

/// A webhook to deliver, created with the result of its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub url: String,
    pub has_quorum_vote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One webhook delivery of one job result (SPEC §8), persisted so that a
/// crash between the job's end and a 2xx from the receiver loses nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub job_id: String,
    pub workspace: String,
    pub url: String,
    pub has_quorum_vote: bool,
    /// The exact JSON body to POST (the signature covers these bytes).
    pub payload: Vec<u8>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub updated_at: u64,
}

/// A workspace's webhook signing secrets (SPEC §8).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecrets {
    pub workspace: String,
    pub primary: String,
    pub secondary: Option<String>,
}

/// Never print secrets, not even in debug output.
impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("workspace", &self.workspace)
            .field("primary", &"<redacted>")
            .field("secondary", &self.secondary.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap round trip used by `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether other processes (replicas) write this store too: then work
    /// may appear without this process being told, so its runners look
    /// again at least every [`SHARED_POLL`] besides the events they hear.
    fn shared(&self) -> bool {
        false
    }

    async fn learned_limits(&self) -> Result<Vec<LearnedLimit>, StoreError>;

    /// Merge: a `None` field keeps the stored value.
    async fn save_learned_limit(&self, limit: LearnedLimit) -> Result<(), StoreError>;

    /// The record for `scope` unless it expired before `now_ms`.
    async fn idempotency_get(
        &self,
        scope: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Durably store (or replace) a record; returns once committed.
    async fn idempotency_put(&self, record: IdempotencyRecord) -> Result<(), StoreError>;

    /// Delete records that expired before `now_ms`; returns how many.
    async fn idempotency_sweep(&self, now_ms: u64) -> Result<u64, StoreError>;

    // ---- jobs (SPEC §7 parking, §8 jobs) ----

    /// Durably insert a new job; if `(workspace, idempotent_key)` exists,
    /// nothing is written and the existing job is returned.
    async fn job_insert(&self, job: JobRecord) -> Result<Option<JobRecord>, StoreError>;

    async fn job_get(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Claim up to `limit` jobs that are due at `now_ms` (queued/retrying and
    /// not before their next attempt, or in flight with a lapsed lease), in
    /// next-attempt order: each becomes `in_flight`, `claims + 1`, leased
    /// until `now_ms + lease_ms`.
    async fn jobs_claim(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Put every in-flight job back in the queue (`retrying`), due now.
    /// Called at start-up by the only process using the store (the embedded
    /// backend), whose runs all died with it. Returns how many.
    async fn jobs_release_leases(&self) -> Result<u64, StoreError>;

    /// Extend the lease of claim `claims` of a running job. False when the
    /// claim is no longer the job's (re-claimed after a lapse, cancelled,
    /// ended): its runner must stop.
    async fn job_renew(&self, id: &str, claims: u32, lease_until: u64) -> Result<bool, StoreError>;

    /// Put claim `claims` of a job back in the queue (`queued` or
    /// `retrying`) for a later run at `next_attempt_at`, adding this run's
    /// upstream `calls`. False (nothing written) unless that claim is still
    /// the job's and it is in flight.
    async fn job_reschedule(
        &self,
        id: &str,
        claims: u32,
        status: JobStatus,
        next_attempt_at: u64,
        calls: u32,
    ) -> Result<bool, StoreError>;

    /// End a job with its result, create its webhook deliveries and insert
    /// its follow-up jobs, all in one transaction. `claims`: the claim the
    /// run belongs to (`None`: whatever claim). Returns false (and writes
    /// nothing) if the job had already ended (e.g. cancelled) or was claimed
    /// again since.
    async fn job_finish(
        &self,
        id: &str,
        claims: Option<u32>,
        end: JobEnd,
    ) -> Result<bool, StoreError>;

    /// A workspace's jobs, newest first, optionally of one status, after the
    /// cursor `(created_at, id)` of the last job of the previous page.
    async fn jobs_list(
        &self,
        workspace: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Like [`Store::jobs_list`], of the jobs whose request goes to
    /// `domain` (see [`job_domain`]; pass it lower-cased). An indexed range
    /// on both backends (embedded: `jobs_list_domain[_status]`; Redis: the
    /// per-workspace, per-domain sorted sets), so a filtered page costs the
    /// same however many jobs of other domains the workspace holds.
    async fn jobs_list_by_domain(
        &self,
        workspace: &str,
        domain: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// The jobs spawned by `parent_id` (follow-ups whose spec names it as
    /// `metadata.parent_job_id`, see [`job_parent`]), oldest first, at most
    /// `limit`: the other direction of the follow-up chain.
    async fn job_children(
        &self,
        parent_id: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Queue an ended `failed` or `cancelled` job again (result and webhook
    /// deliveries of the old run are kept until the new run ends); returns
    /// whether it did.
    async fn job_requeue(&self, id: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// Delete jobs that ended before `before_ms` and have no webhook delivery
    /// still pending, with their deliveries; returns how many jobs.
    async fn jobs_sweep(&self, before_ms: u64) -> Result<u64, StoreError>;

    /// Cancel a job that has not ended; returns whether it did.
    async fn job_cancel(&self, id: &str) -> Result<bool, StoreError>;

    /// Number of jobs per status.
    async fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>, StoreError>;

    /// The earliest time (Unix ms) a job becomes claimable, if any.
    async fn jobs_next_due(&self) -> Result<Option<u64>, StoreError>;

    // ---- webhook deliveries and secrets (SPEC §8) ----

    /// Pending deliveries due at `now_ms`, oldest first.
    async fn deliveries_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Record the outcome of a delivery attempt (state, attempts,
    /// next_attempt_at, last_status, last_error, updated_at).
    async fn delivery_update(&self, delivery: &Delivery) -> Result<(), StoreError>;

    /// Record that an attempt of `d` starts (`d.attempts` already counts
    /// it), taking the delivery for `lease_ms`: with a shared store another
    /// replica may have read it as due too, and only one of them gets
    /// `true` and sends; a replica that dies mid-attempt leaves it due again
    /// when the lease runs out. The embedded store has one reader, so its
    /// default just writes `d`.
    async fn delivery_begin(&self, d: &Delivery, lease_ms: u64) -> Result<bool, StoreError> {
        let _ = lease_ms;
        self.delivery_update(d).await.map(|_| true)
    }

    async fn deliveries_for_job(&self, job_id: &str) -> Result<Vec<Delivery>, StoreError>;

    /// The deliveries of several jobs (a page of the job list), by job in
    /// the order given, then by id: one call instead of one per job.
    async fn deliveries_for_jobs(&self, job_ids: &[String]) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        for id in job_ids {
            out.extend(self.deliveries_for_job(id).await?);
        }
        Ok(out)
    }

    /// The earliest `next_attempt_at` of a pending delivery, if any.
    async fn deliveries_next_due(&self) -> Result<Option<u64>, StoreError>;

    async fn secrets_get(&self, workspace: &str) -> Result<Option<WebhookSecrets>, StoreError>;

    async fn secrets_put(&self, secrets: WebhookSecrets) -> Result<(), StoreError>;

    /// Returns whether there was anything to delete.
    async fn secrets_delete(&self, workspace: &str) -> Result<bool, StoreError>;
}

/// The parts of a job's spec the store indexes; everything else in the
/// spec stays opaque to it.
#[derive(serde::Deserialize)]
struct IndexedSpec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

fn indexed_spec(spec: &str) -> Option<IndexedSpec> {
    serde_json::from_str(spec).ok()
}

/// The domain a job is listed under: the lower-cased host of its request
/// URL (`None` for a spec without a parseable URL). Derived from the spec by
/// the store itself, on insert and when an older data file is upgraded, so
/// the index can never disagree with the request it describes.
pub fn job_domain(spec: &str) -> Option<String> {
    url_domain(indexed_spec(spec)?.url.as_deref()?)
}

/// The lower-cased host of `url`, as [`job_domain`] stores it.
pub fn url_domain(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
}

/// The job that spawned this one (`metadata.parent_job_id`, set on every
/// follow-up job by `jobs::child_spec`), so a parent can list its children.
pub fn job_parent(spec: &str) -> Option<String> {
    indexed_spec(spec)?
        .metadata?
        .get("parent_job_id")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// With a shared store, the longest a runner sleeps without looking at the
/// queue (events normally wake it at once; they are not guaranteed).
pub const SHARED_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
