//! # roam-edge — the connection gateway (goim's comet)
//!
//! Owns everything between a client's socket and core: TLS termination, the client
//! transports (WebSocket, HTTP streaming and long-poll, gRPC and raw frames), the buckets and
//! rooms that hold connections, deadlines, limits and the slow-consumer policy.
//!
//! ## Main types and how they connect
//!
//! - [`gateway::Gateway`], one per edge process: [`Gateway::start`](gateway::Gateway::start)
//!   links it to core through a [`link::CoreLink`] (identified by a [`link::EdgeIdentity`]);
//!   it then holds every client connection, applies the limits of its
//!   [`gateway::GatewayConfig`] and owns the [`admission::Admission`] both client ports share.
//! - [`ClientTcpServer`] (`listen.client_tcp`: TLS 1.3, then HTTP/1.1 and HTTP/2 through
//!   hyper-util) serves [`http::router`] over the gateway: WebSocket on `/v1/ws` (Upgrade or
//!   extended CONNECT), virtual connections made of HTTP requests (`/v1/stream`, `/v1/poll`,
//!   `/v1/send`) and the gRPC `Gateway/Connect` stream.
//! - [`raw::RawServer`] (`listen.raw`): frames back to back over TLS 1.3, no HTTP.
//! - [`quic`] (`listen.client_quic`, `listen.raw_quic`): HTTP/3 (and WebTransport) through the
//!   same router, and raw frames over QUIC (ALPN `roam/1`).
//! - [`EdgeMetrics`] counts connections, frames, queues, closes and failures;
//!   [`admission::Refusals`] counts the connections every listener refuses (the admin port's
//!   too, through [`admission::Admission`]).
//!
//! Inside (private, but for the configuration types named here): `session` (the sans-IO protocol state of one
//! connection; its limits are [`session::SessionConfig`]), `conn` (the per-connection driver
//! every transport shares, with write timeouts), `outbox` (a connection's bounded, coalescing
//! queue), `comet` (buckets and rooms), `batch` (goim's room batch: room and broadcast pushes
//! collected for a short window, then fanned out as one buffer; tuned by
//! [`batch::BatchConfig`]), `vconn` (virtual connections; over HTTP/3 a stream connection
//! runs in its response's task and writes the stream itself), `grpc` and `listener` (the accept
//! loop and drain the TCP listeners share). TLS is terminated by `roam_tls::lean` (a TLS 1.3
//! server stream that holds no buffers while idle; the tls crate owns every TLS decision).
//! docs/edge.md draws how they connect.

#![forbid(unsafe_code)]

pub mod admission;
pub mod batch;
mod comet;
mod conn;
pub mod gateway;
mod grpc;
pub mod http;
pub mod link;
mod listener;
mod metrics;
mod outbox;
pub mod quic;
pub mod raw;
pub mod session;
mod tcp;
mod vconn;

pub use metrics::EdgeMetrics;
pub use tcp::{ClientTcpServer, TcpOptions};
