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

#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap round trip used by `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn learned_limits(&self) -> Result<Vec<LearnedLimit>, StoreError>;

    /// Merge: a `None` field keeps the stored value.
    async fn save_learned_limit(&self, limit: LearnedLimit) -> Result<(), StoreError>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
