//! The QUIC listeners, on the edge's own endpoint ([`roam_quic`]: one event loop over
//! quinn-proto per listener): HTTP/3 (h3, through `roam_quic::h3`) and WebTransport on the
//! client port's UDP twin (`listen.client_quic`, ALPN `h3`), and raw frames on the raw port's
//! (`listen.raw_quic`, ALPN `roam/1`, `raw.rs`).
//!
//! Nothing about a connection is QUIC-specific above this module: HTTP/3 requests are handed
//! to the same axum router as HTTP/1.1 and HTTP/2 ([`crate::http::router`]: `/v1/stream`,
//! `/v1/poll`, `/v1/send`, `/healthz` run the virtual connections of `crate::vconn`), and
//! a raw QUIC connection's first bidirectional stream is driven by the same
//! `crate::conn::drive` as a raw TLS connection (`crate::raw::RawIo` over the stream
//! pair). So sessions, rooms, pushes and their limits behave the same on every transport.
//!
//! Admission is the TCP listeners' ([`crate::admission`]), per QUIC connection: the source's
//! share, a handshake permit while the handshake runs, and an `edge.max_connections` slot for
//! the connection's life. On top: a cap on QUIC connections at once
//! ([`QuicOptions::max_connections`]), on concurrent streams per connection, and a
//! stateless Retry (the client must prove its address before the server keeps any state)
//! once more than [`QuicOptions::retry_above`] handshakes are in flight. Every refusal is
//! counted; a connection refused after its handshake is closed with a reason phrase.
//!
//! Connection migration is on (quinn-proto's default): a client whose address changes keeps its
//! connection and streams. The endpoint tells the edge as it applies the first packet from
//! the new address; the edge counts it in `roam_edge_quic_path_changes_total` and logs it. Keep-alive PINGs
//! ([`QuicOptions::keep_alive`]) keep NAT bindings open on idle connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, Version};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::Shared;
use h3::frame::FrameStream;
use h3::stream::BufRecvStream;
use http_body_util::BodyExt;
use quinn_proto::crypto::rustls::QuicServerConfig;
use quinn_proto::{TransportConfig, VarInt};
use roam_quic::h3::{H3Bidi, H3Connection, H3Recv, H3Send};
use roam_quic::{Connection, Endpoint, Incoming};
use thiserror::Error;
use tokio_util::task::TaskTracker;
use tower::{Layer, ServiceExt};
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::admission::{Ticket, TicketLayer};
use crate::conn::{FrameIo, Transport, drive};
use crate::gateway::Gateway;
use crate::metrics::{EdgeMetrics, ReasonLabel, TransportLabel};
use crate::raw::RawIo;
use crate::vconn;

mod raw;
mod read_gate;
use read_gate::ReadGate;

const H3: TransportLabel = TransportLabel { transport: "h3" };
const RAW_QUIC: TransportLabel = TransportLabel {
    transport: "raw_quic",
};

/// Application error codes of a QUIC CONNECTION_CLOSE from the edge.
const CLOSE_DONE: u32 = 0x100; // H3_NO_ERROR
const CLOSE_LIMIT: u32 = 0x107; // H3_EXCESSIVE_LOAD
const CLOSE_NO_REQUEST: u32 = 0x10c; // H3_REQUEST_CANCELLED

/// What a QUIC listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicService {
    /// HTTP/3 (ALPN `h3`): the client port's routes.
    H3,
    /// Raw frames on one bidirectional stream (ALPN `roam/1`).
    Raw,
}

/// Tunables of a QUIC listener.
#[derive(Debug, Clone)]
pub struct QuicOptions {
    /// QUIC connections at once on this listener (each also takes an `edge.max_connections`
    /// slot); beyond it new connections are refused (CONNECTION_REFUSED).
    pub max_connections: usize,
    /// Concurrent bidirectional streams a client may open per connection (HTTP/3 requests).
    pub max_streams: u32,
    /// A connection that carried nothing (not even a keep-alive) for this long is gone.
    pub idle_timeout: Duration,
    /// The edge sends a PING after this much silence, keeping NAT bindings open.
    pub keep_alive: Duration,
    /// Above this many handshakes in flight, a client must first prove its address with a
    /// stateless Retry (0: always).
    pub retry_above: usize,
    /// A handshake must complete within this time.
    pub handshake_timeout: Duration,
    /// The first request (HTTP/3) or stream (raw) must come within this time.
    pub first_request: Duration,
    /// On shutdown, how long open connections get to finish.
    pub drain_timeout: Duration,
    /// GSO (several datagrams per send) and path MTU discovery (datagrams above 1,200 B);
    /// off, every datagram is at most 1,200 B.
    pub gso_and_mtu_discovery: bool,
}

