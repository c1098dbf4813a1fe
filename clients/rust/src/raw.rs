//! The raw frame transport, client side: TLS 1.3 with ALPN `roam/1`, frames back to back.
//!
//! [`RawConnection::connect`] opens the TLS stream ([`RawConnection::connect_over`] does the
//! same over a TCP stream the caller connected); [`RawConnection::send`] writes one frame
//! (a protobuf body for an op); [`RawConnection::next`] returns the next frame from the
//! server, or `None` when it closed the connection cleanly. No protocol state lives here:
//! callers (the SDK's client, tests, `roam bench`) decide what to send when.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use roam_proto::{Frame, FrameDecoder, FrameError, Op, encode_msg};
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a raw connection failed.
#[derive(Debug, Error)]
pub enum RawError {
    /// TCP or TLS I/O failed.
    #[error("raw connection: {0}")]
    Io(#[from] io::Error),
    /// The CA file could not be used.
    #[error(transparent)]
    Tls(#[from] roam_tls::TlsError),
    /// The server sent bytes that are not frames.
    #[error("the server broke the frame protocol: {0}")]
    Frame(#[from] FrameError),
}

/// A TLS connection to the raw port.
#[derive(Debug)]
pub struct RawConnection {
    tls: TlsStream<TcpStream>,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl RawConnection {
    /// Connects to `addr`, trusting the CA certificate in `ca` (PEM), for the server name
    /// `localhost` (the development certificate's).
    pub async fn connect(addr: SocketAddr, ca: &Path) -> Result<Self, RawError> {
        let config = roam_tls::client_config(roam_tls::roots_from_pem(ca)?, roam_tls::ALPN_RAW);
        let tcp = TcpStream::connect(addr).await?;
        Self::connect_over(tcp, config).await
    }

    /// TLS (server name `localhost`) over a connected `tcp`. `tls` must offer ALPN `roam/1`
    /// ([`roam_tls::ALPN_RAW`]).
    pub async fn connect_over(
        tcp: TcpStream,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, RawError> {
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        Self::connect_over_named(tcp, tls, name).await
    }

    /// As [`RawConnection::connect_over`], verifying the certificate for `name` (the host
    /// the caller dialed: a DNS name or an IP address).
    pub async fn connect_over_named(
        tcp: TcpStream,
        tls: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, RawError> {
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(tls).connect(name, tcp).await?;
        Ok(RawConnection {
            tls,
            decoder: FrameDecoder::new(16 * 1024 * 1024),
            buf: BytesMut::new(),
        })
    }

    /// Sends one frame whose body is `msg`.
    pub async fn send<M: prost::Message>(
        &mut self,
        op: Op,
        seq: u32,
        msg: &M,
    ) -> Result<(), RawError> {
        let mut out = BytesMut::new();
        encode_msg(op, seq, msg, &mut out)?;
        self.send_raw(&out).await
    }

    /// Sends bytes as they are (e.g. a deliberately malformed frame).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RawError> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await?;
        Ok(())
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn next(&mut self) -> Result<Option<Frame>, RawError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            self.buf.reserve(4096);
            match self.tls.read_buf(&mut self.buf).await {
                Ok(0) => {
                    self.decoder.finish(&self.buf)?;
                    return Ok(None);
                }
                Ok(_) => {}
                // A server that closes without close_notify after its DISCONNECT frame.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Closes the connection (TLS close_notify).
    pub async fn close(mut self) -> Result<(), RawError> {
        self.tls.shutdown().await?;
        Ok(())
    }
}
