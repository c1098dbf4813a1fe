//! Session, presence and heartbeat keys.
//!
//! # Key Schema
//!
//! ```text
//! ("sess", 0)                         -> v1 (layout)          this layer's key layout: 2
//! ("sess", 1, user, device)           -> v1 (edge_id, conn_id, platform, transport, connected_at_ms)
//! ("sess", 3, edge_id, user, device)  -> v1 (conn_id)         an edge's sessions: expiry
//! ("presence", user)                  -> v1 (last_seen_ms)    when the user was last online
//! ("hb", user, device)                -> v1 (interval_secs)   adaptive heartbeat per device
//! ```
//!
//! A device is always named with its user: a device id is the client's own label (AUTH's
//! `device_id`), unique only among that user's devices, so `("alice", "phone")` and
//! `("bob", "phone")` are two devices that never touch each other's rows. A session is one
//! authenticated connection of a device: at most one per `(user, device)` (a new connection
//! of the same device replaces the old one, which is kicked). A push to a device reads
//! `(1, user, device)` directly. The two `sess` rows of a session are written and cleared in
//! one transaction. A user is online while any `(1, user, *)` row exists; `presence` holds
//! the time their last session ended. `v1` is the schema-version byte (`roam_store::codec`).
//!
//! Layout 1 (before issue 14) also kept `("sess", 2, device) -> v1 (user)`, a device index
//! in which one device id belonged to one user at a time, so a token for another user could
//! take the device over. Layout 2 drops it: [`LAYOUT`] is recorded at `("sess", 0)`, and
//! upgrading from layout 1 (no marker) clears the old index. `2` is never reused.
//!
//! Contention: a session's rows are touched by its own connect and disconnect, and by the
//! expiry of its edge; a connect reads the rows it replaces, so a racing disconnect of the old
//! connection retries instead of clearing the new one.

use roam_store::tuple::{Subspace, pack};

const SESS: &str = "sess";
const LAYOUT_MARKER: i64 = 0;
const BY_USER: i64 = 1;
/// Layout 1's device index (`(device) -> (user)`), cleared by the upgrade to layout 2.
const RETIRED_BY_DEVICE: i64 = 2;
const BY_EDGE: i64 = 3;
const PRESENCE: &str = "presence";
const HEARTBEAT: &str = "hb";
/// Schema version of every value here.
pub(super) const V1: u8 = 1;
/// The key layout this build reads and writes (recorded at [`layout`]).
pub(super) const LAYOUT: u64 = 2;

/// Where the layer's layout version is recorded.
pub(super) fn layout() -> Vec<u8> {
    pack(&(SESS, LAYOUT_MARKER))
}

/// Layout 1's device index, every row of it.
pub(super) fn retired_device_index() -> Subspace {
    Subspace::from((SESS, RETIRED_BY_DEVICE))
}

pub(super) fn session(user: &str, device: &str) -> Vec<u8> {
    pack(&(SESS, BY_USER, user, device))
}

/// Every session of `user`.
pub(super) fn user_sessions(user: &str) -> Subspace {
    Subspace::from((SESS, BY_USER, user))
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

#[cfg(test)]
mod tests {
    use super::*;
    use roam_store::codec::encode;

    #[test]
    fn layout_is_pinned() {
        // The bytes both backends store; changing them is a schema change (bump LAYOUT).
        assert_eq!(layout(), b"\x02sess\x00\x14");
        assert_eq!(
            session("alice", "phone"),
            b"\x02sess\x00\x15\x01\x02alice\x00\x02phone\x00"
        );
        assert_eq!(
            edge_session("e1", "alice", "phone"),
            b"\x02sess\x00\x15\x03\x02e1\x00\x02alice\x00\x02phone\x00"
        );
        assert_eq!(presence("alice"), b"\x02presence\x00\x02alice\x00");
        assert_eq!(
            heartbeat("alice", "phone"),
            b"\x02hb\x00\x02alice\x00\x02phone\x00"
        );
        assert_eq!(retired_device_index().bytes(), b"\x02sess\x00\x15\x02");
        assert_eq!(encode(V1, &(LAYOUT,)), b"\x01\x15\x02");
        assert_eq!(
            encode(V1, &("e1", 7u64, "ios", "ws", 258u64)),
            b"\x01\x02e1\x00\x15\x07\x02ios\x00\x02ws\x00\x16\x01\x02"
        );
    }

    #[test]
    fn devices_of_different_users_never_share_a_key_or_a_range() {
        // Ids may hold any character, '/' and NUL included: the tuple encoding keeps
        // ("a", "b/c") and ("a/b", "c") apart, and "al"'s range away from "alice"'s.
        assert_ne!(session("a", "b/c"), session("a/b", "c"));
        assert_ne!(session("a\0", "b"), session("a", "\0b"));
        assert_ne!(session("alice", "phone"), session("bob", "phone"));
        let (begin, end) = user_sessions("al").range();
        let alice = session("alice", "phone");
        assert!(!(alice > begin && alice < end));
        let retired = retired_device_index().range();
        for key in [layout(), session("a", "b"), edge_session("e", "a", "b")] {
            assert!(!(key >= retired.0 && key < retired.1), "{key:?}");
        }
    }
}
