//! The connection driver: one task per client connection, whatever its transport.
//!
//! A transport implements [`FrameIo`] (bytes in, batches of frames out). The driver decodes
//! frames into the connection's [`Session`], carries out its actions (AUTH to core through
//! the gateway, requests to core, room joins in the comet), writes what the connection's
//! [`Outbox`] gathered as one batch, and enforces the session's deadlines. The read buffer is
//! released whenever it drains, so an idle connection holds none.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use roam_proto::client::v1::{self as pb, disconnect::Reason};
use roam_proto::{FrameDecoder, HEADER_LEN, Op, disconnect_frame, error_frame, frame_of};
use tokio::sync::oneshot;
use tracing::debug;

use crate::admission::Hold;
use crate::gateway::Gateway;
use crate::metrics::{ReasonLabel, TransportLabel};
use crate::outbox::{CloseReason, Outbox};
use crate::session::{Action, Session};
use roam_proto::internal::v1 as link;

/// A client transport as the driver sees it.
pub(crate) trait FrameIo: Send {
    /// Reads more bytes into `buf` (reserving room as needed); `Ok(0)` at end of stream.
    /// Must be cancel-safe.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes frames as one batch and flushes.
    fn write_batch(&mut self, frames: &[Bytes]) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the transport gracefully.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// The frames that tell a client why the server closes its connection.
fn close_frames(reason: CloseReason) -> Bytes {
    match reason {
        CloseReason::Slow => disconnect_frame(
            Reason::Slow,
            "the connection could not keep up; reconnect and SYNC",
            Some(1000),
        ),
        CloseReason::Drain => disconnect_frame(Reason::Drain, "the edge is shutting down", Some(0)),
        CloseReason::Kicked(r) => {
            let reason = Reason::try_from(r).unwrap_or(Reason::Unspecified);
            let reconnect = (reason != Reason::Kicked).then_some(1000);
            disconnect_frame(reason, "closed by the server", reconnect)
        }
    }
}

/// Watches a batch for HEARTBEAT_REPLY frames and returns the newest interval told.
fn heartbeat_interval(batch: &[Bytes]) -> Option<u32> {
    let mut newest = None;
    let decoder = FrameDecoder::new(usize::MAX);
    for frames in batch {
        // Cheap check first: most batches carry no heartbeat reply.
        if frames.len() < HEADER_LEN {
            continue;
        }
        let mut b = frames.clone();
        while let Ok(Some(f)) = decoder.decode_bytes(&mut b) {
            if f.op == Op::HeartbeatReply.code()
                && let Ok(r) = f.decode_body::<pb::HeartbeatReply>()
            {
                newest = Some(r.heartbeat_secs);
            }
        }
    }
    newest
}

/// A ROOM_JOIN_REPLY or ROOM_LEAVE_REPLY body within `max_packet` (header included): `rooms`
/// lists as many of the connection's rooms as fit, in join order.
fn room_reply(room: String, mut rooms: Vec<String>, max_packet: usize) -> pb::RoomReply {
    use prost::Message;
    let budget = max_packet.saturating_sub(HEADER_LEN);
    let mut len = pb::RoomReply {
        room: room.clone(),
        rooms: Vec::new(),
    }
    .encoded_len();
    let fit = rooms
        .iter()
        .take_while(|r| {
            len += prost::encoding::string::encoded_len(2, r);
            len <= budget
        })
        .count();
    rooms.truncate(fit);
    pb::RoomReply { room, rooms }
}

/// What a connection runs over, for metrics and the load reports to core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transport {
    /// `ws`, `stream`, `poll`, `grpc` or `raw` (one of [`crate::gateway::TRANSPORTS`]).
    pub(crate) name: &'static str,
    /// The HTTP version beneath: `1.1`, `2`, `3`, or `none` (the raw port).
    pub(crate) http: &'static str,
}

impl Transport {
    /// The label for an HTTP request's version.
    pub(crate) fn http_version(version: axum::http::Version) -> &'static str {
        match version {
            axum::http::Version::HTTP_2 => "2",
            axum::http::Version::HTTP_3 => "3",
            _ => "1.1",
        }
    }
}

/// Why a write to the client failed: it did not finish within the write timeout (the client
/// stopped reading: `slow`), or the transport broke (`io`).
async fn write<T: FrameIo>(
    io: &mut T,
    frames: &[Bytes],
    timeout: std::time::Duration,
) -> Result<(), &'static str> {
    // Boxed: the write's state (and its timer) exists only while a write is under way,
    // instead of widening every connection's task.
    match Box::pin(tokio::time::timeout(timeout, io.write_batch(frames))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("io"),
        Err(_) => Err("slow"),
    }
}

