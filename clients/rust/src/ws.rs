//! The WebSocket frame transport, client side: `wss://<client_tcp>/v1/ws` over TLS 1.3 with
//! ALPN `http/1.1` (HTTP/1.1 Upgrade), one binary message = one or more frames.
//!
//! [`WsConnection::connect`] opens the TLS stream and upgrades it; [`WsConnection::connect_over`]
//! does the same over a TCP stream the caller connected (e.g. from a chosen loopback source
//! address, as `roam bench` does for many connections). [`WsConnection::send`] writes one
//! frame as one binary message; [`WsConnection::next`] returns the next frame from the server
//! (frames of one message one by one), or `None` when it closed the WebSocket. No protocol
//! state lives here, as in [`crate::raw::RawConnection`].
//!
//! Buffers are small ([`ws_config`]): tungstenite's defaults (a 128 KiB read buffer allocated
//! up front, 128 KiB of write buffering) would cost gigabytes over thousands of connections.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use roam_proto::{Frame, FrameDecoder, FrameError, Op, encode_msg};
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};

/// The ALPN a WebSocket client offers (the upgrade is HTTP/1.1).
pub const ALPN_WS: &[&[u8]] = &[b"http/1.1"];

/// The largest message accepted from the server (a batch of frames), bytes.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Why a WebSocket connection failed.
#[derive(Debug, Error)]
pub enum WsError {
    /// TCP or TLS I/O failed.
    #[error("websocket connection: {0}")]
    Io(#[from] io::Error),
    /// The CA file could not be used.
    #[error(transparent)]
    Tls(#[from] roam_tls::TlsError),
    /// The upgrade or the WebSocket protocol failed.
    #[error("websocket: {0}")]
    Ws(#[from] Box<tungstenite::Error>),
    /// The server sent a message that is not whole frames.
    #[error("the server broke the frame protocol: {0}")]
    Frame(#[from] FrameError),
}

impl From<tungstenite::Error> for WsError {
    fn from(e: tungstenite::Error) -> Self {
        WsError::Ws(Box::new(e))
    }
}

/// The WebSocket configuration of [`WsConnection`]: a 4 KiB read buffer, no write buffering
/// (each message is written at once), messages up to 16 MiB.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A WebSocket to `/v1/ws` on the client port.
#[derive(Debug)]
pub struct WsConnection {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    decoder: FrameDecoder,
    pending: VecDeque<Frame>,
}

impl WsConnection {
    /// Connects to the client port at `addr`, trusting the CA certificate in `ca` (PEM), for
    /// the server name `localhost` (the development certificate's).
    pub async fn connect(addr: SocketAddr, ca: &Path) -> Result<Self, WsError> {
        let config = roam_tls::client_config(roam_tls::roots_from_pem(ca)?, ALPN_WS);
        let tcp = TcpStream::connect(addr).await?;
        Self::connect_over(tcp, config).await
    }

    /// TLS (server name `localhost`) and the WebSocket upgrade over a connected `tcp`.
    /// `tls` must offer ALPN `http/1.1` ([`ALPN_WS`]).
    pub async fn connect_over(
        tcp: TcpStream,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, WsError> {
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        Self::connect_over_named(tcp, tls, name).await
    }

    /// As [`WsConnection::connect_over`], verifying the certificate for `name` (the host the
    /// caller dialed: a DNS name or an IP address), which the upgrade request names too.
    pub async fn connect_over_named(
        tcp: TcpStream,
        tls: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, WsError> {
        tcp.set_nodelay(true)?;
        let url = format!("wss://{}/v1/ws", authority(&name));
        let stream = TlsConnector::from(tls).connect(name, tcp).await?;
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
        Ok(WsConnection {
            ws,
            decoder: FrameDecoder::new(MAX_MESSAGE),
            pending: VecDeque::new(),
        })
    }

    /// Sends one frame whose body is `msg`, as one binary message.
    pub async fn send<M: prost::Message>(
        &mut self,
        op: Op,
        seq: u32,
        msg: &M,
    ) -> Result<(), WsError> {
        let mut out = BytesMut::new();
        encode_msg(op, seq, msg, &mut out)?;
        self.send_raw(out.freeze()).await
    }

    /// Sends bytes as one binary message (one or more frames, or deliberately broken ones).
    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), WsError> {
        self.ws.send(Message::Binary(bytes)).await?;
        Ok(())
    }

    /// The next frame, or `None` when the server closed the WebSocket. Cancel-safe: a frame
    /// is either returned or kept for the next call.
    pub async fn next(&mut self) -> Result<Option<Frame>, WsError> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(Some(frame));
            }
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(mut bytes))) => {
                    while let Some(frame) = self.decoder.decode_bytes(&mut bytes)? {
                        self.pending.push_back(frame);
                    }
                    self.decoder.finish(&bytes)?;
                }
                Some(Ok(_)) => {}
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => return Ok(None),
                // A server that closes the TCP connection without a close frame.
                Some(Err(tungstenite::Error::Io(e)))
                    if e.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(None);
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Closes the WebSocket (close frame, then TLS close_notify when the server answers).
    pub async fn close(mut self) -> Result<(), WsError> {
        self.ws.close(None).await?;
        Ok(())
    }
}

/// `name` as a URL's host: an IPv6 address in brackets.
pub(crate) fn authority(name: &ServerName<'_>) -> String {
    match name {
        ServerName::IpAddress(ip) => match std::net::IpAddr::from(*ip) {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        },
        other => other.to_str().into_owned(),
    }
}
