//! [`StoreStats`]: what a store did since it was opened, for metrics and for tests that check
//! behaviour a result cannot show (that commits share fsyncs, that a hot timeline does not
//! turn into conflict retries).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions that committed writes.
    pub commits: u64,
    /// fsyncs that made commits durable (group commit: one covers every commit of its
    /// group). Always 0 on FoundationDB, whose durability is the cluster's.
    pub syncs: u64,
    /// Attempts of `transact` retried after a conflict or a retryable backend error.
    pub retries: u64,
}

/// The live counters behind [`StoreStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) retries: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}
