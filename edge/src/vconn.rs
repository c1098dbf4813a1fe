//! Virtual connections: a client connection made of HTTP requests, for clients that cannot
//! hold a WebSocket (proxies that buffer or strip upgrades, restricted runtimes).
//!
//! - `GET /v1/stream` opens one and keeps the response open: its body is the connection's
//!   downstream, frames back to back (the first is AUTH_REPLY).
//! - `GET /v1/poll` opens one whose downstream is a buffer read by long-polls: every frame
//!   gets a cursor (AUTH_REPLY is 1); `GET /v1/poll?cursor=N&wait=S` answers the frames after
//!   N at once, or waits up to S seconds for some (204 if none came). Polling with cursor N
//!   releases the frames up to N.
//! - `POST /v1/send` carries frames up; its response body holds their replies (every frame
//!   whose op has a reply, or that the session answers with ERROR, is matched by `seq`).
//!   Everything else (pushes, kicks, DISCONNECT) goes down the stream or into the poll buffer.
//!
//! The opening request authenticates with `Authorization: Bearer <token>` (and optional
//! `device`, `platform` and comma-separated `rooms` query parameters, as in AUTH); its answer
//! names the connection in a `roam-session` header, which later requests carry together with
//! the same bearer token. A refused token is an HTTP error (401, or 503 if core is
//! unavailable) with a JSON body, not a frame.
//!
//! Underneath, a virtual connection is driven by the same [`crate::conn::drive`] as every
//! transport ([`VirtualIo`] turns request bodies into reads and routes writes), so the
//! session state machine, rate limits, heartbeats (a HEARTBEAT sent with `/v1/send` keeps the
//! connection alive), rooms, the outbox and its slow-consumer policy all apply unchanged. A
//! poll client that lets more than the outbox's capacity of frames pile up unpolled is closed
//! as slow: its buffer ends with DISCONNECT(slow), kept (like every closed poll connection's
//! last frames) for [`LINGER`] so the client can read why.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;
use roam_proto::client::v1 as pb;
use roam_proto::{FrameDecoder, FrameError, Op, disconnect_frame, frame_of};
use sha2::Digest;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};

use crate::conn::FrameIo;

mod direct;
pub(crate) use direct::{Direct, DirectOpening, DirectStream, WritesDirect};

/// How long a closed poll connection's last frames stay readable.
pub(crate) const LINGER: Duration = Duration::from_secs(60);

/// Request bodies queued towards a connection's task.
const UP_QUEUE: usize = 4;
/// Batches queued towards a stream response beyond the connection's outbox.
const DOWN_QUEUE: usize = 2;

// Both queues are flume channels: their buffers grow as they fill (a few slots at most
// here), where a tokio mpsc channel allocates 32 slots up front: about 1.6 KB for each of
// the two that every open stream connection held (heaptrack, docs/edge.md).

/// A stream-mode connection's frames, as its response body reads them. Dropping it (the
/// client went away) tells the connection's task.
pub(crate) struct Frames {
    frames: flume::r#async::RecvStream<'static, Bytes>,
    _gone: DropGuard,
}

impl Frames {
    /// The next batch of frames; `None` once the connection's task is done.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        futures_util::StreamExt::next(self).await
    }
}

impl futures_util::Stream for Frames {
    type Item = Bytes;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        std::pin::Pin::new(&mut self.get_mut().frames).poll_next(cx)
    }
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames").finish_non_exhaustive()
    }
}

/// How a virtual connection's frames reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One long response body.
    Stream,
    /// A buffer read by long-polls.
    Poll,
}

/// A `POST /v1/send` waiting for its replies.
#[derive(Debug)]
struct Waiter {
    id: u64,
    /// seq → the reply op it waits for (ERROR answers any).
    expect: HashMap<u32, u32>,
    /// The requests' seqs in body order: replies are answered in it.
    order: Vec<u32>,
    got: Vec<(u32, Bytes)>,
    done: Option<oneshot::Sender<Vec<Bytes>>>,
}

impl Waiter {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.take());
        }
    }

    /// The replies gathered, in the order of their requests.
    fn take(&mut self) -> Vec<Bytes> {
        let order = &self.order;
        self.got
            .sort_by_key(|(seq, _)| order.iter().position(|s| s == seq));
        self.got.drain(..).map(|(_, b)| b).collect()
    }
}