/// Why a QUIC listener could not start.
#[derive(Debug, Error)]
pub enum QuicError {
    /// The rustls configuration is not usable for QUIC (it must allow TLS 1.3).
    #[error("the TLS configuration is not usable for QUIC: {0}")]
    Tls(String),
    /// A tunable is out of QUIC's range.
    #[error("{0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// quinn-proto's server configuration for `options`.
fn server_config(
    tls: Arc<rustls::ServerConfig>,
    service: QuicService,
    options: &QuicOptions,
) -> Result<quinn_proto::ServerConfig, QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    let idle = quinn_proto::IdleTimeout::try_from(options.idle_timeout)
        .map_err(|_| QuicError::Config("quic.idle_timeout_secs is out of range".into()))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval((!options.keep_alive.is_zero()).then_some(options.keep_alive))
        // Raw frames use the client's first bidirectional stream only.
        .max_concurrent_bidi_streams(VarInt::from_u32(match service {
            QuicService::H3 => options.max_streams,
            QuicService::Raw => 1,
        }))
        // HTTP/3's control and QPACK streams and one more (a GREASE stream, which the edge
        // stops at once, or a WebTransport one); none for raw frames. quinn-proto keeps a map
        // entry for every stream a client may open: with `quic.max_streams` at 8 both maps
        // stay at 16 buckets.
        .max_concurrent_uni_streams(VarInt::from_u32(match service {
            QuicService::H3 => 4,
            QuicService::Raw => 0,
        }))
        // The edge reads no QUIC datagrams: none for raw frames; over HTTP/3 they are
        // offered (WebTransport clients want the H3_DATAGRAM setting backed by QUIC
        // datagrams) with a small buffer, since whatever a client sends there is held,
        // unread, until it ages out (quinn-proto's default is 1.25 MB a connection).
        .datagram_receive_buffer_size(match service {
            QuicService::H3 => Some(4 * 1024),
            QuicService::Raw => None,
        })
        .datagram_send_buffer_size(4 * 1024)
        // Small windows: frames are small, and an idle connection should hold little.
        .stream_receive_window(VarInt::from_u32(256 * 1024))
        .receive_window(VarInt::from_u32(1024 * 1024))
        .send_window(1024 * 1024)
        .enable_segmentation_offload(options.gso_and_mtu_discovery);
    if !options.gso_and_mtu_discovery {
        transport.mtu_discovery_config(None);
    }
    config.transport_config(Arc::new(transport));
    // Connection migration is quinn-proto's default; said here because the edge depends on it.
    config.migration(true);
    Ok(config)
}

/// A bound QUIC listener, ready to [`run`](QuicServer::run).
pub struct QuicServer {
    endpoint: Endpoint,
    service: QuicService,
    options: QuicOptions,
    metrics: EdgeMetrics,
}

impl QuicServer {
    /// Binds UDP `addr`. `tls` must be a TLS 1.3 configuration offering the ALPN of
    /// `service` (`roam_tls::quic_server_config(.., ALPN_QUIC | ALPN_RAW)`).
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        service: QuicService,
        options: QuicOptions,
        metrics: EdgeMetrics,
    ) -> Result<Self, QuicError> {
        let config = server_config(tls, service, &options)?;
        let endpoint = Endpoint::server(config, addr).map_err(|e| match e {
            roam_quic::EndpointError::Bind(e) => QuicError::Io(e),
            other => QuicError::Config(other.to_string()),
        })?;
        let label = match service {
            QuicService::H3 => H3,
            QuicService::Raw => RAW_QUIC,
        };
        watch_migrations(&endpoint, &label, &metrics);
        Ok(QuicServer {
            endpoint,
            service,
            options,
            metrics,
        })
    }

    /// The bound address (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.endpoint.local_addr())
    }

    /// Serves until the gateway shuts down, then lets open connections finish for up to the
    /// drain timeout. HTTP/3 serves `router` (see [`crate::http::router`]), whose
    /// long-lived work runs on `tracker`.
    pub async fn run(self, gateway: Arc<Gateway>, router: Router, tracker: TaskTracker) {
        let shutdown = gateway.shutdown.clone();
        let listener = Arc::new(Listener {
            service: self.service,
            options: self.options,
            metrics: self.metrics,
            router,
            gateway,
            open: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            tracker: tracker.clone(),
        });
        let transport = match listener.service {
            QuicService::H3 => "h3",
            QuicService::Raw => "raw_quic",
        };
        let conns = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let Some(peer) = incoming.remote_address() else {
                continue;
            };
            if let Some(incoming) = listener.screen(incoming) {
                let span = debug_span!("conn", %peer, transport);
                // One task per connection, holding everything it serves in place (no boxed
                // futures beside it): its size is what an idle connection costs the edge.
                // `Incoming` is boxed, so that it does not stay in the task once accepted.
                let incoming = Box::new(incoming);
                match listener.service {
                    QuicService::H3 => conns.spawn(
                        listener
                            .clone()
                            .serve(incoming, peer, Listener::serve_h3)
                            .instrument(span),
                    ),
                    QuicService::Raw => conns.spawn(
                        listener
                            .clone()
                            .serve(incoming, peer, Listener::serve_raw)
                            .instrument(span),
                    ),
                };
            }
        }
        QuicServer::drain(&listener, conns, tracker, transport).await;
        self.endpoint
            .close(VarInt::from_u32(CLOSE_DONE), b"the edge is shutting down");
        // Lets the CONNECTION_CLOSE frames go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Lets open connections finish, for up to the drain timeout.
    async fn drain(listener: &Listener, conns: TaskTracker, tracker: TaskTracker, transport: &str) {
        conns.close();
        tracker.close();
        let drained = async {
            conns.wait().await;
            tracker.wait().await;
        };
        if tokio::time::timeout(listener.options.drain_timeout, drained)
            .await
            .is_err()
        {
            warn!(
                open = conns.len(),
                transport, "drain timeout: closing the remaining QUIC connections"
            );
        }
    }
}

