//! Time as an input: [`Clock`] is the wall clock the service reads ([`SystemClock`]) or one a
//! test moves by hand ([`ManualClock`]).
//!
//! Everything time-dependent in this crate (segment durations for the dynamic step, lease
//! expiry and reservations, Snowflake/Sonyflake timestamps) reads one `Clock`, so the
//! policies can be driven to any instant, including backwards, without sleeping.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A boxed future, as [`Clock::sleep_until_ms`] returns.
pub type WaitFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A wall clock in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Resolves once [`now_ms`](Self::now_ms) has reached `until_ms`. Only used for short
    /// waits (a sequence rolled over, a clock a few ms behind), so it should be precise
    /// rather than frugal.
    fn sleep_until_ms(&self, until_ms: u64) -> WaitFuture<'_>;
}

/// The system's wall clock (`CLOCK_REALTIME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 reads as 0: every layout then reports it is before its epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep_until_ms(&self, until_ms: u64) -> WaitFuture<'_> {
        Box::pin(async move {
            // Timer wheels have millisecond granularity and round up, which would cost most
            // of a tick per rollover: sleep the bulk, then yield-spin the last millisecond.
            loop {
                let now = self.now_ms();
                if now >= until_ms {
                    return;
                }
                let left = until_ms - now;
                if left > 2 {
                    tokio::time::sleep(Duration::from_millis(left - 1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        })
    }
}

/// A clock that moves only when told to (tests, simulations). Waiting on it jumps it
/// forward to the instant waited for, the way a paused tokio clock auto-advances.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
    waits: AtomicU64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(now_ms),
            waits: AtomicU64::new(0),
        }
    }

    /// Sets the time (backwards too).
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by_ms`.
    pub fn advance_ms(&self, by_ms: u64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }

    /// How many times something waited on this clock.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn sleep_until_ms(&self, until_ms: u64) -> WaitFuture<'_> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        self.now_ms.fetch_max(until_ms, Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_ways_and_waits_jump_forward() {
        let c = ManualClock::new(1_000);
        c.set_ms(997);
        assert_eq!(c.now_ms(), 997);
        drop(c.sleep_until_ms(1_000));
        assert_eq!((c.now_ms(), c.waits()), (1_000, 1));
        drop(c.sleep_until_ms(10));
        assert_eq!(c.now_ms(), 1_000, "never moves back by waiting");
    }

    #[tokio::test]
    async fn system_clock_waits_until_the_instant() {
        let c = SystemClock;
        let until = c.now_ms() + 3;
        c.sleep_until_ms(until).await;
        assert!(c.now_ms() >= until);
    }
}