#[derive(Debug, Default)]
struct State {
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Poll mode: frames not yet released; `frames[0]` has cursor `first`.
    frames: VecDeque<Bytes>,
    first: u64,
    /// The connection's first output (AUTH_REPLY, or the frames refusing it).
    opened: Option<Bytes>,
    /// The connection's task has ended.
    closed: bool,
}

impl State {
    /// Frees the waiters' buffer once none is left: an idle connection holds none (it grew
    /// to 4 waiters, 488 B, with the first request and stayed).
    fn release_waiters(&mut self) {
        if self.waiters.is_empty() {
            self.waiters = Vec::new();
        }
    }

    /// The cursor of the newest frame (0 before any).
    fn last(&self) -> u64 {
        self.first + self.frames.len() as u64 - 1
    }
}

/// One virtual connection, shared by its task and the requests that reach it.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The `roam-session` id, sent as 32 lowercase hex digits ([`Conn::session`]): a
    /// number, not a string (and a string again as the registry's key) for the connection's
    /// life.
    pub(crate) id: u128,
    /// The SHA-256 of the bearer token that opened it; later requests must carry the same
    /// token (its digest, not the token: 32 bytes in place instead of a copy of a
    /// ≈ 200-byte token for the connection's life).
    token: [u8; 32],
    /// How its frames reach the client.
    pub mode: Mode,
    up: flume::Sender<Bytes>,
    state: Mutex<State>,
    changed: Notify,
}

/// Why a request to a virtual connection failed (each maps to an HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnError {
    /// No such connection (never opened, or closed and gone).
    Unknown,
    /// The request's bearer token is not the one that opened the connection.
    WrongToken,
    /// The cursor is ahead of the last frame, or behind frames already released.
    Cursor(String),
    /// The connection is closing or its task does not take input.
    Closed,
}

fn token_digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl Conn {
    /// The `roam-session` header's value.
    pub(crate) fn session(&self) -> String {
        format!("{:032x}", self.id)
    }

    /// Whether `token` opened this connection.
    pub(crate) fn check(&self, token: &str) -> Result<(), ConnError> {
        // Every byte: no early exit that times the matching prefix.
        let same = self
            .token
            .iter()
            .zip(token_digest(token).iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            Ok(())
        } else {
            Err(ConnError::WrongToken)
        }
    }

    /// Sends `body` (whole, validated frames) up; resolves with the frames answering its
    /// `requests` (seq, reply op), in their order, once all came, the connection closed, or
    /// `timeout` passed (the replies still missing then go downstream when they come).
    pub(crate) async fn send(
        &self,
        body: Bytes,
        requests: Vec<(u32, u32)>,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, ConnError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = self.state.lock();
            if s.closed {
                return Err(ConnError::Closed);
            }
            s.next_waiter += 1;
            let id = s.next_waiter;
            let mut waiter = Waiter {
                id,
                order: requests.iter().map(|(seq, _)| *seq).collect(),
                expect: requests.into_iter().collect(),
                got: Vec::new(),
                done: Some(tx),
            };
            if waiter.expect.is_empty() {
                waiter.finish();
            } else {
                s.waiters.push(waiter);
            }
            id
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = tokio::time::timeout_at(deadline, self.up.send_async(body)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.forget(id);
            return Err(ConnError::Closed);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(frames)) => Ok(frames),
            Ok(Err(_)) => Ok(Vec::new()),
            Err(_) => Ok(self.forget(id)),
        }
    }

    /// Drops waiter `id`, returning what it gathered.
    fn forget(&self, id: u64) -> Vec<Bytes> {
        let mut s = self.state.lock();
        match s.waiters.iter().position(|w| w.id == id) {
            Some(i) => {
                let w = s.waiters.swap_remove(i).take();
                s.release_waiters();
                w
            }
            None => Vec::new(),
        }
    }

    /// Poll mode: the frames after `cursor` (releasing those up to it) and the cursor of the
    /// last one, waiting up to `wait` for some. `Ok(None)`: none came in time. `waiting`
    /// counts the poll while it is parked.
    pub(crate) async fn poll(
        &self,
        cursor: u64,
        wait: Duration,
        waiting: &Gauge,
    ) -> Result<Option<(Bytes, u64)>, ConnError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            {
                let mut s = self.state.lock();
                // `first` is at least 1; `cursor` comes from the client (up to u64::MAX).
                if cursor < s.first - 1 {
                    return Err(ConnError::Cursor(format!(
                        "frames up to cursor {} were released by an earlier poll; poll from there",
                        s.first - 1
                    )));
                }
                if cursor > s.last() {
                    return Err(ConnError::Cursor(format!(
                        "cursor {cursor} is ahead of the last frame ({})",
                        s.last()
                    )));
                }
                // cursor <= last < first + len: no overflow, and release <= len.
                let release = (cursor - (s.first - 1)) as usize;
                s.frames.drain(..release);
                s.first += release as u64;
                if !s.frames.is_empty() {
                    let mut body = BytesMut::with_capacity(s.frames.iter().map(Bytes::len).sum());
                    for f in &s.frames {
                        body.extend_from_slice(f);
                    }
                    return Ok(Some((body.freeze(), s.last())));
                }
                if s.closed {
                    return Err(ConnError::Unknown);
                }
            }
            // Counted while parked, and uncounted however the wait ends (the request may be
            // dropped mid-wait when its client goes away).
            let parked = Parked::new(waiting);
            let woken = tokio::time::timeout_at(deadline, changed).await;
            drop(parked);
            if woken.is_err() {
                return Ok(None);
            }
        }
    }

    /// Waits for the connection's first output (AUTH_REPLY, or the ERROR refusing it).
    pub(crate) async fn first_frames(&self) -> Option<Bytes> {
        loop {
            let changed = self.changed.notified();
            {
                let s = self.state.lock();
                if let Some(f) = &s.opened {
                    return Some(f.clone());
                }
                if s.closed {
                    return None;
                }
            }
            changed.await;
        }
    }
}

