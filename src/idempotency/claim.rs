//! The one seam for "this request runs upstream for its scope, the others
//! wait": [`Claims::acquire`] hands out a [`Claim`] or says why not.
//!
//! - `Local` (one replica): the [`InFlightTable`] alone.
//! - `Shared` (the Redis backend, N replicas): the same table first, so
//!   duplicates on one replica still queue behind each other on an event
//!   without Redis round trips, then a leased claim in Redis that every
//!   replica respects ([`super::shared`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::inflight::{self, Entry, InFlightTable};
use super::shared::SharedClaims;
use crate::store::StoreError;

/// Why no claim was handed out.
#[derive(Debug)]
pub enum Refused {
    /// The scope is held for a different body (409 idempotency_key_reused).
    Conflict,
    /// Still held when the caller's max wait ran out (409 in flight).
    InFlight,
    /// The shared claim could not be read or written (503).
    Unavailable(StoreError),
}

pub enum Claims {
    Local(Arc<InFlightTable>),
    Shared(SharedClaims),
}

impl Claims {
    /// Claim `scope` for a request with body `fingerprint`, waiting for an
    /// identical request that holds it (on this replica or another) until
    /// `deadline`. `waited` is set when the caller had to wait.
    pub async fn acquire(
        &self,
        scope: &str,
        fingerprint: &str,
        deadline: Instant,
        waited: &mut bool,
        held: &Arc<AtomicUsize>,
    ) -> Result<Claim, Refused> {
        match self {
            Claims::Local(table) => {
                let local = local_slot(table, scope, fingerprint, deadline, waited).await?;
                Ok(Claim::new(scope, fingerprint, held, Hold::Local(local)))
            }
            Claims::Shared(shared) => {
                // The local slot first: a duplicate on this replica waits
                // for it here, and only its holder talks to Redis.
                let local =
                    local_slot(shared.table(), scope, fingerprint, deadline, waited).await?;
                let stop = shared
                    .acquire(local, scope, fingerprint, deadline, waited)
                    .await?;
                Ok(Claim::new(scope, fingerprint, held, Hold::Shared(stop)))
            }
        }
    }
}

/// Wait for the scope's slot in this replica's table.
async fn local_slot(
    table: &Arc<InFlightTable>,
    scope: &str,
    fingerprint: &str,
    deadline: Instant,
    waited: &mut bool,
) -> Result<inflight::Claim, Refused> {
    loop {
        match table.claim(scope, fingerprint) {
            Entry::Claimed(claim) => return Ok(claim),
            Entry::Busy(slot) => {
                if slot.fingerprint != fingerprint {
                    return Err(Refused::Conflict);
                }
                *waited = true;
                if tokio::time::timeout_at(deadline, slot.finished())
                    .await
                    .is_err()
                {
                    return Err(Refused::InFlight);
                }
            }
        }
    }
}

/// What keeps a claim held (only ever dropped, never read).
#[allow(dead_code)]
enum Hold {
    /// This replica's slot; dropping it wakes local duplicates.
    Local(inflight::Claim),
    /// The lease task of a shared claim (which owns the local slot too):
    /// dropping the sender makes it release the claim in Redis, publish
    /// that the scope is done, and then free the local slot.
    Shared(oneshot::Sender<()>),
}

/// Ownership of one scope while its request runs; dropping it frees the
/// scope and wakes every duplicate waiting on it (on every replica).
pub struct Claim {
    pub scope: String,
    fingerprint: String,
    held: Arc<AtomicUsize>,
    _hold: Hold,
}

impl Claim {
    fn new(scope: &str, fingerprint: &str, held: &Arc<AtomicUsize>, hold: Hold) -> Claim {
        held.fetch_add(1, Ordering::Relaxed);
        Claim {
            scope: scope.to_string(),
            fingerprint: fingerprint.to_string(),
            held: held.clone(),
            _hold: hold,
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}
