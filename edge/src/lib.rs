//! # roam-edge — the connection gateway (goim's comet)
//!
//! Owns everything between a client's socket and core: TLS termination, the HTTP transports
//! and (in later issues) the WebSocket, streaming, long-poll, gRPC and raw frame transports,
//! HTTP/3 over QUIC, the buckets/channels/rooms that hold connections, heartbeats and
//! slow-consumer policy.
//!
//! Today it holds the TLS 1.3 client listener ([`ClientTcpServer`]): TCP accept → a bounded,
//! timed TLS handshake (ALPN `h2` / `http/1.1`) → hyper-util's auto builder serving an axum
//! [`router`] (`GET /healthz`) over HTTP/1.1 or HTTP/2, with graceful drain on shutdown.
//! [`EdgeMetrics`] counts connections and handshake failures by reason.

pub mod comet;
pub mod conn;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod link;
mod metrics;
pub mod outbox;
pub mod raw;
pub mod session;
mod tcp;

pub use metrics::EdgeMetrics;
pub use tcp::{ClientTcpServer, TcpOptions};
