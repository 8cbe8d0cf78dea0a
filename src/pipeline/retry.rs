//! Classify's retry half on the proxy path (SPEC §7): after each attempt,
//! deliver the answer, try again (same region or the next), or park. The
//! policy itself is [`crate::retry`]; this module keeps one request's
//! progress and does the waiting between attempts.
//!
//! pingora carries the mechanics: a hook that returns a retryable error makes
//! it call `upstream_peer` again, re-sending the body from its retry buffer
//! (or from the body read ahead, see `body.rs`).

use std::time::Duration;

use pingora::proxy::Session;
use tokio::time::Instant;

use super::admit;
use super::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::retry::route::{self, Route};
use crate::retry::{Kind, Outcome, Policy, Spent};
use crate::state::Shared;

/// One request's retry policy and progress.
pub struct RetryState {
    pub policy: Policy,
    pub spent: Spent,
    pub route: Route,
    /// Admission start + the request's max wait: no attempt starts later.
    pub deadline: Instant,
    /// The body is small enough to send again (`[retry] max_buffered_body`).
    pub replayable: bool,
    /// Decided, not yet started: the next attempt and its pause.
    pub pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub kind: Kind,
    pub delay: Duration,
}

/// What to do with an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Answer the client with it.
    Deliver,
    /// Another attempt is scheduled (`RetryState::pending`).
    Again,
    /// The next attempt would end past the max wait: park the request.
    Park,
}

/// Set up the retry state of an admitted request.
pub fn init(shared: &Shared, session: &Session, ctx: &mut RequestCtx, deadline: Instant) {
    let Some(domain) = ctx.domain() else {
        return;
    };
    // One snapshot for the whole set-up (each load is a hazard-pointer
    // dance of its own).
    let snapshot = ctx.config(shared);
    let mut config = route::retry_config(&snapshot, domain).clone();
    let req = session.req_header();
    // A job's own retry_policy (set by the job runner, see jobs/attempt.rs;
    // a client's copy of the header is not believed).
    let internal = ctx.caller.is_internal();
    // `internal` first: a client's request skips the look-up.
    if let Some(policy) = internal
        .then(|| req.headers.get(&crate::wire::names::RETRY_POLICY))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str::<crate::jobs::spec::RetryPolicySpec>(v).ok())
    {
        policy.apply(&mut config);
    }
    let keyed = req
        .headers
        .contains_key(&crate::idempotency::key::HEADER_NAME);
    // A body is replayable when it was read ahead, or when it is declared
    // small enough (pingora buffers what it streams, see `after`).
    let replayable = match (&ctx.body, super::body::declared_len(session)) {
        (Some(b), _) => b.len() as u64 <= config.max_buffered_body,
        (None, Some(n)) => n <= config.max_buffered_body.min(super::body::RETRY_BUFFER),
        // Chunked: decided by pingora's buffer after the attempt.
        (None, None) => true,
    };
    let route = match internal
        .then(|| req.headers.get(&crate::wire::names::REGION))
        .flatten()
        .and_then(|v| v.to_str().ok())
    {
        Some(first) => Route::starting_at(&snapshot, domain, first.trim()),
        None => Route::for_domain(&snapshot, domain),
    };
    ctx.retry = Some(RetryState {
        policy: Policy::new(config, &req.method, keyed),
        spent: Spent::default(),
        route,
        deadline,
        replayable,
        pending: None,
    });
}

/// Decide after an attempt. `truncated`: pingora's retry buffer overflowed,
/// so a body not read ahead cannot be sent again.
pub fn after(
    shared: &Shared,
    ctx: &mut RequestCtx,
    outcome: Outcome,
    retry_after: Option<Duration>,
    truncated: bool,
) -> Next {
    let can_park = ctx.park.is_some();
    // Borrowed field by field (the target beside the retry state), not
    // copied: most answers are delivered and need no domain at all.
    let domain = ctx.target.as_ref().map_or("", |t| t.domain());
    let body_read_ahead = ctx.body.is_some();
    let Some(state) = ctx.retry.as_mut() else {
        return Next::Deliver;
    };
    if !state.replayable || (truncated && !body_read_ahead) {
        return Next::Deliver;
    }
    let Ok(kind) = state.policy.decide(outcome, state.spent) else {
        return Next::Deliver;
    };
    let delay = state.policy.delay(retry_after, state.spent);
    if Instant::now() + delay > state.deadline {
        return if can_park { Next::Park } else { Next::Deliver };
    }
    state.spent.record(kind);
    let actual = if kind == Kind::Reroute && state.route.has_alternative() {
        state.route.advance();
        Kind::Reroute
    } else {
        Kind::Retry
    };
    let label = shared.metrics.domain_label(domain);
    shared
        .metrics
        .retries_total
        .with_label_values(&[label.as_str(), actual.as_str()])
        .inc();
    tracing::debug!(domain = %domain, kind = actual.as_str(), delay_ms = delay.as_millis() as u64, region = state.route.current(), "upstream attempt will be repeated");
    state.pending = Some(Pending {
        kind: actual,
        delay,
    });
    Next::Again
}

/// Whether a retry was decided and not started yet.
pub fn is_pending(ctx: &RequestCtx) -> bool {
    ctx.retry.as_ref().is_some_and(|s| s.pending.is_some())
}

/// Before a repeated attempt: give back the concurrency slot, pause, and
/// pass the domain's throttle again within what is left of the max wait.
pub async fn before_next_attempt(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    let Some(state) = ctx.retry.as_mut() else {
        return Ok(());
    };
    let Some(pending) = state.pending.take() else {
        return Ok(());
    };
    let deadline = state.deadline;
    ctx.permit = None;
    admit::unless_client_leaves(session, tokio::time::sleep(pending.delay)).await?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    admit::admit(shared, session, ctx, remaining).await
}

