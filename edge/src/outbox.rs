//! A connection's outgoing queue: bounded, coalescing, and empty-handed when idle.
//!
//! Deliveries push pre-encoded frames (`Bytes` shared by every recipient: one message, one
//! allocation); the connection's task takes everything queued at once and writes it as one
//! batch (one vectored write, or one WebSocket message), then flushes — goim's batched writes.
//! A queue that is full when a frame arrives marks the connection slow: the task sends
//! DISCONNECT(slow) and closes it; the client resumes with SYNC after reconnecting. An idle
//! outbox holds no allocation (the deque's storage is released whenever it drains).

use parking_lot::Mutex;
use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a connection's task must close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The queue overflowed.
    Slow,
    /// Core kicked the connection (the `roam.client.v1.Disconnect.Reason` value).
    Kicked(i32),
    /// The edge is shutting down.
    Drain,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Queued,
    /// The queue was full: the connection is now closing as slow.
    Overflowed,
    /// The connection is closing already; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    close: Option<CloseReason>,
}

/// The queue. Shared between deliverers and the connection's task.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    /// An empty queue of at most `capacity` deliveries (each one or more frames: a push, a
    /// reply, a room batch).
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a frame.
    pub(crate) fn push(&self, frame: Bytes) -> Pushed {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        if s.queue.len() >= self.capacity {
            s.close = Some(CloseReason::Slow);
            s.queue = VecDeque::new();
            drop(s);
            self.ready.notify_one();
            return Pushed::Overflowed;
        }
        let was_empty = s.queue.is_empty();
        s.queue.push_back(frame);
        drop(s);
        // Only the first frame of a batch wakes the task: it takes everything queued when
        // it runs, so later frames would only pay for a wake-up already on its way.
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Asks the connection's task to close (the first reason wins).
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock();
        if s.close.is_none() {
            s.close = Some(reason);
            s.queue = VecDeque::new();
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Moves everything queued into `batch`; returns the close reason if the connection must
    /// close (queued frames are then dropped). Releases the queue's storage.
    pub(crate) fn take(&self, batch: &mut Vec<Bytes>) -> Option<CloseReason> {
        let mut s = self.state.lock();
        if let Some(reason) = s.close {
            return Some(reason);
        }
        batch.extend(std::mem::take(&mut s.queue));
        None
    }

    /// Waits until something is queued or a close is asked for.
    pub(crate) async fn ready(&self) {
        loop {
            let notified = self.ready.notified();
            {
                let s = self.state.lock();
                if !s.queue.is_empty() || s.close.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Frames waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether nothing waits.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_everything_queued_and_releases_storage() {
        let o = Outbox::new(4);
        for i in 0..3u8 {
            assert_eq!(o.push(Bytes::from(vec![i])), Pushed::Queued);
        }
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch), None);
        assert_eq!(batch.len(), 3);
        assert!(o.is_empty());
        assert_eq!(
            o.state.lock().queue.capacity(),
            0,
            "an idle outbox holds no storage"
        );
    }

    #[test]
    fn overflow_marks_the_connection_slow_and_drops_its_queue() {
        let o = Outbox::new(2);
        o.push(Bytes::from_static(b"a"));
        o.push(Bytes::from_static(b"b"));
        assert_eq!(o.push(Bytes::from_static(b"c")), Pushed::Overflowed);
        assert_eq!(o.push(Bytes::from_static(b"d")), Pushed::Closed);
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch), Some(CloseReason::Slow));
        assert!(batch.is_empty());
        o.close(CloseReason::Drain);
        assert_eq!(
            o.take(&mut batch),
            Some(CloseReason::Slow),
            "the first reason wins"
        );
    }

    #[tokio::test]
    async fn ready_wakes_on_push_and_on_close() {
        let o = std::sync::Arc::new(Outbox::new(2));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.ready().await }
        });
        tokio::task::yield_now().await;
        o.push(Bytes::from_static(b"x"));
        waiter.await.unwrap();
        let mut batch = Vec::new();
        o.take(&mut batch);
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.ready().await }
        });
        tokio::task::yield_now().await;
        o.close(CloseReason::Drain);
        waiter.await.unwrap();
    }
}
