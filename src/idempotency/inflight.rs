//! Requests with a key that are on their way upstream right now. A duplicate
//! waits on the first one's slot (an event, not a poll) and then looks in the
//! store again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Default)]
pub struct InFlightTable {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

pub struct Slot {
    pub fingerprint: String,
    done: watch::Sender<bool>,
}

impl Slot {
    /// Resolves when the request holding this slot has finished (stored,
    /// freed or dropped).
    pub async fn finished(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

pub enum Entry {
    /// The caller now owns the scope until the claim is dropped.
    Claimed(Claim),
    /// Another request owns it.
    Busy(Arc<Slot>),
}

impl InFlightTable {
    pub fn claim(self: &Arc<Self>, scope: &str, fingerprint: &str) -> Entry {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(scope) {
            return Entry::Busy(slot.clone());
        }
        let slot = Arc::new(Slot {
            fingerprint: fingerprint.to_string(),
            done: watch::Sender::new(false),
        });
        slots.insert(scope.to_string(), slot.clone());
        Entry::Claimed(Claim {
            table: self.clone(),
            scope: scope.to_string(),
            slot,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ownership of one scope while its request runs; dropping it frees the
/// scope and wakes every duplicate waiting on it.
pub struct Claim {
    table: Arc<InFlightTable>,
    pub scope: String,
    slot: Arc<Slot>,
}

impl Claim {
    pub fn fingerprint(&self) -> &str {
        &self.slot.fingerprint
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        {
            let mut slots = self.table.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots
                .get(&self.scope)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                slots.remove(&self.scope);
            }
        }
        self.slot.done.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_wait_for_the_claim_to_drop() {
        let t = Arc::new(InFlightTable::default());
        let Entry::Claimed(claim) = t.claim("s", "fp") else {
            panic!("first claim")
        };
        let Entry::Busy(slot) = t.claim("s", "fp") else {
            panic!("second is busy")
        };
        assert_eq!(slot.fingerprint, "fp");
        let waiter = tokio::spawn(async move { slot.finished().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(claim);
        waiter.await.unwrap();
        assert!(t.is_empty());
        assert!(matches!(t.claim("s", "fp2"), Entry::Claimed(_)));
    }

    #[tokio::test]
    async fn waiting_on_a_finished_slot_returns_at_once() {
        let t = Arc::new(InFlightTable::default());
        let Entry::Claimed(claim) = t.claim("s", "fp") else {
            panic!()
        };
        let Entry::Busy(slot) = t.claim("s", "fp") else {
            panic!()
        };
        drop(claim);
        slot.finished().await;
    }
}
