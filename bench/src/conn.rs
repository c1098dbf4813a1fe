//! One client connection of the scenarios that hold thousands (idle-conns, room-fanout):
//! raw or WebSocket, over `roam_client`'s transports, from a chosen loopback source address;
//! and the exchanges they set up with (AUTH, ROOM_JOIN).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use roam_client::quic::{H3Stream, QuicRawConnection, client_endpoint_with};
use roam_client::raw::RawConnection;
use roam_client::ws::{ALPN_WS, WsConnection};
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, Op};
use serde::{Deserialize, Serialize};

/// Loopback source addresses 127.0.0.1 ..= 127.0.0.SOURCES.
const SOURCES: usize = 8;
/// Time for one setup (TCP, TLS, upgrade, AUTH, ROOM_JOIN).
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// The raw port (TLS, ALPN `roam/1`).
    Raw,
    /// WebSockets on the client port.
    Ws,
    /// Raw frames over QUIC (`listen.raw_quic`, ALPN `roam/1`).
    Quic,
    /// HTTP/3 (`listen.client_quic`, ALPN `h3`): `GET /v1/stream` down, `POST /v1/send` up,
    /// on one QUIC connection.
    H3,
}

impl Transport {
    /// `--transport` of idle-conns (raw when absent).
    pub(crate) fn parse(name: Option<&str>) -> Result<Self> {
        match name.unwrap_or("raw") {
            "raw" => Ok(Transport::Raw),
            "ws" => Ok(Transport::Ws),
            "quic" => Ok(Transport::Quic),
            "h3" => Ok(Transport::H3),
            other => bail!("--transport {other}: idle-conns offers raw, ws, quic and h3"),
        }
    }

    /// Its name in figures and messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Raw => "raw",
            Transport::Ws => "ws",
            Transport::Quic => "quic",
            Transport::H3 => "h3",
        }
    }

    /// The server listener this transport connects to.
    pub(crate) fn listener(self) -> &'static str {
        match self {
            Transport::Raw => "raw",
            Transport::Ws => "client_tcp",
            Transport::Quic => "raw_quic",
            Transport::H3 => "client_quic",
        }
    }

    /// A TLS client configuration trusting `ca`, with this transport's ALPN.
    pub(crate) fn tls(self, ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
        let roots = roam_tls::roots_from_pem(ca)?;
        Ok(match self {
            Transport::Raw => roam_tls::client_config(roots, roam_tls::ALPN_RAW),
            Transport::Ws => roam_tls::client_config(roots, ALPN_WS),
            Transport::Quic => roam_tls::quic_client_config(roots, roam_tls::ALPN_RAW),
            Transport::H3 => roam_tls::quic_client_config(roots, roam_tls::ALPN_QUIC),
        })
    }
}

/// One client connection, either transport.
pub(crate) enum Conn {
    Raw(Box<RawConnection>),
    Ws(Box<WsConnection>),
    Quic(Box<QuicRawConnection>),
    /// HTTP/3 before AUTH: the stream is opened by [`Conn::authenticate`] (its token goes in
    /// the request).
    H3Unopened(quinn::Endpoint, SocketAddr),
    H3(Box<H3Stream>),
}

