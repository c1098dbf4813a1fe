//! The endpoint: its task (the event loop), the state it shares with the application side,
//! and connection attempts ([`Incoming`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
use quinn_proto::{ConnectionHandle, DatagramEvent, EndpointConfig, ServerConfig, Transmit};
use thiserror::Error;
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tracing::debug;

use crate::conn::{ConnShared, Connection};

/// Datagrams received per `recvmmsg` (each buffer may carry several with GRO).
const RECV_BATCH: usize = 32;
/// The largest UDP payload accepted.
const MAX_UDP_PAYLOAD: usize = 1472;
/// Datagrams of one connection per send (GSO), at most.
const MAX_GSO_SEGMENTS: usize = 10;
/// Datagrams one connection sends per round of the loop before the others' turn.
const MAX_DATAGRAMS_PER_DRIVE: usize = 20;

/// Why an endpoint could not start.
#[derive(Debug, Error)]
pub enum EndpointError {
    #[error("bind: {0}")]
    Bind(#[from] io::Error),
    #[error("endpoint configuration: {0}")]
    Config(String),
}

/// What the loop and the application side share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Connections the application side changed (writes, reads, closes), for the loop.
    touched: Mutex<Touched>,
    /// Registered for reading only: registered for writing too (as `tokio::net::UdpSocket`
    /// is), every datagram sent woke the runtime's I/O driver when the kernel freed it, to
    /// report writability nobody waited for (on loopback, ≈ 5 % of the server's CPU in a
    /// room fan-out). The loop waits for room through a second registration, made only
    /// while a transmit is blocked ([`writable`]).
    socket: AsyncFd<std::net::UdpSocket>,
    udp: quinn_udp::UdpSocketState,
    local: SocketAddr,
    /// Cancelled when the endpoint's task has ended.
    stopped: tokio_util::sync::CancellationToken,
    /// Datagrams of one connection per send: GSO where the socket offers it.
    max_gso: usize,
    /// Told when a client moves a connection to a new address (see
    /// [`Endpoint::on_migration`]).
    on_migration: std::sync::OnceLock<MigrationHook>,
}

/// What [`Endpoint::on_migration`] calls: the connection's id, the old and new address.
type MigrationHook = Box<dyn Fn(usize, SocketAddr, SocketAddr) + Send + Sync>;

/// What the application side asks of the loop, and how it wakes it: one lock per touch,
/// where a `Notify` beside the list took a second (and the loop a third, for each wait it
/// set up and dropped).
#[derive(Default)]
struct Touched {
    conns: Vec<ConnectionHandle>,
    /// Set to have the loop look at the endpoint (it is closing).
    poked: bool,
    /// The loop's, while it waits.
    waker: Option<Waker>,
}

/// The endpoint's protocol state and its connections (under [`Shared::state`]).
pub(crate) struct State {
    proto: quinn_proto::Endpoint,
    conns: HashMap<ConnectionHandle, Arc<ConnShared>>,
    /// Each connection's next deadline, soonest first.
    timers: BTreeSet<(Instant, usize)>,
    incoming: VecDeque<quinn_proto::Incoming>,
    acceptor: Option<Waker>,
    closed: bool,
    /// The transmit buffer (one connection's datagrams at a time).
    send_buf: Vec<u8>,
    /// A connection's transmit the socket had no room for: sent first once it is writable
    /// (quinn-proto counts it sent already), before that connection or any other is driven.
    blocked: Option<(ConnectionHandle, Transmit, Vec<u8>)>,
}

