//! Room and broadcast batching: goim's room batch, without I/O.
//!
//! A busy room receives many small pushes per second, and each one, delivered alone, costs
//! every member a wake-up, a WebSocket frame, a TLS record and a `write` — per member, per
//! message. goim's job collects a room's messages for a short signal time (or up to a batch
//! count) and sends them to the comets as one buffer; Centrifugo's `write_delay` does the same
//! per connection. `Batcher` is that policy for the edge: pushes to a room (or to everyone)
//! are appended to the room's pending buffer; the buffer is fanned out, as one pre-encoded
//! `Bytes` of frames back to back, when its window has passed since its first frame, when it
//! holds `max_frames` frames, or before it would pass `max_bytes`. One message then costs a
//! member `1 / batch` of a write instead of a whole one, at the price of at most `window` of
//! latency. A zero window turns batching off (every push is fanned out at once).
//!
//! Time is passed in (`now`), so the policy is tested without sleeps; the gateway
//! ([`crate::gateway`]) holds one `Batcher` behind a lock and runs the timer that calls
//! `Batcher::take_due`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

/// What a batch is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum BatchKey {
    /// The members of a room on this edge.
    Room(String),
    /// Every connection of this edge.
    All,
}

/// The batching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// How long a batch may collect after its first frame (zero: no batching).
    pub window: Duration,
    /// A batch holding this many pushes goes out at once.
    pub max_frames: usize,
    /// A batch never grows past this many bytes (a larger single push goes out alone).
    pub max_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window: Duration::from_millis(50),
            max_frames: 20,
            max_bytes: 32 * 1024,
        }
    }
}

/// A batch ready to fan out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Its recipients.
    pub(crate) key: BatchKey,
    /// Its frames, back to back.
    pub(crate) frames: Bytes,
    /// How many pushes it holds.
    pub(crate) pushes: usize,
}

#[derive(Debug)]
struct Pending {
    buf: BytesMut,
    pushes: usize,
    /// Tells this batch from an earlier one of the same key still listed in `due`.
    generation: u64,
}

/// Pending batches by key, and when each is due.
#[derive(Debug)]
pub(crate) struct Batcher {
    config: BatchConfig,
    pending: HashMap<BatchKey, Pending>,
    /// Deadlines in the order the batches opened; every window is the same (and `now` never
    /// goes back: the gateway reads it under its lock), so this is also deadline order. An
    /// entry whose generation no longer matches was flushed early.
    due: VecDeque<(Instant, BatchKey, u64)>,
    generation: u64,
}

impl Batcher {
    /// An empty batcher.
    pub(crate) fn new(config: BatchConfig) -> Self {
        Batcher {
            config,
            pending: HashMap::new(),
            due: VecDeque::new(),
            generation: 0,
        }
    }

