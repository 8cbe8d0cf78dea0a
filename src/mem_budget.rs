//! A process-wide cap on bytes the proxy holds on behalf of clients that
//! have not finished sending. Its own module because both the front door
//! (`accept::framing`: unfinished heads, pipelined bytes) and the pipeline
//! (`pipeline::body`, `pipeline::idempotent`: bodies read ahead) take from
//! it, and the pipeline must not import the accept layer above it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::config::DEFAULT_MAX_BUFFERED;

/// A process-wide cap on bytes the proxy holds on behalf of clients that
/// have not finished sending: unfinished heads, pipelined bytes waiting for
/// their turn, and bodies read ahead (`pipeline::body`). A slow sender can
/// take memory only from this budget; once it is spent, further requests
/// that need it get `503 proxy_overloaded` instead of growing the process.
#[derive(Debug)]
pub struct MemBudget {
    used: AtomicUsize,
    cap: AtomicUsize,
    refused: AtomicU64,
}

impl MemBudget {
    pub fn new(cap: usize) -> Arc<MemBudget> {
        Arc::new(MemBudget {
            used: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap),
            refused: AtomicU64::new(0),
        })
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// How many times a reservation was refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        let cap = self.cap();
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= cap)
            })
            .is_ok();
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The process's budget: sized once from `[proxy] max_buffered` when the
/// front door is built (one proxy per process).
pub fn budget() -> &'static Arc<MemBudget> {
    static BUDGET: OnceLock<Arc<MemBudget>> = OnceLock::new();
    BUDGET.get_or_init(|| MemBudget::new(DEFAULT_MAX_BUFFERED))
}

/// Set the process budget's cap (start-up).
pub fn set_budget_cap(cap: usize) {
    budget().cap.store(cap, Ordering::Relaxed);
}

/// Bytes held against a [`MemBudget`]; given back on drop.
#[derive(Debug)]
pub struct Hold {
    budget: Arc<MemBudget>,
    n: usize,
}

/// The budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFull;

impl Hold {
    pub fn new(budget: &Arc<MemBudget>) -> Hold {
        Hold {
            budget: budget.clone(),
            n: 0,
        }
    }

    /// Hold exactly `n` bytes (growing takes from the budget, shrinking gives back).
    pub fn set(&mut self, n: usize) -> Result<(), BudgetFull> {
        if n > self.n {
            if !self.budget.take(n - self.n) {
                return Err(BudgetFull);
            }
        } else {
            self.budget.give(self.n - n);
        }
        self.n = n;
        Ok(())
    }

    /// Hold exactly `n` bytes even past the cap (for bytes already held).
    pub fn force(&mut self, n: usize) {
        if n > self.n {
            self.budget.used.fetch_add(n - self.n, Ordering::AcqRel);
        } else {
            self.budget.give(self.n - n);
        }
        self.n = n;
    }

    pub fn held(&self) -> usize {
        self.n
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.give(self.n);
    }
}
