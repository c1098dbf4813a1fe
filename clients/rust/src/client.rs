//! The client: the [`Session`] state machine driven over real connections by a tokio task.
//!
//! [`Client::connect`] starts the task and returns a cloneable [`Client`] handle
//! (`send`, `read`, `join_room`, …) and an [`Events`] stream (messages, acks, connection
//! changes). The task dials the edges in order, authenticates, and on any loss reconnects
//! with backoff and resumes from the inbox cursor; SENDs survive reconnects and are answered
//! by their [`Ack`] once durable.
//!
//! Edge addresses are `quic://host:port` (frames over QUIC, ALPN `roam/1`, the raw QUIC
//! port), `raw://host:port` (TLS 1.3 frames, ALPN `roam/1`, the raw port),
//! `wss://host:port` (WebSocket `/v1/ws` on the client port), `h3://host:port` (`GET
//! /v1/stream` + `POST /v1/send` over HTTP/3, the client port's UDP twin) or
//! `h2://host:port` (the same over HTTP/2, the client port; see [`crate::http_stream`]). List a QUIC edge first and its
//! TCP twin after it: where UDP is blocked the QUIC dial times out ([`QUIC_DIAL_TIMEOUT`])
//! and the schedule moves on to TCP. On a network change ([`Client::network_changed`]) a QUIC
//! connection migrates to a new socket and stays; a TCP one is replaced, and the new one
//! resumes with SYNC. The server's certificate must be valid for the address's host (a DNS
//! name or an IP address: the development certificate holds `localhost`, `127.0.0.1` and
//! `::1`); [`Trust`] says which issuers to accept.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;
use roam_proto::Frame;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::http_stream::HttpStream;
use crate::quic::{self, QuicRawConnection};
use crate::raw::RawConnection;
use crate::session::{Ack, Event, RequestError, Session, SessionConfig};
use crate::ws::{self, WsConnection};

/// How long one dial (TCP, TLS, upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a QUIC dial may take before the next edge (e.g. TCP, when UDP is blocked).
pub const QUIC_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Which server certificates to accept.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Those issued by the CA (or self-signed certificate) in this PEM file.
    CaFile(PathBuf),
    /// Any certificate: for a development server only.
    Insecure,
}

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The CA file could not be used.
    #[error(transparent)]
    Tls(#[from] roam_tls::TlsError),
    /// The request could not be queued.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The server refused the SEND for good.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The ERROR's code name.
        code: String,
        /// The ERROR's message.
        message: String,
    },
    /// The client stopped (closed, or the server refused the token or kicked the device).
    #[error("the client is closed: {0}")]
    Closed(String),
}

/// The client's configuration: the session's, the trust, and where the edge list comes from.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Token, device, edges, timers.
    pub session: SessionConfig,
    /// Which server certificates to accept.
    pub trust: Trust,
    /// The app backend's URL (`http://` or `https://`) that answers the business API's
    /// `GET /api/v1/edges` shape ([`crate::edges`]): fetched before the first connection and
    /// again whenever a whole round of the list failed; its edges replace
    /// [`SessionConfig::edges`] (kept when a fetch fails). `None`: the configured list only.
    pub edges_url: Option<String>,
    /// How many events [`Events`] holds before the client stops reading its connection.
    pub events_capacity: usize,
}

impl ClientConfig {
    /// `session` and `trust`, without an edge list URL, [`EVENTS_CAPACITY`] events.
    pub fn new(session: SessionConfig, trust: Trust) -> Self {
        ClientConfig {
            session,
            trust,
            edges_url: None,
            events_capacity: EVENTS_CAPACITY,
        }
    }
}

/// The default [`ClientConfig::events_capacity`].
pub const EVENTS_CAPACITY: usize = 1024;

/// The events on their way to [`Events`]: what the bounded channel cannot take yet waits in
/// a backlog, and while anything does the driver reads no frame (so the backlog holds at
/// most what one frame, a timer or a command produced).
#[derive(Debug)]
struct EventQueue {
    tx: mpsc::Sender<Event>,
    backlog: std::collections::VecDeque<Event>,
}

