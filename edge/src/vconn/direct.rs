//! Direct streams: a `/v1/stream` connection whose task writes its frames to the
//! transport's response stream itself.
//!
//! Over HTTP/1.1 and HTTP/2 a stream connection's task hands its batches through a queue
//! to the response body, which hyper polls in another task. Over HTTP/3 the edge serves
//! the response itself ([`crate::quic`]), so the queue, the body and the second task are
//! not needed: the opening request's handler runs the connection's task until AUTH_REPLY
//! is written (into [`Slot::pending`]), and hands it back in the response
//! ([`DirectOpening`], an extension); the transport sends the head and the pending frames,
//! attaches its stream ([`DirectStream`]) and runs the task to its end in the response's
//! own task. One task and one wake-up per push instead of two, no queue between them, and
//! about 3 KB less per idle HTTP/3 stream connection.
//!
//! The task's future is never dropped unfinished: a [`Direct`] dropped before it ran to
//! its end (a refused opening, a response that could not be sent) tells it the client is
//! gone and spawns what is left of it, which closes the connection as usual.

use parking_lot::Mutex;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::task::TaskTracker;

/// The transport's response stream, as the connection's task writes it.
pub(crate) trait DirectStream: Send {
    /// Sends a chunk of frames.
    fn send(&mut self, chunk: Bytes) -> BoxFuture<'_, io::Result<()>>;
    /// Ends the response.
    fn finish(&mut self) -> BoxFuture<'_, ()>;
}

impl fmt::Debug for dyn DirectStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirectStream")
    }
}

/// Where the connection's task and its transport meet: frames written before the
/// transport attached its stream wait here, the stream is left here for the task, and the
/// transport says here that the client went away (a flag and a waker: a cancellation token
/// and its boxed wait cost every idle stream connection ≈ 190 bytes more).
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(super) pending: Vec<Bytes>,
    pub(super) stream: Option<Box<dyn DirectStream>>,
    gone: bool,
    gone_waker: Option<Waker>,
}

impl Slot {
    /// The client went away: the connection's task is told.
    fn tell_gone(&mut self) {
        self.gone = true;
        if let Some(w) = self.gone_waker.take() {
            w.wake();
        }
    }
}

/// The connection task's side of a direct stream (held by its [`super::VirtualIo`]).
#[derive(Debug)]
pub(super) struct Down {
    slot: Arc<Mutex<Slot>>,
    /// The stream, once taken from the slot.
    stream: Option<Box<dyn DirectStream>>,
}

impl Down {
    /// A direct downstream and the half its opening request hands on, which tells it when
    /// the client went away.
    pub(super) fn new() -> (Down, Direct) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let down = Down {
            slot: slot.clone(),
            stream: None,
        };
        let direct = Direct { slot, driver: None };
        (down, direct)
    }

    /// The attached stream, if the transport attached it.
    fn stream(&mut self) -> Option<&mut Box<dyn DirectStream>> {
        if self.stream.is_none() {
            self.stream = self.slot.lock().stream.take();
        }
        self.stream.as_mut()
    }

    /// The slot it shares with its transport (see [`gone`]).
    pub(super) fn slot(&self) -> &Arc<Mutex<Slot>> {
        &self.slot
    }

    /// Sends `chunk`, or keeps it for the transport until it attaches its stream.
    pub(super) async fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        match self.stream() {
            Some(stream) => stream.send(chunk).await,
            None => {
                self.slot.lock().pending.push(chunk);
                Ok(())
            }
        }
    }

    /// Ends the response (if the stream was attached).
    pub(super) async fn finish(&mut self) {
        if let Some(stream) = self.stream() {
            stream.finish().await;
        }
    }
}

/// Resolves once the transport said (in `slot`) that the client went away.
pub(super) async fn gone(slot: &Mutex<Slot>) {
    std::future::poll_fn(|cx| {
        let mut slot = slot.lock();
        if slot.gone {
            return Poll::Ready(());
        }
        match &mut slot.gone_waker {
            Some(w) => w.clone_from(cx.waker()),
            None => slot.gone_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    })
    .await;
}

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The opening request's half of a direct stream connection: its task (once started) and
/// the slot its transport attaches the stream to.
pub(crate) struct Direct {
    slot: Arc<Mutex<Slot>>,
    /// The connection's task and where to spawn it if it is dropped unfinished.
    driver: Option<(Driver, TaskTracker)>,
}

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("running", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// Takes the connection's task: it runs while this is polled (see [`Direct::until`]
    /// and [`Direct::run`]), and on `tracker` if this is dropped first.
    pub(crate) fn start(
        &mut self,
        driver: impl Future<Output = ()> + Send + 'static,
        tracker: TaskTracker,
    ) {
        self.driver = Some((Box::pin(driver), tracker));
    }

    /// Runs the connection's task until `other` resolves (or the task ends; then `other`
    /// is awaited alone).
    pub(crate) async fn until<T>(&mut self, other: impl Future<Output = T>) -> T {
        tokio::pin!(other);
        if let Some((driver, _)) = &mut self.driver {
            tokio::select! {
                biased;
                out = &mut other => return out,
                () = driver => {}
            }
            self.driver = None;
        }
        other.await
    }

    /// The frames the task wrote before the stream was attached (AUTH_REPLY first): the
    /// transport sends them, then attaches its stream.
    pub(crate) fn take_pending(&self) -> Vec<Bytes> {
        std::mem::take(&mut self.slot.lock().pending)
    }

    /// Attaches the transport's stream: the task writes to it from now on.
    pub(crate) fn attach(&self, stream: Box<dyn DirectStream>) {
        self.slot.lock().stream = Some(stream);
    }

    /// Runs the connection's task to its end. When `client_gone` resolves first, the task
    /// is told (it closes the connection) and still awaited.
    pub(crate) async fn run(mut self, client_gone: impl Future<Output = ()>) {
        let Some((mut driver, _)) = self.driver.take() else {
            return;
        };
        tokio::select! {
            () = &mut driver => return,
            () = client_gone => self.slot.lock().tell_gone(),
        }
        driver.await;
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        if let Some((driver, tracker)) = self.driver.take() {
            // Nobody will write its frames: the client is as good as gone.
            self.slot.lock().tell_gone();
            tracker.spawn(driver);
        }
    }
}

/// A direct stream connection handed back in its opening response (an extension: it
/// must be `Clone` and `Sync`, hence the shared cell); the transport takes it.
#[derive(Debug, Clone)]
pub(crate) struct DirectOpening(Arc<Mutex<Option<Direct>>>);

impl DirectOpening {
    pub(crate) fn new(direct: Direct) -> Self {
        DirectOpening(Arc::new(Mutex::new(Some(direct))))
    }

    /// The connection (once).
    pub(crate) fn take(&self) -> Option<Direct> {
        self.0.lock().take()
    }
}

/// A request extension from a transport that writes `/v1/stream` responses itself: the
/// handler answers with a [`DirectOpening`] instead of a body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WritesDirect;
