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
        if let Some(problem) = secret_problem(s) {
            return Err(cx.err("webhooks.secret", problem));
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

/// The shortest secret accepted anywhere (characters).
pub const MIN_SECRET_CHARS: usize = 16;

/// The longest secret accepted anywhere (bytes, 1 KiB): far beyond any
/// HMAC key's strength, and small enough that a secret cannot be used to
/// fill the store or every delivery's signing work.
pub const MAX_SECRET_BYTES: usize = 1024;

/// `Err(message naming field)` unless `secret` is a usable secret (see
/// [`secret_problem`]).
pub fn validate_secret(field: &str, secret: &str) -> Result<(), String> {
    match secret_problem(secret) {
        Some(problem) => Err(format!("{field} {problem}")),
        None => Ok(()),
    }
}

/// What is wrong with `secret`, if anything: at least [`MIN_SECRET_CHARS`]
/// characters, at most [`MAX_SECRET_BYTES`] bytes, no leading/trailing
/// whitespace or control characters (they do not survive copy-paste and
/// config files).
pub fn secret_problem(secret: &str) -> Option<String> {
    if secret.len() > MAX_SECRET_BYTES {
        return Some(format!(
            "must be at most {MAX_SECRET_BYTES} bytes (got {})",
            secret.len()
        ));
    }
    let n = secret.chars().count();
    if n < MIN_SECRET_CHARS {
        return Some(format!(
            "must be at least {MIN_SECRET_CHARS} characters (got {n})"
        ));
    }
    if secret.chars().any(char::is_control) {
        return Some("must not contain control characters".into());
    }
    if secret.trim() != secret {
        return Some("must not start or end with whitespace".into());
    }
    None
}