impl EventQueue {
    fn new(tx: mpsc::Sender<Event>) -> Self {
        EventQueue {
            tx,
            backlog: std::collections::VecDeque::new(),
        }
    }

    /// Queues `event` (behind the backlog, in order).
    fn push(&mut self, event: Event) {
        self.backlog.push_back(event);
        self.flush();
    }

    /// Moves what the channel takes from the backlog into it. The application may have
    /// dropped its Events: then they are discarded and the client keeps working.
    fn flush(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.backlog.clear(),
            }
        }
    }

    /// Whether the driver may read frames: nothing waits.
    fn ready(&self) -> bool {
        self.backlog.is_empty()
    }

    /// Delivers the backlog, waiting for room (at the end: the last events, `Closed`
    /// among them, are not dropped), until the application drops [`Events`].
    async fn finish(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            if self.tx.send(event).await.is_err() {
                return;
            }
        }
    }

    /// Waits until the channel has room, then flushes.
    async fn room(&mut self) {
        if let Ok(permit) = self.tx.reserve().await
            && let Some(event) = self.backlog.pop_front()
        {
            permit.send(event);
        }
        self.flush();
    }
}

enum Command {
    Send {
        to: String,
        content: Bytes,
        reply: oneshot::Sender<Result<Ack, ClientError>>,
    },
    Read(String, u64),
    SyncConversation(String, u64),
    JoinRoom(String),
    LeaveRoom(String),
    SetEdges(Vec<String>),
    NetworkChanged(IpAddr),
    Close,
}

/// A handle on a running client; clones share it.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    cursor: Arc<AtomicU64>,
}

/// The client's events, in order: see [`Event`].
///
/// A bounded queue ([`ClientConfig::events_capacity`]): while it is full the client stops
/// reading from its connection (the server holds what follows, and its slow-consumer policy
/// applies), so an application that falls behind costs memory on the server's side, within
/// its limits, not without bound on the device's. Timers and commands go on meanwhile.
/// Read the events, or drop [`Events`] (the client then discards them): a SEND's
/// acknowledgement comes on the connection too, so [`Client::send`] waits for a reader.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// Events waiting to be read (at most [`ClientConfig::events_capacity`]).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next event; `None` once the client has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next stored message, skipping other events; `None` once the client has stopped.
    pub async fn next_message(&mut self) -> Option<roam_proto::client::v1::Message> {
        loop {
            if let Event::Message(m) = self.next().await? {
                return Some(m);
            }
        }
    }
}

