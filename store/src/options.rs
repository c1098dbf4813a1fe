//! Tuning knobs, one table of defaults.

use std::time::Duration;

/// Options for [`Store::open_with`](crate::Store::open_with). `Default` gives the values the
/// server runs with.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StoreOptions {
    /// How `transact` retries conflicting attempts.
    pub retry: RetryPolicy,
    /// How the timeline sequencer batches appends.
    pub sequencer: SequencerOptions,
}

/// Retry bound and backoff for [`Store::transact`](crate::Store::transact).
///
/// Attempt `n` (from 1) that must be retried sleeps a random time in
/// `[d/2, d]`, `d = min(initial_backoff * 2^(n-1), max_backoff)`, before attempt `n + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times the closure may run before `transact` returns
    /// [`StoreError::TooManyRetries`](crate::StoreError::TooManyRetries). At least 1.
    pub max_attempts: u32,
    /// Backoff after the first retryable failure.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 64,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(64),
        }
    }
}

/// How appends are grouped into transactions (see [`crate::timeline`]'s module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencerOptions {
    /// Most append requests in one transaction.
    pub max_batch: usize,
    /// Approximate byte budget of one transaction (FoundationDB caps transactions at 10 MB and
    /// prefers them under 1 MB). A single larger request still runs, alone.
    pub max_batch_bytes: usize,
    /// How many append transactions may be in flight at once (they touch disjoint timelines).
    pub max_rounds_in_flight: usize,
}

impl Default for SequencerOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_batch_bytes: 1 << 20,
            max_rounds_in_flight: 4,
        }
    }
}
