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
use roam_proto::client::v1::{self as pb, disconnect::Reason};
use roam_proto::{FrameDecoder, HEADER_LEN, Op, disconnect_frame, frame_of};
use tokio::sync::oneshot;
use tracing::debug;

use crate::gateway::Gateway;
use crate::metrics::{ReasonLabel, TransportLabel};
use crate::outbox::{CloseReason, Outbox};
use crate::session::{Action, Session};
use roam_proto::internal::v1 as link;

/// A client transport as the driver sees it.
pub trait FrameIo: Send {
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

/// What a connection runs over, for metrics and the load reports to core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// `ws`, `stream`, `poll`, `grpc` or `raw` (one of [`crate::gateway::TRANSPORTS`]).
    pub name: &'static str,
    /// The HTTP version beneath: `1.1`, `2`, `3`, or `none` (the raw port).
    pub http: &'static str,
}

impl Transport {
    /// The label for an HTTP request's version.
    pub fn http_version(version: axum::http::Version) -> &'static str {
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

/// Drives one connection over `transport` to its end.
pub async fn drive<T: FrameIo>(gateway: Arc<Gateway>, mut io: T, transport: Transport) {
    let decoder = FrameDecoder::new(gateway.config.max_packet);
    let write_timeout = gateway.config.write_timeout;
    let metrics = gateway.metrics.clone();
    let label = TransportLabel {
        transport: transport.name,
    };
    let frames_in = metrics.frames_in.get_or_create(&label).clone();
    let bytes_in = metrics.bytes_in.get_or_create(&label).clone();
    let frames_out = metrics.frames_out.get_or_create(&label).clone();
    let writes = metrics.writes.get_or_create(&label).clone();
    let close = |reason: &'static str| {
        metrics.closes.get_or_create(&ReasonLabel { reason }).inc();
    };
    let mut session = Session::new(gateway.config.session.clone(), Instant::now());
    let outbox = Arc::new(Outbox::new(gateway.config.outbox));
    let mut buf = BytesMut::new();
    let mut actions = Vec::new();
    let mut batch = Vec::new();
    let mut conn_id: Option<u64> = None;
    let mut registered = false;
    let mut auth: Option<oneshot::Receiver<link::ConnectResult>> = None;
    let mut idle = false;
    let mut auth_rooms: Vec<String> = Vec::new();

    // One timer for the connection's life, moved when the session's deadline moves.
    let mut deadline = session.deadline();
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
    tokio::pin!(timer);

