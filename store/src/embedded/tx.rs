//! One attempt of an embedded transaction: a fjall snapshot, a write buffer, read conflicts.

use super::{
    resolver::ReadConflict,
    state::{ActiveRead, Shared},
    writes::{Lookup, WriteBuffer},
};
use crate::{KeyValue, StoreError, TxError, tx::RawTx, tx::add_le};
use bytes::Bytes;
use fjall::Readable;
use std::{
    ops::Bound::{Excluded, Included},
    sync::Arc,
};

pub(super) struct EmbeddedTx {
    shared: Arc<Shared>,
    snapshot: fjall::Snapshot,
    active: ActiveRead,
    /// Every commit this snapshot may contain has a version `<=` this (see `state`).
    visible_upper: u64,
    reads: Vec<ReadConflict>,
    writes: WriteBuffer,
}

/// What a finished attempt hands to the commit path.
pub(super) struct Finished {
    pub(super) active: ActiveRead,
    pub(super) visible_upper: u64,
    pub(super) reads: Vec<ReadConflict>,
    pub(super) writes: WriteBuffer,
}

impl EmbeddedTx {
    pub(super) fn begin(shared: &Arc<Shared>) -> Self {
        // Order matters: the read version first (everything up to it is visible), then the
        // snapshot, then the upper bound of what the snapshot can contain.
        let active = shared.register_read();
        let snapshot = shared.db.snapshot();
        let visible_upper = shared.assigned();
        Self {
            shared: shared.clone(),
            snapshot,
            active,
            visible_upper,
            reads: Vec::new(),
            writes: WriteBuffer::default(),
        }
    }

    pub(super) fn finish(self) -> Finished {
        Finished {
            active: self.active,
            visible_upper: self.visible_upper,
            reads: self.reads,
            writes: self.writes,
        }
    }

    fn stored_get(&self, key: &[u8]) -> Result<Option<Bytes>, TxError> {
        let value = self
            .snapshot
            .get(&self.shared.kv, key)
            .map_err(StoreError::from)?;
        Ok(value.map(Bytes::from))
    }
}

impl RawTx for EmbeddedTx {
    fn get(&mut self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, TxError> {
        if !snapshot {
            self.reads.push(ReadConflict::Key(key.to_vec()));
        }
        match self.writes.lookup(key) {
            Lookup::Known(v) => Ok(v),
            Lookup::AddTo(delta) => {
                let base = self.stored_get(key)?;
                Ok(Some(Bytes::copy_from_slice(&add_le(
                    base.as_deref(),
                    delta,
                ))))
            }
            Lookup::Untouched => self.stored_get(key),
        }
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
        snapshot: bool,
    ) -> Result<Vec<KeyValue>, TxError> {
        let iter = self
            .snapshot
            .range::<&[u8], _>(&self.shared.kv, (Included(begin), Excluded(end)));
        let stored = |g: fjall::Guard| {
            g.into_inner()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
        };
        let pairs = if reverse {
            self.writes
                .merge_range(begin, end, iter.rev().map(stored), limit, true)
        } else {
            self.writes
                .merge_range(begin, end, iter.map(stored), limit, false)
        }
        .map_err(StoreError::from)?;
        if !snapshot {
            // A read cut short by its limit depends only on the part it covered.
            let cut = limit.is_some_and(|l| pairs.len() >= l);
            let conflict = match pairs.last() {
                Some((last, _)) if cut && reverse => {
                    ReadConflict::Range(last.to_vec(), end.to_vec())
                }
                Some((last, _)) if cut => {
                    let mut after = last.to_vec();
                    after.push(0);
                    ReadConflict::Range(begin.to_vec(), after)
                }
                _ => ReadConflict::Range(begin.to_vec(), end.to_vec()),
            };
            self.reads.push(conflict);
        }
        Ok(pairs
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect())
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes.set(key, Bytes::copy_from_slice(value));
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.writes.clear_range(begin, end);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes.add(key, delta);
    }
}
