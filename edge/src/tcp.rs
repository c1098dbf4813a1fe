//! The TLS 1.3 client listener over TCP: HTTP/1.1 and HTTP/2 on one port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;
use tracing::debug;

use crate::admission::{Admission, Ticket, TicketLayer};
use crate::listener::accept_loop;
use crate::metrics::{EdgeMetrics, ReasonLabel, TransportLabel};
use roam_tls::lean::LeanTlsAcceptor;

const TCP: TransportLabel = TransportLabel { transport: "tcp" };

/// Tunables of the TCP client listener.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// A client that has not completed the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// On shutdown, how long open connections get to finish.
    pub drain_timeout: Duration,
    /// An HTTP/1.1 request's headers must arrive within this time (also between requests
    /// of a keep-alive connection).
    pub header_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection (each WebSocket over HTTP/2 is one).
    pub max_streams: u32,
    /// A connection that has sent no complete request by then (counted from the end of its
    /// handshake) is closed, whatever its protocol.
    pub first_request: Duration,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY and is closed
    /// (HTTP/1.1 has the header timeout between requests).
    pub http2_idle: Duration,
}

/// HTTP/1.1 and HTTP/2 with limits against slow and abusive clients: a request's headers
/// must arrive within the header timeout (slowloris), headers and buffers are bounded, and
/// HTTP/2 bounds concurrent streams and reset floods (a client that resets more streams
/// than allowed gets GOAWAY). Extended CONNECT is on for WebSockets over HTTP/2. The protocol
/// is the one ALPN chose — no sniffing of the first bytes, which would wait for them with no
/// timer.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

fn builders(options: &TcpOptions) -> Builders {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(64 * 1024);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(options.max_streams)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(64)
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    Builders { h1, h2 }
}

/// A bound TLS client listener, ready to [`run`](ClientTcpServer::run).
pub struct ClientTcpServer {
    listener: TcpListener,
    acceptor: LeanTlsAcceptor,
    options: TcpOptions,
    metrics: EdgeMetrics,
}

impl ClientTcpServer {
    /// Binds `addr`. `tls` must be a TLS 1.3 configuration with ALPN `h2`, `http/1.1`
    /// (`roam_tls::server_config(.., roam_tls::ALPN_TCP)`).
    pub async fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        options: TcpOptions,
        metrics: EdgeMetrics,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(ClientTcpServer {
            listener,
            acceptor: LeanTlsAcceptor::new(tls),
            options,
            metrics,
        })
    }

    /// The bound address (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` (see [`crate::http::router`]) on connections `admission` admits
    /// (the gateway's, shared with the raw port) until `shutdown` fires, then lets open
    /// connections — and every task on `tracker`, where the router runs WebSockets, virtual
    /// connections and gRPC streams — finish for up to the drain timeout.
    pub async fn run(
        self,
        router: Router,
        admission: Arc<Admission>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let listener = Arc::new(Listener {
            builders: builders(&self.options),
            acceptor: self.acceptor,
            handshake_timeout: self.options.handshake_timeout,
            first_request: self.options.first_request,
            http2_idle: self.options.http2_idle,
            metrics: self.metrics,
            router,
            admission,
            shutdown: shutdown.clone(),
        });
        accept_loop(
            self.listener,
            "tcp",
            &shutdown,
            self.options.drain_timeout,
            tracker,
            |tcp, peer| listener.clone().serve(tcp, peer),
        )
        .await;
    }
}

/// What every connection of the listener shares.
struct Listener {
    builders: Builders,
    acceptor: LeanTlsAcceptor,
    handshake_timeout: Duration,
    first_request: Duration,
    http2_idle: Duration,
    metrics: EdgeMetrics,
    router: Router,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
}

/// How a connection's HTTP ended.
enum Ended {
    /// It ran its course (or failed: the error, for the log).
    Done(Result<(), hyper::Error>),
    /// It sent no complete request within the first-request deadline.
    NoRequest,
    /// HTTP/2: it had no open stream for the idle time (closed after GOAWAY).
    Idle(Result<(), hyper::Error>),
}