impl Shared {
    /// Marks connection `ch` for the loop to drive.
    pub(crate) fn touch(&self, ch: ConnectionHandle) {
        let waker = {
            let mut t = self.touched.lock();
            t.conns.push(ch);
            t.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Tells the application that connection `ch` moved from `from` to `to`.
    fn migrated(&self, ch: ConnectionHandle, from: SocketAddr, to: SocketAddr) {
        if let Some(hook) = self.on_migration.get() {
            hook(ch.0, from, to);
        }
    }

    /// Wakes the loop to look at the endpoint's state.
    fn poke(&self) {
        let waker = {
            let mut t = self.touched.lock();
            t.poked = true;
            t.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready when a connection was touched or the loop poked since it last looked.
    fn poll_touched(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut t = self.touched.lock();
        if !t.conns.is_empty() || std::mem::take(&mut t.poked) {
            return Poll::Ready(());
        }
        match &mut t.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Sends a stateless answer (a refusal, a Retry, a version negotiation): dropped if the
    /// socket's buffer is full — the client tries again.
    fn send(&self, transmit: &Transmit, contents: &[u8]) {
        if let Err(e) = self.try_send(transmit, contents) {
            debug!(error = %e, "datagram not sent");
        }
    }

    /// Sends `contents`; `WouldBlock` when the socket's buffer is full.
    fn try_send(&self, transmit: &Transmit, contents: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: transmit.destination,
            ecn: transmit
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents,
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        };
        self.udp.send(self.socket.get_ref().into(), &transmit)
    }
}

/// A QUIC server endpoint on one UDP socket, driven by its own task.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Binds `addr` and starts the endpoint's task on the current tokio runtime.
    pub fn server(config: ServerConfig, addr: SocketAddr) -> Result<Endpoint, EndpointError> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        let socket = register(socket, Interest::READABLE)?;
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(MAX_UDP_PAYLOAD as u16)
            .map_err(|e| EndpointError::Config(e.to_string()))?;
        let max_gso = udp.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS);
        let proto = quinn_proto::Endpoint::new(
            Arc::new(endpoint_config),
            Some(Arc::new(config)),
            !udp.may_fragment(),
            None,
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                proto,
                conns: HashMap::new(),
                timers: BTreeSet::new(),
                incoming: VecDeque::new(),
                acceptor: None,
                closed: false,
                send_buf: Vec::new(),
                blocked: None,
            }),
            touched: Mutex::new(Touched::default()),
            socket,
            udp,
            local,
            stopped: tokio_util::sync::CancellationToken::new(),
            max_gso,
            on_migration: std::sync::OnceLock::new(),
        });
        tokio::spawn(run(shared.clone()));
        Ok(Endpoint { shared })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The next connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        std::future::poll_fn(|cx| {
            let mut state = self.shared.state.lock();
            if let Some(incoming) = state.incoming.pop_front() {
                return Poll::Ready(Some(Incoming {
                    inner: Some(incoming),
                    shared: self.shared.clone(),
                }));
            }
            if state.closed {
                return Poll::Ready(None);
            }
            state.acceptor = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes every connection with `code` and `reason` and stops the endpoint's task once
    /// they are gone.
    pub fn close(&self, code: quinn_proto::VarInt, reason: &[u8]) {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        state.closed = true;
        if let Some(w) = state.acceptor.take() {
            w.wake();
        }
        let conns: Vec<_> = state.conns.keys().copied().collect();
        for ch in conns {
            if let Some(c) = state.conns.get(&ch) {
                c.close(now, code, reason);
            }
            drop(state);
            self.shared.touch(ch);
            state = self.shared.state.lock();
        }
        drop(state);
        self.shared.poke();
    }

    /// Waits until the endpoint's task has ended (after [`Endpoint::close`], once every
    /// connection has sent its CONNECTION_CLOSE and drained).
    pub async fn wait_idle(&self) {
        self.shared.stopped.cancelled().await;
    }

    /// Calls `hook` with the connection's [`stable_id`](Connection::stable_id), its old and
    /// its new address whenever a client moves a connection to a new address (QUIC
    /// connection migration: a phone that left Wi-Fi for cellular), as soon as the first
    /// packet from there is processed — and again, from the new address back to the old, if
    /// the new path then fails its validation. Set once; later calls are ignored. It runs on
    /// the endpoint's loop with the endpoint's state locked: keep it short, and do not call
    /// into the [`Endpoint`] or its connections from it (that would wait for itself).
    pub fn on_migration(
        &self,
        hook: impl Fn(usize, SocketAddr, SocketAddr) + Send + Sync + 'static,
    ) {
        let _ = self.shared.on_migration.set(Box::new(hook));
    }

    /// Connections alive (established or handshaking).
    pub fn open_connections(&self) -> usize {
        self.shared.state.lock().conns.len()
    }
}

/// A connection attempt: nothing is kept for it until it is accepted.
pub struct Incoming {
    inner: Option<quinn_proto::Incoming>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.remote_address())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    fn inner(&self) -> Option<&quinn_proto::Incoming> {
        self.inner.as_ref()
    }

    /// The client's address.
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.inner().map(quinn_proto::Incoming::remote_address)
    }

    /// Whether the client proved its address (a Retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.inner()
            .is_some_and(quinn_proto::Incoming::remote_address_validated)
    }

    /// Whether a stateless Retry may be sent (the attempt carries no Retry token yet).
    pub fn may_retry(&self) -> bool {
        self.inner().is_some_and(quinn_proto::Incoming::may_retry)
    }

    /// Accepts the attempt: its connection, handshaking.
    pub fn accept(mut self) -> Result<Connection, ConnectionRefused> {
        let incoming = self.inner.take().ok_or(ConnectionRefused)?;
        let now = Instant::now();
        let mut buf = Vec::new();
        let mut state = self.shared.state.lock();
        match state.proto.accept(incoming, now, &mut buf, None) {
            Ok((ch, conn)) => {
                let shared = ConnShared::new(ch, conn);
                state.conns.insert(ch, shared.clone());
                drop(state);
                self.shared.touch(ch);
                Ok(Connection::new(shared, self.shared.clone()))
            }
            Err(e) => {
                drop(state);
                if let Some(t) = e.response {
                    self.shared.send(&t, &buf[..t.size]);
                }
                Err(ConnectionRefused)
            }
        }
    }

    /// Refuses the attempt (CONNECTION_REFUSED).
    pub fn refuse(mut self) {
        if let Some(incoming) = self.inner.take() {
            let mut buf = Vec::new();
            let t = self.shared.state.lock().proto.refuse(incoming, &mut buf);
            self.shared.send(&t, &buf[..t.size]);
        }
    }

    /// Asks the client to prove its address with a stateless Retry; refused if it may not
    /// be retried (see [`Incoming::may_retry`]).
    pub fn retry(mut self) {
        if let Some(incoming) = self.inner.take() {
            let mut buf = Vec::new();
            let mut state = self.shared.state.lock();
            match state.proto.retry(incoming, &mut buf) {
                Ok(t) => {
                    drop(state);
                    self.shared.send(&t, &buf[..t.size]);
                }
                Err(e) => {
                    let t = state.proto.refuse(e.into_incoming(), &mut buf);
                    drop(state);
                    self.shared.send(&t, &buf[..t.size]);
                }
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Neither accepted nor answered: forgotten without a word.
        if let Some(incoming) = self.inner.take() {
            self.shared.state.lock().proto.ignore(incoming);
        }
    }
}

/// The attempt could not be accepted.
#[derive(Debug, Error)]
#[error("the connection attempt could not be accepted")]
pub struct ConnectionRefused;

/// The endpoint's task: receives datagrams, fires deadlines, drives touched connections.
async fn run(shared: Arc<Shared>) {
    let _stopped = shared.stopped.clone().drop_guard();
    let mut recv_buf = vec![0u8; RECV_BATCH * MAX_UDP_PAYLOAD * 4];
    let mut drive: Vec<ConnectionHandle> = Vec::new();
    // One timer for the loop's life, moved to the soonest deadline when that changes.
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    // While a transmit is blocked: the socket, registered for writing.
    let mut room: Option<Room> = None;
    // Where the timer sleeps while no connection has a deadline (moved on once passed).
    let mut far = Instant::now() + Duration::from_secs(3600);
    loop {
        let (next, blocked) = {
            let state = shared.state.lock();
            (
                state.timers.first().map(|(t, _)| *t),
                state.blocked.is_some(),
            )
        };
        let next = tokio::time::Instant::from_std(match next {
            Some(t) => t,
            None => {
                let now = Instant::now();
                if far <= now {
                    far = now + Duration::from_secs(3600);
                }
                far
            }
        });
        if sleep.deadline() != next {
            sleep.as_mut().reset(next);
        }
        if !blocked {
            room = None;
        } else if room.is_none() {
            room = Some(Room::new(&shared.socket));
        }
        tokio::select! {
            readable = shared.socket.readable() => {
                let Ok(mut guard) = readable else {
                    break;
                };
                receive(&shared, &mut guard, &mut recv_buf, &mut drive);
            }
            () = sleep.as_mut() => {
                let now = Instant::now();
                let state = &mut *shared.state.lock();
                while let Some(&(t, ch)) = state.timers.first() {
                    if t > now {
                        break;
                    }
                    state.timers.pop_first();
                    let ch = ConnectionHandle(ch);
                    if let Some(c) = state.conns.get(&ch) {
                        if let Some((from, to)) = c.timeout(now) {
                            shared.migrated(ch, from, to);
                        }
                        drive.push(ch);
                    }
                }
            }
            () = std::future::poll_fn(|cx| shared.poll_touched(cx)) => {}
            () = writable(&mut room), if blocked => {}
        }
        drive.append(&mut shared.touched.lock().conns);
        drive.sort_unstable_by_key(|ch| ch.0);
        drive.dedup();
        let now = Instant::now();
        let state = &mut *shared.state.lock();
        if let Some((ch, t, contents)) = state.blocked.take()
            && let Err(e) = shared.try_send(&t, &contents)
        {
            if e.kind() == io::ErrorKind::WouldBlock {
                state.blocked = Some((ch, t, contents));
                continue;
            }
            debug!(error = %e, "datagram not sent");
        }
        let mut done = 0;
        for &ch in &drive {
            if !drive_one(&shared, state, ch, now) {
                // The socket is full: this connection (and those after it) go on once it
                // has room.
                break;
            }
            done += 1;
        }
        drive.drain(..done);
        if state.closed && state.conns.is_empty() {
            break;
        }
    }
}

/// The socket registered for writing, while a transmit waits for room: a second
/// registration (of a duplicate of the socket's descriptor) beside the reading one.
enum Room {
    Registered(AsyncFd<std::net::UdpSocket>),
    /// The duplicate could not be made (out of descriptors): the send is retried soon.
    Retry(Pin<Box<tokio::time::Sleep>>),
}

impl Room {
    fn new(socket: &AsyncFd<std::net::UdpSocket>) -> Room {
        match socket
            .get_ref()
            .try_clone()
            .and_then(|dup| register(dup, Interest::WRITABLE))
        {
            Ok(fd) => Room::Registered(fd),
            Err(e) => {
                debug!(error = %e, "cannot wait for the UDP socket's room; retrying");
                Room::Retry(Box::pin(tokio::time::sleep(BLOCKED_RETRY)))
            }
        }
    }
}

/// Registers `socket` with the runtime's I/O driver for `interest` only.
///
/// The crate's one `unsafe`: tokio asks the caller to promise that the descriptor stays
/// open, and the same, for as long as it is registered. tokio's own `UdpSocket` (which
/// needs no such promise) always registers for reading and writing, and costs a wake-up of
/// the I/O driver for every datagram sent (see [`Shared::socket`]).
#[allow(unsafe_code)]
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the `AsyncFd` owns the socket: its descriptor is open (a bound socket) and
    // stays open, and the same, until the `AsyncFd` is dropped — nothing here takes the
    // socket out of it, closes or replaces its descriptor.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(io::Error::from)
}

