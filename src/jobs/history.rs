//! Each attempt of a job, as this process ran it: when, in which region,
//! what came back, how long it waited for admission, what went wrong.
//!
//! Why in memory first: the store keeps a job's attempt *count* and its
//! final result, and a new column (or Redis field) on every attempt would
//! add a write per attempt to the queue's hot path. Instead the runner
//! records every attempt here (bounded: [`MAX_JOBS`] jobs, the newest
//! [`MAX_PER_JOB`] attempts each), and when a run ends the job's log is
//! written with the result in the same transaction as the end
//! (`attempt_log` in the result JSON), so a finished job's attempts survive
//! restarts and are seen by every replica. A job still running on another
//! replica shows only its count until it ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Jobs whose attempts are kept in memory (the oldest job recorded is
/// forgotten first).
pub const MAX_JOBS: usize = 4096;
/// Attempts kept per job (the newest).
pub const MAX_PER_JOB: usize = 20;
/// Longest error text kept.
const MAX_ERROR: usize = 300;

/// One attempt: one pass of the job's request through the proxy, which may
/// itself have made several upstream calls (`upstream_calls`, the
/// pipeline's synchronous retries and reroutes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix ms when the attempt started.
    pub at: u64,
    /// Which part of the job: `primary`, `fallback 1`, …
    pub part: String,
    /// The region the attempt was pinned to (`None`: the domain's order).
    pub region: Option<String>,
    /// The final status of this attempt (`None`: no answer).
    pub status_code: Option<u16>,
    /// Time queued for admission (`X-EZThrottle-Wait-Ms`).
    pub wait_ms: Option<u64>,
    pub upstream_calls: u32,
    pub duration_ms: u64,
    /// The proxy's error code, or why the proxy could not be reached.
    pub error: Option<String>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, VecDeque<Attempt>>,
    /// Job ids in the order first recorded (eviction order).
    order: VecDeque<String>,
}

/// This process's recent attempts, per job.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl History {
    pub fn record(&self, job_id: &str, mut attempt: Attempt) {
        if let Some(e) = attempt.error.as_mut() {
            if e.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
            }
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.jobs.contains_key(job_id) {
            while inner.jobs.len() >= MAX_JOBS {
                let Some(old) = inner.order.pop_front() else {
                    break;
                };
                inner.jobs.remove(&old);
            }
            inner.order.push_back(job_id.to_string());
        }
        let log = inner.jobs.entry(job_id.to_string()).or_default();
        if log.len() >= MAX_PER_JOB {
            log.pop_front();
        }
        log.push_back(attempt);
    }

    /// The attempts recorded for `job_id`, oldest first.
    pub fn of(&self, job_id: &str) -> Vec<Attempt> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .jobs
            .get(job_id)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at: u64) -> Attempt {
        Attempt {
            at,
            part: "primary".into(),
            region: None,
            status_code: Some(503),
            wait_ms: Some(1),
            upstream_calls: 1,
            duration_ms: 2,
            error: Some("x".repeat(1000)),
        }
    }

    #[test]
    fn bounded_per_job_and_in_jobs() {
        let h = History::default();
        for i in 0..(MAX_PER_JOB as u64 + 5) {
            h.record("j1", attempt(i));
        }
        let log = h.of("j1");
        assert_eq!(log.len(), MAX_PER_JOB);
        assert_eq!(log[0].at, 5);
        assert!(log[0].error.as_ref().is_some_and(|e| e.len() < 400));
        for j in 0..MAX_JOBS {
            h.record(&format!("other{j}"), attempt(0));
        }
        assert!(h.of("j1").is_empty(), "the oldest job is forgotten first");
        assert_eq!(h.of("other1").len(), 1);
        assert!(h.of("nope").is_empty());
    }
}