/// What every connection of a QUIC listener shares.
struct Listener {
    service: QuicService,
    options: QuicOptions,
    metrics: EdgeMetrics,
    router: Router,
    gateway: Arc<Gateway>,
    /// QUIC connections open (handshaking included) on this listener.
    open: AtomicUsize,
    /// Handshakes under way on this listener.
    handshaking: AtomicUsize,
    tracker: TaskTracker,
}

/// Counts one open connection in a gauge for as long as it lives.
struct OpenGauge(prometheus_client::metrics::gauge::Gauge);

impl OpenGauge {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts one unit in `counter` for as long as it lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Held(counter)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Listener {
    /// The checks before any state is kept for a connection attempt: the listener's cap, and
    /// a stateless Retry when handshakes pile up. `None`: answered already.
    fn screen(&self, incoming: Incoming) -> Option<Incoming> {
        if self.open.load(Ordering::Relaxed) >= self.options.max_connections {
            self.metrics.refusals.count("quic_connections");
            incoming.refuse();
            return None;
        }
        if self.handshaking.load(Ordering::Relaxed) >= self.options.retry_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            self.metrics.quic_retries.inc();
            incoming.retry();
            return None;
        }
        Some(incoming)
    }

    /// Admits, accepts and serves one HTTP/3 connection: `serving` is the service's part,
    /// run once the connection has its slot, alongside the handshake.
    async fn serve<F, Fut>(self: Arc<Self>, incoming: Box<Incoming>, peer: SocketAddr, serving: F)
    where
        F: FnOnce(Arc<Self>, Connection, Ticket, Established) -> Fut,
        Fut: Future<Output = ()>,
    {
        let _open = Held::new(&self.open);
        let Some((incoming, ticket, handshake)) = self.admit(*incoming, peer) else {
            return;
        };
        let conn = match incoming.accept() {
            Ok(conn) => conn,
            Err(e) => return self.handshake_failed("tls", &e),
        };
        // The connection is served at once, 0-RTT requests from a resuming client included;
        // `established` resolves when the handshake has completed. What may not be replayed
        // waits for it (see `respond`, `serve_raw`).
        let up = conn.clone();
        let established: Established = async move { up.established().await }.boxed().shared();
        if !ticket.has_slot() {
            // Boxed: the refusal's HTTP/3 state would otherwise take room in every
            // connection's task for its whole life.
            return Box::pin(self.refuse(conn, established, handshake)).await;
        }
        let label = match self.service {
            QuicService::H3 => H3,
            QuicService::Raw => RAW_QUIC,
        };
        let serving = serving(self.clone(), conn.clone(), ticket, established.clone());
        let handshake = self.watch_handshake(&conn, established, handshake, &label);
        tokio::select! {
            _ = serving => {}
            _ = handshake => {}
        }
    }

