//! Session, presence and heartbeat keys.
//!
//! # Key Schema
//!
//! ```text
//! ("sess", 1, user, device)           -> v1 (edge_id, conn_id, platform, transport, connected_at_ms)
//! ("sess", 2, device)                 -> v1 (user)            device index: push by device
//! ("sess", 3, edge_id, user, device)  -> v1 (conn_id)         an edge's sessions: expiry
//! ("presence", user)                  -> v1 (last_seen_ms)    when the user was last online
//! ("hb", user, device)                -> v1 (interval_secs)   adaptive heartbeat per device
//! ```
//!
//! A session is one authenticated connection of a device: at most one per `(user, device)`
//! (a new connection of the same device replaces the old one, which is kicked), and a device
//! id belongs to one user at a time (a device id claimed by another user moves to them).
//! The three `sess` rows of a session are written and cleared in one transaction. A user is
//! online while any `(1, user, *)` row exists; `presence` holds the time their last session
//! ended. `v1` is the schema-version byte (`roam_store::codec`).
//!
//! Contention: a session's rows are touched by its own connect and disconnect, and by the
//! expiry of its edge; a connect reads the rows it replaces, so a racing disconnect of the old
//! connection retries instead of clearing the new one.

use roam_store::tuple::{Subspace, pack};

const SESS: &str = "sess";
const BY_USER: i64 = 1;
const BY_DEVICE: i64 = 2;
const BY_EDGE: i64 = 3;
const PRESENCE: &str = "presence";
const HEARTBEAT: &str = "hb";
/// Schema version of every value here.
pub(super) const V1: u8 = 1;

pub(super) fn session(user: &str, device: &str) -> Vec<u8> {
    pack(&(SESS, BY_USER, user, device))
}

/// Every session of `user`.
pub(super) fn user_sessions(user: &str) -> Subspace {
    Subspace::from((SESS, BY_USER, user))
}

pub(super) fn device(device: &str) -> Vec<u8> {
    pack(&(SESS, BY_DEVICE, device))
}

pub(super) fn edge_session(edge: &str, user: &str, device: &str) -> Vec<u8> {
    pack(&(SESS, BY_EDGE, edge, user, device))
}

/// Every session on `edge`.
pub(super) fn edge_sessions(edge: &str) -> Subspace {
    Subspace::from((SESS, BY_EDGE, edge))
}

pub(super) fn presence(user: &str) -> Vec<u8> {
    pack(&(PRESENCE, user))
}

pub(super) fn heartbeat(user: &str, device: &str) -> Vec<u8> {
    pack(&(HEARTBEAT, user, device))
}
