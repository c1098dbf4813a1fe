//! Admission of the internal gRPC port (9090), as on the other ports: at most
//! `limits.internal_max_connections` connections, at most `limits.internal_max_conns_per_ip`
//! from one source (each beyond closed at accept, counted as `internal` / `internal_per_ip`
//! in `roam_refused_connections_total`), and a connection that has made no call with the
//! internal key within `limits.first_request_secs` is closed — so a caller without the key
//! cannot hold connections open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use roam_edge::admission::{Admission, AdmissionConfig, Refusals, Ticket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Limits of the internal listener.
#[derive(Debug, Clone)]
pub(crate) struct InternalOptions {
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one source address (0: no cap).
    pub max_conns_per_ip: usize,
    /// A connection that has made no call with the key by then is closed.
    pub first_request: Duration,
}

/// The connections `listener` accepts that admission lets in, for tonic's
/// `serve_with_incoming_shutdown`. Accept errors (EMFILE) are logged and waited out, never
/// passed on.
pub(crate) fn incoming(
    listener: TcpListener,
    options: &InternalOptions,
    refusals: Refusals,
) -> Incoming {
    let admission = Admission::new(
        AdmissionConfig {
            max_connections: options.max_connections,
            max_handshakes: 0,
            max_conns_per_ip: options.max_conns_per_ip,
            max_handshakes_per_ip: 0,
            slot_reason: "internal",
            per_ip_reason: "internal_per_ip",
            ..AdmissionConfig::default()
        },
        refusals,
    );
    Incoming {
        listener,
        admission,
        first_request: options.first_request,
        backoff: None,
    }
}

/// See [`incoming`].
pub(crate) struct Incoming {
    listener: TcpListener,
    admission: Arc<Admission>,
    first_request: Duration,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<Admitted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                std::task::ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            let (tcp, peer) = match std::task::ready!(self.listener.poll_accept(cx)) {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "internal accept failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    continue;
                }
            };
            let Ok(ticket) = self.admission.admit(peer.ip()) else {
                debug!(%peer, "internal connection refused: its source's share is taken");
                continue;
            };
            if !ticket.has_slot() {
                debug!(%peer, "internal connection refused: at the connection cap");
                continue;
            }
            let info = InternalConn {
                tcp: TcpConnectInfo {
                    local_addr: tcp.local_addr().ok(),
                    remote_addr: Some(peer),
                },
                ticket: Arc::new(ticket),
            };
            let deadline = Some(Box::pin(tokio::time::sleep(self.first_request)));
            return Poll::Ready(Some(Ok(Admitted {
                tcp,
                info,
                deadline,
            })));
        }
    }
}

/// What a request on the internal port knows of its connection (a request extension):
/// its addresses, and its ticket, which the key check marks ([`InternalConn::called`]).
#[derive(Debug, Clone)]
pub(crate) struct InternalConn {
    pub(crate) tcp: TcpConnectInfo,
    ticket: Arc<Ticket>,
}

impl InternalConn {
    /// A call with the right key came on this connection: its first-request deadline is met.
    pub(crate) fn called(&self) {
        self.ticket.mark_requested();
    }
}

/// An admitted internal connection: holds its ticket, and fails its reads once the
/// first-request deadline passes without a call with the key (which closes it).
pub(crate) struct Admitted {
    tcp: TcpStream,
    info: InternalConn,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Connected for Admitted {
    type ConnectInfo = InternalConn;

    fn connect_info(&self) -> InternalConn {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline {
            if this.info.ticket.requested() {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                debug!(peer = ?this.info.tcp.remote_addr, "no call with the internal key in time: closed");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no call with the internal key within the first-request deadline",
                )));
            }
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