    /// Admission for an attempt from `peer` (see [Admission](crate::admission)): the
    /// source's share and a slot, and a handshake permit, counted as handshaking until the
    /// returned hold is dropped. `None`: refused (the client was told).
    fn admit(
        &self,
        incoming: Incoming,
        peer: SocketAddr,
    ) -> Option<(
        Incoming,
        Ticket,
        (crate::admission::HandshakePermit, Held<'_>),
    )> {
        let admission = &self.gateway.admission;
        let Ok(ticket) = admission.admit(peer.ip()) else {
            incoming.refuse();
            return None;
        };
        let Some(permit) = admission.handshake(peer.ip()) else {
            incoming.refuse();
            return None;
        };
        Some((incoming, ticket, (permit, Held::new(&self.handshaking))))
    }

    /// Runs alongside a connection's service and never resolves: the handshake's hold
    /// (its permit and count) is released once the handshake is over; a completed one is
    /// counted as accepted and open for as long as the connection is served, a failed one
    /// as a failure (closed when it timed out).
    async fn watch_handshake<H>(
        &self,
        conn: &Connection,
        established: Established,
        hold: H,
        label: &TransportLabel,
    ) {
        let done = tokio::time::timeout(self.options.handshake_timeout, established).await;
        drop(hold);
        match done {
            Ok(true) => {
                self.metrics.accepted.get_or_create(label).inc();
                let open = self.metrics.open_connections.get_or_create(label).clone();
                // Counted while the connection is served (this future lives as long).
                let _open = OpenGauge::new(open);
                std::future::pending::<()>().await;
            }
            Ok(false) => {
                let reason = conn.close_reason().map(|e| e.to_string());
                self.handshake_failed("tls", &reason.unwrap_or_default());
            }
            Err(_) => {
                self.handshake_failed("timeout", &"no handshake in time");
                conn.close(VarInt::from_u32(CLOSE_LIMIT), b"no handshake in time");
            }
        }
        std::future::pending::<()>().await;
    }

    /// An HTTP/3 connection that got no `edge.max_connections` slot is told why: a 503 with
    /// the JSON error (once the handshake is done, within the first-request deadline), then
    /// the reason phrase. `handshake` is released when the handshake is over. (Raw frames
    /// get the reason phrase only: see `own.rs`.)
    async fn refuse<H>(&self, conn: Connection, established: Established, handshake: H) {
        if self.service == QuicService::H3 {
            let done = tokio::time::timeout(self.options.handshake_timeout, established).await;
            drop(handshake);
            if matches!(done, Ok(true)) {
                let refusal = refuse_h3(conn.clone());
                let _ = tokio::time::timeout(self.options.first_request, refusal).await;
            }
        }
        conn.close(
            VarInt::from_u32(CLOSE_LIMIT),
            b"the edge is at its connection limit; retry in 5 s",
        );
    }

    fn handshake_failed(&self, reason: &'static str, error: &dyn std::fmt::Display) {
        debug!(%error, reason, "QUIC handshake failed");
        self.metrics
            .handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn no_request(&self, conn: &Connection) {
        debug!("no request within the first-request deadline: closed");
        self.metrics
            .closes
            .get_or_create(&ReasonLabel {
                reason: "no_request",
            })
            .inc();
        conn.close(
            VarInt::from_u32(CLOSE_NO_REQUEST),
            b"no request within the first-request deadline",
        );
    }

    /// HTTP/3: every request goes to the router, as from HTTP/1.1 or HTTP/2.
    async fn serve_h3(self: Arc<Self>, conn: Connection, ticket: Ticket, established: Established) {
        // Boxed, with its builder: the set-up's state is dropped once it is done, not kept in
        // the connection's task.
        let h3 = H3Connection::new(conn.clone());
        let built = Box::pin(async move {
            let mut builder = h3::server::builder();
            builder
                .max_field_section_size(32 * 1024)
                // No GREASE frames: aioquic's WebTransport client takes one on the session's
                // CONNECT stream for a protocol error.
                .send_grease(false)
                // WebTransport at CONNECT /v1/wt (one session per connection).
                .enable_webtransport(true)
                .enable_extended_connect(true)
                .enable_datagram(true)
                .max_webtransport_sessions(1);
            builder.build::<_, Bytes>(h3).await
        });
        let mut h3conn = match tokio::time::timeout(self.options.handshake_timeout, built).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(error = %e, "HTTP/3 set-up failed");
                return;
            }
            Err(_) => return,
        };
        let ticket = Arc::new(ticket);
        let service = TicketLayer(ticket.clone()).layer(self.router.clone());
        // The first-request deadline, boxed and dropped once a request came: a timer takes
        // 112 B, which would sit in the task for the connection's life.
        let mut first = Some(Box::pin(tokio::time::sleep(self.options.first_request)));
        // Each request's head is read in a task of its own (bounded by `first_request`, and
        // in number by the connection's stream limit), so that a slow one holds up no other.
        // A task hands back only a WebTransport CONNECT, which takes the connection over.
        let mut heads: Heads = tokio::task::JoinSet::new();
        // What ends the loop, done after it: nothing is awaited in `select!`'s arms, whose
        // output would otherwise take room in the task for the connection's life.
        let mut goaway = false;
        let mut session = None;
        loop {
            if ticket.requested() {
                first = None;
            }
            // Polled, not `accept()`: its future (≈ 900 B, GOAWAY's included) would sit in
            // every idle connection's task.
            let accepted = std::future::poll_fn(|cx| h3conn.poll_accept_request_stream(cx));
            let resolver = tokio::select! {
                r = accepted => match r {
                    Ok(Some(stream)) => {
                        h3conn.create_resolver(FrameStream::new(BufRecvStream::new(stream)))
                    }
                    Ok(None) => {
                        // The client's GOAWAY, and its requests are done: ours in reply.
                        goaway = true;
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "HTTP/3 connection ended");
                        break;
                    }
                },
                Some(done) = heads.join_next(), if !heads.is_empty() => {
                    let Ok(Some(opening)) = done else { continue };
                    session = Some(opening);
                    break;
                }
                () = deadline(&mut first), if !ticket.requested() => {
                    self.no_request(&conn);
                    return;
                }
                _ = self.gateway.shutdown.cancelled() => {
                    // GOAWAY: requests under way finish (their streams end with the drain).
                    goaway = true;
                    break;
                }
            };
            let listener = self.clone();
            let (service, conn) = (service.clone(), conn.clone());
            let established = established.clone();
            let deadline = self.options.first_request;
            let ticket = ticket.clone();
            heads.spawn(
                async move {
                    let (request, stream) =
                        match tokio::time::timeout(deadline, resolver.resolve_request()).await {
                            Ok(Ok(pair)) => pair,
                            Ok(Err(e)) => {
                                debug!(error = %e, "bad HTTP/3 request");
                                return None;
                            }
                            Err(_) => {
                                debug!("no HTTP/3 request head within the first-request deadline");
                                return None;
                            }
                        };
                    // The connection has its request, before this task ends: the loop sees
                    // the task end and then re-arms the first-request deadline only if no
                    // request came. (Left to the request's own task, the mark could come after
                    // that, and an HTTP/3 connection holding just one long `GET /v1/stream`
                    // was closed as requestless once the deadline passed.)
                    ticket.mark_requested();
                    if is_webtransport(&request) {
                        return Some(Box::new((request, stream)));
                    }
                    let task =
                        listener.request_task(request, stream, &service, &conn, &established);
                    listener.spawn_request(task);
                    None
                }
                .instrument(tracing::Span::current()),
            );
        }
        if let Some(opening) = session {
            let (request, stream) = *opening;
            let wt = WebTransport {
                service,
                conn,
                established,
            };
            // Boxed, with all it holds: a connection carries a session rarely, and what it
            // holds would otherwise take room in every connection's task.
            return Box::pin(self.serve_webtransport(h3conn, heads, request, stream, wt)).await;
        }
        if goaway {
            let _ = Box::pin(h3conn.shutdown(0)).await;
        }
        // Heads still being read belong to a connection that is going: dropped.
        heads.abort_all();
        // Requests still streaming (a /v1/stream) hold the connection open through their
        // clones of it; this task's part is done.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            // Lets the last responses flush when the client is finished.
            conn.closed().await
        })
        .await;
    }
}

