//! How one run of a job unfolds (SPEC §8): its regions (`race`: first 2xx
//! wins, the others are dropped; `fanout`: all run), then its fallback chain
//! (`on_error` codes, `on_timeout`), first success winning.
//!
//! Each concurrent attempt carries its own idempotency key (`<key>#<region>`,
//! `<key>#fallback<n>`): under one key our own idempotency layer would make
//! the second attempt wait for the first, which is not a race.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use super::attempt::{self, AttemptResponse, Identity};
use super::spec::{ExecutionMode, JobSpec, Trigger};

/// What a run produced.
#[derive(Debug, Clone)]
pub enum Run {
    /// A final answer (the origin's, or the proxy's own error after its
    /// retries).
    Answer {
        resp: AttemptResponse,
        /// Fanout only: one entry per region.
        region_results: Option<Vec<Value>>,
    },
    /// The proxy refused for now (capacity, key in flight, shutting down):
    /// try the whole run again after this long.
    NotNow(Duration),
    /// Our own listener could not be reached.
    Unreachable(String),
}

impl Run {
    pub fn succeeded(&self) -> bool {
        matches!(self, Run::Answer { resp, .. } if is_success(resp))
    }

    fn status(&self) -> Option<u16> {
        match self {
            Run::Answer { resp, .. } => Some(resp.status),
            _ => None,
        }
    }
}

/// The upstream calls behind one answer of our proxy: its
/// `X-EZThrottle-Attempts`; without it, one for an origin's answer and none
/// for the proxy's own refusal.
fn upstream_calls(resp: &AttemptResponse) -> u32 {
    resp.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(crate::wire::ATTEMPTS_HEADER))
        .and_then(|(_, v)| v.trim().parse::<u32>().ok())
        .unwrap_or(u32::from(resp.proxy_error.is_none()))
}

pub fn is_success(resp: &AttemptResponse) -> bool {
    (200..300).contains(&resp.status)
}

/// Proxy answers that mean "not now" rather than a result.
const NOT_NOW: &[&str] = &[
    "throttle_queue_full",
    "throttle_wait_timeout",
    "idempotency_key_in_flight",
    "store_unavailable",
    "shutting_down",
];

/// Where attempts go and how long they may take.
#[derive(Clone, Copy)]
pub struct Runner<'a> {
    pub proxy: SocketAddr,
    pub internal_token: &'a str,
    pub job_id: &'a str,
    pub workspace: &'a str,
    pub timeout: Duration,
    pub max_body: usize,
    /// Upstream calls made by every attempt of this run (all regions and
    /// fallbacks), from each answer's `X-EZThrottle-Attempts`.
    pub calls: &'a AtomicU32,
    /// Where each attempt is recorded (the console's job page).
    pub history: &'a super::history::History,
    /// The job's own idempotent key: an attempt's key past it names the
    /// part of the job (fallback, region).
    pub base_key: &'a str,
}

