//! # roam-idsvc — ID generators and their gRPC/HTTP service
//!
//! Owns every ID Roam hands out that is not a per-timeline seq:
//!
//! - **Segment IDs** per business tag ([`SegmentAllocator`], Meituan Leaf's segment mode):
//!   small, increasing, below 2^53. The store holds `(tag) -> max_id, step`; a process takes
//!   a segment `[max_id, max_id + step)` in one transaction and serves it from memory — one
//!   atomic add per ID — with the next segment loaded in the background once 10% of the
//!   current one is used (the double buffer), and a step that doubles for busy tags and
//!   halves for quiet ones (the dynamic step). Tags are created explicitly
//!   ([`SegmentAllocator::create_tag`]).
//! - **Snowflake** (1 + 41 ms + 10 worker + 12 seq) and **Sonyflake** (39 × 10 ms + 8 seq + 16
//!   machine) IDs ([`Layout`]), each from a worker id leased in the store with a heartbeat, so
//!   no two live processes share one and restarts reuse expired ones. Timestamps are reserved
//!   (persisted) a few seconds ahead of use, so no process, restarted or taking over a
//!   lease, ever issues at or behind a timestamp already covered. A clock that steps back
//!   a little is waited out; a bigger step fails fast ([`IdError::ClockMovedBackwards`]).
//!
//! ## Main types and how they connect
//!
//! [`IdService`] owns one [`SegmentAllocator`] and both time-based generators, their lease
//! heartbeat, and [`IdMetrics`]. Front ends wrap an `Arc<IdService>`:
//! [`http::router`] (the business routes of docs/contract.md §5 and a monitoring page),
//! [`grpc::grpc_service`] (`roam.idsvc.v1.IdService`), and [`IdSource`], which core calls —
//! a plain method call in one process, gRPC across processes. Time is an input
//! ([`Clock`]), and the policies are sans-IO (`segment::policy`, `flake::core`), so they are
//! tested at any instant without sleeping.
//!
//! ```no_run
//! # async fn run(store: roam_store::Store) -> Result<(), roam_idsvc::IdError> {
//! use prometheus_client::registry::Registry;
//! use roam_idsvc::{IdMetrics, IdService, IdsConfig};
//!
//! let mut registry = Registry::default();
//! let metrics = IdMetrics::register(&mut registry);
//! let ids = IdService::start(store, IdsConfig::default(), metrics).await?;
//! ids.create_tag("orders", 1_000, 1).await?;
//! let orders = ids.tag("orders").await?; // hold the handle on hot paths
//! let id = orders.next_id().await?;
//! let batch = ids.next_ids("orders", 100).await?;
//! let flake = ids.next_snowflake().await?;
//! # let _ = (id, batch, flake);
//! ids.shutdown().await; // releases the worker leases
//! # Ok(()) }
//! ```
//!
//! Not here: authentication of the HTTP routes (a layer of the listener that mounts them),
//! TLS of the internal port, and configuration loading (the `roam` binary deserialises
//! [`IdsConfig`]).

#![forbid(unsafe_code)]

mod client;
mod clock;
mod config;
mod error;
mod flake;
pub mod grpc;
pub mod http;
mod keys;
mod metrics;
pub mod segment;
mod service;

pub use client::IdSource;
pub use clock::{Clock, ManualClock, SystemClock, WaitFuture};
pub use config::{DEFAULT_EPOCH_MS, IdsConfig};
pub use error::IdError;
pub use flake::{
    FlakeState,
    layout::{Decoded, Generator, Layout},
};
pub use metrics::{GeneratorLabel, IdMetrics, TagLabel};
pub use segment::{MAX_SEGMENT_ID, Segment, SegmentAllocator, TagHandle, TagState};
pub use service::{IdService, ServiceState};
