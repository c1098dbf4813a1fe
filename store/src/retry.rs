//! Exponential backoff with jitter and a bound, shared by both backends' retry loops.

use crate::stats::Counters;
use crate::{RetryPolicy, RetryReason, StoreError};
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Counts attempts of one `transact` call and sleeps between them; every retry is also
/// counted in the store's [`Counters`].
pub(crate) struct Backoff<'a> {
    policy: RetryPolicy,
    attempts: u32,
    retries: &'a AtomicU64,
}

impl<'a> Backoff<'a> {
    pub(crate) fn new(policy: RetryPolicy, counters: &'a Counters) -> Self {
        Self {
            policy,
            attempts: 1,
            retries: &counters.retries,
        }
    }

    /// Called when attempt `self.attempts` must be retried: sleeps, or returns
    /// [`StoreError::TooManyRetries`] when the bound is reached.
    pub(crate) async fn retry(&mut self, reason: RetryReason) -> Result<(), StoreError> {
        if self.attempts >= self.policy.max_attempts {
            return Err(StoreError::TooManyRetries {
                attempts: self.attempts,
                last: reason,
            });
        }
        Counters::add(self.retries, 1);
        let delay = self.delay();
        tracing::trace!(attempt = self.attempts, ?delay, %reason, "retrying transaction");
        self.attempts += 1;
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn delay(&self) -> Duration {
        let shift = self.attempts.saturating_sub(1).min(20);
        let full = self
            .policy
            .initial_backoff
            .saturating_mul(1 << shift)
            .min(self.policy.max_backoff);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(jitter(nanos))
    }
}

/// A pseudo-random number in `[0, bound]` (splitmix64 over a global counter): enough to
/// de-synchronise retrying transactions, not for anything secret.
fn jitter(bound: u64) -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z % bound.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_stay_in_the_jitter_window() {
        let policy = RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(16),
        };
        let counters = Counters::default();
        let mut b = Backoff::new(policy, &counters);
        for (attempt, full_ms) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 16), (30, 16)] {
            b.attempts = attempt;
            let d = b.delay();
            let full = Duration::from_millis(full_ms);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[tokio::test]
    async fn the_bound_yields_a_typed_error() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_micros(10),
            max_backoff: Duration::from_micros(10),
        };
        let counters = Counters::default();
        let mut b = Backoff::new(policy, &counters);
        b.retry(RetryReason::Conflict).await.unwrap();
        b.retry(RetryReason::Conflict).await.unwrap();
        assert_eq!(counters.snapshot().retries, 2);
        let err = b.retry(RetryReason::Conflict).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooManyRetries {
                    attempts: 3,
                    last: RetryReason::Conflict
                }
            ),
            "{err}"
        );
    }
}
