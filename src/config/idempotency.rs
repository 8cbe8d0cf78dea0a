//! `[idempotency]`: how long records live and how much they may hold.

use std::time::Duration;

use super::load::{size, Ctx};
use super::raw::RawIdempotency;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub ttl: Duration,
    /// Responses larger than this pass through unstored (the key is freed).
    pub max_stored_body: u64,
    /// A keyed request's body is held in memory to fingerprint it before
    /// anything goes upstream; larger bodies get `413`. Key `max_request_body`.
    pub max_request_body: u64,
}

pub(super) fn build(cx: &Ctx, i: &RawIdempotency) -> Result<IdempotencyConfig, ConfigError> {
    Ok(IdempotencyConfig {
        ttl: cx.positive_duration("idempotency.ttl", &i.ttl, 24 * 3600)?,
        max_stored_body: match &i.max_stored_body {
            Some(v) => size(cx, "idempotency.max_stored_body", v)?,
            None => 10 << 20,
        },
        max_request_body: match &i.max_request_body {
            Some(v) => size(cx, "idempotency.max_request_body", v)?,
            None => 10 << 20,
        },
    })
}
