//! [`FlakeCore`]: the time-based generator's decisions, without I/O. The caller passes
//! `now_ms` in and acts on the answer ([`Poll`]): encode the issued IDs, wait until an
//! instant, persist a reservation first, or fail.
//!
//! Rules, in order:
//! 1. The clock behind the last issued tick (a step back, or a restart behind what the
//!    previous holder of the worker id reserved): wait until that tick when it is at most
//!    `max_backward_ms` ahead, otherwise fail with the distance. Never a duplicate, never a
//!    long sleep.
//! 2. A tick beyond the persisted reservation: persist a newer one first
//!    ([`Poll::Reserve`]); the heartbeat normally keeps it seconds ahead.
//! 3. A new tick restarts the sequence; a used-up sequence waits for the next tick.

use super::layout::{Layout, TickError};

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Encode `count` IDs of `tick` with sequences `seq..seq + count`.
    Issued { tick: u64, seq: u32, count: u32 },
    /// Ask again once the clock reads `until_ms`. `rollback`: the clock stepped back (counts
    /// as a rollback wait), rather than the sequence running out.
    Wait { until_ms: u64, rollback: bool },
    /// Persist a reservation covering `now`, then ask again.
    Reserve,
    /// Refused.
    Fail(Fault),
}

/// Why nothing can be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The clock is `behind_ms` behind the last issued (or reserved-by-predecessor) tick,
    /// beyond the tolerance.
    Behind { behind_ms: u64 },
    /// The clock reads before the layout's epoch.
    BeforeEpoch { now_ms: u64 },
    /// The layout's time field is used up.
    PastEnd,
    /// The generator stopped: lease lost, or released at shutdown.
    Stopped(&'static str),
}

/// The state of one generator holding one worker id.
#[derive(Debug)]
pub(crate) struct FlakeCore {
    layout: Layout,
    worker: u32,
    max_backward_ms: u64,
    /// The tick of the last issued ID, or the floor left by the previous holder; `None`
    /// when neither exists.
    last_tick: Option<u64>,
    /// The next sequence number in `last_tick` (past `max_seq` when used up).
    next_seq: u32,
    /// The last tick covered by the persisted reservation.
    reserved_tick: Option<u64>,
    stopped: Option<&'static str>,
}

impl FlakeCore {
    /// A generator on `worker`, whose previous holder may have issued up to `floor_ms`
    /// (0: never used), with `reserved_until_ms` persisted for this holder.
    pub(crate) fn new(
        layout: Layout,
        worker: u32,
        max_backward_ms: u64,
        floor_ms: u64,
        reserved_until_ms: u64,
    ) -> Self {
        let mut core = Self {
            layout,
            worker,
            max_backward_ms,
            last_tick: None,
            next_seq: 0,
            reserved_tick: None,
            stopped: None,
        };
        core.reset(worker, floor_ms, reserved_until_ms);
        core
    }

    /// Starts over on a (possibly different) worker id, as [`new`](Self::new) does.
    pub(crate) fn reset(&mut self, worker: u32, floor_ms: u64, reserved_until_ms: u64) {
        self.worker = worker;
        self.stopped = None;
        // Every tick up to the floor's counts as used (the floor's own tick may have been
        // used up to its last sequence).
        self.last_tick = self.layout.tick_of(floor_ms).ok();
        self.next_seq = if self.last_tick.is_some() {
            self.layout.max_seq() + 1
        } else {
            0
        };
        self.reserved_tick = None;
        self.handle_reserved(reserved_until_ms);
    }

    pub(crate) fn worker(&self) -> u32 {
        self.worker
    }

