//! # roam-core — auth, sessions, presence, the edge link and the business API
//!
//! Core is what edges report to and business backends call. Its main type is
//! [`service::Core`]: the shared state (the store's [`sessions::Sessions`] layer, the
//! [`edges::EdgeRegistry`] of linked edges with their delivery queues, the token
//! [`auth::Verifier`], options and [`metrics::CoreMetrics`]). Around it:
//!
//! - [`link`]: the internal gRPC service `EdgeLink`. An edge registers, then streams client
//!   connects, disconnects, room changes and heartbeats up; core answers AUTH (verifying the
//!   token with [`auth`]), records the session in [`sessions`] and sends deliveries down the
//!   edge's queue.
//! - [`push`]: pushes to devices, users, rooms and everyone, fanned out to the edges that
//!   hold the recipients, all-or-nothing with 429 back-pressure when a queue is full.
//! - [`api`]: the business HTTP API (pushes, presence, online counts, the edge list ordered by
//!   [`balancer`]).
//! - [`chat`]: stored messaging's client ops (SEND, SYNC, READ, PUSH_ACK) over
//!   [`roam_messaging`], and delivery of stored messages to online devices.
//! - [`heartbeat`]: the adaptive client heartbeat policy (sans-IO).
//! - [`webhook`]: offline notifications, a signed POST per stored message whose recipient
//!   has no online device, queued, retried with backoff, shed when full.
//! - [`secret_file`]: the secrets kept in the data directory (token secret, API key,
//!   internal key), written atomically and owner-only.
//!
//! Stored messaging's data model (conversations, inboxes, groups, read cursors) lives in the
//! `roam-messaging` crate; core owns the frames, the business routes and delivery.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod balancer;
pub mod chat;
pub mod edges;
pub mod heartbeat;
mod inbox_order;
pub mod link;
pub mod metrics;
pub mod push;
pub mod secret_file;
pub mod service;
pub mod sessions;
pub mod webhook;

pub use service::{Core, CoreOptions};
