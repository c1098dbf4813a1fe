//! The raw frame port (goim's TCP mode): TLS 1.3 with ALPN `roam/1`, then frames back to back
//! on the stream in both directions.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use roam_proto::client::v1::disconnect::Reason;
use roam_proto::disconnect_frame;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::admission::Ticket;
use crate::conn::{FrameIo, Transport, drive};
use crate::gateway::Gateway;
use crate::listener::accept_loop;
use crate::metrics::{EdgeMetrics, ReasonLabel, TransportLabel};
use roam_tls::lean::{LeanTlsAcceptor, LeanTlsStream};

const RAW: TransportLabel = TransportLabel { transport: "raw" };
/// Bytes read at a time, through a stack array (one maximal TLS record's plaintext).
const READ_CHUNK: usize = 16 * 1024;

/// A stream carrying frames back to back.
pub(crate) struct RawIo<S> {
    stream: S,
}

impl<S> RawIo<S> {
    /// Frames over `stream`.
    pub(crate) fn new(stream: S) -> Self {
        RawIo { stream }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameIo for RawIo<S> {
    /// Reads into a stack array inside the poll and copies what came into `buf`: nothing
    /// is reserved on the heap while the connection waits (an idle connection holds no
    /// read buffer).
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
        .await
    }

    async fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        match frames {
            [] => return Ok(()),
            [one] => self.stream.write_all(one).await?,
            many => {
                // One TLS record series for the whole batch, not one per frame.
                let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                for f in many {
                    joined.extend_from_slice(f);
                }
                self.stream.write_all(&joined).await?;
            }
        }
        self.stream.flush().await
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The bound raw listener.
pub struct RawServer {
    listener: TcpListener,
    acceptor: LeanTlsAcceptor,
    handshake_timeout: Duration,
    drain_timeout: Duration,
    metrics: EdgeMetrics,
}

impl RawServer {
    /// Binds `addr`; `tls` must offer ALPN `roam/1` (`roam_tls::ALPN_RAW`).
    pub async fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        handshake_timeout: Duration,
        drain_timeout: Duration,
        metrics: EdgeMetrics,
    ) -> io::Result<Self> {
        Ok(RawServer {
            listener: TcpListener::bind(addr).await?,
            acceptor: LeanTlsAcceptor::new(tls),
            handshake_timeout,
            drain_timeout,
            metrics,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the gateway shuts down, then waits (up to the drain timeout) for
    /// connections to send their DISCONNECT(drain) and close.
    pub async fn run(self, gateway: Arc<Gateway>) {
        let shutdown = gateway.shutdown.clone();
        // One shared handle: every connection's task carries this for its life.
        let listener = Arc::new(Listener {
            acceptor: self.acceptor,
            handshake_timeout: self.handshake_timeout,
            metrics: self.metrics,
        });
        let tracker = TaskTracker::new();
        accept_loop(
            self.listener,
            "raw",
            &shutdown,
            self.drain_timeout,
            tracker,
            |tcp, peer| {
                let handshake =
                    Box::pin(handshake(gateway.clone(), listener.clone(), tcp, peer.ip()));
                serve(gateway.clone(), listener.clone(), handshake)
            },
        )
        .await;
    }
}

/// What every connection of the raw listener shares.
struct Listener {
    acceptor: LeanTlsAcceptor,
    handshake_timeout: Duration,
    metrics: EdgeMetrics,
}

/// One connection's task, for its whole life. What it holds across an await is paid by every
/// idle connection (a task's allocation is sized for its largest state plus its arguments,
/// in steps of 128 bytes), so it takes only shared handles and the boxed [`handshake`] —
/// made by the accept loop, with the socket, the handshake permit, the shutdown and timeout
/// futures and rustls's state inside, all freed once it ends — and it boxes the driver too.
/// `the_raw_connection_task_stays_small` pins its size.
async fn serve<H>(gateway: Arc<Gateway>, listener: Arc<Listener>, handshake: Pin<Box<H>>)
where
    H: Future<Output = Option<(Ticket, LeanTlsStream<TcpStream>)>> + ?Sized,
{
    // `tls` never lives across an await here (it moves into a boxed future at once): a TLS
    // stream is ≈ 0.9 KB, and a local held across an await keeps its slot in this task.
    let Some((ticket, tls)) = handshake.await else {
        return;
    };
    if !ticket.has_slot() {
        // Bounded: a client that does not read its refusal cannot hold the task.
        let _ = Box::pin(tokio::time::timeout(
            listener.handshake_timeout,
            refuse(tls),
        ))
        .await;
        return;
    }
    let metrics = &listener.metrics;
    metrics.accepted.get_or_create(&RAW).inc();
    let open = metrics.open_connections.get_or_create(&RAW).clone();
    open.inc();
    // Boxed: this task's future would otherwise be as large as its largest state *plus*
    // the driver, for the connection's life (≈ 8.4 KB measured, against ≈ 4 KB boxed).
    Box::pin(drive(
        gateway,
        RawIo::new(tls),
        Transport {
            name: "raw",
            http: "none",
        },
    ))
    .await;
    open.dec();
    drop(ticket);
}

/// Admission and the TLS handshake of a connection from `peer`: its ticket and stream, or
/// `None` when it was refused at admission, failed its handshake (counted) or the edge is
/// shutting down.
async fn handshake(
    gateway: Arc<Gateway>,
    listener: Arc<Listener>,
    tcp: TcpStream,
    peer: IpAddr,
) -> Option<(Ticket, LeanTlsStream<TcpStream>)> {
    // Admission before any work (see [`crate::admission`]): the source's share and a slot
    // for the connection's life, then a handshake permit while the handshake runs.
    let ticket = gateway.admission.admit(peer).ok()?;
    let _permit = gateway.admission.handshake(peer)?;
    let _ = tcp.set_nodelay(true);
    let metrics = &listener.metrics;
    let r = tokio::select! {
        _ = gateway.shutdown.cancelled() => return None,
        r = tokio::time::timeout(listener.handshake_timeout, listener.acceptor.accept(tcp)) => r,
    };
    match r {
        Ok(Ok(tls)) => Some((ticket, tls)),
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            metrics
                .handshake_failures
                .get_or_create(&ReasonLabel { reason: "tls" })
                .inc();
            None
        }
        Err(_) => {
            metrics
                .handshake_failures
                .get_or_create(&ReasonLabel { reason: "timeout" })
                .inc();
            None
        }
    }
}

/// Tells a connection over the limit to come back later, and closes it.
async fn refuse<S: AsyncWrite + Unpin>(mut tls: S) {
    let _ = tls
        .write_all(&disconnect_frame(
            Reason::Limit,
            "the edge is at its connection limit",
            Some(5000),
        ))
        .await;
    let _ = tls.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle raw connection pays for its task for its whole life: the task's future is as
    /// large as its largest state plus its arguments, and tokio rounds the task up to 128
    /// bytes. Issues 10 and 14 once added about 125 B to every idle raw connection by
    /// holding the admission ticket and handshake permit beside the handshake's futures in
    /// this task (400 B in a test build, against 112 B with the handshake boxed); keep an
    /// eye on it.
    #[test]
    fn the_raw_connection_task_stays_small() {
        type Handshake = dyn Future<Output = Option<(Ticket, LeanTlsStream<TcpStream>)>> + Send;
        fn size_of_return<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = size_of_return(serve::<Handshake>);
        assert!(
            size <= 128,
            "the raw connection's task grew to {size} bytes"
        );
    }
}