/// What a WebTransport session's requests and streams share.
struct WebTransport<S> {
    service: S,
    conn: Connection,
    established: Established,
}

/// Resolves when `first` (a deadline) passes; never once it is gone.
async fn deadline(first: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match first {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Whether `request` opens a WebTransport session at `/v1/wt` (extended CONNECT with
/// `:protocol webtransport`).
fn is_webtransport(request: &Request<()>) -> bool {
    request.method() == Method::CONNECT
        && request.uri().path() == "/v1/wt"
        && request.extensions().get::<h3::ext::Protocol>()
            == Some(&h3::ext::Protocol::WEB_TRANSPORT)
}

impl Listener {
    /// Runs a request's task ([`Listener::request_task`]) as a task of its own.
    fn spawn_request(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker
            .spawn(task.instrument(tracing::Span::current()));
    }

    /// One HTTP/3 request's task (see [`Listener::spawn_request`]).
    fn request_task<S>(
        &self,
        request: Request<()>,
        stream: H3Stream<H3Bidi<Bytes>>,
        service: &S,
        conn: &Connection,
        established: &Established,
    ) -> impl Future<Output = ()> + Send + use<S>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let conn = conn.clone();
        let established = established.clone();
        let early = bodiless(request.method());
        // The request up to its response head, boxed: done once the head is sent, it would
        // otherwise take room in the task for as long as the response streams (an idle
        // `/v1/stream` for the connection's life).
        let write_timeout = self.gateway.config.write_timeout;
        let head = Box::pin(respond_head(
            service.clone(),
            request,
            stream,
            write_timeout,
        ));
        async move {
            // Replay-safe: only the idempotent openings and reads (GET: /v1/stream, /v1/poll,
            // /healthz) may be served from 0-RTT data; anything else (POST /v1/send) waits for
            // the handshake to complete.
            if !replay_safe(early, established).await {
                return;
            }
            // The body streamed until it ends, the client stops reading, or the connection
            // closes; or a direct stream's connection run. In place (a function of its own
            // kept a second copy of what it was handed, in a task that lives as long).
            match head.await {
                // Boxed: short-lived, and a direct stream (what idle connections hold) is
                // smaller.
                Some(Responding::Body(response)) => Box::pin(stream_body(*response, &conn)).await,
                Some(Responding::Direct(down, direct, request)) => {
                    run_direct(down, direct, request, &conn, write_timeout).await;
                }
                None => {}
            }
        }
    }

    /// A WebTransport session (`CONNECT /v1/wt`): its first bidirectional stream carries frames
    /// as on the raw port, driven by the same driver; other requests on the connection are
    /// still served; further streams are refused.
    async fn serve_webtransport<S>(
        &self,
        h3conn: h3::server::Connection<H3Connection, Bytes>,
        mut heads: Heads,
        request: Request<()>,
        stream: H3Stream<H3Bidi<Bytes>>,
        wt: WebTransport<S>,
    ) where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        use h3_webtransport::server::{AcceptedBi, WebTransportSession};
        // CONNECT is not idempotent: it waits for the handshake (no 0-RTT).
        if !wt.established.clone().await {
            return;
        }
        // Requests whose heads are still being read are served on their own.
        heads.detach_all();
        let session = match WebTransportSession::accept(request, stream, h3conn).await {
            Ok(session) => session,
            Err(e) => {
                debug!(error = %e, "WebTransport session refused");
                return;
            }
        };
        let mut driving = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = session.accept_bi() => accepted,
                _ = self.gateway.shutdown.cancelled() => break,
            };
            match accepted {
                Ok(Some(AcceptedBi::BidiStream(_, stream))) if driving.is_empty() => {
                    let io = QuicRawIo {
                        inner: RawIo::new(ReadGate::new(stream)),
                        prefix: None,
                        gate: None,
                    };
                    let transport = Transport {
                        name: "raw",
                        http: "3",
                    };
                    driving.spawn(drive(self.gateway.clone(), io, transport));
                }
                // One frame stream per session.
                Ok(Some(AcceptedBi::BidiStream(_, stream))) => drop(stream),
                Ok(Some(AcceptedBi::Request(request, stream))) => {
                    let task =
                        self.request_task(request, stream, &wt.service, &wt.conn, &wt.established);
                    self.spawn_request(task);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "WebTransport session ended");
                    break;
                }
            }
        }
        // The frame stream drains (DISCONNECT on shutdown) before the session goes.
        while driving.join_next().await.is_some() {}
    }
}