/// One connection's state, owned by its driver task.
struct Conn<T> {
    gateway: Arc<Gateway>,
    io: T,
    transport: Transport,
    session: Session,
    outbox: Arc<Outbox>,
    frames_out: Counter,
    bytes_out: Counter,
    writes: Counter,
    conn_id: Option<u64>,
    registered: bool,
    /// AUTH sent to core, its answer awaited (boxed: it exists for a moment of the
    /// connection's life, and the driver's state is kept small).
    auth: Option<Box<PendingAuth>>,
    idle: bool,
    /// What it holds of admission: a virtual connection's own ticket (source share and slot,
    /// taken before its AUTH went to core), its session on the connection carrying it.
    hold: Hold,
}

/// An AUTH core has not answered yet.
struct PendingAuth {
    reply: oneshot::Receiver<link::ConnectResult>,
    /// The rooms it asked for, joined once it succeeds.
    rooms: Vec<String>,
}

/// Whether the connection goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Close,
}

impl<T: FrameIo> Conn<T> {
    fn count_close(&self, reason: &'static str) {
        self.gateway
            .metrics
            .closes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn count_auth_failure(&self, code: i32) {
        let reason = match pb::error::Code::try_from(code) {
            Ok(pb::error::Code::AuthExpired) => "auth_expired",
            Ok(pb::error::Code::Unavailable) => "unavailable",
            Ok(pb::error::Code::AuthFailed) => "auth_failed",
            _ => "other",
        };
        self.gateway
            .metrics
            .auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Writes `frames` as one batch; on failure counts the close and says to stop.
    async fn send(&mut self, frames: &[Bytes]) -> Step {
        self.frames_out.inc_by(frames.len() as u64);
        self.bytes_out
            .inc_by(frames.iter().map(|f| f.len() as u64).sum());
        self.writes.inc();
        match write(&mut self.io, frames, self.gateway.config.write_timeout).await {
            Ok(()) => Step::Continue,
            Err(reason) => {
                self.count_close(reason);
                Step::Close
            }
        }
    }

    /// Core's answer to AUTH: registers the connection (and its rooms) or refuses it.
    async fn authenticated(
        &mut self,
        result: Result<link::ConnectResult, ()>,
        rooms: Vec<String>,
        out: &mut Vec<Action>,
    ) {
        let now = Instant::now();
        let gateway = self.gateway.clone();
        match (result, self.conn_id) {
            (Ok(r), Some(id)) if r.ok => {
                self.hold.authenticated();
                gateway.comet.insert(id, self.outbox.clone());
                gateway.joined(self.transport);
                self.registered = true;
                gateway
                    .metrics
                    .heartbeat_interval
                    .observe(f64::from(r.heartbeat_secs));
                for room in rooms {
                    if let Some((true, 1)) = gateway.comet.join(id, &room) {
                        gateway.room_change(room, 1).await;
                    }
                }
                let reply = pb::AuthReply {
                    user_id: r.user_id,
                    device_id: r.device_id,
                    session_id: r.session_id,
                    heartbeat_secs: r.heartbeat_secs,
                    server_time_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                };
                self.session
                    .handle_auth_result(true, r.heartbeat_secs, reply, (0, ""), now, out);
            }
            (Ok(r), _) => {
                self.count_auth_failure(r.error_code);
                self.session.handle_auth_result(
                    false,
                    0,
                    pb::AuthReply::default(),
                    (r.error_code, &r.error_message),
                    now,
                    out,
                );
            }
            (Err(()), _) => {
                let code = pb::error::Code::Unavailable as i32;
                self.count_auth_failure(code);
                self.session.handle_auth_result(
                    false,
                    0,
                    pb::AuthReply::default(),
                    (code, "core is unavailable; retry"),
                    now,
                    out,
                );
            }
        }
    }

    /// Writes what the outbox gathered, or closes the connection as the outbox asks.
    async fn flush(&mut self, batch: &mut Vec<Bytes>) -> Step {
        if let Some(reason) = self.outbox.take(batch) {
            self.count_close(match reason {
                CloseReason::Slow => "slow",
                CloseReason::Kicked(_) => "kicked",
                CloseReason::Drain => "drain",
            });
            let _ = write(
                &mut self.io,
                &[close_frames(reason)],
                self.gateway.config.write_timeout,
            )
            .await;
            return Step::Close;
        }
        if let Some(secs) = heartbeat_interval(batch) {
            self.gateway
                .metrics
                .heartbeat_interval
                .observe(f64::from(secs));
            self.session.handle_heartbeat_interval(secs, Instant::now());
        }
        self.gateway.metrics.queue_depth.observe(batch.len() as f64);
        let step = self.send(batch).await;
        batch.clear();
        step
    }

    /// Answers a room request: joins or leaves, tells core when the room appears on or
    /// leaves this edge, and replies with the connection's rooms.
    async fn room(&mut self, room: String, seq: u32, join: bool) -> Step {
        let Some(id) = self.conn_id else {
            debug!(room, seq, "room op before registration");
            return Step::Continue;
        };
        let gateway = self.gateway.clone();
        let max_rooms = gateway.config.max_rooms_per_conn;
        if join {
            let rooms = gateway.comet.rooms_of(id);
            if rooms.len() >= max_rooms && !rooms.contains(&room) {
                let refusal = error_frame(
                    seq,
                    pb::error::Code::InvalidArgument,
                    &format!("at most {max_rooms} rooms per connection: leave one first"),
                );
                return self.send(&[refusal]).await;
            }
        }
        let (changed, op) = if join {
            (
                gateway.comet.join(id, &room) == Some((true, 1)),
                Op::RoomJoinReply,
            )
        } else {
            (
                gateway.comet.leave(id, &room) == Some((true, 0)),
                Op::RoomLeaveReply,
            )
        };
        if changed {
            gateway.room_change(room.clone(), u64::from(join)).await;
        }
        let reply = room_reply(room, gateway.comet.rooms_of(id), gateway.config.max_packet);
        match frame_of(op, seq, &reply) {
            Ok(f) => self.send(&[f]).await,
            Err(_) => Step::Continue,
        }
    }

    /// Carries out what the session asked for.
    async fn act(&mut self, actions: Vec<Action>) -> Step {
        for action in actions {
            let step = match action {
                Action::Send(frames) => self.send(&[frames]).await,
                Action::Authenticate(a) => {
                    let rooms = a
                        .rooms
                        .iter()
                        .filter(|r| !r.is_empty() && r.len() <= 256)
                        .take(self.gateway.config.max_rooms_per_conn)
                        .cloned()
                        .collect();
                    let id = self.gateway.comet.allocate(&a.device_id);
                    self.conn_id = Some(id);
                    let gateway = self.gateway.clone();
                    let reply = gateway.authenticate(id, a, self.transport.name).await;
                    self.auth = Some(Box::new(PendingAuth { reply, rooms }));
                    Step::Continue
                }
                Action::ToCore { op, seq, body } => {
                    if let Some(id) = self.conn_id {
                        self.gateway.to_core(id, op, seq, body).await;
                    }
                    Step::Continue
                }
                Action::Join { room, seq } => self.room(room, seq, true).await,
                Action::Leave { room, seq } => self.room(room, seq, false).await,
                Action::Close { idle } => {
                    self.idle = idle;
                    self.count_close(if idle {
                        "idle"
                    } else {
                        self.session.close_reason()
                    });
                    Step::Close
                }
            };
            if step == Step::Close {
                return Step::Close;
            }
        }
        Step::Continue
    }
}

/// Drives one connection over `transport` to its end.
///
/// The returned future lives as long as the connection, so its size is per-connection
/// memory. It runs `Conn::run` on the connection's state, built here — not an `async fn`
/// taking `io`, whose argument would keep a second slot for the transport (≈ 1.2 KB for a TLS
/// stream) next to the one in the state. The work of each round (acting on frames, AUTH results,
/// outbox batches) runs in boxed futures that exist only while it is under way.
pub(crate) fn drive<T: FrameIo>(
    gateway: Arc<Gateway>,
    io: T,
    transport: Transport,
) -> impl Future<Output = ()> + Send {
    drive_holding(gateway, io, transport, Hold::default())
}

/// [`drive`] for a connection that holds `hold` for its life (a session on the connection
/// carrying it, a virtual connection's own admission).
pub(crate) fn drive_holding<T: FrameIo>(
    gateway: Arc<Gateway>,
    io: T,
    transport: Transport,
    hold: Hold,
) -> impl Future<Output = ()> + Send {
    let label = TransportLabel {
        transport: transport.name,
    };
    let metrics = &gateway.metrics;
    let frames_out = metrics.frames_out.get_or_create(&label).clone();
    let bytes_out = metrics.bytes_out.get_or_create(&label).clone();
    let writes = metrics.writes.get_or_create(&label).clone();
    let mut conn = Conn {
        session: Session::new(gateway.session.clone(), Instant::now()),
        outbox: Arc::new(Outbox::new(gateway.config.outbox)),
        frames_out,
        bytes_out,
        writes,
        gateway,
        io,
        transport,
        conn_id: None,
        registered: false,
        auth: None,
        idle: false,
        hold,
    };
    // `conn` is captured once and run in place (a `mut self` argument, or a `let` rebinding
    // it, would move it into a second slot of the future).
    async move { conn.run().await }
}

impl<T: FrameIo> Conn<T> {
    async fn run(&mut self) {
        let decoder = FrameDecoder::new(self.gateway.config.max_packet);
        let label = TransportLabel {
            transport: self.transport.name,
        };
        let frames_in = self.gateway.metrics.frames_in.get_or_create(&label).clone();
        let bytes_in = self.gateway.metrics.bytes_in.get_or_create(&label).clone();
        let mut buf = BytesMut::new();
        let mut actions = Vec::new();
        let mut batch = Vec::new();

        // One timer for the connection's life, moved when the session's deadline moves.
        let mut deadline = self.session.deadline();
        let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::pin!(timer);
        let shutdown = self.gateway.shutdown.clone();
        let outbox = self.outbox.clone();

        loop {
            if self.session.deadline() != deadline {
                deadline = self.session.deadline();
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(deadline));
            }
            let step = tokio::select! {
                read = self.io.read(&mut buf) => match read {
                    Ok(0) | Err(_) => Step::Close,
                    Ok(n) => {
                        bytes_in.inc_by(n as u64);
                        let now = Instant::now();
                        loop {
                            match decoder.decode(&mut buf) {
                                Ok(Some(frame)) => {
                                    frames_in.inc();
                                    self.session.handle_frame(frame, now, &mut actions);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    self.session.handle_decode_error(&e, &mut actions);
                                    break;
                                }
                            }
                        }
                        if buf.is_empty() {
                            buf = BytesMut::new();
                        }
                        Step::Continue
                    }
                },
                result = async {
                    match self.auth.as_mut() {
                        Some(pending) => (&mut pending.reply).await.map_err(|_| ()),
                        None => std::future::pending().await,
                    }
                }, if self.auth.is_some() => {
                    let rooms = self.auth.take().map(|p| p.rooms).unwrap_or_default();
                    Box::pin(self.authenticated(result, rooms, &mut actions)).await;
                    Step::Continue
                },
                _ = outbox.ready(), if self.registered => Box::pin(self.flush(&mut batch)).await,
                _ = timer.as_mut() => {
                    self.session.handle_timeout(Instant::now(), &mut actions);
                    Step::Continue
                }
                _ = shutdown.cancelled() => {
                    self.count_close("drain");
                    let _ = write(&mut self.io, &[close_frames(CloseReason::Drain)], self.gateway.config.write_timeout).await;
                    Step::Close
                }
            };
            if step == Step::Close {
                break;
            }
            // Taken, not drained: the vector's storage is freed after each round, so an idle
            // connection keeps none.
            if !actions.is_empty()
                && Box::pin(self.act(std::mem::take(&mut actions))).await == Step::Close
            {
                break;
            }
        }

        // Bounded like every write: a client that stopped reading cannot hold the task.
        let _ = tokio::time::timeout(self.gateway.config.write_timeout, self.io.close()).await;
        if let Some(id) = self.conn_id {
            if self.registered {
                self.gateway.left(self.transport);
            }
            Box::pin(self.gateway.disconnect(id, self.idle)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use crate::raw::RawIo;

    #[test]
    fn a_room_reply_fits_the_frame_limit_however_many_rooms() {
        let rooms: Vec<String> = (0..1000).map(|i| format!("{i:0>200}")).collect();
        for max_packet in [512, 1024, 64 * 1024] {
            let reply = room_reply("r".repeat(256), rooms.clone(), max_packet);
            let frame = frame_of(Op::RoomJoinReply, 1, &reply).unwrap();
            assert!(frame.len() <= max_packet, "{} > {max_packet}", frame.len());
            assert_eq!(reply.rooms[..], rooms[..reply.rooms.len()], "a prefix");
        }
        let few = room_reply("a".into(), vec!["a".into(), "b".into()], 64 * 1024);
        assert_eq!(few.rooms, ["a", "b"], "all when they fit");
    }

    /// The driver's future is allocated once per connection for its whole life: keep an
    /// eye on its size (large, short-lived states are boxed so they do not widen it).
    #[test]
    fn the_driver_future_stays_small() {
        let gateway = Gateway::detached(GatewayConfig::default());
        let (a, _b) = tokio::io::duplex(64);
        let t = Transport {
            name: "raw",
            http: "none",
        };
        let f = drive(gateway, RawIo::new(a), t);
        let size = std::mem::size_of_val(&f);
        // 912 bytes over a duplex stream when this was written (rust 1.95, release).
        assert!(size <= 1280, "the driver's future grew to {size} bytes");
    }
}
