//! `[jobs]`: retention, deadline and lease of jobs.

use std::time::Duration;

use super::load::Ctx;
use super::raw::RawJobs;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Finished jobs (and their delivered or failed webhooks) are deleted
    /// this long after they ended; their keys are then free. Key `retention`.
    pub retention: Duration,
    /// A job still being retried this long after it was queued ends
    /// `failed` with its last answer. Default 24h. Key `deadline`.
    pub deadline: Duration,
    /// How long a claimed job stays its runner's without a renewal; renewed
    /// every third of it while the job runs. Default 30s. Key `lease`.
    pub lease: Duration,
}

pub(super) fn build(cx: &Ctx, j: &RawJobs) -> Result<JobsConfig, ConfigError> {
    Ok(JobsConfig {
        retention: cx.positive_duration("jobs.retention", &j.retention, 7 * 24 * 3600)?,
        deadline: cx.positive_duration("jobs.deadline", &j.deadline, 24 * 3600)?,
        lease: cx.positive_duration("jobs.lease", &j.lease, 30)?,
    })
}
