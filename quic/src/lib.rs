//! A QUIC server endpoint driven by one event loop over quinn-proto. Both of the edge's QUIC
//! listeners run on it: HTTP/3 with WebTransport (the h3 crate through [`h3`], as h3-quinn
//! does for quinn) and raw frames.
//!
//! quinn's endpoint gives every connection a driver task, an unbounded event channel and a
//! tokio timer: ≈ 11 KB per idle connection, and per datagram a channel send, a task wake-up
//! and a timer reset (docs/edge.md, "CPU per push", has the measurements). Here
//! one task per endpoint ([`Endpoint`]) owns the UDP socket (quinn-udp: batched receive,
//! GSO), quinn-proto's `Endpoint`, every connection's quinn-proto `Connection` and one set of
//! deadlines; it applies datagrams and timeouts to connections directly and drives the
//! connections that have work — sends, ACKs, stream events — in one pass.
//!
//! - [`Endpoint`]: binds, hands out [`Incoming`] attempts, shuts down.
//! - [`Incoming`]: an attempt before any state is kept: accept, refuse, retry or ignore.
//! - [`Connection`]: a connection's application side: streams, handshake, address, close.
//! - [`SendStream`] / [`RecvStream`]: tokio `AsyncWrite` / `AsyncRead` over a stream, and
//!   poll functions with typed errors ([`StreamError`]); QUIC datagrams on [`Connection`].
//! - [`h3`]: h3's and h3-datagram's QUIC traits over the above.
//!
//! The application side never drives a connection: a stream write or read locks the
//! connection, changes quinn-proto's state, and marks the connection for the loop
//! (`Shared::touch` in `endpoint.rs`). Lock order: the endpoint's state, then a connection's.

// One `unsafe` call: registering the UDP socket with tokio for reading only
// (`endpoint::register`, which says why).
#![deny(unsafe_code)]

mod conn;
mod endpoint;
pub mod h3;

pub use conn::{Connection, ConnectionError, RecvStream, SendStream, StreamError, StreamId};
pub use endpoint::{Endpoint, EndpointError, Incoming};