impl<'a> Runner<'a> {
    /// The job with its fallback chain.
    pub fn chain(self, spec: &'a JobSpec, key: String, depth: usize) -> BoxFuture<'a, Run> {
        Box::pin(async move {
            let primary = self.regions(spec, key.clone());
            let Some(fb) = spec.fallback.as_deref() else {
                return primary.await;
            };
            let fb_key = format!("{key}#fallback{}", depth + 1);
            match &fb.trigger {
                Trigger::OnError { codes } => {
                    let run = primary.await;
                    let triggered = match &run {
                        Run::Answer { resp, .. } if !is_success(resp) => {
                            codes.is_empty() || codes.contains(&resp.status)
                        }
                        Run::Unreachable(_) => codes.is_empty(),
                        _ => false,
                    };
                    if !triggered {
                        return run;
                    }
                    tracing::debug!(job_id = self.job_id, status = ?run.status(), "primary failed; running its fallback");
                    self.chain(&fb.job, fb_key, depth + 1).await
                }
                Trigger::OnTimeout { timeout_ms } => {
                    let mut primary = primary;
                    let timer = tokio::time::sleep(Duration::from_millis(*timeout_ms));
                    tokio::select! {
                        run = &mut primary => return run,
                        _ = timer => {}
                    }
                    tracing::debug!(
                        job_id = self.job_id,
                        "no answer in time; racing the fallback"
                    );
                    let fallback = self.chain(&fb.job, fb_key, depth + 1);
                    first_success(vec![primary, fallback]).await
                }
            }
        })
    }

    /// One job (no fallback) across its regions.
    fn regions(self, spec: &'a JobSpec, key: String) -> BoxFuture<'a, Run> {
        Box::pin(async move {
            if spec.regions.len() <= 1 {
                let region = spec.regions.first().cloned();
                return self.attempt(spec, key, region).await;
            }
            let runs: Vec<BoxFuture<'a, Run>> = spec
                .regions
                .iter()
                .map(|r| {
                    let key = format!("{key}#{r}");
                    Box::pin(self.attempt(spec, key, Some(r.clone()))) as BoxFuture<'a, Run>
                })
                .collect();
            match spec.execution_mode {
                ExecutionMode::Race => first_success(runs).await,
                ExecutionMode::Fanout => {
                    let results = futures::future::join_all(runs).await;
                    fanout(&spec.regions, results)
                }
            }
        })
    }

    async fn attempt(self, spec: &JobSpec, key: String, region: Option<String>) -> Run {
        let who = Identity {
            job_id: self.job_id,
            workspace: self.workspace,
            idempotent_key: &key,
            internal_token: self.internal_token,
        };
        let started = std::time::Instant::now();
        let at = crate::store::now_ms();
        let sent = attempt::send(
            self.proxy,
            &who,
            spec,
            region.as_deref(),
            self.timeout,
            self.max_body,
        )
        .await;
        self.history.record(
            self.job_id,
            record(
                &sent,
                at,
                started,
                part(self.base_key, &key),
                region.clone(),
            ),
        );
        match sent {
            Ok(resp) => {
                self.calls
                    .fetch_add(upstream_calls(&resp), Ordering::Relaxed);
                match resp.proxy_error.as_deref() {
                    Some(code) if NOT_NOW.contains(&code) => {
                        Run::NotNow(resp.retry_after.unwrap_or(Duration::from_secs(1)))
                    }
                    _ => Run::Answer {
                        resp,
                        region_results: None,
                    },
                }
            }
            Err(e) => Run::Unreachable(e),
        }
    }
}

/// `primary`, or what an attempt's key adds to the job's: `fallback 1`,
/// `region lax`, `fallback 1, region lax`.
fn part(base: &str, key: &str) -> String {
    let rest = key.strip_prefix(base).unwrap_or("");
    let parts: Vec<String> = rest
        .split('#')
        .filter(|p| !p.is_empty())
        .map(|p| match p.strip_prefix("fallback") {
            Some(n) => format!("fallback {n}"),
            None => format!("region {p}"),
        })
        .collect();
    if parts.is_empty() {
        "primary".into()
    } else {
        parts.join(", ")
    }
}

/// The history entry of one attempt.
fn record(
    sent: &Result<AttemptResponse, String>,
    at: u64,
    started: std::time::Instant,
    part: String,
    region: Option<String>,
) -> super::history::Attempt {
    let header = |resp: &AttemptResponse, name: &str| {
        resp.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match sent {
        Ok(resp) => super::history::Attempt {
            at,
            part,
            region,
            status_code: Some(resp.status),
            wait_ms: header(resp, crate::wire::WAIT_MS_HEADER),
            upstream_calls: upstream_calls(resp),
            duration_ms,
            error: resp.proxy_error.clone(),
        },
        Err(e) => super::history::Attempt {
            at,
            part,
            region,
            status_code: None,
            wait_ms: None,
            upstream_calls: 0,
            duration_ms,
            error: Some(e.clone()),
        },
    }
}

/// The first successful run; else the most telling failure (an answer over
/// "not now" over unreachable), once all have ended.
async fn first_success<'a>(runs: Vec<BoxFuture<'a, Run>>) -> Run {
    let mut pending: FuturesUnordered<_> = runs.into_iter().collect();
    let mut best: Option<Run> = None;
    while let Some(run) = pending.next().await {
        if run.succeeded() {
            // Dropping `pending` cancels the rest.
            return run;
        }
        let better = matches!(
            (&best, &run),
            (None, _)
                | (Some(Run::Unreachable(_)), _)
                | (
                    Some(Run::NotNow(_) | Run::Answer { .. }),
                    Run::Answer { .. }
                )
        );
        if better {
            best = Some(run);
        }
    }
    best.unwrap_or_else(|| Run::Unreachable("no attempt ran".into()))
}

/// All regions ran: success if any succeeded; `region_results` lists each.
fn fanout(regions: &[String], results: Vec<Run>) -> Run {
    let region_results: Vec<Value> = regions
        .iter()
        .zip(&results)
        .map(|(region, run)| match run {
            Run::Answer { resp, .. } => json!({
                "region": region,
                "status": if is_success(resp) { "success" } else { "failed" },
                "status_code": resp.status,
                "body": String::from_utf8_lossy(&resp.body),
            }),
            Run::NotNow(_) => json!({"region": region, "status": "failed", "status_code": null, "error": "not admitted"}),
            Run::Unreachable(e) => json!({"region": region, "status": "failed", "status_code": null, "error": e}),
        })
        .collect();
    let chosen = results
        .iter()
        .find(|r| r.succeeded())
        .or_else(|| results.iter().find(|r| matches!(r, Run::Answer { .. })))
        .cloned();
    match chosen {
        Some(Run::Answer { resp, .. }) => Run::Answer {
            resp,
            region_results: Some(region_results),
        },
        _ => results
            .into_iter()
            .next()
            .unwrap_or_else(|| Run::Unreachable("no region".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn answer(status: u16) -> Run {
        Run::Answer {
            resp: AttemptResponse {
                status,
                headers: vec![],
                body: format!("{status}").into_bytes(),
                proxy_error: None,
                retry_after: None,
            },
            region_results: None,
        }
    }

    fn after(ms: u64, run: Run) -> BoxFuture<'static, Run> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            run
        })
    }

    /// Sets its flag when dropped: a cancelled attempt.
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Race: the first 2xx wins even when a failure came first, and the
    /// attempts still running are cancelled.
    #[tokio::test(start_paused = true)]
    async fn a_race_is_won_by_the_first_success_and_the_rest_are_cancelled() {
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Dropped(cancelled.clone());
        let slow: BoxFuture<'static, Run> = Box::pin(async move {
            let _flag = flag;
            std::future::pending::<Run>().await
        });
        let run = first_success(vec![after(10, answer(503)), after(20, answer(200)), slow]).await;
        assert!(run.succeeded());
        assert_eq!(run.status(), Some(200));
        assert!(
            cancelled.load(Ordering::SeqCst),
            "the slow region was cancelled"
        );
    }

