//! # roam-edge — the connection gateway (goim's comet)
//!
//! Owns everything between a client's socket and core: TLS termination, the client
//! transports (WebSocket, HTTP streaming and long-poll, gRPC and raw frames today; HTTP/3
//! later), the buckets and rooms that hold connections, deadlines, limits and the
//! slow-consumer policy.
//!
//! TLS is terminated by `roam_tls::lean` (a TLS 1.3 server stream that holds no buffers
//! while idle; the tls crate owns every TLS decision). The pieces, each in its own module:
//! [`ClientTcpServer`] (port 8443: HTTP/1.1 and HTTP/2 through hyper-util, serving
//! [`http::router`]: WebSocket on `/v1/ws` over Upgrade or extended CONNECT, virtual
//! connections made of HTTP requests in [`vconn`] — `/v1/stream`, `/v1/poll`, `/v1/send` —
//! and the gRPC `Gateway` in [`grpc`]), [`raw`] (port 8444: frames back to back), [`session`] (the sans-IO protocol state of one
//! connection), [`outbox`] (its bounded, coalescing queue), [`comet`] (buckets and rooms),
//! [`batch`] (goim's room batch: room and broadcast pushes collected for a short window, then
//! fanned out as one buffer), [`conn`] (the per-connection driver every transport shares,
//! with write timeouts), [`gateway`] (the link to core through [`link`], heartbeats, limits,
//! the batch timer). [`EdgeMetrics`] counts connections, frames, queues, closes and failures.
//! docs/edge.md draws how they connect.

#![forbid(unsafe_code)]

pub mod admission;
pub mod batch;
pub mod comet;
pub mod conn;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod link;
mod listener;
mod metrics;
pub mod outbox;
pub mod quic;
pub mod raw;
pub mod session;
mod tcp;
pub mod vconn;

pub use metrics::EdgeMetrics;
pub use tcp::{ClientTcpServer, TcpOptions};