    'conn: loop {
        if session.deadline() != deadline {
            deadline = session.deadline();
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
        tokio::select! {
            read = io.read(&mut buf) => match read {
                Ok(0) | Err(_) => break 'conn,
                Ok(n) => {
                    bytes_in.inc_by(n as u64);
                    let now = Instant::now();
                    loop {
                        match decoder.decode(&mut buf) {
                            Ok(Some(frame)) => {
                                frames_in.inc();
                                session.handle_frame(frame, now, &mut actions);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                session.handle_decode_error(&e, &mut actions);
                                break;
                            }
                        }
                    }
                    if buf.is_empty() {
                        buf = BytesMut::new();
                    }
                }
            },
            result = async {
                match auth.as_mut() {
                    Some(rx) => rx.await.map_err(|_| ()),
                    None => std::future::pending().await,
                }
            }, if auth.is_some() => {
                auth = None;
                let now = Instant::now();
                match (result, conn_id) {
                    (Ok(r), Some(id)) if r.ok => {
                        gateway.comet.insert(id, outbox.clone());
                        gateway.joined(transport);
                        registered = true;
                        metrics.heartbeat_interval.observe(f64::from(r.heartbeat_secs));
                        for room in std::mem::take(&mut auth_rooms) {
                            if let Some((true, 1)) = gateway.comet.join(id, &room) {
                                Box::pin(gateway.room_change(room, 1)).await;
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
                        session.handle_auth_result(true, r.heartbeat_secs, reply, (0, ""), now, &mut actions);
                    }
                    (Ok(r), _) => session.handle_auth_result(
                        false, 0, pb::AuthReply::default(), (r.error_code, &r.error_message), now, &mut actions,
                    ),
                    (Err(()), _) => session.handle_auth_result(
                        false, 0, pb::AuthReply::default(),
                        (pb::error::Code::Unavailable as i32, "core is unavailable; retry"), now, &mut actions,
                    ),
                }
            },
            _ = outbox.ready(), if registered => {
                match outbox.take(&mut batch) {
                    Some(reason) => {
                        close(match reason {
                            CloseReason::Slow => "slow",
                            CloseReason::Kicked(_) => "kicked",
                            CloseReason::Drain => "drain",
                        });
                        let _ = write(&mut io, &[close_frames(reason)], write_timeout).await;
                        break 'conn;
                    }
                    None => {
                        if let Some(secs) = heartbeat_interval(&batch) {
                            metrics.heartbeat_interval.observe(f64::from(secs));
                            session.handle_heartbeat_interval(secs, Instant::now());
                        }
                        metrics.queue_depth.observe(batch.len() as f64);
                        frames_out.inc_by(batch.len() as u64);
                        writes.inc();
                        let written = write(&mut io, &batch, write_timeout).await;
                        batch.clear();
                        if let Err(reason) = written {
                            close(reason);
                            break 'conn;
                        }
                    }
                }
            },
            _ = timer.as_mut() => session.handle_timeout(Instant::now(), &mut actions),
            _ = gateway.shutdown.cancelled() => {
                close("drain");
                let _ = write(&mut io, &[close_frames(CloseReason::Drain)], write_timeout).await;
                break 'conn;
            }
        }

        // Taken, not drained: the vector's storage is freed after each round, so an idle
        // connection keeps none.
        for action in std::mem::take(&mut actions) {
            match action {
                Action::Send(frames) => {
                    frames_out.inc();
                    writes.inc();
                    if let Err(reason) = write(&mut io, &[frames], write_timeout).await {
                        close(reason);
                        break 'conn;
                    }
                }
                Action::Authenticate(a) => {
                    auth_rooms = a
                        .rooms
                        .iter()
                        .filter(|r| !r.is_empty() && r.len() <= 256)
                        .take(64)
                        .cloned()
                        .collect();
                    let id = gateway.comet.allocate(&a.device_id);
                    conn_id = Some(id);
                    auth = Some(Box::pin(gateway.authenticate(id, a, transport.name)).await);
                }
                Action::ToCore { op, seq, body } => {
                    if let Some(id) = conn_id {
                        Box::pin(gateway.to_core(id, op, seq, body)).await;
                    }
                }
                Action::Join { room, seq } | Action::Leave { room, seq } if conn_id.is_none() => {
                    debug!(room, seq, "room op before registration");
                }
                Action::Join { room, seq } => {
                    let id = conn_id.unwrap_or_default();
                    if let Some((true, 1)) = gateway.comet.join(id, &room) {
                        Box::pin(gateway.room_change(room.clone(), 1)).await;
                    }
                    let reply = pb::RoomReply {
                        room,
                        rooms: gateway.comet.rooms_of(id),
                    };
                    if let Ok(f) = frame_of(Op::RoomJoinReply, seq, &reply)
                        && let Err(reason) = write(&mut io, &[f], write_timeout).await
                    {
                        close(reason);
                        break 'conn;
                    }
                }
                Action::Leave { room, seq } => {
                    let id = conn_id.unwrap_or_default();
                    if let Some((true, 0)) = gateway.comet.leave(id, &room) {
                        Box::pin(gateway.room_change(room.clone(), 0)).await;
                    }
                    let reply = pb::RoomReply {
                        room,
                        rooms: gateway.comet.rooms_of(id),
                    };
                    if let Ok(f) = frame_of(Op::RoomLeaveReply, seq, &reply)
                        && let Err(reason) = write(&mut io, &[f], write_timeout).await
                    {
                        close(reason);
                        break 'conn;
                    }
                }
                Action::Close { idle: was_idle } => {
                    idle = was_idle;
                    close(if was_idle { "idle" } else { "protocol" });
                    break 'conn;
                }
            }
        }
    }

    // Bounded like every write: a client that stopped reading cannot hold the task.
    let _ = tokio::time::timeout(write_timeout, io.close()).await;
    if let Some(id) = conn_id {
        if registered {
            gateway.left(transport);
        }
        Box::pin(gateway.disconnect(id, idle)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use crate::raw::RawIo;

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
        assert!(size <= 4096, "the driver's future grew to {size} bytes");
    }
}
