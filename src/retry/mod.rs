//! Retry policy (SPEC §7): which upstream outcomes are tried again, whether
//! through the same region or the next one, and after how long.
//!
//! Pure decisions, no I/O: the pipeline (`pipeline/retry.rs`) asks
//! [`Policy::decide`] after each attempt and does the waiting itself.

pub mod route;

use std::time::Duration;

use crate::config::RetryConfig;

/// What the last attempt produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final (non-1xx) response status.
    Status(u16),
    /// No connection: nothing reached the origin.
    ConnectFailed,
    /// The upstream's TLS certificate was rejected (unknown issuer,
    /// expired, wrong name): every attempt would be, so none is repeated.
    TlsRejected,
    /// The connection failed after (part of) the request went out.
    FailedAfterSend,
}

/// How the next attempt differs from the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Same region again.
    Retry,
    /// The next region in the domain's order.
    Reroute,
}

impl Kind {
    /// The `kind` label of `retries_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Retry => "retry",
            Kind::Reroute => "reroute",
        }
    }
}

/// Attempts used so far by one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub retries: u32,
    pub reroutes: u32,
}

impl Spent {
    pub fn record(&mut self, kind: Kind) {
        match kind {
            Kind::Retry => self.retries += 1,
            Kind::Reroute => self.reroutes += 1,
        }
    }
}

/// Why an outcome is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// Not a retry or reroute code: the answer stands.
    NotRetryable,
    /// A POST/PATCH without `Idempotency-Key` may have acted (SPEC §7 safety).
    Unsafe,
    /// `max_retries` / `max_reroutes` used up.
    BudgetSpent,
}

/// The retry policy of one request: the domain's `[retry]`, plus what the
/// request itself allows.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: RetryConfig,
    /// POST or PATCH.
    pub unsafe_method: bool,
    pub has_idempotency_key: bool,
}

/// Codes at which the server promises it did not act on the request.
const NOT_ACTED: [u16; 2] = [429, 503];

impl Policy {
    pub fn new(config: RetryConfig, method: &http::Method, has_idempotency_key: bool) -> Self {
        Policy {
            config,
            unsafe_method: method == http::Method::POST || method == http::Method::PATCH,
            has_idempotency_key,
        }
    }

    /// Whether (and how) to try again after `outcome`, given what was spent.
    pub fn decide(&self, outcome: Outcome, spent: Spent) -> Result<Kind, Final> {
        let guarded = self.unsafe_method && !self.has_idempotency_key;
        let kind = match outcome {
            Outcome::Status(code) => {
                let kind = if self.config.retry_codes.contains(&code) {
                    Kind::Retry
                } else if self.config.reroute_codes.contains(&code) {
                    Kind::Reroute
                } else {
                    return Err(Final::NotRetryable);
                };
                if guarded && !NOT_ACTED.contains(&code) {
                    return Err(Final::Unsafe);
                }
                kind
            }
            // Nothing was sent: safe for every method.
            Outcome::ConnectFailed => Kind::Reroute,
            Outcome::TlsRejected => return Err(Final::NotRetryable),
            Outcome::FailedAfterSend => {
                if guarded {
                    return Err(Final::Unsafe);
                }
                Kind::Reroute
            }
        };
        let left = match kind {
            Kind::Retry => spent.retries < self.config.max_retries,
            Kind::Reroute => spent.reroutes < self.config.max_reroutes,
        };
        if left {
            Ok(kind)
        } else {
            Err(Final::BudgetSpent)
        }
    }

    /// The pause before the next attempt: the origin's `Retry-After` when it
    /// sent one, else exponential backoff with full jitter.
    pub fn delay(&self, retry_after: Option<Duration>, spent: Spent) -> Duration {
        retry_after
            .unwrap_or_else(|| crate::backoff::RETRY.full_jitter(spent.retries + spent.reroutes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig::default()
    }

    fn policy(method: &str, key: bool) -> Policy {
        Policy::new(config(), &method.parse().unwrap(), key)
    }

    #[test]
    fn retry_and_reroute_codes() {
        let p = policy("GET", false);
        let none = Spent::default();
        assert_eq!(p.decide(Outcome::Status(503), none), Ok(Kind::Retry));
        assert_eq!(p.decide(Outcome::Status(429), none), Ok(Kind::Retry));
        assert_eq!(p.decide(Outcome::Status(502), none), Ok(Kind::Reroute));
        assert_eq!(p.decide(Outcome::ConnectFailed, none), Ok(Kind::Reroute));
        assert_eq!(p.decide(Outcome::FailedAfterSend, none), Ok(Kind::Reroute));
        assert_eq!(
            p.decide(Outcome::Status(200), none),
            Err(Final::NotRetryable)
        );
        assert_eq!(
            p.decide(Outcome::Status(404), none),
            Err(Final::NotRetryable)
        );
    }

    #[test]
    fn post_without_key_only_when_the_server_did_not_act() {
        for method in ["POST", "PATCH"] {
            let p = policy(method, false);
            let none = Spent::default();
            assert_eq!(p.decide(Outcome::Status(503), none), Ok(Kind::Retry));
            assert_eq!(p.decide(Outcome::Status(500), none), Err(Final::Unsafe));
            assert_eq!(p.decide(Outcome::Status(502), none), Err(Final::Unsafe));
            assert_eq!(p.decide(Outcome::FailedAfterSend, none), Err(Final::Unsafe));
            // Never sent: safe.
            assert_eq!(p.decide(Outcome::ConnectFailed, none), Ok(Kind::Reroute));
            // A rejected certificate is rejected again: never repeated.
            assert_eq!(
                p.decide(Outcome::TlsRejected, none),
                Err(Final::NotRetryable)
            );
            assert_eq!(
                policy("GET", false).decide(Outcome::TlsRejected, none),
                Err(Final::NotRetryable)
            );
            // With a key the origin de-duplicates: all codes apply.
            let keyed = policy(method, true);
            assert_eq!(keyed.decide(Outcome::Status(500), none), Ok(Kind::Reroute));
        }
        // PUT and DELETE are idempotent by definition.
        assert_eq!(
            policy("PUT", false).decide(Outcome::Status(500), Spent::default()),
            Ok(Kind::Reroute)
        );
    }

    #[test]
    fn budgets_are_separate_and_end() {
        let p = policy("GET", false);
        let mut spent = Spent::default();
        for _ in 0..3 {
            assert_eq!(p.decide(Outcome::Status(503), spent), Ok(Kind::Retry));
            spent.record(Kind::Retry);
        }
        assert_eq!(
            p.decide(Outcome::Status(503), spent),
            Err(Final::BudgetSpent)
        );
        // Reroutes have their own budget.
        assert_eq!(p.decide(Outcome::Status(500), spent), Ok(Kind::Reroute));
        spent.record(Kind::Reroute);
        spent.record(Kind::Reroute);
        assert_eq!(
            p.decide(Outcome::Status(500), spent),
            Err(Final::BudgetSpent)
        );
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        let p = policy("GET", false);
        assert_eq!(
            p.delay(Some(Duration::from_secs(7)), Spent::default()),
            Duration::from_secs(7)
        );
        assert!(p.delay(None, Spent::default()) <= crate::backoff::RETRY.base);
    }
}