impl Client {
    /// Starts the client on the current tokio runtime: it connects at once and stays
    /// connected until [`Client::close`] or every handle is dropped.
    pub fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        let tls = Tls::new(&config.trust)?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, rx) = mpsc::channel(config.events_capacity.max(1));
        let cursor = Arc::new(AtomicU64::new(config.session.cursor));
        let driver = Driver {
            edge_list: config.edges_url.map(|url| EdgeList {
                url,
                count: config.session.edges.len(),
                fetched_at: None,
                failures: 0,
                retry_at: None,
            }),
            cursor: cursor.clone(),
            session: Session::new(config.session),
            tls,
            rng: StdRng::from_os_rng(),
            conn: None,
            waiting: HashMap::new(),
            events: EventQueue::new(events),
        };
        tokio::spawn(driver.run(commands_rx));
        Ok((Client { commands, cursor }, Events { rx }))
    }

    /// Sends `content` (text/plain) to `to` (a user id or `group:<id>`) and waits for its
    /// acknowledgement: across reconnects, under one `client_msg_id`, until the server has
    /// stored it (or refused it for good).
    pub async fn send(&self, to: &str, content: impl Into<Bytes>) -> Result<Ack, ClientError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Send {
            to: to.to_owned(),
            content: content.into(),
            reply,
        };
        self.command(command)?;
        rx.await
            .map_err(|_| ClientError::Closed("the client stopped".into()))?
    }

    /// Marks the conversation with `peer` read up to `seq` (a conversation_seq); the answer
    /// comes as [`Event::ReadReply`].
    pub fn read(&self, peer: &str, seq: u64) -> Result<(), ClientError> {
        self.command(Command::Read(peer.to_owned(), seq))
    }

    /// Pulls the history of a conversation (a user id or `group:<id>`) after `after` (a
    /// conversation_seq); its messages come as [`Event::Message`], each once.
    pub fn sync_conversation(&self, conversation: &str, after: u64) -> Result<(), ClientError> {
        self.command(Command::SyncConversation(conversation.to_owned(), after))
    }

    /// The inbox cursor: every seq up to it was delivered as [`Event::Message`] (or was one of
    /// this client's own sends). Save it and pass it as [`SessionConfig::cursor`] to resume.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// Joins `room` (now and after every reconnect); the answer comes as [`Event::Rooms`].
    pub fn join_room(&self, room: &str) -> Result<(), ClientError> {
        self.command(Command::JoinRoom(room.to_owned()))
    }

    /// Leaves `room`.
    pub fn leave_room(&self, room: &str) -> Result<(), ClientError> {
        self.command(Command::LeaveRoom(room.to_owned()))
    }

    /// Replaces the edge list (e.g. after `GET /api/v1/edges`); used from the next attempt.
    pub fn set_edges(&self, edges: Vec<String>) -> Result<(), ClientError> {
        self.command(Command::SetEdges(edges))
    }

    /// The device moved to another network, whose local address is `local`: a QUIC
    /// connection migrates (a new UDP socket on `local`, the same connection); a TCP one is
    /// closed and replaced, resuming with SYNC.
    pub fn network_changed(&self, local: IpAddr) -> Result<(), ClientError> {
        self.command(Command::NetworkChanged(local))
    }

    /// Stops the client: the connection closes, [`Events`] ends with [`Event::Closed`].
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    fn command(&self, c: Command) -> Result<(), ClientError> {
        self.commands
            .send(c)
            .map_err(|_| ClientError::Closed("the client stopped".into()))
    }
}

/// The TLS configurations of the transports.
struct Tls {
    raw: Arc<rustls::ClientConfig>,
    ws: Arc<rustls::ClientConfig>,
    quic: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    h3: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn new(trust: &Trust) -> Result<Tls, ClientError> {
        Ok(match trust {
            Trust::CaFile(path) => {
                let roots = roam_tls::roots_from_pem(path)?;
                Tls {
                    raw: roam_tls::client_config(roots.clone(), roam_tls::ALPN_RAW),
                    ws: roam_tls::client_config(roots.clone(), ws::ALPN_WS),
                    quic: roam_tls::quic_client_config(roots.clone(), roam_tls::ALPN_RAW),
                    h2: roam_tls::client_config(roots.clone(), ALPN_H2),
                    h3: roam_tls::quic_client_config(roots, roam_tls::ALPN_QUIC),
                }
            }
            Trust::Insecure => Tls {
                raw: insecure_config(roam_tls::ALPN_RAW),
                ws: insecure_config(ws::ALPN_WS),
                quic: insecure_quic_config(roam_tls::ALPN_RAW),
                h2: insecure_config(ALPN_H2),
                h3: insecure_quic_config(roam_tls::ALPN_QUIC),
            },
        })
    }
}

/// The ALPN of the HTTP/2 stream transport.
const ALPN_H2: &[&[u8]] = &[b"h2"];

fn insecure_quic_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = (*insecure_config(alpn)).clone();
    c.enable_early_data = true;
    Arc::new(c)
}

