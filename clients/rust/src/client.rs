//! The client: the [`Session`] state machine driven over real connections by a tokio task.
//!
//! [`Client::connect`] starts the task and returns a cloneable [`Client`] handle
//! (`send`, `read`, `join_room`, …) and an [`Events`] stream (messages, acks, connection
//! changes). The task dials the edges in order, authenticates, and on any loss reconnects
//! with backoff and resumes from the inbox cursor; SENDs survive reconnects and are answered
//! by their [`Ack`] once durable.
//!
//! Edge addresses are `quic://host:port` (frames over QUIC, ALPN `roam/1`, the raw QUIC
//! port), `raw://host:port` (TLS 1.3 frames, ALPN `roam/1`, the raw port) or
//! `wss://host:port` (WebSocket `/v1/ws` on the client port). List a QUIC edge first and its
//! TCP twin after it: where UDP is blocked the QUIC dial times out ([`QUIC_DIAL_TIMEOUT`])
//! and the schedule moves on to TCP. On a network change ([`Client::network_changed`]) a QUIC
//! connection migrates to a new socket and stays; a TCP one is replaced, and the new one
//! resumes with SYNC. The TLS server name is `localhost` (the development certificate's);
//! [`Trust`] says which certificate to accept.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
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

/// The client's configuration: the session's and the trust.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Token, device, edges, timers.
    pub session: SessionConfig,
    /// Which server certificates to accept.
    pub trust: Trust,
}

enum Command {
    Send {
        to: String,
        content: Bytes,
        reply: oneshot::Sender<Result<Ack, ClientError>>,
    },
    Read(String, u64),
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
}

/// The client's events, in order: see [`Event`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
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
        let (events, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            session: Session::new(config.session),
            tls,
            rng: StdRng::from_os_rng(),
            conn: None,
            waiting: HashMap::new(),
            events,
        };
        tokio::spawn(driver.run(commands_rx));
        Ok((Client { commands }, Events { rx }))
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

/// The TLS configurations of the two transports.
struct Tls {
    raw: Arc<rustls::ClientConfig>,
    ws: Arc<rustls::ClientConfig>,
    quic: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn new(trust: &Trust) -> Result<Tls, ClientError> {
        Ok(match trust {
            Trust::CaFile(path) => {
                let roots = roam_tls::roots_from_pem(path)?;
                Tls {
                    raw: roam_tls::client_config(roots.clone(), roam_tls::ALPN_RAW),
                    ws: roam_tls::client_config(roots.clone(), ws::ALPN_WS),
                    quic: roam_tls::quic_client_config(roots, roam_tls::ALPN_RAW),
                }
            }
            Trust::Insecure => Tls {
                raw: insecure_config(roam_tls::ALPN_RAW),
                ws: insecure_config(ws::ALPN_WS),
                quic: {
                    let mut c = (*insecure_config(roam_tls::ALPN_RAW)).clone();
                    c.enable_early_data = true;
                    Arc::new(c)
                },
            },
        })
    }
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

/// One connection of either transport.
enum Transport {
    Quic(Box<QuicRawConnection>),
    Raw(Box<RawConnection>),
    Ws(Box<WsConnection>),
}

impl Transport {
    async fn dial(edge: &str, tls: &Tls) -> Result<Transport, String> {
        let (scheme, hostport) = edge
            .split_once("://")
            .ok_or_else(|| format!("{edge}: not quic://, raw:// or wss://host:port"))?;
        let addr = resolve(hostport).await?;
        if scheme == "quic" {
            let local = match addr {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let endpoint = quic::client_endpoint_with(local, tls.quic.clone())
                .map_err(|e| format!("{edge}: {e}"))?;
            let conn = tokio::time::timeout(
                QUIC_DIAL_TIMEOUT,
                QuicRawConnection::connect_on(endpoint, addr),
            )
            .await
            .map_err(|_| format!("{edge}: no QUIC handshake within {QUIC_DIAL_TIMEOUT:?}"))?
            .map_err(|e| format!("{edge}: {e}"))?;
            return Ok(Transport::Quic(Box::new(conn)));
        }
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{edge}: {e}"))?;
        match scheme {
            "raw" => RawConnection::connect_over(tcp, tls.raw.clone())
                .await
                .map(|c| Transport::Raw(Box::new(c)))
                .map_err(|e| format!("{edge}: {e}")),
            "wss" => WsConnection::connect_over(tcp, tls.ws.clone())
                .await
                .map(|c| Transport::Ws(Box::new(c)))
                .map_err(|e| format!("{edge}: {e}")),
            other => Err(format!("{edge}: unknown scheme {other}")),
        }
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), String> {
        match self {
            Transport::Quic(c) => c.send_raw(&bytes).await.map_err(|e| e.to_string()),
            Transport::Raw(c) => c.send_raw(&bytes).await.map_err(|e| e.to_string()),
            Transport::Ws(c) => c.send_raw(bytes).await.map_err(|e| e.to_string()),
        }
    }

    /// Cancel-safe (both transports' `next` are).
    async fn next(&mut self) -> Result<Option<Frame>, String> {
        match self {
            Transport::Quic(c) => c.next().await.map_err(|e| e.to_string()),
            Transport::Raw(c) => c.next().await.map_err(|e| e.to_string()),
            Transport::Ws(c) => c.next().await.map_err(|e| e.to_string()),
        }
    }
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
    events: mpsc::UnboundedSender<Event>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.dispatch_events();
            if self.session.is_closed() {
                break;
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
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            let conn = self.conn.as_mut();
            tokio::select! {
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
            Some(Command::JoinRoom(room)) => self.session.join_room(room),
            Some(Command::LeaveRoom(room)) => self.session.leave_room(&room),
            Some(Command::SetEdges(edges)) => self.session.set_edges(edges),
            Some(Command::NetworkChanged(local)) => {
                let migrated = match &self.conn {
                    Some(Transport::Quic(c)) => c.rebind(local).is_ok(),
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
            // The application may have dropped its Events: the client keeps working.
            let _ = self.events.send(event);
        }
    }
}
