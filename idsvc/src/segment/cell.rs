//! [`Hot`]: the lock-free part of a tag, which every ID request touches. One `fetch_add` per
//! single-ID request (a bounded CAS for a batch) and three plain loads; no lock, no
//! reference count.
//!
//! # How it stays unique
//!
//! - `counter` only ever grows: requests `fetch_add` it (or CAS it up, for batches), and
//!   [`Hot::publish`] moves it up with a CAS (never down). So every value (and every range `[v, v + n)`) a `fetch_add` returns
//!   is returned once, ever.
//! - A value is handed out only if it lies in `[start, end)` as read right after the
//!   `fetch_add`. Segments of a tag only ever move up (each starts at or after the previous
//!   one's end), and `publish` stores `start` before `end` (release), while a reader loads
//!   `end` (acquire) before `start`. So a reader sees either a published pair, or a newer
//!   `start` with an older `end` — an empty range, since the newer start is at or past the
//!   older end. It never sees an older `start` with a newer `end`.
//! - `publish` sets `start` to `max(segment start, counter)`, so a value fetched before the
//!   switch (below that) is never inside the new range; the IDs the counter had already
//!   passed are skipped (a gap, never a duplicate).
//!
//! A value outside the range is simply dropped and the caller goes to the slow path, which
//! holds the tag's mutex, switches to the next segment or waits for a load. The values
//! fetched past the end while a segment is exhausted are lost IDs, which is allowed.

use super::policy::Segment;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counter and the published range, on one cache line of their own: after the
/// `fetch_add` the line is local, so the loads that follow are hits.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Hot {
    counter: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    prefetch_at: AtomicU64,
}

/// IDs taken on the fast path: `[first, first + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// This grant contains the prefetch point: start loading the next segment.
    pub(crate) prefetch: bool,
}

impl Hot {
    /// Takes up to `n` IDs (at least 1) from the current segment; fewer when it runs out
    /// mid-way, `None` when it has none left.
    #[inline]
    pub(crate) fn take(&self, n: u64) -> Option<Grant> {
        if n == 1 {
            return self.validate(self.fetch(1), 1);
        }
        self.take_bounded(n)
    }

    /// [`take`](Self::take) that never moves the counter past the end it reads: for batches
    /// and for the slow path, where a segment is likely used up.
    pub(crate) fn take_bounded(&self, n: u64) -> Option<Grant> {
        let (v, k) = self.fetch_bounded(n)?;
        self.validate(v, k)
    }

    /// The first half of [`take`](Self::take) for one ID: claim `v` of the counter.
    #[inline]
    fn fetch(&self, n: u64) -> u64 {
        self.counter.fetch_add(n, Ordering::Relaxed)
    }

    /// The first half for a batch: claim `[v, v + k)`, `k` at most what the segment has left
    /// (so a batch at a segment's end does not push the counter into the next segment, which
    /// would skip that segment's first IDs); nothing when it has nothing left.
    #[inline]
    fn fetch_bounded(&self, n: u64) -> Option<(u64, u64)> {
        let mut c = self.counter.load(Ordering::Relaxed);
        loop {
            let end = self.end.load(Ordering::Relaxed);
            let k = n.min(end.saturating_sub(c));
            if k == 0 {
                return None;
            }
            match self
                .counter
                .compare_exchange_weak(c, c + k, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some((c, k)),
                Err(now) => c = now,
            }
        }
    }