    /// Whether pushes are batched at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.config.window.is_zero() && self.config.max_frames > 1
    }

    /// Adds `frames` (one push: one or more encoded frames) for `key` at `now`. Returns the
    /// batches that must go out now, oldest first: the key's pending batch when this push
    /// would make it too large, and the push's own batch when it is full (or when batching
    /// is off).
    pub(crate) fn push(&mut self, key: BatchKey, frames: Bytes, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        if !self.enabled() {
            out.push(Batch {
                key,
                frames,
                pushes: 1,
            });
            return out;
        }
        if let Some(p) = self.pending.get(&key)
            && p.buf.len() + frames.len() > self.config.max_bytes
        {
            out.extend(self.flush(&key));
        }
        if frames.len() >= self.config.max_bytes {
            // Too large to share a batch: it goes out alone (after what was pending).
            out.push(Batch {
                key,
                frames,
                pushes: 1,
            });
            return out;
        }
        let full = match self.pending.get_mut(&key) {
            Some(p) => {
                p.buf.extend_from_slice(&frames);
                p.pushes += 1;
                p.pushes >= self.config.max_frames
            }
            None => {
                self.generation += 1;
                let mut buf =
                    BytesMut::with_capacity((frames.len() * 4).min(self.config.max_bytes));
                buf.extend_from_slice(&frames);
                self.pending.insert(
                    key.clone(),
                    Pending {
                        buf,
                        pushes: 1,
                        generation: self.generation,
                    },
                );
                self.due
                    .push_back((now + self.config.window, key.clone(), self.generation));
                false
            }
        };
        if full {
            out.extend(self.flush(&key));
        }
        out
    }

    fn flush(&mut self, key: &BatchKey) -> Option<Batch> {
        let p = self.pending.remove(key)?;
        Some(Batch {
            key: key.clone(),
            frames: p.buf.freeze(),
            pushes: p.pushes,
        })
    }

    /// When the oldest pending batch is due, if any is pending.
    pub(crate) fn next_due(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.due.front().map(|(at, _, _)| *at)
    }

    fn skip_stale(&mut self) {
        while let Some((_, key, generation)) = self.due.front() {
            if self
                .pending
                .get(key)
                .is_some_and(|p| p.generation == *generation)
            {
                return;
            }
            self.due.pop_front();
        }
    }

    /// The batches due at `now`, oldest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some(at) = self.next_due() {
            if at > now {
                break;
            }
            if let Some((_, key, _)) = self.due.pop_front() {
                out.extend(self.flush(&key));
            }
        }
        if self.pending.is_empty() {
            // Release the storage a burst of rooms left behind.
            self.pending = HashMap::new();
            self.due = VecDeque::new();
        }
        out
    }

    /// Every pending batch, due or not (on shutdown or when the link to core is lost).
    pub(crate) fn take_all(&mut self) -> Vec<Batch> {
        self.skip_stale();
        let due = std::mem::take(&mut self.due);
        let out = due
            .into_iter()
            .filter_map(|(_, key, generation)| {
                let current = self.pending.get(&key)?.generation == generation;
                if current { self.flush(&key) } else { None }
            })
            .collect();
        self.pending = HashMap::new();
        out
    }

    /// Pushes waiting in pending batches.
    #[cfg(test)]
    pub(crate) fn pending_pushes(&self) -> usize {
        self.pending.values().map(|p| p.pushes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> BatchKey {
        BatchKey::Room(name.into())
    }

    fn batcher(window_ms: u64, max_frames: usize, max_bytes: usize) -> Batcher {
        Batcher::new(BatchConfig {
            window: Duration::from_millis(window_ms),
            max_frames,
            max_bytes,
        })
    }

    #[test]
    fn pushes_collect_until_the_window_passes() {
        let mut b = batcher(50, 20, 1024);
        let t0 = Instant::now();
        assert!(b.push(room("r"), Bytes::from_static(b"a"), t0).is_empty());
        let t1 = t0 + Duration::from_millis(10);
        assert!(b.push(room("r"), Bytes::from_static(b"b"), t1).is_empty());
        assert!(
            b.push(BatchKey::All, Bytes::from_static(b"x"), t1)
                .is_empty()
        );
        assert_eq!(b.next_due(), Some(t0 + Duration::from_millis(50)));
        assert_eq!(b.pending_pushes(), 3);
        assert!(b.take_due(t0 + Duration::from_millis(49)).is_empty());
        let due = b.take_due(t0 + Duration::from_millis(50));
        assert_eq!(
            due,
            vec![Batch {
                key: room("r"),
                frames: Bytes::from_static(b"ab"),
                pushes: 2
            }],
            "the window counts from the batch's first push"
        );
        assert_eq!(b.next_due(), Some(t1 + Duration::from_millis(50)));
        let due = b.take_due(t1 + Duration::from_millis(50));
        assert_eq!(due[0].key, BatchKey::All);
        assert_eq!(b.next_due(), None);
        assert_eq!(b.pending_pushes(), 0);
    }

    #[test]
    fn a_full_batch_goes_out_at_once_and_its_deadline_is_forgotten() {
        let mut b = batcher(50, 3, 1024);
        let t0 = Instant::now();
        assert!(b.push(room("r"), Bytes::from_static(b"1"), t0).is_empty());
        assert!(b.push(room("r"), Bytes::from_static(b"2"), t0).is_empty());
        let out = b.push(room("r"), Bytes::from_static(b"3"), t0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].frames, Bytes::from_static(b"123"));
        assert_eq!(out[0].pushes, 3);
        // A new batch of the same room opens later; the old deadline must not flush it.
        let t1 = t0 + Duration::from_millis(30);
        assert!(b.push(room("r"), Bytes::from_static(b"4"), t1).is_empty());
        assert_eq!(b.next_due(), Some(t1 + Duration::from_millis(50)));
        assert!(b.take_due(t0 + Duration::from_millis(50)).is_empty());
        assert_eq!(b.take_due(t1 + Duration::from_millis(50)).len(), 1);
    }

    #[test]
    fn batches_stay_under_max_bytes_and_large_pushes_go_alone() {
        let mut b = batcher(50, 100, 8);
        let t0 = Instant::now();
        assert!(
            b.push(room("r"), Bytes::from_static(b"aaaa"), t0)
                .is_empty()
        );
        assert!(b.push(room("r"), Bytes::from_static(b"bbb"), t0).is_empty());
        let out = b.push(room("r"), Bytes::from_static(b"cc"), t0);
        assert_eq!(
            out.len(),
            1,
            "the pending batch leaves before it would pass 8 bytes"
        );
        assert_eq!(out[0].frames, Bytes::from_static(b"aaaabbb"));
        let out = b.push(room("r"), Bytes::from_static(b"0123456789"), t0);
        assert_eq!(
            out.iter().map(|o| o.frames.clone()).collect::<Vec<_>>(),
            vec![Bytes::from_static(b"cc"), Bytes::from_static(b"0123456789")],
            "order is kept: what was pending goes first"
        );
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn a_zero_window_passes_every_push_through() {
        let mut b = batcher(0, 20, 1024);
        assert!(!b.enabled());
        let out = b.push(room("r"), Bytes::from_static(b"a"), Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn take_all_empties_everything_and_releases_storage() {
        let mut b = batcher(50, 20, 1024);
        let t0 = Instant::now();
        for i in 0..10 {
            b.push(room(&format!("r{i}")), Bytes::from_static(b"m"), t0);
        }
        assert_eq!(b.take_all().len(), 10);
        assert_eq!(b.pending.capacity(), 0);
        assert_eq!(b.due.capacity(), 0);
    }
}
