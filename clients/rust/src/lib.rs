//! # roam-client — Roam from the client side
//!
//! What talks to a Roam server from outside. No protocol state lives here: callers (the
//! SDK's later client, the end-to-end tests, `roam bench`) decide what to send when.
//!
//! - [`raw::RawConnection`] speaks the raw frame transport (TLS 1.3, ALPN `roam/1`).
//! - [`ws::WsConnection`] speaks the same frames over a WebSocket (`/v1/ws` on the client
//!   port, HTTP/1.1 Upgrade) with small buffers.
//! - Both connect either by address (`connect`) or over a TCP stream the caller opened
//!   (`connect_over`), e.g. one from a chosen local address ([`tcp_from`]), as `roam bench`
//!   does to open tens of thousands of loopback connections without running out of
//!   ephemeral ports.
//! - [`quic::QuicRawConnection`] speaks raw frames over QUIC (ALPN `roam/1` on the raw
//!   QUIC port), and [`quic::H3Stream`] opens `/v1/stream` over HTTP/3; both can move to
//!   another local address mid-flow (connection migration).
//! - [`session::Session`] is the client's protocol state, sans-IO: auth, heartbeat, SEND
//!   until acknowledged, the inbox cursor, dedupe, resume by SYNC, rooms, reads, and the
//!   reconnect schedule ([`schedule`]).
//! - [`client::Client`] drives a session over QUIC, raw, WebSocket, HTTP/3 or HTTP/2 stream
//!   connections ([`http_stream`]) and reconnects.
//! - [`edges`] turns the business API's edge list (from the app's backend) into addresses.
//! - [`cli`] is what `roam send` and `roam tail` do.
//! - [`admin::AdminConnection`] calls the business API on the admin listener (docs/api.md):
//!   keep-alive HTTP/1.1, the API key as a bearer token.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod client;
pub mod edges;
pub mod http_stream;
pub mod quic;
pub mod raw;
pub mod schedule;
pub mod session;
pub mod ws;

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `target` from `source` (any port): the socket is bound before it
/// connects, so many source addresses spread connections over more ephemeral ports.
pub async fn tcp_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {source}: {e}")))?;
    socket.connect(target).await
}