type H3Stream<S> = h3::server::RequestStream<S, Bytes>;

/// The tasks reading an HTTP/3 connection's request heads; one hands back a WebTransport
/// CONNECT (its request and stream).
/// Tasks reading request heads; one hands back a WebTransport CONNECT (boxed: the task's
/// output is room in the connection's task for its life).
type Heads = tokio::task::JoinSet<Option<Box<(Request<()>, H3Stream<H3Bidi<Bytes>>)>>>;

/// Replay safety for a request that may have come in 0-RTT data: true at once if `early`
/// (the idempotent GET and HEAD, which are also the [`bodiless`] ones); otherwise it waits
/// for the handshake to complete (false if it failed).
async fn replay_safe(early: bool, established: Established) -> bool {
    early || established.await
}

/// Whether requests of `method` carry no body the edge reads (GET, HEAD).
fn bodiless(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// The receiving half of a request stream whose body is not read: when the response is
/// done, the client is asked to stop sending with H3_NO_ERROR (RFC 9114 §4.1.1: the
/// response is complete; quinn's own STOP_SENDING on drop would say code 0). A client that
/// finished its request already is told nothing.
struct StopOnDrop(H3Stream<H3Recv>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_sending(h3::error::Code::H3_NO_ERROR);
    }
}

/// What a long response reads and drops of a bodiless request's stream, at most.
const DRAIN_AT_MOST: usize = 16 * 1024;

/// Waits for the connection to close. Meanwhile reads what the client still sends on the
/// bodiless `request` (its end, and a GREASE frame before it: h3 clients send one on their
/// first request) and drops it, then the stream; the client is asked to stop beyond
/// [`DRAIN_AT_MOST`]. Left unread, a frame of a few bytes keeps the whole datagram it came
/// in, and the stream's receive state, for as long as the response runs (≈ 1 KB on every
/// idle `/v1/stream` connection). Polled by hand: small, in a task that lives as long.
async fn closed_draining(conn: &Connection, mut request: Option<Box<StopOnDrop>>) {
    let mut left = DRAIN_AT_MOST;
    let drain = std::future::poll_fn(move |cx| {
        while let Some(r) = &mut request {
            match ready!(r.0.poll_recv_data(cx)) {
                Ok(Some(data)) if data.remaining() <= left => left -= data.remaining(),
                // Its end, an error, or more than is taken: done with.
                _ => request = None,
            }
        }
        Poll::<()>::Pending
    });
    tokio::select! {
        _ = conn.closed() => {}
        () = drain => {}
    }
}

/// Answers the first HTTP/3 request of a connection that got no `edge.max_connections` slot
/// with 503 and the JSON error (`retry-after: 5`), as the TCP port does; then GOAWAY.
async fn refuse_h3(conn: Connection) {
    let mut builder = h3::server::builder();
    builder.send_grease(false);
    let built = builder.build::<_, Bytes>(H3Connection::new(conn));
    let Ok(mut h3conn) = built.await else { return };
    let Ok(Some(resolver)) = h3conn.accept().await else {
        return;
    };
    let Ok((_, mut stream)) = resolver.resolve_request().await else {
        return;
    };
    let (head, body) = roam_proto::http_error::error_response(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the edge is at its connection limit",
        Some(5),
    )
    .into_parts();
    if stream
        .send_response(Response::from_parts(head, ()))
        .await
        .is_ok()
        && stream.send_data(Bytes::from(body)).await.is_ok()
    {
        let _ = stream.finish().await;
    }
    let _ = h3conn.shutdown(0).await;
    // Lets the answer reach the client before the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(2), h3conn.accept()).await;
}