/// The peer proxy the current attempt goes through, if not `local`.
pub fn via_region(shared: &Shared, ctx: &RequestCtx) -> Option<(String, String, u16)> {
    let region = ctx.retry.as_ref()?.route.current();
    let (host, port) = route::peer(&ctx.config(shared), region)?;
    Some((region.to_string(), host, port))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::pipeline::ctx::Target;
    use crate::pipeline::park::ParkOptions;

    /// A real `Shared` (metrics, config) on a throwaway data dir. It starts
    /// its own runtime, so these tests are synchronous (`after` never waits).
    fn shared(dir: &std::path::Path, extra: &str) -> Arc<Shared> {
        let text = format!(
            "data_dir = \"{}\"\n[retry]\nmax_retries = 2\nmax_reroutes = 0\n{extra}",
            dir.display()
        );
        crate::server::build_shared(Config::from_toml_str(&text, "t.toml").unwrap()).unwrap()
    }

    fn ctx(shared: &Shared, method: &str, keyed: bool, deadline: Instant) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.target = Some(Target {
            host: "api.test".into(),
            port: 443,
            tls: true,
            path_and_query: http::uri::PathAndQuery::from_static("/"),
        });
        let config = shared.config.load();
        ctx.retry = Some(RetryState {
            policy: Policy::new(
                route::retry_config(&config, "api.test").clone(),
                &method.parse().unwrap(),
                keyed,
            ),
            spent: Spent::default(),
            route: Route::for_domain(&config, "api.test"),
            deadline,
            replayable: true,
            pending: None,
        });
        ctx
    }

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    /// A 503 is tried again until the budget (`max_retries = 2`) is spent,
    /// each decision leaving the pause for the next attempt to take.
    #[test]
    fn retries_until_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "");
        let mut ctx = ctx(&shared, "GET", false, later(600));
        for _ in 0..2 {
            let next = after(&shared, &mut ctx, Outcome::Status(503), None, false);
            assert_eq!(next, Next::Again);
            assert!(is_pending(&ctx));
            ctx.retry.as_mut().unwrap().pending = None; // the attempt starts
        }
        assert_eq!(
            after(&shared, &mut ctx, Outcome::Status(503), None, false),
            Next::Deliver,
            "third 503: budget spent"
        );
        // Not a retry code at all.
        let mut fresh = self::ctx(&shared, "GET", false, later(600));
        assert_eq!(
            after(&shared, &mut fresh, Outcome::Status(404), None, false),
            Next::Deliver
        );
    }

    /// The origin's Retry-After sets the pause; past the max wait the
    /// request parks when it named a webhook, else the answer is delivered.
    #[test]
    fn a_pause_past_the_deadline_parks_or_delivers() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "");
        let mut ctx = ctx(&shared, "GET", false, later(10));
        let next = after(
            &shared,
            &mut ctx,
            Outcome::Status(429),
            Some(Duration::from_secs(2)),
            false,
        );
        assert_eq!(next, Next::Again);
        let pending = ctx.retry.as_ref().unwrap().pending.unwrap();
        assert_eq!(
            pending.delay,
            Duration::from_secs(2),
            "the origin's Retry-After"
        );

        let mut ctx = self::ctx(&shared, "GET", false, later(10));
        let long = Some(Duration::from_secs(3600));
        assert_eq!(
            after(&shared, &mut ctx, Outcome::Status(429), long, false),
            Next::Deliver
        );
        ctx.park = Some(ParkOptions {
            webhooks: vec!["https://hooks.example/x".into()],
            metadata: serde_json::Value::Null,
            respond_async: false,
            max_wait: Duration::from_secs(10),
        });
        assert_eq!(
            after(&shared, &mut ctx, Outcome::Status(429), long, false),
            Next::Park
        );
    }

    /// A POST without an Idempotency-Key is repeated only where the server
    /// promised it did not act (429, 503) or nothing was sent; a body that
    /// cannot be sent again is never retried.
    #[test]
    fn unsafe_requests_and_lost_bodies_are_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "");
        let post = |keyed| ctx(&shared, "POST", keyed, later(600));
        assert_eq!(
            after(&shared, &mut post(false), Outcome::Status(502), None, false),
            Next::Deliver
        );
        assert_eq!(
            after(
                &shared,
                &mut post(false),
                Outcome::FailedAfterSend,
                None,
                false
            ),
            Next::Deliver
        );
        assert_eq!(
            after(&shared, &mut post(false), Outcome::Status(503), None, false),
            Next::Again
        );
        assert_eq!(
            after(
                &shared,
                &mut post(false),
                Outcome::ConnectFailed,
                None,
                false
            ),
            Next::Deliver,
            "max_reroutes = 0: connection failures reroute, and none are allowed here"
        );
        assert_eq!(
            after(&shared, &mut post(true), Outcome::Status(503), None, false),
            Next::Again
        );
        // pingora's retry buffer overflowed and the body was not read ahead.
        assert_eq!(
            after(&shared, &mut post(true), Outcome::Status(503), None, true),
            Next::Deliver
        );
        let mut unreplayable = post(true);
        unreplayable.retry.as_mut().unwrap().replayable = false;
        assert_eq!(
            after(
                &shared,
                &mut unreplayable,
                Outcome::Status(503),
                None,
                false
            ),
            Next::Deliver
        );
        // A rejected upstream certificate: never again.
        assert_eq!(
            after(&shared, &mut post(true), Outcome::TlsRejected, None, false),
            Next::Deliver
        );
    }
}