impl Listener {
    async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        // Admission before any work: the source's share and a slot, then a handshake permit.
        let Ok(ticket) = self.admission.admit(peer.ip()) else {
            return;
        };
        let Some(handshake_permit) = self.admission.handshake(peer.ip()) else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        // Boxed so the handshake's state is freed once it completes instead of living in
        // this task for the connection's whole life.
        let handshake = Box::pin(tokio::time::timeout(
            self.handshake_timeout,
            self.acceptor.accept(tcp),
        ));
        let tls = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return self.handshake_failed("tls", &e),
                Err(_) => return self.handshake_failed("timeout", &"no handshake in time"),
            },
        };
        drop(handshake_permit);
        let h2 = tls.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        let ticket = Arc::new(ticket);
        if !ticket.has_slot() {
            // Told why (503 with retry-after), within the first-request deadline at most.
            let service = TowerToHyperService::new(tower::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(at_limit())
            }));
            let refusal = async {
                if h2 {
                    let conn = self.builders.h2.serve_connection(io, service);
                    let _ = conn.await;
                } else {
                    let _ = self.builders.h1.serve_connection(io, service).await;
                }
            };
            let _ = tokio::time::timeout(self.first_request, refusal).await;
            return;
        }
        self.metrics.accepted.get_or_create(&TCP).inc();
        let open = self.metrics.open_connections.get_or_create(&TCP).clone();
        open.inc();
        let service =
            TowerToHyperService::new(TicketLayer(ticket.clone()).layer(self.router.clone()));
        // The protocol ALPN chose (HTTP/1.1 when the client offered none).
        let ended = if h2 {
            let conn = self.builders.h2.serve_connection(io, service);
            Box::pin(self.run(
                conn,
                http2::Connection::graceful_shutdown,
                &ticket,
                Some(self.http2_idle),
            ))
            .await
        } else {
            let conn = self
                .builders
                .h1
                .serve_connection(io, service)
                .with_upgrades();
            Box::pin(self.run(
                conn,
                http1::UpgradeableConnection::graceful_shutdown,
                &ticket,
                None,
            ))
            .await
        };
        match ended {
            Ended::Done(Err(e)) => debug!(error = %e, "connection ended with an error"),
            Ended::Done(Ok(())) => {}
            Ended::Idle(result) => {
                debug!(?result, "HTTP/2 connection idle: closed after GOAWAY");
                self.metrics
                    .closes
                    .get_or_create(&ReasonLabel {
                        reason: "http2_idle",
                    })
                    .inc();
            }
            Ended::NoRequest => {
                debug!("no request within the first-request deadline: closed");
                self.metrics
                    .closes
                    .get_or_create(&ReasonLabel {
                        reason: "no_request",
                    })
                    .inc();
            }
        }
        open.dec();
    }

    /// Runs `conn` to its end: closed (dropped) if no complete request came within the
    /// first-request deadline; with `idle` (HTTP/2), told GOAWAY and closed once it has had
    /// no open stream for that long (a WebSocket, a streamed response or a gRPC stream keeps
    /// one open for its life); on shutdown, in-flight requests finish and new ones are
    /// refused (HTTP/2 GOAWAY) before it closes.
    async fn run<C>(
        &self,
        conn: C,
        graceful: fn(Pin<&mut C>),
        ticket: &Ticket,
        idle: Option<Duration>,
    ) -> Ended
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        tokio::pin!(conn);
        // One timer: the first-request deadline, and (HTTP/2) the idle checks.
        let first_deadline = tokio::time::Instant::now() + self.first_request;
        let timer = tokio::time::sleep(
            idle.map_or(self.first_request, |idle| idle.min(self.first_request)),
        );
        tokio::pin!(timer);
        loop {
            tokio::select! {
                result = conn.as_mut() => return Ended::Done(result),
                _ = self.shutdown.cancelled() => {
                    graceful(conn.as_mut());
                    return Ended::Done(conn.as_mut().await);
                }
                _ = timer.as_mut() => {}
            }
            if !ticket.requested() {
                if tokio::time::Instant::now() >= first_deadline {
                    return Ended::NoRequest;
                }
                timer.as_mut().reset(first_deadline);
                continue;
            }
            let now = tokio::time::Instant::now();
            let Some(idle) = idle else {
                // HTTP/1.1: its header timeout bounds the time between requests.
                tokio::select! {
                    result = conn.as_mut() => return Ended::Done(result),
                    _ = self.shutdown.cancelled() => {
                        graceful(conn.as_mut());
                        return Ended::Done(conn.as_mut().await);
                    }
                }
            };
            match ticket.idle_for() {
                Some(quiet) if quiet >= idle => {
                    graceful(conn.as_mut());
                    // GOAWAY, then the close; a peer that holds it up is cut after the
                    // first-request time.
                    let closed = tokio::time::timeout(self.first_request, conn.as_mut()).await;
                    return Ended::Idle(closed.unwrap_or(Ok(())));
                }
                Some(quiet) => timer.as_mut().reset(now + (idle - quiet)),
                None => timer.as_mut().reset(now + idle),
            }
        }
    }

    fn handshake_failed(&self, reason: &'static str, error: &dyn std::fmt::Display) {
        debug!(%error, reason, "TLS handshake failed");
        self.metrics
            .handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The answer on a connection beyond `edge.max_connections`.
fn at_limit() -> Response<Body> {
    let mut r = roam_proto::http_error::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the edge is at its connection limit",
        Some(5),
    )
    .map(Body::from);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
