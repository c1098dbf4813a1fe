//! The ID service's keys and values in the store.
//!
//! # Key Schema
//!
//! ```text
//! ("ids", 0, tag)                -> v1 (max_id, step, base_step, updated_at_ms)   segment tag
//! ("ids", 1, generator, worker)  -> v1 (owner, expires_at_ms, reserved_until_ms)  worker lease
//! ```
//!
//! - **Segment tag** (`tag`: a string). `max_id`: every ID below it has been handed to some
//!   allocator; taking a segment is one transaction `[max_id, max_id + step)`, `max_id +=
//!   step`. `step`: the step last used (Leaf's dynamic step, persisted so a restarted
//!   allocator resumes from it); `base_step`: the step the tag was created with (the dynamic
//!   step never goes below it); `updated_at_ms`: when the last segment was taken (for
//!   monitoring). Created by `create_tag`, never implicitly; never deleted.
//! - **Worker lease** (`generator`: `"snowflake"` or `"sonyflake"`, `worker`: an integer).
//!   `owner`: the process instance holding it (empty once released); `expires_at_ms`: it is
//!   free after this (0 when released); `reserved_until_ms`: the holder may issue IDs with
//!   timestamps up to here and no further. Whoever takes the lease next issues only *after*
//!   it, so a worker id is never reused for a timestamp already used, whatever the clocks do.
//!   A graceful release lowers it to the last timestamp actually issued.
//!
//! `v1` is a schema-version byte in front of each tuple-encoded value (the store's
//! convention, see `docs/data-model.md`); a value of another version reads as corrupt.
//!
//! Contention: a segment take reads and writes its tag key, so allocators taking segments of
//! one tag at the same moment conflict and retry; at one take per segment (minutes apart in
//! steady state, thanks to the dynamic step) this is rare. A lease claim reads the lease
//! range with a snapshot read and then the chosen key with a plain read, so two claimers
//! conflict only when they pick the same worker id; heartbeats touch only their own key.

use roam_store::StoreError;
use roam_store::codec;
use roam_store::tuple::{TuplePack, TupleUnpack, pack, unpack};

const PREFIX: &str = "ids";
const SEGMENT: u16 = 0;
const LEASE: u16 = 1;
/// Schema version of every value here.
const V1: u8 = 1;

/// The key of a segment tag.
pub(crate) fn tag(tag: &str) -> Vec<u8> {
    pack(&(PREFIX, SEGMENT, tag))
}

/// The key of one worker lease.
pub(crate) fn lease(generator: &str, worker: u32) -> Vec<u8> {
    pack(&(PREFIX, LEASE, generator, worker))
}

/// The prefix of every lease of `generator`.
pub(crate) fn leases(generator: &str) -> Vec<u8> {
    pack(&(PREFIX, LEASE, generator))
}

/// The worker id in a lease key.
pub(crate) fn lease_worker(key: &[u8]) -> Result<u32, StoreError> {
    let (_, _, _, worker): (String, u16, String, u32) =
        unpack(key).map_err(|e| StoreError::corrupt(key, format!("not a lease key: {e}")))?;
    Ok(worker)
}

/// A segment tag's stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagRecord {
    pub(crate) max_id: u64,
    pub(crate) step: u64,
    pub(crate) base_step: u64,
    pub(crate) updated_at_ms: u64,
}

pub(crate) fn encode_tag(r: &TagRecord) -> Vec<u8> {
    encode(&(r.max_id, r.step, r.base_step, r.updated_at_ms))
}

pub(crate) fn decode_tag(key: &[u8], value: &[u8]) -> Result<TagRecord, StoreError> {
    let (max_id, step, base_step, updated_at_ms) = decode(key, value)?;
    Ok(TagRecord {
        max_id,
        step,
        base_step,
        updated_at_ms,
    })
}

/// A worker lease's stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    pub(crate) owner: String,
    pub(crate) expires_at_ms: u64,
    pub(crate) reserved_until_ms: u64,
}

pub(crate) fn encode_lease(r: &LeaseRecord) -> Vec<u8> {
    encode(&(r.owner.as_str(), r.expires_at_ms, r.reserved_until_ms))
}

pub(crate) fn decode_lease(key: &[u8], value: &[u8]) -> Result<LeaseRecord, StoreError> {
    let (owner, expires_at_ms, reserved_until_ms) = decode(key, value)?;
    Ok(LeaseRecord {
        owner,
        expires_at_ms,
        reserved_until_ms,
    })
}

fn encode<T: TuplePack>(value: &T) -> Vec<u8> {
    codec::encode(V1, value)
}

fn decode<'de, T: TupleUnpack<'de>>(key: &[u8], stored: &'de [u8]) -> Result<T, StoreError> {
    codec::decode(key, stored, V1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_pinned() {
        // The bytes both backends store; changing them is a schema change.
        assert_eq!(tag("a"), b"\x02ids\x00\x14\x02a\x00");
        assert_eq!(
            lease("snowflake", 258),
            b"\x02ids\x00\x15\x01\x02snowflake\x00\x16\x01\x02"
        );
        let r = TagRecord {
            max_id: 5,
            step: 1,
            base_step: 1,
            updated_at_ms: 0,
        };
        assert_eq!(encode_tag(&r), b"\x01\x15\x05\x15\x01\x15\x01\x14");
    }

    #[test]
    fn values_round_trip_and_faults_are_named() {
        let l = LeaseRecord {
            owner: "host/1/ab".into(),
            expires_at_ms: u64::MAX,
            reserved_until_ms: 7,
        };
        let k = lease("sonyflake", 3);
        assert_eq!(decode_lease(&k, &encode_lease(&l)).unwrap(), l);
        assert_eq!(lease_worker(&k).unwrap(), 3);
        let err = decode_tag(b"k", b"\x02\x15\x01").unwrap_err().to_string();
        assert!(err.contains("schema version 2"), "{err}");
        assert!(decode_tag(b"k", b"").is_err());
        assert!(decode_tag(b"k", b"\x01garbage").is_err());
    }

    proptest! {
        #[test]
        fn lease_keys_sort_by_worker_inside_their_generator(a: u32, b: u32) {
            let (ka, kb) = (lease("snowflake", a), lease("snowflake", b));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert!(ka.starts_with(&leases("snowflake")));
            prop_assert!(!ka.starts_with(&leases("sonyflake")));
        }

        #[test]
        fn tag_records_round_trip(max_id: u64, step: u64, base_step: u64, at: u64) {
            let r = TagRecord { max_id, step, base_step, updated_at_ms: at };
            prop_assert_eq!(decode_tag(b"k", &encode_tag(&r)).unwrap(), r);
        }
    }
}
