//! The raw-frame listener on the edge's own QUIC endpoint ([`roam_quic`]): the same
//! screening, admission, handshake watch, 0-RTT gate and frame driver as HTTP/3 on quinn,
//! without quinn's task, event channel and timer per connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use quinn::VarInt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span};

use super::{
    CLOSE_DONE, CLOSE_LIMIT, Established, Held, Listener, PathWatch, QuicRawIo, RAW_QUIC, ReadGate,
    first_frame,
};
use crate::admission::Ticket;
use crate::conn::{Transport, drive};
use crate::raw::RawIo;

impl Listener {
    /// Accepts connection attempts until shutdown, each served in a task on `conns`.
    pub(super) async fn accept_own(
        self: &Arc<Self>,
        endpoint: &roam_quic::Endpoint,
        conns: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let Some(peer) = incoming.remote_address() else {
                continue;
            };
            if let Some(incoming) = self.screen(incoming) {
                let span = debug_span!("conn", %peer, transport = "raw_quic");
                conns.spawn(
                    self.clone()
                        .serve_own(Box::new(incoming), peer)
                        .instrument(span),
                );
            }
        }
    }

    /// As [`Listener::serve`], for raw frames.
    pub(super) async fn serve_own(
        self: Arc<Self>,
        incoming: Box<roam_quic::Incoming>,
        peer: std::net::SocketAddr,
    ) {
        let _open = Held::new(&self.open);
        let Some((incoming, ticket, handshake)) = self.admit(*incoming, peer) else {
            return;
        };
        let conn = match incoming.accept() {
            Ok(conn) => conn,
            Err(e) => return self.handshake_failed("tls", &e),
        };
        let up = conn.clone();
        let established: Established = async move { up.established().await }.boxed().shared();
        if !ticket.has_slot() {
            drop(handshake);
            conn.close(
                VarInt::from_u32(CLOSE_LIMIT),
                b"the edge is at its connection limit; retry in 5 s",
            );
            return;
        }
        let path = PathWatch::new(conn.clone(), &RAW_QUIC, &self.metrics);
        let serving = self
            .clone()
            .serve_own_raw(conn.clone(), ticket, path, established.clone());
        let handshake = self.watch_handshake(&conn, established, handshake, &RAW_QUIC);
        tokio::select! {
            _ = serving => {}
            _ = handshake => {}
        }
    }

    /// As [`Listener::serve_raw`].
    async fn serve_own_raw(
        self: Arc<Self>,
        conn: roam_quic::Connection,
        ticket: Ticket,
        path: PathWatch,
        established: Established,
    ) {
        let first = tokio::time::timeout(self.options.first_request, conn.accept_bi());
        let (send, mut recv) = tokio::select! {
            _ = self.gateway.shutdown.cancelled() => return,
            r = first => match r {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    debug!(error = %e, "connection ended before its stream");
                    return;
                }
                Err(_) => {
                    self.no_request(&conn);
                    return;
                }
            },
        };
        let (prefix, gate) = if recv.is_0rtt() {
            let max = self.gateway.config.max_packet;
            match tokio::time::timeout(self.options.first_request, first_frame(&mut recv, max))
                .await
            {
                Ok(Ok(frame)) => (Some(frame), Some(established)),
                _ => {
                    self.no_request(&conn);
                    return;
                }
            }
        } else {
            (None, None)
        };
        let io = QuicRawIo {
            inner: RawIo::new(ReadGate::new(tokio::io::join(recv, send))),
            path: Arc::new(path),
            prefix,
            gate,
        };
        drive(
            self.gateway.clone(),
            io,
            Transport {
                name: "raw",
                http: "none",
            },
        )
        .await;
        drop(ticket);
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        conn.close(VarInt::from_u32(CLOSE_DONE), b"closed");
    }
}
