//! Requests already on their way spend a budget before the API counts them.
//!
//! A response's `remaining` counts what the API had received up to that
//! request, not what was sent after it. With requests in flight when the
//! budget runs out, the pause at zero would be learned just after one more
//! had gone, and that one would get the API's 429. So every start of a
//! throttle gets a number ([`StartNo`]); an answer's budget is kept as of
//! its request's number ([`Spent`]); and a start is allowed only while the
//! starts after the answered one have not used up what it said was left.
//!
//! Counting every request in flight as spent instead is too blunt: at 50
//! in flight it paused a window with 17 left (tried on 2026-12-02). Here
//! only the starts *after* the answered request count, so a request the
//! API already counted is never counted twice, except one that reached the
//! API before an earlier-started one (conservative by at most the
//! concurrency cap).
//!
//! The same rule runs in two places: [`super::domain`] for one replica,
//! and the Redis admission script ([`super::shared`]) for many, whose
//! start numbers are one sequence across every replica.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::dialects::{self, Budget, BudgetKind};

/// Which start of its throttle an admitted request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartNo {
    /// The `n`-th start (from 1) of this replica's throttle `throttle` (a
    /// [`super::DomainThrottle`]'s id: the main one and a fallback one used
    /// while Redis is away count apart).
    Local { throttle: u64, n: u64 },
    /// The `n`-th start of the domain across every replica (Redis).
    Shared(u64),
}

/// A fresh id for a [`super::DomainThrottle`].
pub fn throttle_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What an answer said was left of a budget restored whole at its reset,
/// as of its request's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    /// The answered request's start number.
    pub after: u64,
    /// Requests left when the API counted it.
    pub remaining: u64,
    /// The budget's reset: the count means nothing after it.
    pub until: Instant,
}

impl Spent {
    /// Whether an answer to start `after` replaces this one: a later start's
    /// answer knows more; an earlier one's only once this one's reset passed
    /// (a late answer of the window before must not undo a newer count).
    pub fn replaced_by(&self, after: u64, now: Instant) -> bool {
        after >= self.after || now >= self.until
    }

    /// Whether `started` starts (every one so far, the answered one
    /// included) used up what was left: then nothing more may start
    /// before the reset.
    pub fn used_up(&self, started: u64, now: Instant) -> bool {
        now < self.until && started.saturating_sub(self.after) >= self.remaining
    }
}

/// The fewest requests left of the answer's budgets that are restored whole
/// at their reset, and that reset (at most [`dialects::MAX_RESET`]).
/// Buckets (a token bucket's refill, a leaky bucket's drain) give back as
/// they go: their pace governs them, not a count to the reset.
pub fn spendable(budgets: &[Budget]) -> Option<(u64, Duration)> {
    budgets
        .iter()
        .filter(|b| {
            b.kind == BudgetKind::Requests
                && !b.dialect.refills_continuously()
                && b.drain_per_sec.is_none()
        })
        .filter_map(|b| {
            let reset = b.reset_in.filter(|d| !d.is_zero())?;
            Some((b.remaining?, reset.min(dialects::MAX_RESET)))
        })
        .min_by_key(|(remaining, _)| *remaining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::dialects::Dialect;

    fn budget(dialect: Dialect, kind: BudgetKind, remaining: u64, reset: u64) -> Budget {
        let mut b = Budget::new(dialect, kind);
        b.limit = Some(100);
        b.remaining = Some(remaining);
        b.reset_in = Some(Duration::from_secs(reset));
        b
    }

    /// The answer to start 10 said two were left, until 5 s from `now`.
    fn two_left_after_10(now: Instant) -> Spent {
        Spent {
            after: 10,
            remaining: 2,
            until: now + Duration::from_secs(5),
        }
    }

    #[test]
    fn the_starts_after_the_answered_one_spend_what_it_left() {
        let now = Instant::now();
        let s = two_left_after_10(now);
        // The answered request itself and one after it: one left.
        assert!(!s.used_up(10, now));
        assert!(!s.used_up(11, now));
        // Two after it: the two that were left are on their way.
        assert!(s.used_up(12, now));
        assert!(s.used_up(u64::MAX, now));
        // Past the reset the count means nothing.
        assert!(!s.used_up(12, now + Duration::from_secs(5)));
        // A count that says nothing is left is used up at once.
        let zero = Spent { remaining: 0, ..s };
        assert!(zero.used_up(10, now));
        // Start numbers from before the answered one (a restart of the
        // counter) spend nothing.
        assert!(!s.used_up(3, now));
    }

    #[test]
    fn only_a_later_answer_or_a_passed_reset_replaces_the_count() {
        let now = Instant::now();
        let s = two_left_after_10(now);
        assert!(s.replaced_by(11, now));
        assert!(s.replaced_by(10, now));
        assert!(!s.replaced_by(9, now));
        assert!(s.replaced_by(9, now + Duration::from_secs(5)));
    }

    #[test]
    fn the_fewest_left_of_the_budgets_restored_at_their_reset() {
        let hourly = budget(Dialect::XRateLimit, BudgetKind::Requests, 40, 3000);
        let secondly = budget(Dialect::Ietf, BudgetKind::Requests, 3, 1);
        assert_eq!(
            spendable(&[hourly.clone(), secondly.clone()]),
            Some((3, Duration::from_secs(1)))
        );
        // Tokens: a request's cost is unknown.
        let tokens = budget(Dialect::XRateLimit, BudgetKind::Tokens, 1, 10);
        assert_eq!(spendable(std::slice::from_ref(&tokens)), None);
        assert_eq!(
            spendable(&[tokens, hourly.clone()]),
            Some((40, Duration::from_secs(3000)))
        );
        // Buckets refill as they go.
        let bucket = budget(Dialect::OpenAi, BudgetKind::Requests, 0, 10);
        assert_eq!(spendable(&[bucket]), None);
        let mut leaky = budget(Dialect::XRateLimit, BudgetKind::Requests, 0, 10);
        leaky.drain_per_sec = Some(2.0);
        assert_eq!(spendable(&[leaky]), None);
        // Without a reset (or one just passed) there is no count to keep.
        let mut no_reset = hourly.clone();
        no_reset.reset_in = None;
        assert_eq!(spendable(&[no_reset]), None);
        let mut just_reset = hourly.clone();
        just_reset.reset_in = Some(Duration::ZERO);
        assert_eq!(spendable(&[just_reset]), None);
        let mut unknown = hourly;
        unknown.remaining = None;
        assert_eq!(spendable(&[unknown]), None);
        // A reset past the longest one believed is cut to it.
        let far = budget(Dialect::XRateLimit, BudgetKind::Requests, 5, 10 * 24 * 3600);
        assert_eq!(spendable(&[far]), Some((5, dialects::MAX_RESET)));
    }
}