/// One parked poll, counted in a gauge for as long as it lives.
struct Parked<'a>(&'a Gauge);

impl<'a> Parked<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The virtual connections of the client port, by `roam-session` id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<u128, Arc<Conn>>>,
}

impl Registry {
    /// The connection whose `roam-session` is `session` (32 lowercase hex digits).
    pub(crate) fn get(&self, session: &str) -> Result<Arc<Conn>, ConnError> {
        let hex = session.len() == 32
            && session
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let id = hex
            .then(|| u128::from_str_radix(session, 16).ok())
            .flatten()
            .ok_or(ConnError::Unknown)?;
        self.conns
            .lock()
            .get(&id)
            .cloned()
            .ok_or(ConnError::Unknown)
    }

    /// Forgets connection `id` (its task, if still running, is unaffected).
    pub(crate) fn remove(&self, id: u128) {
        self.conns.lock().remove(&id);
    }

    /// Registers a new connection opened with `token`, whose task reads AUTH (`auth`) first.
    /// Returns the connection, the transport for its task, and (stream mode) the receiver of
    /// its response body: frames through a queue, or (`direct`) written by its task to the
    /// transport's stream (see [`direct`]).
    pub(crate) fn open(
        self: &Arc<Self>,
        token: &str,
        auth: Bytes,
        mode: Mode,
        direct: bool,
        poll_capacity: usize,
        shutdown: CancellationToken,
    ) -> (Arc<Conn>, VirtualIo, Option<Downstream>) {
        let id = rand::random::<u128>();
        let (up, up_rx) = flume::bounded(UP_QUEUE);
        // AUTH is the first thing the driver reads, as a request body would be (a field
        // for it would take room in every connection's task for its life). A new queue
        // with room and its receiver alive takes it.
        let _ = up.try_send(auth);
        let conn = Arc::new(Conn {
            id,
            token: token_digest(token),
            mode,
            up,
            state: Mutex::new(State {
                first: 1,
                ..State::default()
            }),
            changed: Notify::new(),
        });
        self.conns.lock().insert(id, conn.clone());
        let (down, body, gone) = match mode {
            // Told that the client went away through the slot it shares with its transport.
            Mode::Stream if direct => {
                let (down, direct) = direct::Down::new();
                (Down::Direct(down), Some(Downstream::Direct(direct)), None)
            }
            Mode::Stream => {
                // Cancelled when the client went away (the body is dropped).
                let gone = CancellationToken::new();
                let (tx, rx) = flume::bounded(DOWN_QUEUE);
                let frames = Frames {
                    frames: rx.into_stream(),
                    _gone: gone.clone().drop_guard(),
                };
                let body = Some(Downstream::Body(frames));
                (
                    Down::Stream(tx),
                    body,
                    Some(Box::pin(gone.cancelled_owned())),
                )
            }
            Mode::Poll => (Down::Poll(poll_capacity.max(1)), None, None),
        };
        let io = VirtualIo {
            conn: conn.clone(),
            registry: self.clone(),
            up: up_rx.into_stream(),
            gone,
            down,
            decoder: FrameDecoder::new(usize::MAX),
            shutdown,
        };
        (conn, io, body)
    }
}