/// How soon a blocked transmit is retried when the socket cannot be watched for room.
const BLOCKED_RETRY: Duration = Duration::from_millis(1);

/// Resolves when the blocked transmit should be tried again.
async fn writable(room: &mut Option<Room>) {
    match room {
        Some(Room::Registered(fd)) => match fd.writable().await {
            // Cleared before the retry: if the socket fills again, the next room is seen.
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                debug!(error = %e, "UDP socket's room not watched; retrying");
                *room = Some(Room::Retry(Box::pin(tokio::time::sleep(BLOCKED_RETRY))));
            }
        },
        Some(Room::Retry(sleep)) => {
            sleep.as_mut().await;
            *room = None;
        }
        None => std::future::pending().await,
    }
}

/// Reads every datagram waiting and applies it.
fn receive(
    shared: &Shared,
    guard: &mut AsyncFdReadyGuard<'_, std::net::UdpSocket>,
    recv_buf: &mut [u8],
    drive: &mut Vec<ConnectionHandle>,
) {
    loop {
        let mut metas = [quinn_udp::RecvMeta::default(); RECV_BATCH];
        let chunk = recv_buf.len() / RECV_BATCH;
        let mut bufs: Vec<IoSliceMut<'_>> =
            recv_buf.chunks_mut(chunk).map(IoSliceMut::new).collect();
        // Readiness is cleared when the socket has nothing more (`WouldBlock`).
        let Ok(got) = guard.try_io(|socket| {
            shared
                .udp
                .recv(socket.get_ref().into(), &mut bufs, &mut metas)
        }) else {
            return;
        };
        let count = match got {
            Ok(count) => count,
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                return;
            }
        };
        let now = Instant::now();
        let mut response = Vec::new();
        let mut state = shared.state.lock();
        for (meta, buf) in metas.iter().zip(bufs.iter()).take(count) {
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                let ecn = meta
                    .ecn
                    .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                response.clear();
                let event = state.proto.handle(
                    now,
                    meta.addr,
                    meta.dst_ip,
                    ecn,
                    BytesMut::from(datagram),
                    &mut response,
                );
                match event {
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        if state.closed {
                            let t = state.proto.refuse(incoming, &mut response);
                            shared.send(&t, &response[..t.size]);
                            continue;
                        }
                        state.incoming.push_back(incoming);
                        if let Some(w) = state.acceptor.take() {
                            w.wake();
                        }
                    }
                    Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                        if let Some(c) = state.conns.get(&ch) {
                            if let Some((from, to)) = c.handle_event(event) {
                                shared.migrated(ch, from, to);
                            }
                            drive.push(ch);
                        }
                    }
                    Some(DatagramEvent::Response(t)) => shared.send(&t, &response[..t.size]),
                    None => {}
                }
            }
        }
    }
}

