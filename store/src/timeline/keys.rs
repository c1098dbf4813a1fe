//! Timeline keys and values.
//!
//! # Key Schema
//!
//! ```text
//! ("tl", kind, owner, 0)       -> v1 (last_seq)          head: newest seq; absent = 0
//! ("tl", kind, owner, 1)       -> v1 (first_seq)         start: oldest kept seq; absent = 1
//! ("tl", kind, owner, 2, seq)  -> v1 entry
//!
//! entry, home copy:  (msg_id, created_at_ms, body: bytes, nil)
//! entry, reference:  (msg_id, created_at_ms, nil, (home_kind, home_owner, home_seq))
//! ```
//!
//! `kind` is 1 inbox, 2 outbox, 3 group, 4 direct (a 1:1 history); `owner` the user, group or
//! pair (a string); `seq` and ids are tuple integers, so entries sort by seq. `v1` is the
//! schema-version byte in front of each value ([`crate::codec`]).
//!
//! A message body is stored once, in its *home* timeline (the sender's outbox, or the group
//! timeline); every other timeline it lands in holds a reference to `(home, home_seq)`.
//! Trimming the home removes the body; references to it then read as expired.
//!
//! Contention: every append reads and writes its timelines' `head`, so appends to one
//! timeline conflict with each other. The sequencer ([`super::sequencer`]) runs each
//! timeline's appends in one transaction at a time, so inside one process they never do.
//! `start` is written only by trimming, which reads `head` with a snapshot read, so retention
//! never conflicts with appends.

use super::{TimelineId, TimelineKind};
use crate::{StoreError, codec};
use bytes::Bytes;
use foundationdb_tuple::{Bytes as TupleBytes, pack};

const PREFIX: &str = "tl";
const HEAD: u16 = 0;
const START: u16 = 1;
const ENTRY: u16 = 2;
/// Schema version of every timeline value.
const V1: u8 = 1;

pub(crate) fn head(t: &TimelineId) -> Vec<u8> {
    pack(&(PREFIX, t.kind.code(), t.owner.as_str(), HEAD))
}

pub(crate) fn start(t: &TimelineId) -> Vec<u8> {
    pack(&(PREFIX, t.kind.code(), t.owner.as_str(), START))
}

pub(crate) fn entry(t: &TimelineId, seq: u64) -> Vec<u8> {
    pack(&(PREFIX, t.kind.code(), t.owner.as_str(), ENTRY, seq))
}

/// The first key after every entry of `t`.
pub(crate) fn entries_end(t: &TimelineId) -> Vec<u8> {
    let mut k = pack(&(PREFIX, t.kind.code(), t.owner.as_str(), ENTRY));
    k.push(0xff);
    k
}

/// The seq in an entry key.
pub(crate) fn entry_seq(key: &[u8]) -> Result<u64, StoreError> {
    let (_, _, _, _, seq): (String, u16, String, u16, u64) = foundationdb_tuple::unpack(key)
        .map_err(|e| StoreError::corrupt(key, format!("not a timeline entry key: {e}")))?;
    Ok(seq)
}

pub(crate) fn encode_seq(seq: u64) -> Vec<u8> {
    codec::encode(V1, &(seq,))
}

pub(crate) fn decode_seq(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let (seq,): (u64,) = codec::decode(key, value, V1)?;
    Ok(seq)
}

/// A decoded entry value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    Body(Bytes),
    Ref { home: TimelineId, seq: u64 },
}

pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let (body, home) = match &entry.content {
        Content::Body(body) => (Some(TupleBytes::from(body.as_ref())), None),
        Content::Ref { home, seq } => (None, Some((home.kind.code(), home.owner.as_str(), *seq))),
    };
    codec::encode(V1, &(entry.id, entry.created_at_ms, body, home))
}

/// Bytes an entry adds on top of its body (for batching budgets and size checks).
pub(crate) const ENTRY_OVERHEAD: usize = 64;

pub(crate) fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
    type Raw<'a> = (u64, u64, Option<TupleBytes<'a>>, Option<(u16, String, u64)>);
    let (id, created_at_ms, body, home): Raw<'_> = codec::decode(key, value, V1)?;
    let content = match (body, home) {
        (Some(body), None) => Content::Body(Bytes::copy_from_slice(&body)),
        (None, Some((kind, owner, seq))) => {
            let kind = TimelineKind::from_code(kind)
                .ok_or_else(|| StoreError::corrupt(key, format!("unknown timeline kind {kind}")))?;
            Content::Ref {
                home: TimelineId { kind, owner },
                seq,
            }
        }
        _ => {
            return Err(StoreError::corrupt(
                key,
                "entry holds neither a body nor a reference (or both)",
            ));
        }
    };
    Ok(Entry {
        id,
        created_at_ms,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_round_trip() {
        let t = TimelineId::outbox("alice");
        for content in [
            Content::Body(Bytes::from_static(b"hi\0there")),
            Content::Ref {
                home: TimelineId::group("g1"),
                seq: 9,
            },
        ] {
            let e = Entry {
                id: u64::MAX,
                created_at_ms: 1_700_000_000_000,
                content,
            };
            let key = entry(&t, 3);
            assert_eq!(decode_entry(&key, &encode_entry(&e)).unwrap(), e);
            assert_eq!(entry_seq(&key).unwrap(), 3);
        }
    }

    #[test]
    fn layout_is_pinned() {
        // The bytes both backends store; changing them is a schema change.
        assert_eq!(
            head(&TimelineId::inbox("a")),
            b"\x02tl\x00\x15\x01\x02a\x00\x14"
        );
        assert_eq!(
            entry(&TimelineId::inbox("a"), 258),
            b"\x02tl\x00\x15\x01\x02a\x00\x15\x02\x16\x01\x02"
        );
        assert_eq!(encode_seq(5), b"\x01\x15\x05");
    }

    proptest! {
        #[test]
        fn entry_keys_sort_by_seq_and_stay_inside_their_timeline(
            owner in "[a-z\u{0}-\u{2}]{0,8}", a: u64, b: u64,
        ) {
            let t = TimelineId::inbox(owner);
            let (ka, kb) = (entry(&t, a), entry(&t, b));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert!(ka > head(&t) && ka > start(&t) && ka < entries_end(&t));
        }

        #[test]
        fn timelines_never_interleave(x in "[a-z\u{0}\u{ff}]{0,6}", y in "[a-z\u{0}\u{ff}]{0,6}", s: u64) {
            prop_assume!(x != y);
            let (tx, ty) = (TimelineId::inbox(x), TimelineId::inbox(y));
            let k = entry(&tx, s);
            prop_assert!(!(k > head(&ty) && k < entries_end(&ty)));
        }
    }
}
