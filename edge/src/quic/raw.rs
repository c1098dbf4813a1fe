//! Raw frames over QUIC (ALPN `roam/1`): the client's first bidirectional stream carries
//! the 16-byte-header frames both ways, driven by the same driver as the raw TCP port. A
//! stream opened in 0-RTT has its first frame (AUTH with a token, idempotent) served from
//! early data; the rest is read once the handshake has completed.

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::VarInt;
use tracing::debug;

use super::{CLOSE_DONE, Established, Listener, QuicRawIo, ReadGate, first_frame};
use crate::admission::Ticket;
use crate::conn::{Transport, drive};
use crate::raw::RawIo;

impl Listener {
    /// Raw frames: the client's first bidirectional stream carries them both ways.
    pub(super) async fn serve_raw(
        self: Arc<Self>,
        conn: roam_quic::Connection,
        ticket: Ticket,
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