/// Where a stream connection's frames go.
#[derive(Debug)]
pub(crate) enum Downstream {
    /// A response body fed through a queue (HTTP/1.1, HTTP/2).
    Body(Frames),
    /// The transport's response stream, written by the connection's task (HTTP/3).
    Direct(Direct),
}

#[derive(Debug)]
enum Down {
    /// The response body's queue.
    Stream(flume::Sender<Bytes>),
    /// The transport's stream, written by this task.
    Direct(direct::Down),
    /// At most this many frames unpolled.
    Poll(usize),
}

/// A virtual connection as its task ([`crate::conn::drive`]) sees it.
#[derive(Debug)]
pub(crate) struct VirtualIo {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    /// AUTH, then request bodies. The read side and `gone` are kept across reads: made anew for each
    /// read (the driver reads on every round of its loop, a push to write included) they
    /// registered and unregistered their wakers each time.
    up: flume::r#async::RecvStream<'static, Bytes>,
    /// Stream mode: resolves when the client went away.
    gone: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    down: Down,
    decoder: FrameDecoder,
    shutdown: CancellationToken,
}

/// Splits server-encoded `bytes` into its frames, each with its op and seq.
fn split(decoder: &FrameDecoder, bytes: &Bytes, out: &mut Vec<(u32, u32, Bytes)>) {
    let mut rest = bytes.clone();
    loop {
        let before = rest.len();
        let start = bytes.len() - before;
        match decoder.decode_bytes(&mut rest) {
            Ok(Some(f)) => {
                let end = bytes.len() - rest.len();
                out.push((f.op, f.seq, bytes.slice(start..end)));
            }
            Ok(None) | Err(_) => break,
        }
    }
}

