//! A store that fails on demand, for tests of the paths a real store takes
//! only when its disk or its Redis is gone: `503 store_unavailable`, a job
//! whose finish was not written, a delivery whose update was not written.
//! Everything else is the real embedded store underneath, so a test sees
//! exactly what the product would after the store comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;

/// How many more calls of an operation fail (`u32::MAX`: until healed).
type Plan = HashMap<&'static str, u32>;

pub struct Faulty {
    inner: Arc<dyn Store>,
    failing: Mutex<Plan>,
    calls: Mutex<HashMap<&'static str, u32>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            failing: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
        })
    }

    /// The next `times` calls of `op` (a method name) fail.
    pub fn fail(&self, op: &'static str, times: u32) {
        self.failing.lock().unwrap().insert(op, times);
    }

    /// Every call of `op` fails until [`heal`](Self::heal).
    pub fn fail_always(&self, op: &'static str) {
        self.fail(op, u32::MAX);
    }

    pub fn heal(&self, op: &'static str) {
        self.failing.lock().unwrap().remove(op);
    }

    /// Calls of `op` so far, failed ones included.
    pub fn calls(&self, op: &'static str) -> u32 {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    fn check(&self, op: &'static str) -> Result<(), StoreError> {
        *self.calls.lock().unwrap().entry(op).or_insert(0) += 1;
        let mut failing = self.failing.lock().unwrap();
        match failing.get_mut(op) {
            Some(0) | None => Ok(()),
            Some(n) => {
                if *n != u32::MAX {
                    *n -= 1;
                }
                Err(StoreError::Backend(format!("{op}: injected failure")))
            }
        }
    }
}

/// Each method: count, maybe fail, else the real store's answer. The
/// whole impl is generated so that `async_trait` sees the expanded methods.
macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait]
        impl Store for Faulty {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    self.check(stringify!($name))?;
                    self.inner.$name($($arg),*).await
                }
            )*

            fn shared(&self) -> bool {
                self.inner.shared()
            }
        }
    };
}

delegate! {
        fn ping(&self) -> ();
        fn learned_limits(&self) -> Vec<LearnedLimit>;
        fn save_learned_limit(&self, limit: LearnedLimit) -> ();
        fn idempotency_get(&self, scope: &str, now_ms: u64) -> Option<IdempotencyRecord>;
        fn idempotency_put(&self, record: IdempotencyRecord) -> ();
        fn idempotency_sweep(&self, now_ms: u64) -> u64;
        fn job_insert(&self, job: JobRecord) -> Option<JobRecord>;
        fn job_get(&self, id: &str) -> Option<JobRecord>;
        fn jobs_claim(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Vec<JobRecord>;
        fn jobs_release_leases(&self) -> u64;
        fn job_renew(&self, id: &str, claims: u32, lease_until: u64) -> bool;
        fn job_reschedule(&self, id: &str, claims: u32, status: JobStatus, next_attempt_at: u64, calls: u32) -> bool;
        fn job_finish(&self, id: &str, claims: Option<u32>, end: JobEnd) -> bool;
        fn jobs_list(&self, workspace: &str, status: Option<JobStatus>, limit: usize, after: Option<(u64, String)>) -> Vec<JobRecord>;
        fn jobs_list_by_domain(&self, workspace: &str, domain: &str, status: Option<JobStatus>, limit: usize, after: Option<(u64, String)>) -> Vec<JobRecord>;
        fn job_children(&self, parent_id: &str, limit: usize) -> Vec<JobRecord>;
        fn job_requeue(&self, id: &str, now_ms: u64) -> bool;
        fn jobs_sweep(&self, before_ms: u64) -> u64;
        fn job_cancel(&self, id: &str) -> bool;
        fn job_counts(&self) -> Vec<(JobStatus, u64)>;
        fn jobs_next_due(&self) -> Option<u64>;
        fn deliveries_due(&self, now_ms: u64, limit: usize) -> Vec<Delivery>;
        fn delivery_update(&self, delivery: &Delivery) -> ();
        fn delivery_begin(&self, d: &Delivery, lease_ms: u64) -> bool;
        fn deliveries_for_job(&self, job_id: &str) -> Vec<Delivery>;
        fn deliveries_for_jobs(&self, job_ids: &[String]) -> Vec<Delivery>;
        fn deliveries_next_due(&self) -> Option<u64>;
        fn secrets_get(&self, workspace: &str) -> Option<WebhookSecrets>;
        fn secrets_put(&self, secrets: WebhookSecrets) -> ();
        fn secrets_delete(&self, workspace: &str) -> bool;
}
