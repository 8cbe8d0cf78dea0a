//! When a failed webhook delivery is tried again (SPEC §8): after the n-th
//! failed attempt wait `backoff * 2^(n-1)`, at most `backoff_cap` (the
//! shared [`crate::backoff`] schedule, without jitter); after
//! `max_attempts` attempts the delivery has failed for good.

use std::time::Duration;

use crate::config::WebhooksConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub backoff_cap: Duration,
}

impl RetryPolicy {
    pub fn from_config(c: &WebhooksConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: c.max_attempts.max(1),
            backoff: c.backoff,
            backoff_cap: c.backoff_cap,
        }
    }

    /// The wait after `attempts` failed attempts (1-based), or `None` when
    /// no attempt is left.
    pub fn next_delay(&self, attempts: u32) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let schedule = crate::backoff::Exponential {
            base: self.backoff,
            cap: self.backoff_cap,
        };
        Some(schedule.ceiling(attempts.saturating_sub(1)))
    }
}

impl Default for RetryPolicy {
    /// SPEC §8: 8 attempts, 1 s doubling, cap 10 min.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_1s_doubling_for_8_attempts() {
        let p = RetryPolicy::default();
        let delays: Vec<u64> = (1..=8)
            .map_while(|n| p.next_delay(n))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(p.next_delay(8), None);
        assert_eq!(p.next_delay(9), None);
    }

    #[test]
    fn the_cap_holds_and_huge_attempt_counts_do_not_overflow() {
        let p = RetryPolicy {
            max_attempts: 1000,
            backoff: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
        };
        assert_eq!(p.next_delay(10), Some(Duration::from_secs(512)));
        assert_eq!(p.next_delay(11), Some(Duration::from_secs(600)));
        assert_eq!(p.next_delay(40), Some(Duration::from_secs(600)));
        assert_eq!(p.next_delay(999), Some(Duration::from_secs(600)));
        let fast = RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(150),
        };
        assert_eq!(fast.next_delay(1), Some(Duration::from_millis(100)));
        assert_eq!(fast.next_delay(2), Some(Duration::from_millis(150)));
        assert_eq!(fast.next_delay(3), None);
    }

    #[test]
    fn config_keys_default_parse_and_validate() {
        use crate::config::Config;
        let def = Config::from_toml_str("", "t.toml").unwrap();
        assert_eq!(
            RetryPolicy::from_config(&def.webhooks),
            RetryPolicy::default()
        );
        let example = Config::from_toml_str(include_str!("../../conf/ezthrottle.toml"), "ex")
            .expect("example parses");
        assert_eq!(example.webhooks.backoff, def.webhooks.backoff);
        assert_eq!(example.webhooks.backoff_cap, def.webhooks.backoff_cap);

        let c = Config::from_toml_str(
            "[webhooks]\nbackoff = \"100ms\"\nbackoff_cap = \"2s\"\nmax_attempts = 3\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.webhooks.backoff, Duration::from_millis(100));
        assert_eq!(c.webhooks.backoff_cap, Duration::from_secs(2));
        assert!(c.to_effective_toml().contains("backoff = \"100ms\""));

        for (text, key) in [
            ("[webhooks]\nbackoff = \"0s\"\n", "webhooks.backoff"),
            ("[webhooks]\nbackoff = \"soon\"\n", "webhooks.backoff"),
            (
                "[webhooks]\nbackoff_cap = \"0ms\"\n",
                "webhooks.backoff_cap",
            ),
            (
                "[webhooks]\nbackoff = \"2s\"\nbackoff_cap = \"1s\"\n",
                "webhooks.backoff_cap",
            ),
        ] {
            let e = Config::from_toml_str(text, "t.toml").expect_err(text);
            assert_eq!(e.key, key, "{e}");
            assert_eq!(e.file, "t.toml");
        }
    }
}