    /// Up to `want` IDs (at least 1) at `now_ms`, all in one tick.
    pub(crate) fn poll(&mut self, now_ms: u64, want: u32) -> Poll {
        if let Some(reason) = self.stopped {
            return Poll::Fail(Fault::Stopped(reason));
        }
        let tick = match self.layout.tick_of(now_ms) {
            Ok(t) => t,
            Err(TickError::BeforeEpoch) => return Poll::Fail(Fault::BeforeEpoch { now_ms }),
            Err(TickError::PastEnd) => return Poll::Fail(Fault::PastEnd),
        };
        if let Some(last) = self.last_tick
            && tick < last
        {
            let until_ms = self.layout.ms_of(last);
            let behind_ms = until_ms - now_ms;
            return if behind_ms <= self.max_backward_ms {
                Poll::Wait {
                    until_ms,
                    rollback: true,
                }
            } else {
                Poll::Fail(Fault::Behind { behind_ms })
            };
        }
        if self.reserved_tick.is_none_or(|r| tick > r) {
            return Poll::Reserve;
        }
        if self.last_tick != Some(tick) {
            self.last_tick = Some(tick);
            self.next_seq = 0;
        }
        let max_seq = self.layout.max_seq();
        if self.next_seq > max_seq {
            if tick == self.layout.max_tick() {
                return Poll::Fail(Fault::PastEnd);
            }
            return Poll::Wait {
                until_ms: self.layout.ms_of(tick + 1),
                rollback: false,
            };
        }
        let seq = self.next_seq;
        let count = want.max(1).min(max_seq + 1 - seq);
        self.next_seq += count;
        Poll::Issued { tick, seq, count }
    }

    /// A reservation up to `reserved_until_ms` is persisted.
    pub(crate) fn handle_reserved(&mut self, reserved_until_ms: u64) {
        if let Ok(t) = self.layout.tick_of(reserved_until_ms) {
            self.reserved_tick = Some(self.reserved_tick.map_or(t, |r| r.max(t)));
        }
    }

    /// The reservation is gone: nothing more until [`reset`](Self::reset).
    pub(crate) fn stop(&mut self, reason: &'static str) {
        self.stopped = Some(reason);
    }

    /// True once stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// The first ms of the last tick used (or of the floor), 0 if none: what a successor on
    /// this worker id must issue after.
    pub(crate) fn last_issued_ms(&self) -> u64 {
        self.last_tick.map_or(0, |t| self.layout.ms_of(t))
    }