/// A response under way, its head sent (see [`respond_head`]).
enum Responding {
    /// A body to stream (boxed, as the stream below: the task holding this is sized for the
    /// largest variant, and an idle connection's is a direct stream).
    Body(Box<BodyResponse>),
    /// A `/v1/stream` connection, which writes its frames to the stream itself, and the
    /// request's receiving half (drained while it runs).
    Direct(Box<H3Down>, vconn::Direct, Option<Box<StopOnDrop>>),
}

/// A response body's sending half, the body, and the request's receiving half when held
/// until the response ends.
struct BodyResponse {
    send: H3Stream<H3Send<Bytes>>,
    body: Body,
    _request: Option<StopOnDrop>,
}

/// Serves one HTTP/3 request through the router and sends the response head (within
/// `write_timeout`); the body is streamed by its task ([`Listener::request_task`]). `None`: the response ended
/// here.
async fn respond_head<S>(
    service: S,
    request: Request<()>,
    stream: H3Stream<H3Bidi<Bytes>>,
    write_timeout: Duration,
) -> Option<Responding>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (mut send, recv) = stream.split();
    // A GET or HEAD carries no body: the router gets an empty one, and the request stream's
    // receiving half is held here until the response ends. Handing it to the router would
    // drop it unread as soon as the handler returns, and quinn then sends STOP_SENDING (code
    // 0): a client that had not finished its request yet (a 0-RTT opening, answered at
    // once) saw "Remote reset: 0x0" when it did.
    let (body, request_stream) = if bodiless(request.method()) {
        (Body::empty(), Some(StopOnDrop(recv)))
    } else {
        let body = Body::from_stream(futures_util::stream::unfold(Some(recv), |recv| async {
            let mut recv = recv?;
            match recv.recv_data().await {
                Ok(Some(mut data)) => Some((Ok(data.copy_to_bytes(data.remaining())), Some(recv))),
                Ok(None) => None,
                Err(e) => Some((Err(io::Error::other(e.to_string())), None)),
            }
        }));
        (body, None)
    };
    let (mut parts, ()) = request.into_parts();
    parts.version = Version::HTTP_3;
    // A `/v1/stream` connection is handed back to be run here (see `vconn::direct`).
    parts.extensions.insert(vconn::WritesDirect);
    let request = Request::from_parts(parts, body);
    let Ok(response) = service.oneshot(request).await;
    let (mut parts, body) = response.into_parts();
    let direct = parts
        .extensions
        .remove::<vconn::DirectOpening>()
        .and_then(|d| d.take());
    let head = Response::from_parts(parts, ());
    // Bounded: a client that gives the stream no flow-control credit cannot hold the task
    // (nor, for a direct stream, its connection's) at the head.
    match tokio::time::timeout(write_timeout, send.send_response(head)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "HTTP/3 response not sent");
            return None;
        }
        Err(_) => {
            debug!("HTTP/3 response head not sent within the write timeout");
            return None;
        }
    }
    Some(match direct {
        Some(direct) => Responding::Direct(
            Box::new(H3Down { send }),
            direct,
            request_stream.map(Box::new),
        ),
        None => Responding::Body(Box::new(BodyResponse {
            send,
            body,
            _request: request_stream,
        })),
    })
}

async fn stream_body(response: BodyResponse, conn: &Connection) {
    let BodyResponse {
        mut send,
        mut body,
        _request,
    } = response;
    // Made once: each `closed()` takes the connection's lock and registers a waiter.
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The client went away with the response still open.
            _ = &mut closed => return,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                    && let Err(e) = send.send_data(data).await
                {
                    debug!(error = %e, "HTTP/3 response body cut");
                    return;
                }
            }
            Some(Err(e)) => {
                debug!(error = %e, "response body failed");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
            None => break,
        }
    }
    let _ = send.finish().await;
}

/// A direct `/v1/stream` connection: sends what it wrote before its head was sent
/// (AUTH_REPLY first) within `write_timeout`, attaches the stream, and runs the
/// connection's task here to its end (telling it when the QUIC connection closes),
/// draining the request's receiving half meanwhile.
async fn run_direct(
    mut down: Box<H3Down>,
    direct: vconn::Direct,
    request: Option<Box<StopOnDrop>>,
    conn: &Connection,
    write_timeout: Duration,
) {
    let pending = direct.take_pending();
    // Boxed: done once, and not kept in the task for the connection's life.
    let sent = Box::pin(tokio::time::timeout(write_timeout, async {
        for chunk in pending {
            down.send.send_data(chunk).await?;
        }
        Ok::<_, h3::error::StreamError>(())
    }))
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        // Dropping `direct` tells its task the client is gone.
        debug!("HTTP/3 stream opening not sent");
        return;
    }
    direct.attach(down);
    direct.run(closed_draining(conn, request)).await;
}

/// An HTTP/3 response stream, written by a direct stream connection's task.
struct H3Down {
    send: H3Stream<H3Send<Bytes>>,
}

impl vconn::DirectStream for H3Down {
    fn send(&mut self, chunk: Bytes) -> futures_util::future::BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.send.send_data(chunk).await.map_err(io::Error::other) })
    }

    fn finish(&mut self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.send.finish().await;
        })
    }
}