/// Drives connection `ch`: endpoint events, application events, transmits, its deadline.
/// False if the socket had no room for a transmit (kept in [`State::blocked`]): drive it
/// again once it has.
fn drive_one(shared: &Shared, state: &mut State, ch: ConnectionHandle, now: Instant) -> bool {
    // Borrowed field by field: the connection is used in place (no `Arc` count touched per
    // drive) while the endpoint's other parts change.
    let State {
        proto,
        conns,
        timers,
        send_buf,
        blocked,
        ..
    } = state;
    let Some(conn) = conns.get(&ch) else {
        return true;
    };
    let mut c = conn.lock();
    while let Some(event) = c.proto.poll_endpoint_events() {
        if let Some(event) = proto.handle_event(ch, event) {
            c.proto.handle_event(event);
        }
    }
    c.deliver_events(&conn.over);
    let mut sent = 0;
    loop {
        send_buf.clear();
        let Some(t) = c.proto.poll_transmit(now, shared.max_gso, send_buf) else {
            break;
        };
        sent += t.segment_size.map_or(1, |s| t.size.div_ceil(s));
        match shared.try_send(&t, &send_buf[..t.size]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let contents = send_buf[..t.size].to_vec();
                *blocked = Some((ch, t, contents));
                return false;
            }
            // Unreachable destinations and the like: QUIC's loss recovery copes.
            Err(e) => debug!(error = %e, "datagram not sent"),
        }
        if sent >= MAX_DATAGRAMS_PER_DRIVE {
            // Fair to the others: the rest goes in a later round.
            shared.touch(ch);
            break;
        }
    }
    let deadline = c.proto.poll_timeout();
    if deadline != c.deadline {
        if let Some(old) = c.deadline {
            timers.remove(&(old, ch.0));
        }
        if let Some(new) = deadline {
            timers.insert((new, ch.0));
        }
        c.deadline = deadline;
    }
    if c.proto.is_drained() {
        if let Some(old) = c.deadline.take() {
            timers.remove(&(old, ch.0));
        }
        drop(c);
        conns.remove(&ch);
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;

    /// A blocked transmit waits for room on a second registration of the socket (the
    /// endpoint's own is for reading only), and is let go once there is room. A UDP socket
    /// never runs out of room on loopback, so a full datagram socket pair stands in for it.
    #[tokio::test]
    async fn a_blocked_send_waits_for_room_and_goes_on_once_there_is() {
        let (full, peer) = UnixDatagram::pair().unwrap();
        full.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while full.send(&[0u8; 512]).is_ok() {
            queued += 1;
        }
        assert!(queued > 0);
        // As the endpoint holds its socket: registered for reading.
        let socket = std::net::UdpSocket::from(OwnedFd::from(full));
        let socket = register(socket, Interest::READABLE).unwrap();
        assert_eq!(
            socket.get_ref().send(&[0u8; 512]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut room = Some(Room::new(&socket));
        assert!(matches!(room, Some(Room::Registered(_))));
        let waiting = tokio::time::timeout(Duration::from_millis(100), writable(&mut room)).await;
        assert!(waiting.is_err(), "no room yet");
        let mut buf = [0u8; 512];
        for _ in 0..queued {
            peer.recv(&mut buf).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), writable(&mut room))
            .await
            .expect("room, once the peer read");
        socket.get_ref().send(&[0u8; 512]).unwrap();
    }
}
