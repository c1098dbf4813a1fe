//! A read side that is polled only when it was woken.
//!
//! The connection driver ([`crate::conn`]) polls its transport's read on every round of its
//! loop, and most rounds are a push to write, not data to read. For a TCP socket a poll
//! without readiness is a flag check; for a quinn stream it takes the connection's lock,
//! looks the stream up, opens its receive buffer and stores a clone of the waker in a
//! hash map — per push, per connection, in a room fan-out (about 4 % of the server's CPU in
//! `roam bench room-fanout --transport quic`). [`ReadGate`] remembers that the stream said
//! `Pending` and answers `Pending` itself until the stream wakes it, as tokio's I/O
//! readiness does for sockets.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Set by the stream's wake-up; wakes the task that last polled the read.
#[derive(Debug, Default)]
struct Woken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `S` whose reads reach it only after it woke the reader (or on the first read); writes
/// pass through.
pub(crate) struct ReadGate<S> {
    inner: S,
    woken: Arc<Woken>,
    /// The waker handed to the stream: it sets `woken` and wakes the reading task.
    waker: Waker,
    /// The stream's last read said `Pending`.
    parked: bool,
}

impl<S> ReadGate<S> {
    pub(crate) fn new(inner: S) -> Self {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        ReadGate {
            inner,
            woken,
            waker,
            parked: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake-up after the read sees this task.
        this.woken.task.register(cx.waker());
        if this.parked && !this.woken.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        let polled = Pin::new(&mut this.inner).poll_read(&mut inner_cx, buf);
        this.parked = polled.is_pending();
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadGate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::AsyncWriteExt;

    /// A reader that counts its polls and reads from a duplex pipe.
    struct Counted {
        polls: Arc<AtomicUsize>,
        inner: tokio::io::DuplexStream,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut this.inner).poll_read(cx, buf)
        }
    }

    fn poll_once(gate: &mut ReadGate<Counted>, cx: &mut Context<'_>) -> Poll<Vec<u8>> {
        let mut bytes = [0u8; 16];
        let mut buf = ReadBuf::new(&mut bytes);
        match Pin::new(gate).poll_read(cx, &mut buf) {
            Poll::Ready(r) => {
                r.unwrap();
                Poll::Ready(buf.filled().to_vec())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[tokio::test]
    async fn a_parked_read_reaches_the_stream_again_only_once_it_woke() {
        let (inner, mut peer) = tokio::io::duplex(64);
        let polls = Arc::new(AtomicUsize::new(0));
        let mut gate = ReadGate::new(Counted {
            polls: polls.clone(),
            inner,
        });
        let task_woken = Arc::new(Woken::default());
        let task = Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task);

        assert!(poll_once(&mut gate, &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Polled again and again without a wake-up (the driver's other work): the stream is
        // not asked.
        for _ in 0..10 {
            assert!(poll_once(&mut gate, &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        assert!(!task_woken.woken.load(Ordering::Acquire));

        // Data arrives: the stream wakes the gate, which wakes the task; the next poll reads.
        peer.write_all(b"frame").await.unwrap();
        assert!(
            task_woken.woken.load(Ordering::Acquire),
            "the task was woken"
        );
        assert_eq!(
            poll_once(&mut gate, &mut cx),
            Poll::Ready(b"frame".to_vec())
        );
        assert_eq!(polls.load(Ordering::Relaxed), 2);

        // Ready reads do not park: the next poll asks the stream (which is empty: parks).
        assert!(poll_once(&mut gate, &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 3);
        drop(peer);
        // The peer's end wakes it too: end of stream.
        assert_eq!(poll_once(&mut gate, &mut cx), Poll::Ready(Vec::new()));
    }

    #[tokio::test]
    async fn the_task_that_polled_last_is_woken() {
        let (inner, mut peer) = tokio::io::duplex(64);
        let polls = Arc::new(AtomicUsize::new(0));
        let mut gate = ReadGate::new(Counted { polls, inner });
        let (first, second) = (Arc::new(Woken::default()), Arc::new(Woken::default()));
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());
        assert!(poll_once(&mut gate, &mut Context::from_waker(&first_waker)).is_pending());
        // The read moved to another task (a future polled elsewhere) while parked.
        assert!(poll_once(&mut gate, &mut Context::from_waker(&second_waker)).is_pending());
        peer.write_all(b"x").await.unwrap();
        assert!(second.woken.load(Ordering::Acquire));
        assert!(!first.woken.load(Ordering::Acquire));
    }
}