    /// Nobody succeeds: an answer tells more than "not now", which tells
    /// more than "unreachable", whatever the order they ended in.
    #[tokio::test(start_paused = true)]
    async fn a_lost_race_keeps_the_most_telling_failure() {
        let run = first_success(vec![
            after(1, Run::Unreachable("refused".into())),
            after(2, answer(502)),
            after(3, Run::NotNow(Duration::from_secs(1))),
        ])
        .await;
        assert_eq!(run.status(), Some(502));
        let run = first_success(vec![
            after(1, Run::Unreachable("refused".into())),
            after(2, Run::NotNow(Duration::from_secs(4))),
        ])
        .await;
        assert!(matches!(run, Run::NotNow(d) if d == Duration::from_secs(4)));
        assert!(matches!(first_success(vec![]).await, Run::Unreachable(_)));
    }

    /// Fanout: every region is reported; the run succeeds if any region
    /// did, else carries the first answer, else the first run.
    #[test]
    fn fanout_reports_every_region_and_prefers_a_success() {
        let regions = vec!["iad".to_string(), "lax".to_string(), "fra".to_string()];
        let run = fanout(
            &regions,
            vec![answer(500), answer(201), Run::Unreachable("down".into())],
        );
        let Run::Answer {
            resp,
            region_results: Some(results),
        } = &run
        else {
            panic!("an answer with region results: {run:?}")
        };
        assert_eq!(resp.status, 201);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["status"], "failed");
        assert_eq!(results[0]["status_code"], 500);
        assert_eq!(results[1]["status"], "success");
        assert_eq!(results[2]["error"], "down");
        let run = fanout(
            &regions,
            vec![Run::NotNow(Duration::ZERO), answer(404), answer(500)],
        );
        assert_eq!(
            run.status(),
            Some(404),
            "the first answer when none succeeded"
        );
        let run = fanout(
            &regions[..2],
            vec![Run::Unreachable("a".into()), Run::NotNow(Duration::ZERO)],
        );
        assert!(matches!(run, Run::Unreachable(ref e) if e == "a"));
    }

    #[test]
    fn attempt_parts_are_named_from_their_keys() {
        assert_eq!(part("k", "k"), "primary");
        assert_eq!(part("k", "k#lax"), "region lax");
        assert_eq!(part("k", "k#fallback1"), "fallback 1");
        assert_eq!(part("k", "k#fallback1#lax"), "fallback 1, region lax");
    }

    #[test]
    fn upstream_calls_come_from_our_attempts_header() {
        let mut resp = AttemptResponse {
            status: 200,
            headers: vec![("X-EZThrottle-Attempts".into(), " 3 ".into())],
            body: vec![],
            proxy_error: None,
            retry_after: None,
        };
        assert_eq!(upstream_calls(&resp), 3);
        resp.headers.clear();
        assert_eq!(upstream_calls(&resp), 1, "an origin's answer: one call");
        resp.proxy_error = Some("throttle_wait_timeout".into());
        assert_eq!(upstream_calls(&resp), 0, "our own refusal: none");
        resp.headers = vec![("x-ezthrottle-attempts".into(), "many".into())];
        assert_eq!(upstream_calls(&resp), 0);
    }
}
