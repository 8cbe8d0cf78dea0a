//! Storage: everything that must outlive a crash goes through the one
//! [`Store`] trait (SPEC §11), with the embedded SQLite backend here and a
//! Redis backend slotting in behind the same trait.

pub mod embedded;

use async_trait::async_trait;

pub use embedded::EmbeddedStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
}

/// A limit learned from a domain's response headers.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedLimit {
    pub domain: String,
    pub rps: Option<f64>,
    pub max_concurrent: Option<u32>,
    /// Unix milliseconds of the last change.
    pub updated_at: u64,
}

/// A response kept for replay under one idempotency scope (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the scope tuple (workspace, key, method, host + path).
    pub scope: String,
    /// SHA-256 (hex) of the canonicalised request body.
    pub fingerprint: String,
    pub status: u16,
    pub reason: Option<String>,
    /// The response header block exactly as first sent (HTTP/1 wire form,
    /// `Name: value\r\n` lines in order, names in their original case).
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub expires_at: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap round trip used by `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn learned_limits(&self) -> Result<Vec<LearnedLimit>, StoreError>;

    /// Merge: a `None` field keeps the stored value.
    async fn save_learned_limit(&self, limit: LearnedLimit) -> Result<(), StoreError>;

    /// The record for `scope` unless it expired before `now_ms`.
    async fn idempotency_get(
        &self,
        scope: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Durably store (or replace) a record; returns once committed.
    async fn idempotency_put(&self, record: IdempotencyRecord) -> Result<(), StoreError>;

    /// Delete records that expired before `now_ms`; returns how many.
    async fn idempotency_sweep(&self, now_ms: u64) -> Result<u64, StoreError>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