fn insecure_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    roam_tls::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts any server certificate (still checking the handshake's signatures).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection of any transport.
enum Transport {
    Quic(Box<QuicRawConnection>),
    Raw(Box<RawConnection>),
    Ws(Box<WsConnection>),
    /// `GET /v1/stream` + `POST /v1/send` over HTTP/2 or HTTP/3.
    Http(Box<HttpStream>),
}

impl Transport {
    async fn dial(edge: &str, tls: &Tls) -> Result<Transport, String> {
        let (scheme, hostport) = edge.split_once("://").ok_or_else(|| {
            format!("{edge}: not quic://, raw://, wss://, h2:// or h3://host:port")
        })?;
        let addr = resolve(hostport).await?;
        let name = server_name(hostport).map_err(|e| format!("{edge}: {e}"))?;
        let local = match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        if scheme == "h3" {
            let endpoint = quic::client_endpoint_with(local, tls.h3.clone())
                .map_err(|e| format!("{edge}: {e}"))?;
            let conn = tokio::time::timeout(
                QUIC_DIAL_TIMEOUT,
                HttpStream::connect_h3(endpoint, addr, name),
            )
            .await
            .map_err(|_| format!("{edge}: no QUIC handshake within {QUIC_DIAL_TIMEOUT:?}"))?
            .map_err(|e| format!("{edge}: {e}"))?;
            return Ok(Transport::Http(Box::new(conn)));
        }
        if scheme == "quic" {
            let endpoint = quic::client_endpoint_with(local, tls.quic.clone())
                .map_err(|e| format!("{edge}: {e}"))?;
            let conn = tokio::time::timeout(
                QUIC_DIAL_TIMEOUT,
                QuicRawConnection::connect_named(endpoint, addr, &name.to_str()),
            )
            .await
            .map_err(|_| format!("{edge}: no QUIC handshake within {QUIC_DIAL_TIMEOUT:?}"))?
            .map_err(|e| format!("{edge}: {e}"))?;
            return Ok(Transport::Quic(Box::new(conn)));
        }
        // Every address the host resolves to, in turn (e.g. `localhost`: ::1, 127.0.0.1).
        let tcp = TcpStream::connect(hostport)
            .await
            .map_err(|e| format!("{edge}: {e}"))?;
        match scheme {
            "raw" => RawConnection::connect_over_named(tcp, tls.raw.clone(), name)
                .await
                .map(|c| Transport::Raw(Box::new(c)))
                .map_err(|e| format!("{edge}: {e}")),
            "wss" => WsConnection::connect_over_named(tcp, tls.ws.clone(), name)
                .await
                .map(|c| Transport::Ws(Box::new(c)))
                .map_err(|e| format!("{edge}: {e}")),
            "h2" => HttpStream::connect_h2(tcp, tls.h2.clone(), name, addr.port())
                .await
                .map(|c| Transport::Http(Box::new(c)))
                .map_err(|e| format!("{edge}: {e}")),
            other => Err(format!("{edge}: unknown scheme {other}")),
        }
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), String> {
        match self {
            Transport::Quic(c) => c.send_raw(&bytes).await.map_err(|e| e.to_string()),
            Transport::Raw(c) => c.send_raw(&bytes).await.map_err(|e| e.to_string()),
            Transport::Ws(c) => c.send_raw(bytes).await.map_err(|e| e.to_string()),
            Transport::Http(c) => c.write(bytes).await,
        }
    }

    /// Cancel-safe (both transports' `next` are).
    async fn next(&mut self) -> Result<Option<Frame>, String> {
        match self {
            Transport::Quic(c) => c.next().await.map_err(|e| e.to_string()),
            Transport::Raw(c) => c.next().await.map_err(|e| e.to_string()),
            Transport::Ws(c) => c.next().await.map_err(|e| e.to_string()),
            Transport::Http(c) => c.next().await,
        }
    }
}

/// The name the server's certificate must hold: the host of `host:port` (a DNS name, or an
/// IP address, IPv6 in brackets).
fn server_name(hostport: &str) -> Result<ServerName<'static>, String> {
    let host = match hostport.rsplit_once(':') {
        Some((host, _port)) => host,
        None => hostport,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: not a server name: {e}"))
}

/// Moves a QUIC endpoint to a new UDP socket on `local` (connection migration).
fn rebind(endpoint: &quinn::Endpoint, local: IpAddr) -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
    endpoint.rebind(socket)
}

async fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// The task that owns the session and the connection.
struct Driver {
    session: Session,
    tls: Tls,
    rng: StdRng,
    conn: Option<Transport>,
    /// SENDs whose caller waits for the ack, by client_msg_id.
    waiting: HashMap<String, oneshot::Sender<Result<Ack, ClientError>>>,
    events: EventQueue,
    /// The session's inbox cursor, for [`Client::cursor`].
    cursor: Arc<AtomicU64>,
    edge_list: Option<EdgeList>,
}

