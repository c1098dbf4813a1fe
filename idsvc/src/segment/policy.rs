//! The segment buffers' policy, without I/O: when to load the next segment, with which step,
//! and what to do after a load succeeds or fails. Time comes in as `now_ms`.
//!
//! [`TagBuffers`] is Leaf's double buffer for one tag: the *current* segment (published to
//! the lock-free [`Hot`](super::cell::Hot) cell callers take IDs from) and at most one *next*
//! segment, loaded in the background once the current one is `prefetch_percent` used.
//! - [`TagBuffers::poll_load`]: should a load start now, and with which step? At most one load
//!   is in flight; none while a next segment waits; none during the back-off after a failure.
//! - [`TagBuffers::handle_loaded`] / [`TagBuffers::handle_load_failed`]: a load's outcome.
//! - [`TagBuffers::take_next`]: the next segment, when the current one is used up.
//!
//! [`StepPolicy::next_step`] is Leaf's dynamic step: a segment that lasted less than
//! `grow_below_ms` doubles the step (up to the maximum), one that lasted more than
//! `shrink_above_ms` halves it (not below the tag's configured step).

/// A range of IDs taken from the store: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// The first ID.
    pub start: u64,
    /// One past the last ID.
    pub end: u64,
}

impl Segment {
    /// How many IDs it holds.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ID at which `percent` of the segment is used: taking it starts the next load.
    pub(crate) fn prefetch_at(&self, percent: u8) -> u64 {
        let used = u128::from(self.len()) * u128::from(percent) / 100;
        // `used <= len`, so this stays inside [start, end].
        self.start + u64::try_from(used).unwrap_or(self.len())
    }
}

/// Leaf's dynamic step for one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepPolicy {
    /// The tag's configured step: the floor.
    pub(crate) base_step: u64,
    /// The ceiling (never below `base_step`).
    pub(crate) max_step: u64,
    pub(crate) grow_below_ms: u64,
    pub(crate) shrink_above_ms: u64,
}

impl StepPolicy {
    /// The step for the next segment, given the step used for the last one and how long the
    /// last one lasted (the time between the two loads).
    pub(crate) fn next_step(&self, step: u64, lasted_ms: u64) -> u64 {
        let max = self.max_step.max(self.base_step);
        let step = step.clamp(self.base_step, max);
        if lasted_ms < self.grow_below_ms {
            step.saturating_mul(2).min(max)
        } else if lasted_ms > self.shrink_above_ms {
            (step / 2).max(self.base_step)
        } else {
            step
        }
    }
}

/// The double buffer of one tag (the state behind its mutex).
#[derive(Debug)]
pub(crate) struct TagBuffers {
    policy: StepPolicy,
    retry_ms: u64,
    /// The segment published to the hot cell (its effective start may be later).
    pub(crate) current: Segment,
    /// The segment loaded ahead, waiting for the current one to run out.
    pub(crate) next: Option<Segment>,
    /// A load is in flight.
    pub(crate) loading: bool,
    /// The step of the last segment taken.
    pub(crate) step: u64,
    /// When the last segment was taken.
    pub(crate) loaded_at_ms: u64,
    /// Consecutive failed loads.
    failures: u32,
    /// No load before this after a failure.
    retry_at_ms: u64,
    /// Why the last load failed (cleared by a success).
    pub(crate) last_error: Option<String>,
    /// IDs handed out from segments that are no longer current.
    pub(crate) issued_before: u64,
}

impl TagBuffers {
    /// The buffers of a tag whose first segment (`first`, taken with `step`) is current.
    pub(crate) fn new(
        policy: StepPolicy,
        retry_ms: u64,
        first: Segment,
        step: u64,
        now_ms: u64,
    ) -> Self {
        Self {
            policy,
            retry_ms,
            current: first,
            next: None,
            loading: false,
            step,
            loaded_at_ms: now_ms,
            failures: 0,
            retry_at_ms: 0,
            last_error: None,
            issued_before: 0,
        }
    }

    /// The configured step of the tag.
    pub(crate) fn base_step(&self) -> u64 {
        self.policy.base_step
    }

    /// Whether to start a load now; if so, marks it in flight and returns its step.
    pub(crate) fn poll_load(&mut self, now_ms: u64) -> Option<u64> {
        if self.loading || self.next.is_some() || (self.failures > 0 && now_ms < self.retry_at_ms) {
            return None;
        }
        self.loading = true;
        let lasted = now_ms.saturating_sub(self.loaded_at_ms);
        Some(self.policy.next_step(self.step, lasted))
    }

