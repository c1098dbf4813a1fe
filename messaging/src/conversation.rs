//! Who a message is for: a 1:1 conversation (a pair of users) or a group, named on the wire
//! as a user id (`bob`) or `group:<id>`, and the history timeline each has.

use roam_store::TimelineId;

use crate::MessagingError;

/// The prefix that names a group in `to`, `peer` and `conversation` fields.
pub const GROUP_PREFIX: &str = "group:";
/// Longest user or group id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Separates the two users in a pair's name (no user id contains a control character).
const PAIR_SEPARATOR: char = '\n';

/// A conversation: its history is one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// Two users (`a <= b`; equal for notes to oneself).
    Direct {
        /// The smaller user id.
        a: String,
        /// The larger user id.
        b: String,
    },
    /// A group, by id.
    Group(String),
}

/// Checks a user id: 1 to [`MAX_ID_LEN`] bytes, no control characters, not `group:…`.
pub fn check_user(user: &str) -> Result<(), MessagingError> {
    if user.is_empty() || user.len() > MAX_ID_LEN {
        return Err(MessagingError::Invalid(format!(
            "user id {user:?}: must be 1 to {MAX_ID_LEN} bytes"
        )));
    }
    if user.chars().any(char::is_control) || user.starts_with(GROUP_PREFIX) {
        return Err(MessagingError::Invalid(format!(
            "user id {user:?}: no control characters, and not starting with {GROUP_PREFIX:?}"
        )));
    }
    Ok(())
}

/// Checks a group id: 1 to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 _ . -`.
pub fn check_group(group: &str) -> Result<(), MessagingError> {
    let ok = group
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if group.is_empty() || group.len() > MAX_ID_LEN || !ok {
        return Err(MessagingError::Invalid(format!(
            "group id {group:?}: must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ . -"
        )));
    }
    Ok(())
}

impl Conversation {
    /// The 1:1 conversation of two users.
    pub fn direct(x: &str, y: &str) -> Result<Self, MessagingError> {
        check_user(x)?;
        check_user(y)?;
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        Ok(Conversation::Direct {
            a: a.to_owned(),
            b: b.to_owned(),
        })
    }

    /// The conversation `me` means by `name` (a peer's user id or `group:<id>`).
    pub fn parse(me: &str, name: &str) -> Result<Self, MessagingError> {
        match name.strip_prefix(GROUP_PREFIX) {
            Some(group) => {
                check_group(group)?;
                Ok(Conversation::Group(group.to_owned()))
            }
            None => Conversation::direct(me, name).map_err(|e| match e {
                MessagingError::Invalid(m) => MessagingError::Invalid(format!(
                    "{m} (a recipient is a user id or {GROUP_PREFIX}<id>)"
                )),
                other => other,
            }),
        }
    }

    /// Its history timeline.
    pub fn timeline(&self) -> TimelineId {
        match self {
            Conversation::Direct { a, b } => TimelineId::direct(format!("{a}{PAIR_SEPARATOR}{b}")),
            Conversation::Group(g) => TimelineId::group(g.clone()),
        }
    }

    /// How `me` names it: the other user, or `group:<id>`.
    pub fn name_for(&self, me: &str) -> String {
        match self {
            Conversation::Direct { a, b } => if a == me { b } else { a }.clone(),
            Conversation::Group(g) => format!("{GROUP_PREFIX}{g}"),
        }
    }

    /// Whether `user` takes part (always true of a pair's two users; groups ask the store).
    pub(crate) fn is_pair_member(&self, user: &str) -> bool {
        matches!(self, Conversation::Direct { a, b } if a == user || b == user)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn pairs_are_one_timeline_from_either_side() {
        let ab = Conversation::parse("alice", "bob").unwrap();
        let ba = Conversation::parse("bob", "alice").unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.timeline(), TimelineId::direct("alice\nbob"));
        assert_eq!(ab.name_for("alice"), "bob");
        assert_eq!(ab.name_for("bob"), "alice");
        let g = Conversation::parse("alice", "group:team-1").unwrap();
        assert_eq!(g.timeline(), TimelineId::group("team-1"));
        assert_eq!(g.name_for("x"), "group:team-1");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in ["", "group:", "group:a b", "a\nb", &"x".repeat(129)] {
            assert!(
                matches!(
                    Conversation::parse("alice", bad),
                    Err(MessagingError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