/// Where the edge list comes from, and when it was last fetched.
struct EdgeList {
    url: String,
    /// Edges in the list the session has.
    count: usize,
    /// The session's failed attempts when it was last fetched (`None`: never).
    fetched_at: Option<u32>,
    /// Failed fetches in a row.
    failures: u32,
    /// With no edge to try: when to fetch again.
    retry_at: Option<Instant>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.dispatch_events();
            if self.session.is_closed() {
                break;
            }
            if self.conn.is_none() && self.edge_list_due() {
                self.fetch_edges().await;
            }
            let now = Instant::now().into_std();
            if self.conn.is_none()
                && let Some(edge) = self.session.poll_connect(now, &mut self.rng)
            {
                match tokio::time::timeout(DIAL_TIMEOUT, Transport::dial(&edge, &self.tls)).await {
                    Ok(Ok(conn)) => {
                        self.conn = Some(conn);
                        self.session.handle_connected(Instant::now().into_std());
                    }
                    Ok(Err(_)) | Err(_) => {
                        self.session
                            .handle_connect_failed(Instant::now().into_std());
                    }
                }
                continue;
            }
            if !self.flush().await {
                continue;
            }
            let retry = self.edge_list.as_ref().and_then(|l| l.retry_at);
            let deadline = match (self.session.poll_timeout().map(Instant::from_std), retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // A full event queue: no reading until the application takes events.
            let backlog = !self.events.ready();
            let conn = self.conn.as_mut().filter(|_| !backlog);
            tokio::select! {
                () = self.events.room(), if backlog => {}
                frame = async { match conn { Some(c) => c.next().await, None => std::future::pending().await } } => {
                    let now = Instant::now().into_std();
                    match frame {
                        Ok(Some(frame)) => self.session.handle_frame(now, frame),
                        Ok(None) | Err(_) => {
                            self.conn = None;
                            self.session.handle_closed(now);
                        }
                    }
                }
                command = commands.recv() => self.command(command),
                () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.session.handle_timeout(Instant::now().into_std());
                }
            }
        }
        self.conn = None;
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(ClientError::Closed("the client stopped".into())));
        }
        self.events.finish().await;
    }

    /// Whether the edge list should be fetched now: never yet, a whole round of it failed
    /// since the last fetch, or (with no edge at all) its retry time came.
    fn edge_list_due(&mut self) -> bool {
        let attempts = self.session.failed_attempts();
        let Some(list) = self.edge_list.as_mut() else {
            return false;
        };
        let Some(at) = list.fetched_at else {
            return true;
        };
        if list.count == 0 {
            return list.retry_at.is_some_and(|t| Instant::now() >= t);
        }
        // A connection worked since (the count restarted): rounds count from there.
        let at = at.min(attempts);
        list.fetched_at = Some(at);
        attempts - at >= u32::try_from(list.count).unwrap_or(u32::MAX)
    }

    /// Fetches the edge list; a non-empty one replaces the session's.
    async fn fetch_edges(&mut self) {
        let attempts = self.session.failed_attempts();
        let Some(list) = self.edge_list.as_mut() else {
            return;
        };
        let fetched = tokio::time::timeout(
            DIAL_TIMEOUT,
            crate::edges::fetch(&list.url, self.tls.ws.clone()),
        )
        .await;
        list.fetched_at = Some(attempts);
        match fetched {
            Ok(Ok(edges)) if !edges.is_empty() => {
                list.count = edges.len();
                list.failures = 0;
                list.retry_at = None;
                self.session.set_edges(edges);
            }
            _ => {
                list.failures = list.failures.saturating_add(1);
                let delay = crate::schedule::Backoff::default().delay(list.failures);
                list.retry_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Writes what the session has to send, in one write; false if the connection failed.
    async fn flush(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        let mut out = BytesMut::new();
        while let Some(frame) = self.session.poll_transmit() {
            out.extend_from_slice(&frame);
        }
        if out.is_empty() {
            return true;
        }
        if conn.write(out.freeze()).await.is_err() {
            self.conn = None;
            self.session.handle_closed(Instant::now().into_std());
            return false;
        }
        true
    }

    fn command(&mut self, command: Option<Command>) {
        let now = Instant::now().into_std();
        match command {
            Some(Command::Send { to, content, reply }) => {
                let id = format!("{:032x}", rand::Rng::random::<u128>(&mut self.rng));
                match self.session.send(now, to, id.clone(), content, "") {
                    Ok(()) => {
                        self.waiting.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Some(Command::Read(peer, seq)) => self.session.read(peer, seq),
            Some(Command::SyncConversation(conversation, after)) => {
                self.session.sync_conversation(conversation, after)
            }
            Some(Command::JoinRoom(room)) => self.session.join_room(room),
            Some(Command::LeaveRoom(room)) => self.session.leave_room(&room),
            Some(Command::SetEdges(edges)) => self.session.set_edges(edges),
            Some(Command::NetworkChanged(local)) => {
                let migrated = match &self.conn {
                    Some(Transport::Quic(c)) => c.rebind(local).is_ok(),
                    Some(Transport::Http(c)) => {
                        c.endpoint().is_some_and(|e| rebind(e, local).is_ok())
                    }
                    _ => false,
                };
                if !migrated && self.conn.take().is_some() {
                    self.session.handle_closed(now);
                }
            }
            Some(Command::Close) | None => self.session.close(),
        }
    }

    fn dispatch_events(&mut self) {
        self.cursor.store(self.session.cursor(), Ordering::Relaxed);
        while let Some(event) = self.session.poll_event() {
            match &event {
                Event::ConnectionLost(_) => self.conn = None,
                Event::SendAck(ack) => {
                    if let Some(reply) = self.waiting.remove(&ack.client_msg_id) {
                        let _ = reply.send(Ok(ack.clone()));
                    }
                }
                Event::SendFailed {
                    client_msg_id,
                    code,
                    message,
                } => {
                    if let Some(reply) = self.waiting.remove(client_msg_id) {
                        let _ = reply.send(Err(ClientError::Refused {
                            code: code.as_str_name().to_owned(),
                            message: message.clone(),
                        }));
                    }
                }
                Event::Closed(why) => {
                    for (_, reply) in self.waiting.drain() {
                        let _ = reply.send(Err(ClientError::Closed(why.clone())));
                    }
                }
                _ => {}
            }
            self.events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn lost() -> Event {
        Event::ConnectionLost(crate::session::LostReason::Transport)
    }

    #[test]
    fn a_full_event_queue_stops_reading_and_loses_nothing() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut q = EventQueue::new(tx);
        q.push(Event::Rooms(vec!["a".into()]));
        assert!(q.ready());
        q.push(Event::Rooms(vec!["b".into()]));
        assert!(q.ready(), "the channel holds two");
        // A third (say, a frame's second message) waits, and reading stops.
        q.push(Event::Rooms(vec!["c".into()]));
        q.push(lost());
        assert!(!q.ready());
        assert_eq!(rx.len(), 2);
        // The application takes one: one moves up, the other still waits.
        assert_eq!(rx.try_recv().unwrap(), Event::Rooms(vec!["a".into()]));
        q.flush();
        assert!(!q.ready());
        assert_eq!(rx.try_recv().unwrap(), Event::Rooms(vec!["b".into()]));
        q.flush();
        assert!(q.ready(), "all moved up: reading resumes");
        assert_eq!(rx.try_recv().unwrap(), Event::Rooms(vec!["c".into()]));
        assert_eq!(rx.try_recv().unwrap(), lost());
        // An application that dropped its Events: nothing waits, nothing blocks.
        drop(rx);
        for _ in 0..5 {
            q.push(lost());
        }
        assert!(q.ready());
    }

    #[test]
    fn server_names_are_the_dialed_hosts() {
        assert_eq!(
            server_name("example.com:8444").unwrap(),
            ServerName::try_from("example.com").unwrap()
        );
        assert_eq!(
            server_name("10.0.0.1:8444").unwrap(),
            ServerName::try_from("10.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:8444").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert!(server_name("bad_name!:1").is_err());
    }
}
