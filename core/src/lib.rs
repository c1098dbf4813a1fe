//! # roam-core — auth, sessions, presence, messaging (the logic and job roles)
//!
//! Will own authentication, sessions and presence, stored timelines, the edge link and the
//! business API. Today it holds [`auth`]: client tokens (JWT, HS256) — the data dir's secret
//! ([`auth::Secret`]), minting ([`auth::Secret::mint`], used by `roam token`) and verification
//! ([`auth::Secret::verify`]) with expiry and audience checked.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod balancer;
pub mod edges;
pub mod heartbeat;
pub mod link;
pub mod metrics;
pub mod push;
pub mod secret_file;
pub mod service;
pub mod sessions;

pub use service::{Core, CoreOptions};
