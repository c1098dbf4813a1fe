//! The TLS 1.3 client listener over TCP: HTTP/1.1 and HTTP/2 on one port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

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
    /// An HTTP/1.1 request's headers must arrive within this time.
    pub header_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection (each WebSocket over HTTP/2 is one).
    pub max_streams: u32,
}

/// HTTP/1.1 and HTTP/2 with limits against slow and abusive clients: a request's headers
/// must arrive within the header timeout (slowloris), headers and buffers are bounded, and
/// HTTP/2 bounds concurrent streams and reset floods (a client that resets more streams
/// than allowed gets GOAWAY). Extended CONNECT is on for WebSockets over HTTP/2.
fn http_builder(options: &TcpOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(options.max_streams)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(64)
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
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

    /// Serves `router` (see [`crate::http::router`]) on accepted connections until
    /// `shutdown` fires, then lets open connections — and every task on `tracker`, where the
    /// router runs WebSockets, virtual connections and gRPC streams — finish for up to the
    /// drain timeout.
    pub async fn run(self, router: Router, tracker: TaskTracker, shutdown: CancellationToken) {
        let builder = http_builder(&self.options);
        let builder = Arc::new(builder);
        let (acceptor, metrics) = (self.acceptor, self.metrics);
        let handshake_timeout = self.options.handshake_timeout;
        let conn_shutdown = shutdown.clone();
        accept_loop(
            self.listener,
            "tcp",
            &shutdown,
            self.options.drain_timeout,
            tracker,
            |tcp| {
                Connection {
                    acceptor: acceptor.clone(),
                    handshake_timeout,
                    metrics: metrics.clone(),
                    router: router.clone(),
                    builder: builder.clone(),
                    shutdown: conn_shutdown.clone(),
                }
                .serve(tcp)
            },
        )
        .await;
    }
}

/// One accepted TCP connection, before and after its handshake.
struct Connection {
    acceptor: LeanTlsAcceptor,
    handshake_timeout: Duration,
    metrics: EdgeMetrics,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self, tcp: TcpStream) {
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
        self.metrics.accepted.get_or_create(&TCP).inc();
        let open = self.metrics.open_connections.get_or_create(&TCP).clone();
        open.inc();
        let service = TowerToHyperService::new(self.router);
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = self.shutdown.cancelled() => {
                // Finish in-flight requests, refuse new ones (HTTP/2 GOAWAY), then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection ended with an error");
        }
        open.dec();
    }

    fn handshake_failed(&self, reason: &'static str, error: &dyn std::fmt::Display) {
        debug!(%error, reason, "TLS handshake failed");
        self.metrics
            .handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
