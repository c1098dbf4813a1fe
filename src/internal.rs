//! Admission of the internal gRPC port (9090), as on the other ports: at most
//! `limits.internal_max_connections` connections, at most `limits.internal_max_conns_per_ip`
//! from one source (each beyond closed at accept, counted as `internal` / `internal_per_ip`
//! in `roam_refused_connections_total`), and a connection that has made no call with the
//! internal key within `limits.first_request_secs` is closed — so a caller without the key
//! cannot hold connections open. With `internal.tls = true` a connection is mutual TLS
//! first (`roam_tls::internal`): a caller without a certificate from the internal CA fails
//! its handshake (counted as `internal_tls`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use roam_edge::admission::{Admission, AdmissionConfig, Refusals, Ticket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
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

/// The connections `listener` accepts that admission lets in (after their TLS handshake
/// when `tls` is set: mutual TLS, `internal.tls`), for tonic's `serve_with_incoming_shutdown`.
/// Accept errors (EMFILE) are logged and waited out, never passed on; accepting stops at
/// `shutdown`.
pub(crate) fn incoming(
    listener: TcpListener,
    options: &InternalOptions,
    refusals: Refusals,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Admitted>> {
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
        refusals.clone(),
    );
    let first_request = options.first_request;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "internal accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(ticket) = admission.admit(peer.ip()) else {
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
            let Some(config) = &tls else {
                let admitted = Admitted::new(Io::Plain(tcp), info, first_request);
                if tx.send(Ok(admitted)).await.is_err() {
                    break;
                }
                continue;
            };
            // The handshake in a task of its own, bounded by the first-request deadline
            // (the connection holds its slot meanwhile).
            let (config, tx, refusals) = (config.clone(), tx.clone(), refusals.clone());
            tokio::spawn(async move {
                let handshake = roam_tls::internal::accept(config, tcp);
                match tokio::time::timeout(first_request, handshake).await {
                    Ok(Ok(tls)) => {
                        let admitted = Admitted::new(Io::Tls(Box::new(tls)), info, first_request);
                        let _ = tx.send(Ok(admitted)).await;
                    }
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "internal TLS handshake failed");
                        refusals.count("internal_tls");
                    }
                    Err(_) => {
                        debug!(%peer, "internal TLS handshake not finished in time");
                        refusals.count("internal_tls");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
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
    io: Io,
    info: InternalConn,
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The transport of an internal connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Admitted {
    fn new(io: Io, info: InternalConn, first_request: Duration) -> Self {
        Admitted {
            io,
            info,
            deadline: Some(Box::pin(tokio::time::sleep(first_request))),
        }
    }

    fn io(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Unpin + Send)> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp),
            Io::Tls(tls) => Pin::new(tls.as_mut()),
        }
    }
}

/// What [`Io`]'s transports are.
trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

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
        this.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
