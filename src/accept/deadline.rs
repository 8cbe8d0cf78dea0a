//! One timer per client connection for the waits between its requests.
//!
//! A keep-alive connection waits for each next head under a deadline (the
//! keep-alive idle time, or `head_timeout` once a head has begun). A
//! `tokio::time::timeout` per wait registered a timer in the runtime's
//! wheel and took it out again on every request (~550 instructions and the
//! wheel's lock, docs/performance.md, "The twelfth pass"), though the
//! deadline almost never passes. Here the connection keeps one `Sleep` and
//! moves it: moving a registered timer later is one compare-and-swap in
//! tokio (`extend_expiration`); the wheel notices when the old time comes
//! and files it again, so a busy connection touches the wheel about once
//! per idle period instead of once per request. Moving it earlier (a head
//! that began and stalled) re-registers it, as before.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The connection's deadline for its next head; unarmed (and not yet
/// allocated) until its first wait.
#[derive(Default)]
pub struct HeadDeadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HeadDeadline {
    /// The deadline is now `after` from now, later or earlier than before.
    pub fn arm(&mut self, after: Duration) {
        let at = Instant::now() + after;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Resolves when the armed deadline passes; never when unarmed.
    pub fn passed(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved later, it does not fire at the first time; moved earlier, it
    /// fires at the new one. Paused time: the clock moves only when every
    /// task waits, so the bounds are exact, not timings.
    #[tokio::test(start_paused = true)]
    async fn moves_later_and_earlier() {
        let mut d = HeadDeadline::default();
        let began = Instant::now();
        d.arm(Duration::from_secs(1));
        // Register the timer at 1 s, as a wait does before it is re-armed.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), d.passed())
                .await
                .is_err(),
            "passed before its deadline"
        );
        d.arm(Duration::from_secs(60));
        d.passed().await;
        assert!(
            began.elapsed() >= Duration::from_secs(60),
            "{:?}",
            began.elapsed()
        );

        let began = Instant::now();
        d.arm(Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_millis(10), d.passed())
            .await
            .is_err());
        d.arm(Duration::from_secs(1));
        d.passed().await;
        let took = began.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(60),
            "{took:?}"
        );
    }

    /// Unarmed, it never passes.
    #[tokio::test(start_paused = true)]
    async fn unarmed_never_passes() {
        let mut d = HeadDeadline::default();
        assert!(tokio::time::timeout(Duration::from_secs(3600), d.passed())
            .await
            .is_err());
    }
}