impl FrameIo for VirtualIo {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // A direct stream's slot (only it: the stream it holds is not `Sync`).
        let direct = match &self.down {
            Down::Direct(down) => Some(down.slot()),
            _ => None,
        };
        let body = match (&mut self.gone, direct) {
            (Some(gone), _) => tokio::select! {
                body = futures_util::StreamExt::next(&mut self.up) => body,
                // The client dropped the stream: the connection is over.
                () = gone.as_mut() => None,
            },
            (None, Some(slot)) => tokio::select! {
                body = futures_util::StreamExt::next(&mut self.up) => body,
                () = direct::gone(slot) => None,
            },
            (None, None) => futures_util::StreamExt::next(&mut self.up).await,
        };
        match body {
            Some(b) => {
                buf.extend_from_slice(&b);
                Ok(b.len())
            }
            None => Ok(0),
        }
    }

    async fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        let mut down: Vec<Bytes> = Vec::with_capacity(frames.len());
        // The first output was recorded: `first_frames` is told.
        let mut opened = false;
        {
            let mut s = self.conn.state.lock();
            if s.opened.is_none() {
                s.opened = Some(frames.concat().into());
                opened = true;
            }
            // A poll's cursor counts frames, and a batch may hold several in one `Bytes`.
            if s.waiters.is_empty() && !matches!(self.down, Down::Poll(_)) {
                down.extend(frames.iter().cloned());
            } else {
                let mut split_frames = Vec::new();
                for b in frames {
                    split(&self.decoder, b, &mut split_frames);
                }
                for (op, seq, raw) in split_frames {
                    let claimed = s.waiters.iter_mut().position(|w| {
                        w.expect
                            .get(&seq)
                            .is_some_and(|want| *want == op || op == Op::Error.code())
                    });
                    match claimed {
                        Some(i) => {
                            let w = &mut s.waiters[i];
                            w.expect.remove(&seq);
                            w.got.push((seq, raw));
                            if w.expect.is_empty() {
                                w.finish();
                                s.waiters.swap_remove(i);
                                s.release_waiters();
                            }
                        }
                        None => down.push(raw),
                    }
                }
            }
            if let Down::Poll(capacity) = self.down {
                s.frames.extend(down.drain(..));
                if s.frames.len() > capacity {
                    // The client stopped polling: close it as slow, telling it why.
                    s.frames.truncate(capacity);
                    s.frames.push_back(disconnect_frame(
                        pb::disconnect::Reason::Slow,
                        "the connection was not polled in time; reconnect and SYNC",
                        Some(1000),
                    ));
                    drop(s);
                    self.conn.changed.notify_waiters();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "poll buffer overflowed",
                    ));
                }
            }
        }
        match &self.down {
            Down::Poll(_) => {
                self.conn.changed.notify_waiters();
                Ok(())
            }
            Down::Stream(..) | Down::Direct(_) => {
                if opened {
                    self.conn.changed.notify_waiters();
                }
                let chunk = match down.len() {
                    0 => return Ok(()),
                    1 => down.swap_remove(0),
                    _ => {
                        let mut joined = BytesMut::with_capacity(down.iter().map(Bytes::len).sum());
                        for f in &down {
                            joined.extend_from_slice(f);
                        }
                        joined.freeze()
                    }
                };
                match &mut self.down {
                    Down::Stream(tx) => tx
                        .send_async(chunk)
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe)),
                    Down::Direct(direct) => direct.send(chunk).await,
                    Down::Poll(_) => Ok(()),
                }
            }
        }
    }

    async fn close(&mut self) {
        {
            let mut s = self.conn.state.lock();
            s.closed = true;
            for mut w in s.waiters.drain(..) {
                w.finish();
            }
        }
        self.conn.changed.notify_waiters();
        match &mut self.down {
            Down::Stream(..) => self.registry.remove(self.conn.id),
            Down::Direct(direct) => {
                self.registry.remove(self.conn.id);
                direct.finish().await;
            }
            Down::Poll(_) => {
                let (registry, id, shutdown) =
                    (self.registry.clone(), self.conn.id, self.shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(LINGER) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    registry.remove(id);
                });
            }
        }
    }
}

/// Checks a `/v1/send` body: whole frames within `max_packet`, no AUTH, no seq twice.
/// Returns (seq, the op that will answer it) in body order, for every frame that gets an
/// answer.
pub(crate) fn requests(body: &Bytes, max_packet: usize) -> Result<Vec<(u32, u32)>, String> {
    let decoder = FrameDecoder::new(max_packet);
    let mut rest = body.clone();
    let mut expect = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    loop {
        n += 1;
        match decoder.decode_bytes(&mut rest) {
            Ok(Some(f)) => {
                let reply = match Op::from_code(f.op) {
                    Some(Op::Auth) => {
                        return Err(format!(
                            "frame {n}: AUTH is not sent over /v1/send (the connection authenticated with its bearer token)"
                        ));
                    }
                    // A request with a reply, or anything the session answers with ERROR.
                    Some(op) => match op.reply() {
                        Some(reply) => Some(reply.code()),
                        None if op.direction() == roam_proto::Direction::Up => None,
                        None => Some(Op::Error.code()),
                    },
                    None => Some(Op::Error.code()),
                };
                if let Some(reply) = reply {
                    if !seen.insert(f.seq) {
                        return Err(format!(
                            "frame {n}: seq {} appears twice in one request",
                            f.seq
                        ));
                    }
                    expect.push((f.seq, reply));
                }
            }
            Ok(None) => match decoder.finish(&rest) {
                Ok(()) => break,
                Err(FrameError::Truncated { have, need }) => {
                    return Err(format!(
                        "frame {n}: the body ends inside a frame ({have} of {need} bytes)"
                    ));
                }
                Err(e) => return Err(format!("frame {n}: {e}")),
            },
            Err(e) => return Err(format!("frame {n}: {e}")),
        }
    }
    if n == 1 {
        return Err("the body holds no frame".into());
    }
    Ok(expect)
}

