//! Webhook callbacks (SPEC §8): the payload of a finished job, its HMAC
//! signature, the workspace secrets it is signed with, durable delivery with
//! retries, and the quorum over a job's deliveries. User docs:
//! `docs/webhooks.md`.
//!
//! How the job engine uses it:
//! 1. build the body with [`payload::build`] (or [`payload::build_payload`]);
//! 2. `store.job_finish(id, status, result, body, deliveries)` writes the
//!    result and the pending deliveries in one transaction;
//! 3. `shared.webhooks.notify()` wakes the worker, which POSTs them;
//! 4. [`quorum`] (or [`Webhooks::events`]) tells when the webhook phase is met.
//!
//! | module | behaviour |
//! |---|---|
//! | `payload` | the exact JSON body |
//! | `sign` | `X-EZThrottle-Signature` (create and verify) |
//! | `secrets` | which secret signs a workspace's deliveries; validation, masking |
//! | `backoff` | the retry schedule |
//! | `client` | the HTTP client (trust roots, `[resolve]`, timeouts) |
//! | `deliver` | the worker: claim due deliveries, POST, record, retry |
//! | `quorum` | met / impossible over a job's deliveries |

pub mod backoff;
pub mod client;
pub mod deliver;
pub mod payload;
pub mod quorum;
pub mod secrets;
pub mod sign;

pub use backoff::RetryPolicy;
pub use deliver::{DeliveryEvent, Webhooks, CONCURRENCY};
pub use payload::{build_payload, ResponseParts};
pub use quorum::{quorum, QuorumState};
pub use secrets::{mask, ResolvedSecrets, SecretSource, Secrets};
pub use sign::SIGNATURE_HEADER;

/// A start-up problem of the webhook service.
#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error("{0}")]
    EnvSecret(#[from] secrets::EnvSecretError),
    #[error("{0}")]
    Client(#[from] client::ClientError),
}
