//! `[webhooks]`: the signing secret and the delivery schedule.

use std::time::Duration;

use super::load::{format_duration, positive_u32, Ctx};
use super::raw::RawWebhooks;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Default-workspace secret (or `EZTHROTTLE_WEBHOOK_SECRET`). Never printed.
    pub secret: Option<String>,
    pub max_attempts: u32,
    /// Delay before the 2nd attempt; doubles per attempt. Default 1s. Key `backoff`.
    pub backoff: Duration,
    /// Longest delay between two attempts; default 10m. Key `backoff_cap`.
    pub backoff_cap: Duration,
}

pub(super) fn build(cx: &Ctx, w: &RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
    if let Some(s) = &w.secret {
        if s.chars().count() < 16 {
            return Err(cx.err("webhooks.secret", "must be at least 16 characters"));
        }
        let max = crate::webhooks::secrets::MAX_SECRET_BYTES;
        if s.len() > max {
            return Err(cx.err(
                "webhooks.secret",
                format!("must be at most {max} bytes (got {})", s.len()),
            ));
        }
    }
    let webhooks = WebhooksConfig {
        secret: w.secret.clone(),
        max_attempts: positive_u32(
            cx,
            "webhooks.max_attempts",
            w.max_attempts.unwrap_or(8),
            1000,
        )?,
        backoff: cx.positive_duration("webhooks.backoff", &w.backoff, 1)?,
        backoff_cap: cx.positive_duration("webhooks.backoff_cap", &w.backoff_cap, 600)?,
    };
    if webhooks.backoff_cap < webhooks.backoff {
        return Err(cx.err(
            "webhooks.backoff_cap",
            format!(
                "must be at least webhooks.backoff ({}), got {}",
                format_duration(webhooks.backoff),
                format_duration(webhooks.backoff_cap)
            ),
        ));
    }
    Ok(webhooks)
}