    /// The last ms covered by the reservation, 0 if none.
    pub(crate) fn reserved_until_ms(&self) -> u64 {
        self.reserved_tick
            .map_or(0, |t| self.layout.ms_of(t + 1).saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const EPOCH: u64 = crate::config::DEFAULT_EPOCH_MS;
    const T0: u64 = EPOCH + 1_000_000;

    fn snowflake(floor_ms: u64) -> FlakeCore {
        FlakeCore::new(Layout::snowflake(EPOCH), 7, 5, floor_ms, T0 + 60_000)
    }

    fn ids(core: &mut FlakeCore, now: u64, want: u32) -> Vec<u64> {
        match core.poll(now, want) {
            Poll::Issued { tick, seq, count } => (seq..seq + count)
                .map(|s| core.layout.encode(tick, core.worker(), s))
                .collect(),
            other => panic!("expected IDs, got {other:?}"),
        }
    }

    #[test]
    fn a_clock_3ms_back_waits_for_the_last_tick() {
        let mut c = snowflake(0);
        let before = ids(&mut c, T0, 1);
        assert_eq!(
            c.poll(T0 - 3, 1),
            Poll::Wait {
                until_ms: T0,
                rollback: true
            }
        );
        // Once the clock is back at T0 the sequence continues: no duplicate.
        let after = ids(&mut c, T0, 1);
        assert!(after[0] > before[0]);
    }

    #[test]
    fn a_clock_10s_back_fails_fast() {
        let mut c = snowflake(0);
        ids(&mut c, T0, 1);
        assert_eq!(
            c.poll(T0 - 10_000, 1),
            Poll::Fail(Fault::Behind { behind_ms: 10_000 })
        );
        // The tolerance boundary: 5 ms waits, 6 ms fails.
        assert!(matches!(
            c.poll(T0 - 5, 1),
            Poll::Wait { rollback: true, .. }
        ));
        assert!(matches!(
            c.poll(T0 - 6, 1),
            Poll::Fail(Fault::Behind { behind_ms: 6 })
        ));
    }

    #[test]
    fn a_full_sequence_waits_for_the_next_tick() {
        let mut c = snowflake(0);
        let mut all = HashSet::new();
        let mut n = 0;
        while let Poll::Issued { tick, seq, count } = c.poll(T0, 1_000) {
            for s in seq..seq + count {
                assert!(all.insert(c.layout.encode(tick, 7, s)));
            }
            n += count;
        }
        assert_eq!(n, 4096);
        assert_eq!(
            c.poll(T0, 1),
            Poll::Wait {
                until_ms: T0 + 1,
                rollback: false
            }
        );
        assert!(all.insert(ids(&mut c, T0 + 1, 1)[0]));
    }

    #[test]
    fn a_successor_issues_only_after_the_floor() {
        // The previous holder reserved up to T0 + 2: a successor whose clock reads T0 is
        // 2 ms behind and waits; one 10 s behind fails.
        let mut c = snowflake(T0 + 2);
        assert_eq!(
            c.poll(T0, 1),
            Poll::Wait {
                until_ms: T0 + 2,
                rollback: true
            }
        );
        assert_eq!(
            c.poll(T0 + 2, 1),
            Poll::Wait {
                until_ms: T0 + 3,
                rollback: false
            },
            "the floor's own tick counts as used"
        );
        let first = ids(&mut c, T0 + 3, 1)[0];
        let d = c.layout.decode(first).unwrap();
        assert_eq!((d.timestamp_ms, d.worker, d.sequence), (T0 + 3, 7, 0));

        let mut far = snowflake(T0 + 10_000);
        assert_eq!(
            far.poll(T0, 1),
            Poll::Fail(Fault::Behind { behind_ms: 10_000 })
        );
    }

    #[test]
    fn nothing_is_issued_beyond_the_reservation() {
        let mut c = FlakeCore::new(Layout::snowflake(EPOCH), 1, 5, 0, T0 + 10);
        ids(&mut c, T0 + 10, 1);
        assert_eq!(c.poll(T0 + 11, 1), Poll::Reserve);
        c.handle_reserved(T0 + 5); // an older reservation never shrinks it
        assert_eq!(c.poll(T0 + 11, 1), Poll::Reserve);
        c.handle_reserved(T0 + 3_000);
        ids(&mut c, T0 + 11, 1);
        assert_eq!(c.reserved_until_ms(), T0 + 3_000);
        assert_eq!(c.last_issued_ms(), T0 + 11);

        let mut fresh = FlakeCore::new(Layout::snowflake(EPOCH), 1, 5, 0, 0);
        assert_eq!(fresh.poll(T0, 1), Poll::Reserve, "no reservation yet");
    }

    #[test]
    fn stopped_before_epoch_and_past_the_end_fail() {
        let mut c = snowflake(0);
        c.stop("lease lost");
        assert_eq!(c.poll(T0, 1), Poll::Fail(Fault::Stopped("lease lost")));
        c.reset(9, 0, T0 + 1_000);
        assert_eq!(c.worker(), 9);
        ids(&mut c, T0, 1);
        assert_eq!(
            c.poll(EPOCH - 1, 1),
            Poll::Fail(Fault::BeforeEpoch { now_ms: EPOCH - 1 })
        );
        let l = Layout::sonyflake(EPOCH);
        let end = l.ms_of(l.max_tick() + 1);
        assert_eq!(
            FlakeCore::new(l, 1, 5, 0, end).poll(end, 1),
            Poll::Fail(Fault::PastEnd)
        );
    }

    #[test]
    fn sonyflake_rolls_over_every_256_per_10ms() {
        let mut c = FlakeCore::new(Layout::sonyflake(EPOCH), 3, 5, 0, T0 + 60_000);
        assert_eq!(ids(&mut c, T0 + 4, 1_000).len(), 256);
        assert_eq!(
            c.poll(T0 + 9, 1),
            Poll::Wait {
                until_ms: T0 + 10,
                rollback: false
            }
        );
        // 3 ms back from the start of the tick in use: within the tolerance.
        assert!(matches!(
            c.poll(T0 - 3, 1),
            Poll::Wait { rollback: true, .. }
        ));
    }
}
