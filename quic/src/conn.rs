//! A connection's state as the loop and the application share it, and the application's
//! handles: [`Connection`], [`SendStream`], [`RecvStream`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use quinn_proto::{ConnectionHandle, Dir, Event, StreamEvent, VarInt};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::endpoint::Shared;

pub use quinn_proto::{ConnectionError, StreamId};

/// Why a stream cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// The peer abandoned its sending side (RESET_STREAM) with this code.
    #[error("the peer reset the stream (code {0})")]
    Reset(VarInt),
    /// The peer asked us to stop sending (STOP_SENDING) with this code.
    #[error("the peer stopped the stream (code {0})")]
    Stopped(VarInt),
    /// The connection is over.
    #[error("the connection is lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The stream is finished or reset on our side already.
    #[error("the stream is closed")]
    Closed,
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        let kind = match e {
            StreamError::Reset(_) | StreamError::Stopped(_) => io::ErrorKind::ConnectionReset,
            StreamError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            StreamError::Closed => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, e)
    }
}

/// One connection: quinn-proto's state and who waits on it.
pub(crate) struct ConnShared {
    handle: ConnectionHandle,
    /// Set (before anyone waiting is woken) once the connection is over: a task polled
    /// again while it waits for that learns it has not happened without taking the lock.
    pub(crate) over: AtomicBool,
    state: Mutex<ConnState>,
}

pub(crate) struct ConnState {
    pub(crate) proto: quinn_proto::Connection,
    /// The deadline the loop holds for it.
    pub(crate) deadline: Option<Instant>,
    connected: bool,
    error: Option<ConnectionError>,
    /// Wakers by what they wait for (a handful at most: streams are few per connection).
    /// In place, as the handshake's and the close's below: this state's allocation is 7,168
    /// bytes in the allocator's size classes for the 6,464 it needs, so a few wakers here
    /// cost nothing, where vectors of their own kept 64–96 bytes each for the connection's
    /// life.
    readers: Wakers<(StreamId, Waker), 4>,
    writers: Wakers<(StreamId, Waker), 2>,
    /// Waiting for a stream the client opens, by direction (bidirectional first).
    accepting: [Option<Waker>; 2],
    /// Waiting for credit to open a stream, by direction.
    opening: [Option<Waker>; 2],
    handshake: Wakers<Waker, 2>,
    /// Waiting for the close: each task's waker once, with how many of its `closed()`
    /// futures wait (one leaving does not take the others' wake-up with it).
    closed: Wakers<(Waker, usize), 2>,
    /// Waiting for a QUIC datagram.
    datagram: Option<Waker>,
}

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

type Wakers<T, const N: usize> = SmallVec<[T; N]>;

fn wake_all<const N: usize>(wakers: &mut Wakers<Waker, N>) {
    for w in wakers.drain(..) {
        w.wake();
    }
}

fn wake_stream<const N: usize>(wakers: &mut Wakers<(StreamId, Waker), N>, id: StreamId) {
    if let Some(i) = wakers.iter().position(|(s, _)| *s == id) {
        wakers.swap_remove(i).1.wake();
    }
}

