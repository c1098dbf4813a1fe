//! # roam-client — Roam from the client side
//!
//! Owns what talks to a Roam server from outside: (later issues) the Rust SDK and the
//! terminal client, and today the `roam bench` load generator and the launcher of private
//! servers it shares with the end-to-end tests.
//!
//! - [`child::ChildServer`] starts `roam serve` as a child process on a temporary data dir
//!   with every listener on port 0, waits for its `--ready-file`, and stops it with SIGTERM.
//! - [`raw::RawConnection`] speaks the raw frame transport (TLS 1.3, ALPN `roam/1`): the
//!   first piece of the SDK.
//! - [`ws::WsConnection`] speaks the same frames over a WebSocket (`/v1/ws` on the client
//!   port, HTTP/1.1 Upgrade) with small buffers.
//! - [`bench`] is the harness of SPEC.md §6: [`bench::BenchArgs`] (the CLI), scenarios,
//!   server-side figures from `/proc/<pid>` ([`bench::ProcStats`]), HDR latency histograms,
//!   progress on stderr, a human summary, and one JSON object as the last line on stdout.

pub mod bench;
pub mod child;
pub mod raw;
pub mod ws;
