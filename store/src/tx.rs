//! [`Tx`]: the operations a transaction closure can perform, the same on every backend.

use crate::{
    KeyValue, RangeOption, StoreError, TxError,
    error::Printable,
    range::{KEY_SPACE_END, MAX_KEY_SIZE, MAX_VALUE_SIZE},
};
use bytes::Bytes;

/// What a backend's transaction implements. Arguments are already validated by [`Tx`];
/// ranges arrive as plain `[begin, end)` keys with `begin < end`.
pub(crate) trait RawTx {
    fn get(&mut self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, TxError>;
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
        snapshot: bool,
    ) -> Result<Vec<KeyValue>, TxError>;
    fn set(&mut self, key: &[u8], value: &[u8]);
    fn clear(&mut self, key: &[u8]);
    fn clear_range(&mut self, begin: &[u8], end: &[u8]);
    fn atomic_add(&mut self, key: &[u8], delta: i64);
}

/// One attempt of a transaction, handed to the closure of
/// [`Store::transact`](crate::Store::transact).
///
/// Reads see the database as of the attempt's start plus the attempt's own writes. Plain
/// reads add *read conflicts*: if another transaction commits a write to something read
/// here before this one commits, this attempt fails with a conflict and the closure runs
/// again. `snapshot_*` reads add none (use them for what may be stale without harm).
/// Writes are buffered and applied atomically at commit; the call returns once durable.
pub struct Tx<'a> {
    raw: &'a mut dyn RawTx,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(raw: &'a mut dyn RawTx) -> Self {
        Self { raw }
    }

    /// The value of `key`, adding a read conflict on it.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>, TxError> {
        check_key_len(key)?;
        self.raw.get(key, false)
    }

    /// The value of `key` without a read conflict.
    pub fn snapshot_get(&mut self, key: &[u8]) -> Result<Option<Bytes>, TxError> {
        check_key_len(key)?;
        self.raw.get(key, true)
    }

    /// The pairs in a range, adding a read conflict on the part of the range it covered (all
    /// of it, or up to the last key returned when `limit` cut it short).
    pub fn get_range(&mut self, range: &RangeOption) -> Result<Vec<KeyValue>, TxError> {
        self.range(range, false)
    }

    /// The pairs in a range without a read conflict.
    pub fn snapshot_get_range(&mut self, range: &RangeOption) -> Result<Vec<KeyValue>, TxError> {
        self.range(range, true)
    }

    fn range(&mut self, range: &RangeOption, snapshot: bool) -> Result<Vec<KeyValue>, TxError> {
        let (begin, end) = range.bounds();
        if begin >= end || range.limit == Some(0) {
            return Ok(Vec::new());
        }
        self.raw
            .get_range(&begin, &end, range.limit, range.reverse, snapshot)
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        check_writable(key)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(StoreError::TooLarge {
                what: "value",
                len: value.len(),
                max: MAX_VALUE_SIZE,
            }
            .into());
        }
        self.raw.set(key, value);
        Ok(())
    }

    /// Removes `key` (no error when absent).
    pub fn clear(&mut self, key: &[u8]) -> Result<(), TxError> {
        check_writable(key)?;
        self.raw.clear(key);
        Ok(())
    }

    /// Removes every key in `[begin, end)`. `end` may be [`KEY_SPACE_END`].
    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), TxError> {
        check_key_len(begin)?;
        check_key_len(end)?;
        if end > KEY_SPACE_END {
            return Err(StoreError::KeyOutsideLegalRange(Printable(end.to_vec())).into());
        }
        if begin > end {
            return Err(StoreError::InvalidRequest(format!(
                "clear_range begin {:?} is after end {:?}",
                Printable(begin.to_vec()),
                Printable(end.to_vec())
            ))
            .into());
        }
        if begin < end {
            self.raw.clear_range(begin, end);
        }
        Ok(())
    }

    /// Adds `delta` to the little-endian 64-bit integer at `key` (FoundationDB's `ADD`
    /// mutation): an absent value counts as 0, a shorter one is zero-extended, a longer one
    /// truncated to 8 bytes; the sum wraps. Adds no read conflict, so concurrent adds to one
    /// counter never conflict with each other.
    pub fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), TxError> {
        check_writable(key)?;
        self.raw.atomic_add(key, delta);
        Ok(())
    }
}

/// The value FoundationDB's `ADD` leaves behind: `base` read as a little-endian integer of
/// 8 bytes (zero-extended or truncated), plus `delta`, wrapping.
pub(crate) fn add_le(base: Option<&[u8]>, delta: i64) -> [u8; 8] {
    let mut buf = [0u8; 8];
    if let Some(base) = base {
        let n = base.len().min(8);
        buf[..n].copy_from_slice(&base[..n]);
    }
    i64::from_le_bytes(buf).wrapping_add(delta).to_le_bytes()
}

fn check_key_len(key: &[u8]) -> Result<(), TxError> {
    if key.len() > MAX_KEY_SIZE {
        return Err(StoreError::TooLarge {
            what: "key",
            len: key.len(),
            max: MAX_KEY_SIZE,
        }
        .into());
    }
    Ok(())
}

fn check_writable(key: &[u8]) -> Result<(), TxError> {
    check_key_len(key)?;
    if key >= KEY_SPACE_END {
        return Err(StoreError::KeyOutsideLegalRange(Printable(key.to_vec())).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_le_matches_fdb_add() {
        assert_eq!(add_le(None, 5), 5i64.to_le_bytes());
        assert_eq!(
            add_le(Some(&7i64.to_le_bytes()), -10),
            (-3i64).to_le_bytes()
        );
        // Shorter base: zero-extended.
        assert_eq!(add_le(Some(&[1]), 1), 2i64.to_le_bytes());
        // Longer base: truncated to 8 bytes.
        assert_eq!(
            add_le(Some(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 9]), 1),
            2i64.to_le_bytes()
        );
        // Wraps.
        assert_eq!(
            add_le(Some(&i64::MAX.to_le_bytes()), 1),
            i64::MIN.to_le_bytes()
        );
    }
}