    /// The second half: grant what of `[v, v + n)` lies in the published range.
    #[inline]
    fn validate(&self, v: u64, n: u64) -> Option<Grant> {
        let end = self.end.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Relaxed);
        if v < start || v >= end {
            return None;
        }
        let count = n.min(end - v);
        let at = self.prefetch_at.load(Ordering::Relaxed);
        Some(Grant {
            first: v,
            count,
            prefetch: v <= at && at - v < count,
        })
    }

    /// Makes `segment` the current one. Only called with the tag's mutex held, and only with
    /// segments later than every segment published before. Returns the effective segment
    /// (its start moved past values already fetched; possibly empty).
    pub(crate) fn publish(&self, segment: Segment, prefetch_percent: u8) -> Segment {
        let mut c = self.counter.load(Ordering::Relaxed);
        let start = loop {
            let target = c.max(segment.start);
            match self.counter.compare_exchange_weak(
                c,
                target,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break target,
                Err(now) => c = now,
            }
        };
        let effective = Segment {
            start: start.min(segment.end),
            end: segment.end,
        };
        self.start.store(effective.start, Ordering::Relaxed);
        self.prefetch_at
            .store(effective.prefetch_at(prefetch_percent), Ordering::Relaxed);
        self.end.store(effective.end, Ordering::Release);
        effective
    }

    /// True when the current segment has no ID left.
    pub(crate) fn exhausted(&self) -> bool {
        self.counter.load(Ordering::Relaxed) >= self.end.load(Ordering::Acquire)
    }

    /// How many IDs the current segment has handed out, and how many it has left.
    pub(crate) fn used_and_remaining(&self) -> (u64, u64) {
        let end = self.end.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Relaxed);
        let at = self
            .counter
            .load(Ordering::Relaxed)
            .clamp(start, end.max(start));
        (at - start, end.saturating_sub(at))
    }

    /// The next ID the current segment would hand out (its end when used up).
    pub(crate) fn cursor(&self) -> u64 {
        let end = self.end.load(Ordering::Acquire);
        self.counter.load(Ordering::Relaxed).min(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashSet, sync::Arc};

    fn seg(start: u64, end: u64) -> Segment {
        Segment { start, end }
    }

    #[test]
    fn takes_inside_the_segment_then_runs_out() {
        let h = Hot::default();
        assert_eq!(h.take(1), None, "nothing published yet");
        assert_eq!(h.publish(seg(10, 20), 10), seg(10, 20));
        let g = h.take(1).unwrap();
        assert_eq!((g.first, g.count, g.prefetch), (10, 1, false));
        let g = h.take(1).unwrap();
        assert_eq!((g.first, g.prefetch), (11, true), "10% of 10 IDs used");
        let g = h.take(100).unwrap();
        assert_eq!((g.first, g.count), (12, 8), "a batch is cut at the end");
        assert!(h.exhausted());
        assert_eq!(h.used_and_remaining(), (10, 0));
        // The batch did not push the counter into the next segment: it starts whole.
        assert_eq!(h.publish(seg(20, 30), 10), seg(20, 30));
        assert_eq!(h.take(100).map(|g| (g.first, g.count)), Some((20, 10)));
        assert_eq!(h.take(1), None);
    }

    #[test]
    fn a_switch_skips_values_fetched_before_it() {
        let h = Hot::default();
        h.publish(seg(1, 5), 10);
        for _ in 0..10 {
            h.take(1); // 4 granted, then 6 fetched past the end
        }
        // The next segment directly follows; the counter already passed 11.
        let eff = h.publish(seg(5, 100), 10);
        assert_eq!(eff, seg(11, 100));
        assert_eq!(h.take(1).unwrap().first, 11);
        // A segment entirely passed by the counter is published empty.
        let eff = h.publish(seg(100, 101), 10);
        assert!(eff.is_empty() || eff == seg(100, 101));
    }

    /// The interleaving that would duplicate an ID if `publish` did not move the counter:
    /// a value fetched past the old end, checked only after the switch to a segment that
    /// directly follows.
    #[test]
    fn a_value_fetched_before_a_switch_is_refused_after_it() {
        let h = Hot::default();
        h.publish(seg(0, 4), 10);
        assert_eq!(h.take(4).map(|g| g.count), Some(4));
        let stale = h.fetch(1); // 4: past the end, not yet checked
        assert_eq!(stale, 4);
        let eff = h.publish(seg(4, 100), 10);
        assert_eq!(eff, seg(5, 100), "the fetched value is skipped");
        assert_eq!(h.validate(stale, 1), None);
        assert_eq!(h.take(1).unwrap().first, 5);
    }

    /// Threads hammer the cell while another publishes segments that directly follow each
    /// other (the case where a value fetched past one segment's end falls inside the next):
    /// every granted ID is unique and inside a published segment.
    #[test]
    fn concurrent_takes_across_switches_are_unique() {
        use std::sync::atomic::AtomicBool;
        const LEN: u64 = 1024;
        let h = Arc::new(Hot::default());
        let stop = Arc::new(AtomicBool::new(false));
        h.publish(seg(0, LEN), 10);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (h, stop) = (h.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match h.take(1 + i % 3) {
                            Some(g) => got.extend(g.first..g.first + g.count),
                            // A refused caller goes to the slow path (here: steps aside).
                            None => std::thread::yield_now(),
                        }
                        i += 1;
                    }
                    got
                })
            })
            .collect();
        let mut published = vec![seg(0, LEN)];
        let mut skipped = 0;
        for n in 1..=300 {
            while !h.exhausted() {
                std::thread::yield_now();
            }
            let raw = seg(n * LEN, (n + 1) * LEN);
            let eff = h.publish(raw, 10);
            skipped += u64::from(eff.start > raw.start);
            published.push(eff);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(skipped > 0, "no switch raced with a stale value");
        let mut seen = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(seen.insert(id), "duplicate {id}");
                assert!(
                    published.iter().any(|s| (s.start..s.end).contains(&id)),
                    "{id} was never published"
                );
            }
        }
        assert!(
            seen.len() as u64 > 100 * LEN,
            "only {} IDs granted",
            seen.len()
        );
    }
}