/// Has the endpoint count and log every connection a client moves to a new address (QUIC
/// connection migration), as soon as the first packet from there arrives: nothing is
/// checked per push, nor kept per connection.
fn watch_migrations(endpoint: &Endpoint, label: &TransportLabel, metrics: &EdgeMetrics) {
    let changes = metrics.quic_path_changes.get_or_create(label).clone();
    let transport = label.transport;
    endpoint.on_migration(move |conn, from, to| {
        info!(conn, %from, %to, transport, "QUIC path changed (connection migrated)");
        changes.inc();
    });
}

/// Resolves (true) once the connection's handshake has completed; false if it failed.
type Established = Shared<futures_util::future::BoxFuture<'static, bool>>;

/// Reads one whole frame (its length is the header's first 4 bytes, big-endian) from a
/// stream, refusing one longer than `max`.
async fn first_frame<R>(recv: &mut R, max: usize) -> io::Result<Bytes>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let total = u32::from_be_bytes(len) as usize;
    if !(roam_proto::HEADER_LEN..=max).contains(&total) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad first frame length",
        ));
    }
    let mut frame = BytesMut::zeroed(total);
    frame[..4].copy_from_slice(&len);
    recv.read_exact(&mut frame[4..]).await?;
    Ok(frame.freeze())
}

/// Raw frames over a QUIC stream pair. A stream opened in
/// 0-RTT hands its first frame (`prefix`) to the driver at once and reads on only after the
/// handshake has completed (`gate`).
struct QuicRawIo<S> {
    inner: RawIo<S>,
    prefix: Option<Bytes>,
    gate: Option<Established>,
}

impl<S> FrameIo for QuicRawIo<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if let Some(first) = self.prefix.take() {
            buf.extend_from_slice(&first);
            return Ok(first.len());
        }
        if let Some(gate) = &self.gate {
            // Cancel-safe: the gate is dropped only once it has resolved.
            if !gate.clone().await {
                return Ok(0);
            }
            self.gate = None;
        }
        self.inner.read(buf).await
    }

    async fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        self.inner.write_batch(frames).await
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::TicketService;

    /// An `Established` the test resolves by hand.
    fn handshake() -> (tokio::sync::oneshot::Sender<bool>, Established) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let established = async move { rx.await.unwrap_or(false) }.boxed().shared();
        (tx, established)
    }

    #[test]
    fn only_idempotent_requests_are_served_before_the_handshake_completes() {
        let (done, established) = handshake();
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(
                replay_safe(bodiless(&method), established.clone()).now_or_never(),
                Some(true),
                "{method}"
            );
        }
        // POST /v1/send (0-RTT data could be replayed) waits ...
        let mut post = Box::pin(replay_safe(bodiless(&Method::POST), established.clone()));
        assert_eq!(post.as_mut().now_or_never(), None);
        // ... until the handshake has completed.
        done.send(true).unwrap();
        assert_eq!(post.now_or_never(), Some(true));

        // A failed handshake: the request is dropped.
        let (done, established) = handshake();
        done.send(false).unwrap();
        assert_eq!(
            replay_safe(bodiless(&Method::POST), established).now_or_never(),
            Some(false)
        );
    }

    /// The size of the future an `FnOnce(A, B) -> F` returns, without calling it.
    fn future_size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle QUIC connection costs the edge is mostly its tasks: the futures are
    /// pinned here (sizes when this was written, rust 1.95: raw 1,728 B; HTTP/3 1,512 B, and
    /// a request's 552 B, which a `/v1/stream` holds for the connection's life). A tokio
    /// task adds its header and trailer (≈ 120 B, the whole rounded up to 128), and the
    /// allocator rounds that up to its size class (768, 896, 1,024, 1,792, 2,048 …): a few
    /// bytes more can cost 128 to 512 (a request's task is 680 B of the 768 class).
    /// Before: HTTP/3 1,640 B with the first-request timer in place, 2,504 B with h3's
    /// sending buffers in place, 4,160 B with h3's `accept()` future, awaits in the accept
    /// loop's `select!` arms and a path watch by value (migrations are the endpoint's now);
    /// a request's 768 B with a function of its own for the body.
    #[test]
    fn the_connection_futures_stay_small() {
        let raw = future_size(|l: Arc<Listener>, (i, p)| l.serve(i, p, Listener::serve_raw));
        assert!(
            raw <= 1728,
            "a raw QUIC connection's task grew to {raw} bytes"
        );
        let h3 = future_size(|l: Arc<Listener>, (i, p)| l.serve(i, p, Listener::serve_h3));
        assert!(h3 <= 1512, "an HTTP/3 connection's task grew to {h3} bytes");
        let request = future_size(
            |l: Arc<Listener>, (r, st, sv, c, e): (_, _, TicketService<Router>, _, _)| {
                l.request_task(r, st, &sv, &c, &e)
            },
        );
        assert!(
            request <= 552,
            "an HTTP/3 request's task grew to {request} bytes"
        );
    }
}