    /// A load finished with `segment`, taken with `step`.
    pub(crate) fn handle_loaded(&mut self, segment: Segment, step: u64, now_ms: u64) {
        self.loading = false;
        self.next = Some(segment);
        self.step = step;
        self.loaded_at_ms = now_ms;
        self.failures = 0;
        self.last_error = None;
    }

    /// A load failed: back off (doubling, at most 32 × `retry_ms`) before the next one.
    pub(crate) fn handle_load_failed(&mut self, error: String, now_ms: u64) {
        self.loading = false;
        self.failures = self.failures.saturating_add(1);
        let backoff = self.retry_ms << (self.failures - 1).min(5);
        self.retry_at_ms = now_ms.saturating_add(backoff);
        self.last_error = Some(error);
    }

    /// Makes the next segment current (the current one is used up); `used` is how many IDs
    /// the outgoing one handed out.
    pub(crate) fn take_next(&mut self, used: u64) -> Option<Segment> {
        let next = self.next.take()?;
        self.issued_before = self.issued_before.saturating_add(used);
        self.current = next;
        Some(next)
    }

    /// Why callers cannot get IDs now, when both buffers are empty and no load may start.
    pub(crate) fn unavailable_reason(&self) -> String {
        match &self.last_error {
            Some(e) => format!("no segment buffered and the last load failed: {e}"),
            None => "no segment buffered".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn policy() -> StepPolicy {
        StepPolicy {
            base_step: 1_000,
            max_step: 8_000,
            grow_below_ms: 15 * MIN,
            shrink_above_ms: 30 * MIN,
        }
    }

    #[test]
    fn the_step_doubles_when_fast_halves_when_slow_and_stays_in_bounds() {
        let p = policy();
        assert_eq!(p.next_step(1_000, 14 * MIN), 2_000);
        assert_eq!(p.next_step(4_000, 0), 8_000);
        assert_eq!(p.next_step(8_000, 0), 8_000, "capped at max_step");
        assert_eq!(p.next_step(4_000, 20 * MIN), 4_000, "between: unchanged");
        assert_eq!(p.next_step(4_000, 31 * MIN), 2_000);
        assert_eq!(p.next_step(1_000, 31 * MIN), 1_000, "never below the base");
        // A step persisted under another configuration is brought back into bounds.
        assert_eq!(p.next_step(1_000_000, 20 * MIN), 8_000);
        // A base above max_step wins.
        let big = StepPolicy {
            base_step: 10_000,
            ..p
        };
        assert_eq!(big.next_step(10_000, 0), 10_000);
    }

    #[test]
    fn prefetch_point_is_the_used_fraction() {
        let s = Segment {
            start: 100,
            end: 1_100,
        };
        assert_eq!(s.prefetch_at(10), 200);
        assert_eq!(s.prefetch_at(100), 1_100, "100%: load only when used up");
        let huge = Segment {
            start: 0,
            end: u64::MAX,
        };
        assert!(huge.prefetch_at(50) > 0);
    }

    /// Drives the buffers through Leaf's cycle: prefetch, a failure with back-off, success,
    /// switch; the step follows how long segments last.
    #[test]
    fn one_load_at_a_time_back_off_after_failure_then_switch() {
        let first = Segment {
            start: 1,
            end: 1_001,
        };
        let mut b = TagBuffers::new(policy(), 100, first, 1_000, 0);

        // 10% used after 1 minute: load with a doubled step; no second load meanwhile.
        assert_eq!(b.poll_load(MIN), Some(2_000));
        assert_eq!(b.poll_load(MIN), None);

        b.handle_load_failed("store down".into(), MIN);
        assert_eq!(b.poll_load(MIN + 99), None, "backing off");
        assert!(b.unavailable_reason().contains("store down"));
        assert_eq!(b.poll_load(MIN + 100), Some(2_000));
        b.handle_load_failed("still down".into(), MIN + 100);
        assert_eq!(b.poll_load(MIN + 299), None, "the back-off doubled");
        assert_eq!(b.poll_load(MIN + 300), Some(2_000));

        let next = Segment {
            start: 1_001,
            end: 3_001,
        };
        b.handle_loaded(next, 2_000, MIN + 300);
        assert_eq!(b.last_error, None);
        assert_eq!(b.poll_load(MIN + 400), None, "a next segment is waiting");
        assert_eq!(b.take_next(1_000), Some(next));
        assert_eq!((b.current, b.issued_before), (next, 1_000));
        assert_eq!(b.take_next(0), None);

        // The 2,000-ID segment lasted 40 minutes: the step halves back to the base.
        assert_eq!(b.poll_load(MIN + 300 + 40 * MIN), Some(1_000));
    }
}
