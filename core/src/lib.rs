//! # roam-core — auth, sessions, presence, the edge link and the business API
//!
//! Core is what edges report to and business backends call.
//!
//! ## Main types and how they connect
//!
//! - [`Core`], built by [`Core::new`] over a `roam_store::Store`, an ID source
//!   (`roam_idsvc::IdSource`), a token [`auth::Verifier`], [`CoreOptions`] and
//!   [`metrics::CoreMetrics`]: the shared state — sessions and presence kept in the store,
//!   stored messaging, the registry of linked edges with their delivery queues. [`Core::run_reaper`] expires the sessions of edges that went silent.
//! - [`Core::link_service`]: the internal gRPC service `EdgeLink`, served on the internal
//!   port. An edge registers, then streams client connects, disconnects, room changes and
//!   heartbeats up; core answers AUTH (verifying the token with [`auth`]), records the
//!   session and sends deliveries down the edge's queue, its heartbeat interval set by
//!   [`heartbeat::HeartbeatPolicy`] (sans-IO).
//! - [`api::router`]: the business HTTP API (pushes to devices, users, rooms and everyone,
//!   fanned out to the edges that hold the recipients, all-or-nothing with 429 back-pressure
//!   when a queue is full; presence; online counts; the edge list ordered for a client),
//!   guarded by [`api::require_api_key`].
//! - Stored messaging: the client ops SEND, SYNC, READ and PUSH_ACK over `roam_messaging`, and
//!   delivery of stored messages to online devices in inbox order, answered through the
//!   edge link.
//! - [`webhook`]: offline notifications, a signed POST per stored message whose recipient
//!   has no online device, queued, retried with backoff, shed when full.
//! - [`secret_file`]: the secrets kept in the data directory (token secret, API key,
//!   internal key), written atomically and owner-only; [`auth::Secret`] mints tokens.
//!
//! Inside (private): `service` (the [`Core`] type), `sessions`, `edges`, `link`, `push`,
//! `chat`, `inbox_order`, `balancer`.
//!
//! Stored messaging's data model (conversations, inboxes, groups, read cursors) lives in the
//! `roam-messaging` crate; core owns the frames, the business routes and delivery.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
mod balancer;
mod chat;
mod edges;
pub mod heartbeat;
mod inbox_order;
mod link;
pub mod metrics;
mod push;
pub mod secret_file;
mod send_batch;
mod service;
mod sessions;
pub mod webhook;

pub use service::{Core, CoreOptions};