impl Conn {
    /// Opens a TCP connection from `source` (any port) to `target`, then TLS and, for `ws`,
    /// the WebSocket upgrade; for `quic`, a QUIC connection (its own UDP socket on `source`)
    /// and its frame stream.
    pub(crate) async fn open(
        transport: Transport,
        source: Ipv4Addr,
        target: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Conn> {
        if transport == Transport::Quic {
            let endpoint = client_endpoint_with(IpAddr::V4(source), tls.clone())?;
            return Ok(Conn::Quic(Box::new(
                QuicRawConnection::connect_on(endpoint, target).await?,
            )));
        }
        if transport == Transport::H3 {
            let endpoint = client_endpoint_with(IpAddr::V4(source), tls.clone())?;
            return Ok(Conn::H3Unopened(endpoint, target));
        }
        let tcp = roam_client::tcp_from(IpAddr::V4(source), target).await?;
        Ok(match transport {
            Transport::Raw => Conn::Raw(Box::new(
                RawConnection::connect_over(tcp, tls.clone()).await?,
            )),
            Transport::Ws => Conn::Ws(Box::new(
                WsConnection::connect_over(tcp, tls.clone()).await?,
            )),
            Transport::Quic | Transport::H3 => bail!("unreachable: QUIC is opened above"),
        })
    }

    /// Sends one frame.
    pub(crate) async fn send<M: prost::Message>(
        &mut self,
        op: Op,
        seq: u32,
        msg: &M,
    ) -> Result<()> {
        match self {
            Conn::Raw(c) => c.send(op, seq, msg).await?,
            Conn::Ws(c) => c.send(op, seq, msg).await?,
            Conn::Quic(c) => c.send(op, seq, msg).await?,
            Conn::H3(c) => c.send(op, seq, msg).await?,
            Conn::H3Unopened(..) => bail!("HTTP/3: send before AUTH"),
        }
        Ok(())
    }

    /// The next frame, `None` when the server closed the connection. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>> {
        Ok(match self {
            Conn::Raw(c) => c.next().await?,
            Conn::Ws(c) => c.next().await?,
            Conn::Quic(c) => c.next().await?,
            Conn::H3(c) => c.next().await?,
            Conn::H3Unopened(..) => bail!("HTTP/3: read before AUTH"),
        })
    }

    /// Closes the connection gracefully (close_notify, or a WebSocket close).
    pub(crate) async fn close(self) {
        match self {
            Conn::Raw(c) => {
                let _ = c.close().await;
            }
            Conn::Ws(c) => {
                let _ = c.close().await;
            }
            Conn::Quic(c) => c.close().await,
            Conn::H3(c) => c.close().await,
            Conn::H3Unopened(endpoint, _) => endpoint.close(0u32.into(), b"bye"),
        }
    }

    /// Waits for the reply `op` to request `seq`; an ERROR or DISCONNECT frame, or the end
    /// of the connection, is an error naming it.
    pub(crate) async fn reply(&mut self, op: Op, seq: u32) -> Result<Frame> {
        loop {
            let Some(frame) = self.next().await? else {
                bail!("the server closed the connection while waiting for {op:?}");
            };
            match frame.op_kind() {
                Some(got) if got == op && frame.seq == seq => return Ok(frame),
                Some(Op::Error) => {
                    let e = frame.decode_body::<pb::Error>().unwrap_or_default();
                    bail!("ERROR {:?}: {}", e.code(), e.message);
                }
                Some(Op::Disconnect) => {
                    let d = frame.decode_body::<pb::Disconnect>().unwrap_or_default();
                    bail!("DISCONNECT {:?}: {}", d.reason(), d.message);
                }
                _ => {}
            }
        }
    }

    /// AUTH (seq 1) with `token` as `device`, joining `rooms` at once; returns the reply.
    pub(crate) async fn authenticate(
        &mut self,
        token: String,
        device: String,
        rooms: Vec<String>,
    ) -> Result<pb::AuthReply> {
        if let Conn::H3Unopened(endpoint, target) = self {
            // Over HTTP/3 the opening request authenticates: its first frame is AUTH_REPLY.
            let rooms = if rooms.is_empty() {
                String::new()
            } else {
                format!("&rooms={}", rooms.join(","))
            };
            let stream =
                H3Stream::open_on(endpoint.clone(), *target, &token, &device, &rooms).await?;
            *self = Conn::H3(Box::new(stream));
            return Ok(self
                .reply(Op::AuthReply, 1)
                .await?
                .decode_body::<pb::AuthReply>()?);
        }
        let auth = pb::Auth {
            token,
            device_id: device,
            platform: "bench".into(),
            rooms,
        };
        self.send(Op::Auth, 1, &auth).await?;
        Ok(self
            .reply(Op::AuthReply, 1)
            .await?
            .decode_body::<pb::AuthReply>()?)
    }

    /// ROOM_JOIN (seq 2) of `room`, waiting for its reply.
    pub(crate) async fn join(&mut self, room: String) -> Result<()> {
        self.send(Op::RoomJoin, 2, &pb::Room { room }).await?;
        self.reply(Op::RoomJoinReply, 2).await?;
        Ok(())
    }
}

/// The loopback source address of connection `i`.
pub(crate) fn source_addr(i: usize) -> Ipv4Addr {
    // SOURCES is at most 254, so this fits a u8.
    Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8)
}
