//! ezthrottle: a forward HTTP proxy that paces, de-duplicates and retries
//! outbound API calls. See `docs/ARCHITECTURE.md` for the module map.

pub mod accept;
pub mod admission;
pub mod allocator;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod control;
pub mod egress;
pub mod error;
pub mod idempotency;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod resolve;
pub mod retry;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod webhooks;
pub mod wire;
