//! ezthrottle: a forward HTTP proxy that paces, de-duplicates and retries
//! outbound API calls. See `docs/ARCHITECTURE.md` for the module map.

// What we promise, checked by the compiler (docs/ARCHITECTURE.md "Lints"):
// no `unsafe` but the few reasoned FFI/fd lines that allow it by name, and
// no panicking `unwrap`/`expect` outside tests (clippy.toml lets tests use
// them) — an invariant that truly holds says so in an `allow` with a reason.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![deny(clippy::disallowed_methods)]
#![deny(clippy::unchecked_time_subtraction)]

pub mod accept;
pub mod admission;
pub mod allocator;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod egress;
pub mod error;
pub mod idempotency;
pub mod jobs;
#[cfg(test)]
mod layering;
pub mod logging;
pub mod mem_budget;
pub mod metrics;
pub mod pipeline;
#[cfg(test)]
mod redis_cluster_tests;
pub mod reload;
pub mod resolve;
pub mod retry;
pub mod server;
pub mod state;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod webhooks;
pub mod wire;
