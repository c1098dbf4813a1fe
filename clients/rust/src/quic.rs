//! The QUIC transports, client side: raw frames over QUIC (ALPN `roam/1`, one bidirectional
//! stream, the SDK's preferred transport for native apps) and `GET /v1/stream` over HTTP/3.
//!
//! Both run on their own quinn [`quinn::Endpoint`] so that [`QuicRawConnection::rebind`] and
//! [`H3Stream::rebind`] can move the connection to another local address mid-flow (what a
//! phone does when it switches from Wi-Fi to cellular): QUIC connection migration keeps the
//! connection and its streams. No protocol state lives here.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use roam_proto::{Frame, FrameDecoder, FrameError, Op, encode_msg};
use thiserror::Error;

/// Why a QUIC connection failed.
#[derive(Debug, Error)]
pub enum QuicError {
    /// Socket I/O failed.
    #[error("QUIC: {0}")]
    Io(#[from] io::Error),
    /// The CA file could not be used.
    #[error(transparent)]
    Tls(#[from] roam_tls::TlsError),
    /// The TLS configuration is not usable for QUIC.
    #[error("QUIC TLS configuration: {0}")]
    Config(String),
    /// Connecting failed.
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to the stream failed.
    #[error("QUIC write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from the stream failed.
    #[error("QUIC read: {0}")]
    Read(#[from] quinn::ReadError),
    /// HTTP/3 failed.
    #[error("HTTP/3: {0}")]
    H3(String),
    /// The server answered the opening request with an error status.
    #[error("HTTP/3 status {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The error body.
        body: String,
    },
    /// The server sent bytes that are not frames.
    #[error("the server broke the frame protocol: {0}")]
    Frame(#[from] FrameError),
}

/// A client endpoint on a UDP socket bound to `local` (any port), trusting the PEM CA in
/// `ca`, offering `alpn` ([`roam_tls::ALPN_QUIC`] for HTTP/3, [`roam_tls::ALPN_RAW`] for raw
/// frames). Connections made on one endpoint share its TLS session store: a later one
/// resumes, with 0-RTT ([`H3Stream::open_on`], [`QuicRawConnection::connect_on`]).
pub fn client_endpoint(local: IpAddr, ca: &Path, alpn: &[&[u8]]) -> Result<Endpoint, QuicError> {
    let tls = roam_tls::quic_client_config(roam_tls::roots_from_pem(ca)?, alpn);
    client_endpoint_with(local, tls)
}

/// As [`client_endpoint`], with a TLS configuration the caller built (and may share among
/// endpoints): `roam_tls::quic_client_config(roots, alpn)`.
pub fn client_endpoint_with(
    local: IpAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Endpoint, QuicError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
    let mut endpoint = Endpoint::client(SocketAddr::new(local, 0))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

/// Moves `endpoint` to a fresh UDP socket on `local` (any port).
fn rebind(endpoint: &Endpoint, local: IpAddr) -> Result<SocketAddr, QuicError> {
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    let addr = socket.local_addr()?;
    endpoint.rebind(socket)?;
    Ok(addr)
}

/// Connects to `addr` on `endpoint`: with 0-RTT when it holds a session for the server
/// (then the returned future tells whether the server accepted the early data).
async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
) -> Result<(Connection, Option<quinn::ZeroRttAccepted>), QuicError> {
    connect_named(endpoint, addr, "localhost").await
}

/// As [`connect`], verifying the certificate for `server_name` (a DNS name or an IP address).
pub(crate) async fn connect_named(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<(Connection, Option<quinn::ZeroRttAccepted>), QuicError> {
    let connecting = endpoint.connect(addr, server_name)?;
    Ok(match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => (connecting.await?, None),
    })
}

/// Splits frames out of `buf`.
fn next_frame(decoder: &FrameDecoder, buf: &mut BytesMut) -> Result<Option<Frame>, QuicError> {
    Ok(decoder.decode(buf)?)
}

/// Raw frames over QUIC: one bidirectional stream, frames back to back both ways.
pub struct QuicRawConnection {
    endpoint: Endpoint,
    conn: Connection,
    early: Option<quinn::ZeroRttAccepted>,
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl std::fmt::Debug for QuicRawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicRawConnection")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl QuicRawConnection {
    /// Connects from `local` (any port) to `addr` (the raw QUIC port), trusting the CA in
    /// `ca`, for the server name `localhost` (the development certificate's), and opens the
    /// frame stream.
    pub async fn connect(addr: SocketAddr, local: IpAddr, ca: &Path) -> Result<Self, QuicError> {
        Self::connect_on(client_endpoint(local, ca, roam_tls::ALPN_RAW)?, addr).await
    }

    /// Connects on `endpoint` (see [`client_endpoint`]); a returning client resumes and sends
    /// its first frames as 0-RTT data (see [`QuicRawConnection::early_data_accepted`]).
    pub async fn connect_on(endpoint: Endpoint, addr: SocketAddr) -> Result<Self, QuicError> {
        Self::connect_named(endpoint, addr, "localhost").await
    }

    /// As [`QuicRawConnection::connect_on`], verifying the certificate for `server_name`
    /// (the host the caller dialed: a DNS name or an IP address).
    pub async fn connect_named(
        endpoint: Endpoint,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Self, QuicError> {
        let (conn, early) = connect_named(&endpoint, addr, server_name).await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(QuicRawConnection {
            endpoint,
            conn,
            early,
            send,
            recv,
            decoder: FrameDecoder::new(16 * 1024 * 1024),
            buf: BytesMut::new(),
        })
    }

    /// Whether this connection resumed with 0-RTT and the server accepted its early data
    /// (waits for the handshake to complete).
    pub async fn early_data_accepted(&mut self) -> bool {
        match self.early.take() {
            Some(accepted) => accepted.await,
            None => false,
        }
    }

    /// Sends one frame whose body is `msg`.
    pub async fn send<M: prost::Message>(
        &mut self,
        op: Op,
        seq: u32,
        msg: &M,
    ) -> Result<(), QuicError> {
        let mut out = BytesMut::new();
        encode_msg(op, seq, msg, &mut out)?;
        self.send_raw(&out).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), QuicError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame, or `None` when the server finished the stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, QuicError> {
        loop {
            if let Some(frame) = next_frame(&self.decoder, &mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None => {
                    self.decoder.finish(&self.buf)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Moves the connection to a new UDP socket on `local` (connection migration); returns
    /// the new local address.
    pub fn rebind(&self, local: IpAddr) -> Result<SocketAddr, QuicError> {
        rebind(&self.endpoint, local)
    }

    /// The QUIC connection (its `stable_id` shows it is the same one after a rebind).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Finishes the stream and closes the connection.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

type H3Recv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A virtual connection's downstream over HTTP/3: the body of `GET /v1/stream`.
pub struct H3Stream {
    endpoint: Endpoint,
    conn: Connection,
    early: Option<quinn::ZeroRttAccepted>,
    /// The `roam-session` id the server named the connection with.
    pub session: String,
    recv: H3Recv,
    // Kept so the request stream is not reset.
    _send: h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    // Also kept: h3 closes the connection once every request sender is gone.
    requests: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// `authorization` of the requests up (`POST /v1/send`).
    bearer: String,
    /// Replies that came in a `POST /v1/send`'s answer, handed out by `next` first.
    pending: std::collections::VecDeque<Frame>,
}

impl std::fmt::Debug for H3Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Stream")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl H3Stream {
    /// Connects from `local` to the HTTP/3 port `addr` and opens `GET /v1/stream` with
    /// `token` for `device` (the query's other parameters, e.g. `&rooms=a,b`, in `extra`).
    pub async fn open(
        addr: SocketAddr,
        local: IpAddr,
        ca: &Path,
        token: &str,
        device: &str,
        extra: &str,
    ) -> Result<Self, QuicError> {
        let endpoint = client_endpoint(local, ca, roam_tls::ALPN_QUIC)?;
        Self::open_on(endpoint, addr, token, device, extra).await
    }

    /// As [`H3Stream::open`], on `endpoint` (see [`client_endpoint`]): a returning client
    /// resumes and sends the opening request as 0-RTT data.
    pub async fn open_on(
        endpoint: Endpoint,
        addr: SocketAddr,
        token: &str,
        device: &str,
        extra: &str,
    ) -> Result<Self, QuicError> {
        let (conn, early) = connect(&endpoint, addr).await?;
        let h3e = |e: &dyn std::fmt::Display| QuicError::H3(e.to_string());
        let (mut driver, mut requests) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| h3e(&e))?;
        let driver = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        let request = http::Request::get(format!(
            "https://localhost/v1/stream?device={device}{extra}"
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .map_err(|e| h3e(&e))?;
        let mut stream = requests.send_request(request).await.map_err(|e| h3e(&e))?;
        // A GET has nothing more to send. A server may answer it, and stop reading the
        // request, before the end of the request arrives (a 0-RTT opening is answered at
        // once); the response still counts (RFC 9114 §4.1.1), so a failed finish is not one.
        let _ = stream.finish().await;
        let response = stream.recv_response().await.map_err(|e| h3e(&e))?;
        let (send, mut recv) = stream.split();
        if !response.status().is_success() {
            let mut body = Vec::new();
            while let Ok(Some(mut chunk)) = recv.recv_data().await {
                body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            return Err(QuicError::Status {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let session = response
            .headers()
            .get("roam-session")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(H3Stream {
            endpoint,
            conn,
            early,
            session,
            recv,
            _send: send,
            requests,
            driver,
            decoder: FrameDecoder::new(16 * 1024 * 1024),
            buf: BytesMut::new(),
            bearer: format!("Bearer {token}"),
            pending: std::collections::VecDeque::new(),
        })
    }

    /// Sends one frame whose body is `msg` up the connection: `POST /v1/send` on the same
    /// QUIC connection. The replies in its answer are handed out by [`H3Stream::next`] before
    /// what comes down the stream.
    pub async fn send<M: prost::Message>(
        &mut self,
        op: Op,
        seq: u32,
        msg: &M,
    ) -> Result<(), QuicError> {
        let mut body = BytesMut::new();
        encode_msg(op, seq, msg, &mut body)?;
        let h3e = |e: &dyn std::fmt::Display| QuicError::H3(e.to_string());
        let request = http::Request::post("https://localhost/v1/send")
            .header("authorization", &self.bearer)
            .header("roam-session", &self.session)
            .body(())
            .map_err(|e| h3e(&e))?;
        let mut requests = self.requests.clone();
        let mut stream = requests.send_request(request).await.map_err(|e| h3e(&e))?;
        stream.send_data(body.freeze()).await.map_err(|e| h3e(&e))?;
        stream.finish().await.map_err(|e| h3e(&e))?;
        let response = stream.recv_response().await.map_err(|e| h3e(&e))?;
        let mut answer = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| h3e(&e))? {
            answer.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        if !response.status().is_success() {
            return Err(QuicError::Status {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        while let Some(frame) = next_frame(&self.decoder, &mut answer)? {
            self.pending.push_back(frame);
        }
        Ok(())
    }

    /// Whether this connection resumed with 0-RTT and the server accepted its early data
    /// (waits for the handshake to complete).
    pub async fn early_data_accepted(&mut self) -> bool {
        match self.early.take() {
            Some(accepted) => accepted.await,
            None => false,
        }
    }

    /// The next frame of the stream, or `None` when the server ended it.
    pub async fn next(&mut self) -> Result<Option<Frame>, QuicError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        loop {
            if let Some(frame) = next_frame(&self.decoder, &mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    self.buf.extend_from_slice(&bytes);
                }
                Ok(None) => {
                    self.decoder.finish(&self.buf)?;
                    return Ok(None);
                }
                Err(e) => return Err(QuicError::H3(e.to_string())),
            }
        }
    }

    /// Moves the connection to a new UDP socket on `local` (connection migration); returns
    /// the new local address.
    pub fn rebind(&self, local: IpAddr) -> Result<SocketAddr, QuicError> {
        rebind(&self.endpoint, local)
    }

    /// The QUIC connection (its `stable_id` shows it is the same one after a rebind).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close(0x100u32.into(), b"bye");
        self.driver.abort();
        self.endpoint.wait_idle().await;
    }
}

/// An HTTP/3 connection for plain requests (`POST /v1/send`, `GET /healthz`, …): one QUIC
/// connection, requests on it at once if the caller wants.
pub struct H3Client {
    endpoint: Endpoint,
    conn: Connection,
    early: Option<quinn::ZeroRttAccepted>,
    requests: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for H3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Client")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

/// An HTTP/3 answer: status, headers and the whole body.
pub type H3Response = http::Response<Bytes>;

impl H3Client {
    /// Connects to the HTTP/3 port `addr` on `endpoint` (see [`client_endpoint`]): a
    /// returning client resumes, and its first requests go out as 0-RTT data.
    pub async fn connect_on(endpoint: Endpoint, addr: SocketAddr) -> Result<Self, QuicError> {
        let (conn, early) = connect(&endpoint, addr).await?;
        let (mut driver, requests) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| QuicError::H3(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        Ok(H3Client {
            endpoint,
            conn,
            early,
            requests,
            driver,
        })
    }

    /// Sends `request` and reads its whole answer.
    pub async fn request(&self, request: http::Request<Bytes>) -> Result<H3Response, QuicError> {
        let h3e = |e: &dyn std::fmt::Display| QuicError::H3(e.to_string());
        let (head, body) = request.into_parts();
        let mut requests = self.requests.clone();
        let mut stream = requests
            .send_request(http::Request::from_parts(head, ()))
            .await
            .map_err(|e| h3e(&e))?;
        if !body.is_empty() {
            stream.send_data(body).await.map_err(|e| h3e(&e))?;
        }
        stream.finish().await.map_err(|e| h3e(&e))?;
        let response = stream.recv_response().await.map_err(|e| h3e(&e))?;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| h3e(&e))? {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let (head, ()) = response.into_parts();
        Ok(http::Response::from_parts(head, body.freeze()))
    }

    /// Whether this connection resumed with 0-RTT and the server accepted its early data
    /// (waits for the handshake to complete).
    pub async fn early_data_accepted(&mut self) -> bool {
        match self.early.take() {
            Some(accepted) => accepted.await,
            None => false,
        }
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close(0x100u32.into(), b"bye");
        self.driver.abort();
        self.endpoint.wait_idle().await;
    }
}
