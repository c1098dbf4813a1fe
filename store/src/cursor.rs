//! Cursors: per (user, device, timeline) delivered and read positions, and unread counts
//! derived from them.
//!
//! # Key Schema
//!
//! ```text
//! ("cur", user, kind, owner, device) -> v1 (delivered_seq, read_seq)
//! ```
//!
//! `(kind, owner)` is the timeline the positions are in (a user's inbox, or a large group's
//! timeline read through its cursor). Keyed user-first, then timeline, so one range read
//! finds every device of a user on a timeline. Positions only move forward, never past the
//! timeline's newest seq, and `read <= delivered` always (reading implies delivery).
//! Contention: one key per device; the timeline head is read with a snapshot read, so
//! moving a cursor never conflicts with appends.

use crate::{
    RangeOption, Store, StoreError, Tx, TxError, codec,
    range::strinc,
    timeline::{TimelineId, read_head},
};
use foundationdb_tuple::pack;

const PREFIX: &str = "cur";
const V1: u8 = 1;

/// A device's positions in one timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Newest seq delivered to the device.
    pub delivered: u64,
    /// Newest seq the user has read on the device.
    pub read: u64,
}

fn key(user: &str, timeline: &TimelineId, device: &str) -> Vec<u8> {
    pack(&(
        PREFIX,
        user,
        timeline.kind.code(),
        timeline.owner.as_str(),
        device,
    ))
}

fn devices_prefix(user: &str, timeline: &TimelineId) -> Vec<u8> {
    pack(&(PREFIX, user, timeline.kind.code(), timeline.owner.as_str()))
}

fn decode(key: &[u8], value: &[u8]) -> Result<Cursor, StoreError> {
    let (delivered, read): (u64, u64) = codec::decode(key, value, V1)?;
    Ok(Cursor { delivered, read })
}

fn load(tx: &mut Tx<'_>, key: &[u8]) -> Result<Cursor, TxError> {
    Ok(match tx.get(key)? {
        Some(v) => decode(key, &v)?,
        None => Cursor::default(),
    })
}

/// Which position a move targets.
#[derive(Clone, Copy)]
enum Mark {
    Delivered,
    Read,
}

/// The cursors layer; get one with [`Store::cursors`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cursors {
    store: Store,
}

impl Cursors {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// The positions of `user`'s `device` in `timeline` (zeros when never set).
    pub async fn get(
        &self,
        user: &str,
        device: &str,
        timeline: &TimelineId,
    ) -> Result<Cursor, StoreError> {
        let k = key(user, timeline, device);
        self.store.transact(move |tx| load(tx, &k)).await
    }

    /// Records delivery up to `seq` (clamped to the newest seq; never moves back).
    pub async fn mark_delivered(
        &self,
        user: &str,
        device: &str,
        timeline: &TimelineId,
        seq: u64,
    ) -> Result<Cursor, StoreError> {
        self.mark(user, device, timeline, seq, Mark::Delivered)
            .await
    }

    /// Records reading up to `seq` (clamped; never moves back); delivery moves along.
    pub async fn mark_read(
        &self,
        user: &str,
        device: &str,
        timeline: &TimelineId,
        seq: u64,
    ) -> Result<Cursor, StoreError> {
        self.mark(user, device, timeline, seq, Mark::Read).await
    }

    async fn mark(
        &self,
        user: &str,
        device: &str,
        timeline: &TimelineId,
        seq: u64,
        mark: Mark,
    ) -> Result<Cursor, StoreError> {
        let k = key(user, timeline, device);
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| {
                let seq = seq.min(read_head(tx, &timeline, true)?);
                let old = load(tx, &k)?;
                let mut new = old;
                match mark {
                    Mark::Delivered => new.delivered = new.delivered.max(seq),
                    Mark::Read => {
                        new.read = new.read.max(seq);
                        new.delivered = new.delivered.max(new.read);
                    }
                }
                if new != old {
                    tx.set(&k, &codec::encode(V1, &(new.delivered, new.read)))?;
                }
                Ok(new)
            })
            .await
    }

    /// Messages in `timeline` newer than what `device` has read.
    pub async fn unread(
        &self,
        user: &str,
        device: &str,
        timeline: &TimelineId,
    ) -> Result<u64, StoreError> {
        let k = key(user, timeline, device);
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| {
                let head = read_head(tx, &timeline, true)?;
                Ok(head.saturating_sub(load(tx, &k)?.read))
            })
            .await
    }

    /// Messages in `timeline` newer than what `user` has read on any device.
    pub async fn unread_for_user(
        &self,
        user: &str,
        timeline: &TimelineId,
    ) -> Result<u64, StoreError> {
        let prefix = devices_prefix(user, timeline);
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| {
                let head = read_head(tx, &timeline, true)?;
                let devices =
                    tx.get_range(&RangeOption::between(prefix.clone(), strinc(&prefix)))?;
                let mut read = 0;
                for kv in devices {
                    read = read.max(decode(&kv.key, &kv.value)?.read);
                }
                Ok(head.saturating_sub(read))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_pinned_and_devices_share_a_prefix() {
        let t = TimelineId::inbox("bob");
        assert_eq!(
            key("bob", &t, "phone"),
            b"\x02cur\x00\x02bob\x00\x15\x01\x02bob\x00\x02phone\x00"
        );
        assert!(key("bob", &t, "phone").starts_with(&devices_prefix("bob", &t)));
        assert!(!key("bobby", &t, "phone").starts_with(&devices_prefix("bob", &t)));
    }
}