/// The AUTH frame an opening request stands for.
pub(crate) fn auth_frame(token: &str, device: &str, platform: &str, rooms: &str) -> Option<Bytes> {
    let auth = pb::Auth {
        token: token.to_owned(),
        device_id: device.to_owned(),
        platform: platform.to_owned(),
        rooms: rooms
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    frame_of(Op::Auth, 1, &auth).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_proto::error_frame;

    fn frame(op: Op, seq: u32) -> Bytes {
        frame_of(op, seq, &pb::Heartbeat {}).unwrap_or_default()
    }

    #[test]
    fn requests_map_each_seq_to_its_answer() {
        let mut body = BytesMut::new();
        for (op, seq) in [
            (Op::Heartbeat, 1),
            (Op::PushAck, 2),
            (Op::Send, 3),
            (Op::Push, 4),
        ] {
            body.extend_from_slice(&frame(op, seq));
        }
        let expect = requests(&body.freeze(), 1024).unwrap();
        assert_eq!(
            expect,
            [
                (1, Op::HeartbeatReply.code()),
                (3, Op::SendAck.code()),
                (4, Op::Error.code())
            ]
        );
    }

    #[test]
    fn requests_refuse_bad_bodies_with_the_fault() {
        let hb = frame(Op::Heartbeat, 1);
        let cases: Vec<(Bytes, &str)> = vec![
            (Bytes::new(), "no frame"),
            (frame(Op::Auth, 1), "AUTH is not sent"),
            (hb.slice(..10), "ends inside a frame (10 of 16"),
            (
                [hb.clone(), hb.clone()].concat().into(),
                "seq 1 appears twice",
            ),
            (
                {
                    let mut b = BytesMut::from(&hb[..]);
                    b[7] = 9;
                    b.freeze()
                },
                "version",
            ),
        ];
        for (body, fault) in cases {
            let e = requests(&body, 1024).unwrap_err();
            assert!(e.contains(fault), "{e:?} should name {fault:?}");
        }
        let room = pb::Room {
            room: "x".repeat(100),
        };
        let big = frame_of(Op::RoomJoin, 1, &room).unwrap();
        assert!(
            requests(&big, 64)
                .unwrap_err()
                .contains("frame 1: frame too large")
        );
    }

    fn open(mode: Mode) -> (Arc<Registry>, Arc<Conn>, VirtualIo, Option<Frames>) {
        let (registry, conn, io, body) = open_with(mode, false);
        let body = body.map(|b| match b {
            Downstream::Body(frames) => frames,
            Downstream::Direct(_) => unreachable!("not direct"),
        });
        (registry, conn, io, body)
    }

    fn open_with(
        mode: Mode,
        direct: bool,
    ) -> (Arc<Registry>, Arc<Conn>, VirtualIo, Option<Downstream>) {
        let registry = Arc::new(Registry::default());
        let (conn, io, body) = registry.open(
            "tok",
            auth_frame("tok", "d", "web", "a,b").unwrap(),
            mode,
            direct,
            3,
            CancellationToken::new(),
        );
        (registry, conn, io, body)
    }

    #[tokio::test]
    async fn an_answered_connection_holds_no_waiter_buffer() {
        let (_, conn, mut io, _) = open(Mode::Poll);
        let mut buf = BytesMut::new();
        io.read(&mut buf).await.unwrap();
        let hb = frame(Op::Heartbeat, 7);
        let expect = requests(&hb, 1024).unwrap();
        let send = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(hb, expect, Duration::from_secs(5)).await }
        });
        io.read(&mut buf).await.unwrap();
        io.write_batch(&[frame(Op::HeartbeatReply, 7)])
            .await
            .unwrap();
        assert_eq!(send.await.unwrap().unwrap().len(), 1);
        // Idle again: nothing kept for the requests that were answered.
        assert_eq!(conn.state.lock().waiters.capacity(), 0);
    }

    #[tokio::test]
    async fn reads_start_with_auth_then_carry_request_bodies() {
        let (_, conn, mut io, _) = open(Mode::Poll);
        let mut buf = BytesMut::new();
        io.read(&mut buf).await.unwrap();
        let auth = FrameDecoder::new(1024).decode(&mut buf).unwrap().unwrap();
        let auth = auth.decode_body::<pb::Auth>().unwrap();
        assert_eq!((auth.device_id.as_str(), auth.rooms.len()), ("d", 2));
        let hb = frame(Op::Heartbeat, 7);
        let expect = requests(&hb, 1024).unwrap();
        let send = tokio::spawn({
            let conn = conn.clone();
            let hb = hb.clone();
            async move { conn.send(hb, expect, Duration::from_secs(5)).await }
        });
        io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..], &hb[..]);
        // The reply goes to the request; a push goes to the poll buffer.
        let reply = frame(Op::HeartbeatReply, 7);
        let push = frame(Op::Push, 0);
        io.write_batch(&[[reply.clone(), push.clone()].concat().into()])
            .await
            .unwrap();
        assert_eq!(send.await.unwrap().unwrap(), vec![reply]);
        let (body, last) = conn
            .poll(0, Duration::ZERO, &Gauge::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((body, last), (push, 1));
    }

    #[tokio::test]
    async fn polls_release_frames_and_check_cursors() {
        let (_, conn, mut io, _) = open(Mode::Poll);
        for seq in 1..=3 {
            io.write_batch(&[frame(Op::Push, seq)]).await.unwrap();
        }
        let (body, last) = conn
            .poll(1, Duration::ZERO, &Gauge::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((body.len(), last), (2 * roam_proto::HEADER_LEN, 3));
        assert!(matches!(
            conn.poll(0, Duration::ZERO, &Gauge::default()).await,
            Err(ConnError::Cursor(_))
        ));
        assert!(matches!(
            conn.poll(9, Duration::ZERO, &Gauge::default()).await,
            Err(ConnError::Cursor(_))
        ));
        assert!(matches!(
            conn.poll(u64::MAX, Duration::ZERO, &Gauge::default()).await,
            Err(ConnError::Cursor(_))
        ));
        assert_eq!(
            conn.poll(3, Duration::ZERO, &Gauge::default())
                .await
                .unwrap(),
            None
        );
        // A poll waits for the next frame, counted as parked while it does.
        let parked = Gauge::default();
        let waiting = tokio::spawn({
            let (conn, parked) = (conn.clone(), parked.clone());
            async move { conn.poll(3, Duration::from_secs(5), &parked).await }
        });
        while parked.get() == 0 {
            tokio::task::yield_now().await;
        }
        io.write_batch(&[frame(Op::Push, 4)]).await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap().map(|(_, c)| c), Some(4));
        assert_eq!(parked.get(), 0);
        // A parked poll whose request goes away is uncounted too.
        let abandoned = tokio::spawn({
            let (conn, parked) = (conn.clone(), parked.clone());
            async move { conn.poll(4, Duration::from_secs(5), &parked).await }
        });
        while parked.get() == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(parked.get(), 0);
    }

    #[tokio::test]
    async fn an_unpolled_buffer_overflows_into_disconnect_slow() {
        let (registry, conn, mut io, _) = open(Mode::Poll);
        for seq in 1..=3 {
            io.write_batch(&[frame(Op::Push, seq)]).await.unwrap();
        }
        let e = io.write_batch(&[frame(Op::Push, 4)]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        io.close().await;
        let (body, last) = conn
            .poll(0, Duration::ZERO, &Gauge::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last, 4);
        let mut b = body;
        let decoder = FrameDecoder::new(1024);
        let mut ops = Vec::new();
        while let Some(f) = decoder.decode_bytes(&mut b).unwrap() {
            ops.push(Op::from_code(f.op));
        }
        assert_eq!(ops.last(), Some(&Some(Op::Disconnect)));
        // Read to the end: the connection is gone for the next poll, and stays listed
        // until its linger passes.
        assert_eq!(
            conn.poll(4, Duration::ZERO, &Gauge::default()).await,
            Err(ConnError::Unknown)
        );
        assert!(registry.get(&conn.session()).is_ok());
        // Only its exact form names it.
        let session = conn.session();
        for other in [
            session.to_uppercase(),
            format!("+{}", &session[1..]),
            session[1..].to_owned(),
            format!("{session}0"),
            String::new(),
        ] {
            if other != session {
                assert_eq!(
                    registry.get(&other).unwrap_err(),
                    ConnError::Unknown,
                    "{other}"
                );
            }
        }
        assert_eq!(conn.check("tok"), Ok(()));
        assert_eq!(conn.check("tak"), Err(ConnError::WrongToken));
        assert_eq!(conn.check("tok2"), Err(ConnError::WrongToken));
        assert_eq!(conn.check(""), Err(ConnError::WrongToken));
    }

    #[tokio::test]
    async fn a_stream_carries_batches_and_ends_when_the_client_leaves() {
        let (registry, conn, mut io, body) = open(Mode::Stream);
        let mut body = body.unwrap();
        let mut buf = BytesMut::new();
        io.read(&mut buf).await.unwrap();
        let refused = error_frame(1, pb::error::Code::AuthFailed, "no");
        io.write_batch(std::slice::from_ref(&refused))
            .await
            .unwrap();
        assert_eq!(conn.first_frames().await, Some(refused.clone()));
        assert_eq!(body.recv().await, Some(refused));
        drop(body);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        io.close().await;
        assert_eq!(
            registry.get(&conn.session()).unwrap_err(),
            ConnError::Unknown
        );
        assert_eq!(
            conn.send(frame(Op::Heartbeat, 1), Vec::new(), Duration::from_secs(1))
                .await,
            Err(ConnError::Closed)
        );
    }
    /// A direct stream that records what it was sent.
    struct Recorder(Arc<Mutex<Vec<Bytes>>>);

    impl DirectStream for Recorder {
        fn send(&mut self, chunk: Bytes) -> futures_util::future::BoxFuture<'_, io::Result<()>> {
            self.0.lock().push(chunk);
            Box::pin(std::future::ready(Ok(())))
        }

        fn finish(&mut self) -> futures_util::future::BoxFuture<'_, ()> {
            self.0.lock().push(Bytes::from_static(b"end"));
            Box::pin(std::future::ready(()))
        }
    }

    fn direct(body: Option<Downstream>) -> Direct {
        match body {
            Some(Downstream::Direct(direct)) => direct,
            other => panic!("not direct: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_direct_stream_keeps_frames_until_attached_then_writes_them_itself() {
        let (registry, conn, mut io, body) = open_with(Mode::Stream, true);
        let direct = direct(body);
        let mut buf = BytesMut::new();
        io.read(&mut buf).await.unwrap();
        let reply = frame(Op::AuthReply, 1);
        io.write_batch(std::slice::from_ref(&reply)).await.unwrap();
        assert_eq!(conn.first_frames().await, Some(reply.clone()));
        // Before the transport attached its stream: kept for it.
        assert_eq!(direct.take_pending(), vec![reply]);
        let sent = Arc::new(Mutex::new(Vec::new()));
        direct.attach(Box::new(Recorder(sent.clone())));
        let (a, b) = (frame(Op::Push, 0), frame(Op::Push, 0));
        io.write_batch(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(*sent.lock(), vec![[a, b].concat()], "one chunk per batch");
        assert!(direct.take_pending().is_empty());
        io.close().await;
        assert_eq!(sent.lock().last(), Some(&Bytes::from_static(b"end")));
        assert_eq!(
            registry.get(&conn.session()).unwrap_err(),
            ConnError::Unknown
        );
    }

    #[tokio::test]
    async fn a_direct_connection_dropped_unfinished_is_told_its_client_is_gone_and_runs_on() {
        let (_, _, mut io, body) = open_with(Mode::Stream, true);
        let mut direct = direct(body);
        let tracker = tokio_util::task::TaskTracker::new();
        let (tx, rx) = oneshot::channel();
        // A stand-in for the connection's task: AUTH, then reads until the end.
        direct.start(
            async move {
                let mut buf = BytesMut::new();
                io.read(&mut buf).await.unwrap();
                let _ = tx.send(io.read(&mut buf).await.unwrap());
            },
            tracker.clone(),
        );
        // Run until something else is done: the task is parked in its second read.
        direct.until(tokio::task::yield_now()).await;
        drop(direct);
        let read = tokio::time::timeout(Duration::from_secs(5), rx).await;
        assert_eq!(read.unwrap().unwrap(), 0, "the end of the client's input");
        tracker.close();
        tracker.wait().await;
    }
}