/// Adds `waker` to those waiting for the connection's handshake, unless it is there
/// already: a future polled again (every time its task wakes) registers once, not once per
/// poll.
fn wait_on<const N: usize>(wakers: &mut Wakers<Waker, N>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// Counts one more wait of `waker`'s task.
fn join<const N: usize>(wakers: &mut Wakers<(Waker, usize), N>, waker: &Waker) {
    match wakers.iter_mut().find(|(w, _)| w.will_wake(waker)) {
        Some((_, waits)) => *waits += 1,
        None => wakers.push((waker.clone(), 1)),
    }
}

/// Counts one wait of `waker`'s task less, and lets the waker go after its last.
fn leave<const N: usize>(wakers: &mut Wakers<(Waker, usize), N>, waker: &Waker) {
    if let Some(i) = wakers.iter().position(|(w, _)| w.will_wake(waker)) {
        wakers[i].1 -= 1;
        if wakers[i].1 == 0 {
            wakers.swap_remove(i);
        }
    }
}

/// Drops the waker stream `id` left, if any.
fn forget_stream<const N: usize>(wakers: &mut Wakers<(StreamId, Waker), N>, id: StreamId) {
    if let Some(i) = wakers.iter().position(|(s, _)| *s == id) {
        wakers.swap_remove(i);
    }
}

fn register<const N: usize>(
    wakers: &mut Wakers<(StreamId, Waker), N>,
    id: StreamId,
    waker: &Waker,
) {
    match wakers.iter_mut().find(|(s, _)| *s == id) {
        Some((_, w)) => w.clone_from(waker),
        None => wakers.push((id, waker.clone())),
    }
}

impl ConnShared {
    pub(crate) fn new(handle: ConnectionHandle, proto: quinn_proto::Connection) -> Arc<Self> {
        Arc::new(ConnShared {
            handle,
            over: AtomicBool::new(false),
            state: Mutex::new(ConnState {
                proto,
                deadline: None,
                connected: false,
                error: None,
                readers: SmallVec::new(),
                writers: SmallVec::new(),
                accepting: [None, None],
                opening: [None, None],
                handshake: SmallVec::new(),
                closed: SmallVec::new(),
                datagram: None,
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock()
    }

    /// Applies a datagram (or another endpoint event); the client's old and new address if
    /// it moved the connection to a new path (migration).
    pub(crate) fn handle_event(
        &self,
        event: quinn_proto::ConnectionEvent,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let mut c = self.lock();
        let before = c.proto.remote_address();
        c.proto.handle_event(event);
        let after = c.proto.remote_address();
        (before != after).then_some((before, after))
    }

    /// Its deadline passed. The client's old and new address if that moved the connection
    /// (quinn-proto goes back to the old path when the new one fails its validation).
    pub(crate) fn timeout(&self, now: Instant) -> Option<(SocketAddr, SocketAddr)> {
        let mut c = self.lock();
        c.deadline = None;
        let before = c.proto.remote_address();
        c.proto.handle_timeout(now);
        let after = c.proto.remote_address();
        (before != after).then_some((before, after))
    }

    pub(crate) fn close(&self, now: Instant, code: VarInt, reason: &[u8]) {
        let mut c = self.lock();
        c.proto.close(now, code, Bytes::copy_from_slice(reason));
        c.lost(ConnectionError::LocallyClosed, &self.over);
    }
}

impl ConnState {
    /// Wakes whoever waits on what quinn-proto reports (`over`: the connection's flag).
    pub(crate) fn deliver_events(&mut self, over: &AtomicBool) {
        while let Some(event) = self.proto.poll() {
            match event {
                Event::Connected => {
                    self.connected = true;
                    wake_all(&mut self.handshake);
                }
                Event::ConnectionLost { reason } => self.lost(reason, over),
                Event::Stream(StreamEvent::Opened { dir }) => {
                    if let Some(w) = self.accepting[dir_index(dir)].take() {
                        w.wake();
                    }
                }
                Event::Stream(StreamEvent::Available { dir }) => {
                    if let Some(w) = self.opening[dir_index(dir)].take() {
                        w.wake();
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => wake_stream(&mut self.readers, id),
                Event::DatagramReceived => {
                    if let Some(w) = self.datagram.take() {
                        w.wake();
                    }
                }
                Event::Stream(
                    StreamEvent::Writable { id }
                    | StreamEvent::Finished { id }
                    | StreamEvent::Stopped { id, .. },
                ) => wake_stream(&mut self.writers, id),
                _ => {}
            }
        }
    }

    /// The connection is over: everyone waiting is told.
    fn lost(&mut self, reason: ConnectionError, over: &AtomicBool) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
        over.store(true, Ordering::Release);
        wake_all(&mut self.handshake);
        for (w, _) in self.closed.drain(..) {
            w.wake();
        }
        let datagram = std::iter::once(&mut self.datagram);
        for w in self
            .accepting
            .iter_mut()
            .chain(self.opening.iter_mut())
            .chain(datagram)
        {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        for (_, w) in self.readers.drain(..).chain(self.writers.drain(..)) {
            w.wake();
        }
    }
}

/// The application's hold on a connection: closed (code 0) when the last handle goes.
struct ConnRef {
    conn: Arc<ConnShared>,
    endpoint: Arc<Shared>,
}

impl ConnRef {
    fn touch(&self) {
        self.endpoint.touch(self.conn.handle);
    }
}

impl Drop for ConnRef {
    fn drop(&mut self) {
        let open = self.conn.lock().error.is_none();
        if open {
            self.conn.close(Instant::now(), VarInt::from_u32(0), b"");
            self.touch();
        }
    }
}

/// A QUIC connection's application side.
#[derive(Clone)]
pub struct Connection(Arc<ConnRef>);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote_address())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(conn: Arc<ConnShared>, endpoint: Arc<Shared>) -> Self {
        Connection(Arc::new(ConnRef { conn, endpoint }))
    }

    /// The client's current address (it changes when the client migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.0.conn.lock().proto.remote_address()
    }

    /// A number that identifies the connection for its life.
    pub fn stable_id(&self) -> usize {
        self.0.conn.handle.0
    }

    /// The next bidirectional stream the client opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        std::future::poll_fn(|cx| self.poll_accept_bi(cx)).await
    }

    /// [`Connection::accept_bi`], polled.
    pub fn poll_accept_bi(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(SendStream, RecvStream), ConnectionError>> {
        self.poll_accept(cx, Dir::Bi)
            .map_ok(|(id, early)| (self.send_stream(id), self.recv_stream(id, early)))
    }

    /// The next unidirectional stream the client opens.
    pub fn poll_accept_uni(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionError>> {
        self.poll_accept(cx, Dir::Uni)
            .map_ok(|(id, early)| self.recv_stream(id, early))
    }

    /// Opens a bidirectional stream, once the client allows another.
    pub fn poll_open_bi(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(SendStream, RecvStream), ConnectionError>> {
        self.poll_open(cx, Dir::Bi)
            .map_ok(|id| (self.send_stream(id), self.recv_stream(id, false)))
    }

    /// Opens a unidirectional stream, once the client allows another.
    pub fn poll_open_uni(&self, cx: &mut Context<'_>) -> Poll<Result<SendStream, ConnectionError>> {
        self.poll_open(cx, Dir::Uni)
            .map_ok(|id| self.send_stream(id))
    }

    /// A stream the client opened in `dir`, and whether it came in 0-RTT data.
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<(StreamId, bool), ConnectionError>> {
        let mut c = self.0.conn.lock();
        if let Some(id) = c.proto.streams().accept(dir) {
            // Before the handshake completed, a client's stream can only have come in
            // 0-RTT data.
            let early = c.proto.is_handshaking();
            drop(c);
            // Accepting may give the client credit for another stream.
            self.0.touch();
            return Poll::Ready(Ok((id, early)));
        }
        if let Some(e) = &c.error {
            return Poll::Ready(Err(e.clone()));
        }
        c.accepting[dir_index(dir)] = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_open(&self, cx: &mut Context<'_>, dir: Dir) -> Poll<Result<StreamId, ConnectionError>> {
        let mut c = self.0.conn.lock();
        if let Some(e) = &c.error {
            return Poll::Ready(Err(e.clone()));
        }
        if let Some(id) = c.proto.streams().open(dir) {
            drop(c);
            self.0.touch();
            return Poll::Ready(Ok(id));
        }
        c.opening[dir_index(dir)] = Some(cx.waker().clone());
        Poll::Pending
    }

    fn send_stream(&self, id: StreamId) -> SendStream {
        SendStream {
            conn: self.0.clone(),
            id,
            finished: false,
        }
    }

    fn recv_stream(&self, id: StreamId, early: bool) -> RecvStream {
        RecvStream {
            conn: self.0.clone(),
            id,
            ended: false,
            early,
        }
    }

    /// Sends a QUIC datagram (unreliable; the oldest queued is dropped when the send buffer is
    /// full).
    pub fn send_datagram(&self, data: Bytes) -> Result<(), quinn_proto::SendDatagramError> {
        self.0.conn.lock().proto.datagrams().send(data, true)?;
        self.0.touch();
        Ok(())
    }

    /// The next QUIC datagram the client sent.
    pub fn poll_recv_datagram(&self, cx: &mut Context<'_>) -> Poll<Result<Bytes, ConnectionError>> {
        let mut c = self.0.conn.lock();
        if let Some(data) = c.proto.datagrams().recv() {
            return Poll::Ready(Ok(data));
        }
        if let Some(e) = &c.error {
            return Poll::Ready(Err(e.clone()));
        }
        c.datagram = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Resolves once the handshake has completed (true) or failed (false).
    pub async fn established(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut c = self.0.conn.lock();
            if c.connected {
                return Poll::Ready(true);
            }
            if c.error.is_some() {
                return Poll::Ready(false);
            }
            wait_on(&mut c.handshake, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Why the connection is over, if it is.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.0.conn.lock().error.clone()
    }

    /// Resolves when the connection is over, with why. Polled again by the same task
    /// before then (a response stream's task polls it on every push), it returns without
    /// taking the connection's lock; dropped before then, it takes its waker back.
    pub fn closed(&self) -> Closed<'_> {
        Closed {
            conn: &self.0.conn,
            waiting: None,
        }
    }

    /// Closes the connection with `code` and `reason`.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.0.conn.close(Instant::now(), code, reason);
        self.0.touch();
    }
}

/// [`Connection::closed`]'s future.
#[must_use = "futures do nothing unless polled"]
pub struct Closed<'a> {
    conn: &'a ConnShared,
    /// The waker it left with the connection, if it waits.
    waiting: Option<Waker>,
}

impl std::fmt::Debug for Closed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closed")
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl Future for Closed<'_> {
    type Output = ConnectionError;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ConnectionError> {
        let this = self.get_mut();
        if this
            .waiting
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
            && !this.conn.over.load(Ordering::Acquire)
        {
            return Poll::Pending;
        }
        let mut c = this.conn.lock();
        if let Some(e) = &c.error {
            this.waiting = None;
            return Poll::Ready(e.clone());
        }
        if let Some(old) = this.waiting.take() {
            // Polled by another task now: the old task is not woken (nor kept) for it.
            leave(&mut c.closed, &old);
        }
        join(&mut c.closed, cx.waker());
        this.waiting = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        // A finished request's task would otherwise stay allocated, through its waker, for
        // as long as the connection lives.
        if let Some(w) = self.waiting.take()
            && !self.conn.over.load(Ordering::Acquire)
        {
            leave(&mut self.conn.lock().closed, &w);
        }
    }
}

/// The sending half of a stream. Dropped unfinished, it finishes the stream.
pub struct SendStream {
    conn: Arc<ConnRef>,
    id: StreamId,
    finished: bool,
}

impl SendStream {
    /// Writes what the stream's flow control and send window allow of `buf` (at least one
    /// byte), or waits until it can.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, StreamError>> {
        use quinn_proto::WriteError;
        let mut c = self.conn.conn.lock();
        if let Some(e) = &c.error {
            return Poll::Ready(Err(StreamError::ConnectionLost(e.clone())));
        }
        match c.proto.send_stream(self.id).write(buf) {
            Ok(n) => {
                drop(c);
                self.conn.touch();
                Poll::Ready(Ok(n))
            }
            Err(WriteError::Blocked) => {
                register(&mut c.writers, self.id, cx.waker());
                Poll::Pending
            }
            Err(WriteError::Stopped(code)) => Poll::Ready(Err(StreamError::Stopped(code))),
            Err(WriteError::ClosedStream) => Poll::Ready(Err(StreamError::Closed)),
        }
    }

    /// Writes what the stream's flow control and send window allow of `data` without
    /// copying it (quinn-proto keeps the `Bytes` until they are acknowledged); what could not
    /// be written stays in `data`. With `waker`, it is woken once more can be written if
    /// `data` is not empty after the call. One lock and one wake of the loop for the whole
    /// buffer, where [`SendStream::poll_send`] takes them per slice.
    pub fn write_bytes(
        &mut self,
        data: &mut Bytes,
        waker: Option<&Waker>,
    ) -> Result<(), StreamError> {
        use quinn_proto::WriteError;
        if data.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.conn.lock();
        if let Some(e) = &c.error {
            return Err(StreamError::ConnectionLost(e.clone()));
        }
        let mut written = false;
        let result = loop {
            match c
                .proto
                .send_stream(self.id)
                .write_chunks(std::slice::from_mut(data))
            {
                Ok(_) if data.is_empty() => break Ok(()),
                Ok(_) => written = true,
                Err(WriteError::Blocked) => {
                    if let Some(waker) = waker {
                        register(&mut c.writers, self.id, waker);
                    }
                    break Ok(());
                }
                Err(WriteError::Stopped(code)) => break Err(StreamError::Stopped(code)),
                Err(WriteError::ClosedStream) => break Err(StreamError::Closed),
            }
        };
        drop(c);
        if written || data.is_empty() {
            self.conn.touch();
        }
        result
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, buf).map_err(io::Error::from)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is the loop's to send; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.finish();
        Poll::Ready(Ok(()))
    }
}

impl SendStream {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Abandons the stream with `code` (RESET_STREAM): what was not sent is not.
    pub fn reset(&mut self, code: VarInt) {
        if !self.finished {
            self.finished = true;
            let _ = self.conn.conn.lock().proto.send_stream(self.id).reset(code);
            self.conn.touch();
        }
    }

    /// Ends the stream: what was written is still delivered.
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let _ = self.conn.conn.lock().proto.send_stream(self.id).finish();
            self.conn.touch();
        }
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.finish();
        // A waker left by a write that waited for room goes with the stream.
        forget_stream(&mut self.conn.conn.lock().writers, self.id);
    }
}

/// The receiving half of a stream. Dropped before its end, it asks the peer to stop
/// sending (STOP_SENDING, code 0).
pub struct RecvStream {
    conn: Arc<ConnRef>,
    id: StreamId,
    ended: bool,
    early: bool,
}

impl RecvStream {
    /// Whether the stream was opened in 0-RTT data (which an attacker may replay).
    pub fn is_0rtt(&self) -> bool {
        self.early
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Asks the peer to stop sending (STOP_SENDING with `code`).
    pub fn stop(&mut self, code: VarInt) {
        if !self.ended {
            self.ended = true;
            let _ = self.conn.conn.lock().proto.recv_stream(self.id).stop(code);
            self.conn.touch();
        }
    }
}

impl RecvStream {
    /// The next chunk of at most `max` bytes, in order, without copying; `None` at the end
    /// of the stream.
    pub fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        use quinn_proto::{ReadError, ReadableError};
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        let mut c = self.conn.conn.lock();
        let state = &mut *c;
        let mut stream = state.proto.recv_stream(self.id);
        let mut chunks = match stream.read(true) {
            Ok(chunks) => chunks,
            // Read to its end already, or stopped.
            Err(ReadableError::ClosedStream) => {
                self.ended = true;
                return Poll::Ready(Ok(None));
            }
            Err(ReadableError::IllegalOrderedRead) => {
                return Poll::Ready(Err(StreamError::Closed));
            }
        };
        let outcome = match chunks.next(max) {
            Ok(Some(chunk)) => Some(Ok(Some(chunk.bytes))),
            Ok(None) => {
                self.ended = true;
                Some(Ok(None))
            }
            Err(ReadError::Blocked) => None,
            Err(ReadError::Reset(code)) => {
                self.ended = true;
                Some(Err(StreamError::Reset(code)))
            }
        };
        let transmit = chunks.finalize().should_transmit();
        let polled = match outcome {
            Some(done) => Poll::Ready(done),
            None => match &c.error {
                Some(e) => Poll::Ready(Err(StreamError::ConnectionLost(e.clone()))),
                None => {
                    register(&mut c.readers, self.id, cx.waker());
                    Poll::Pending
                }
            },
        };
        drop(c);
        if transmit {
            self.conn.touch();
        }
        polled
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = buf.remaining();
        match self.get_mut().poll_chunk(cx, max) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut c = self.conn.conn.lock();
        // A waker left by a read that waited goes with the stream.
        forget_stream(&mut c.readers, self.id);
        if !self.ended {
            let _ = c.proto.recv_stream(self.id).stop(VarInt::from_u32(0));
            drop(c);
            self.conn.touch();
        }
    }
}
