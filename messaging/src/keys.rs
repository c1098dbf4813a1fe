//! The messaging layer's own keys (the messages themselves live in the store's timelines).
//!
//! # Key Schema
//!
//! ```text
//! ("msg", "grp", group, 0)          -> v1 (created_at_ms, members)   group record
//! ("msg", "grp", group, 1, user)    -> v1 (joined_at_ms)             member list
//! ("msg", "ugrp", user, group)      -> v1 (joined_at_ms)             a user's groups
//! ("msg", "conv", user, peer)       -> v1 ()                         a user's 1:1 conversations
//! ("msg", "read", user, kind, owner) -> v1 (read_seq)                read cursor, per user
//!                                                                    and conversation
//! ```
//!
//! `kind` is `"d"` (1:1, `owner` the pair's name) or `"g"` (group, `owner` the group id).
//! `read_seq` counts in the conversation's history (its `conversation_seq`). A member appears
//! under both the group and the user, written in one transaction. The conversation index is
//! written by the send's own transaction (`MultiAppend::extra`). Contention: the group record
//! counts members, so membership changes of one group serialise; sends only read it.

use roam_store::tuple::pack;

use crate::conversation::Conversation;

const PREFIX: &str = "msg";
pub(crate) const V1: u8 = 1;

pub(crate) fn group(group: &str) -> Vec<u8> {
    pack(&(PREFIX, "grp", group, 0))
}

pub(crate) fn group_member(group: &str, user: &str) -> Vec<u8> {
    pack(&(PREFIX, "grp", group, 1, user))
}

pub(crate) fn group_members(group: &str) -> Vec<u8> {
    pack(&(PREFIX, "grp", group, 1))
}

pub(crate) fn user_group(user: &str, group: &str) -> Vec<u8> {
    pack(&(PREFIX, "ugrp", user, group))
}

pub(crate) fn user_groups(user: &str) -> Vec<u8> {
    pack(&(PREFIX, "ugrp", user))
}

pub(crate) fn user_conversation(user: &str, peer: &str) -> Vec<u8> {
    pack(&(PREFIX, "conv", user, peer))
}

pub(crate) fn user_conversations(user: &str) -> Vec<u8> {
    pack(&(PREFIX, "conv", user))
}

pub(crate) fn read_cursor(user: &str, conversation: &Conversation) -> Vec<u8> {
    let (kind, owner) = match conversation {
        Conversation::Direct { .. } => ("d", conversation.timeline().owner),
        Conversation::Group(g) => ("g", g.clone()),
    };
    pack(&(PREFIX, "read", user, kind, owner.as_str()))
}

/// The last element of a key under `prefix` that is a string (a member, a group, a peer).
pub(crate) fn last_string(prefix: &[u8], key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix)?;
    roam_store::tuple::unpack::<String>(rest).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn layout_is_pinned() {
        // The bytes both backends store; changing them is a schema change.
        assert_eq!(group("g"), b"\x02msg\x00\x02grp\x00\x02g\x00\x14");
        assert_eq!(
            group_member("g", "bob"),
            b"\x02msg\x00\x02grp\x00\x02g\x00\x15\x01\x02bob\x00"
        );
        assert_eq!(
            user_group("bob", "g"),
            b"\x02msg\x00\x02ugrp\x00\x02bob\x00\x02g\x00"
        );
        assert_eq!(
            user_conversation("bob", "al"),
            b"\x02msg\x00\x02conv\x00\x02bob\x00\x02al\x00"
        );
        let pair = Conversation::direct("bob", "al").unwrap();
        assert_eq!(
            read_cursor("bob", &pair),
            b"\x02msg\x00\x02read\x00\x02bob\x00\x02d\x00\x02al\x0abob\x00"
        );
        assert_eq!(
            read_cursor("bob", &Conversation::Group("g".into())),
            b"\x02msg\x00\x02read\x00\x02bob\x00\x02g\x00\x02g\x00"
        );
    }

    #[test]
    fn prefixes_hold_their_keys_and_no_others() {
        assert!(group_member("g", "u").starts_with(&group_members("g")));
        assert!(!group_member("g2", "u").starts_with(&group_members("g")));
        assert!(!group("g").starts_with(&group_members("g")));
        assert!(user_group("u", "g").starts_with(&user_groups("u")));
        assert!(!user_group("u2", "g").starts_with(&user_groups("u")));
        assert_eq!(
            last_string(&group_members("g"), &group_member("g", "u\0x")).as_deref(),
            Some("u\0x")
        );
    }
}
