//! Reads and retention inside a transaction.

use super::{
    TimelineEntry, TimelineId,
    keys::{self, Content},
};
use crate::{RangeOption, StoreError, Tx, TxError};

/// Entries scanned per transaction when trimming by age.
const AGE_SCAN: usize = 512;

/// The newest seq of `t` (0 when empty). `snapshot`: without a read conflict.
pub(crate) fn head(tx: &mut Tx<'_>, t: &TimelineId, snapshot: bool) -> Result<u64, TxError> {
    let key = keys::head(t);
    let value = if snapshot {
        tx.snapshot_get(&key)?
    } else {
        tx.get(&key)?
    };
    match value {
        Some(v) => Ok(keys::decode_seq(&key, &v)?),
        None => Ok(0),
    }
}

/// The oldest kept seq of `t` (1 when nothing was trimmed). A plain read: trims conflict
/// with each other, not with appends.
pub(super) fn start(tx: &mut Tx<'_>, t: &TimelineId) -> Result<u64, TxError> {
    let key = keys::start(t);
    match tx.get(&key)? {
        Some(v) => Ok(keys::decode_seq(&key, &v)?),
        None => Ok(1),
    }
}

pub(super) fn entries(
    tx: &mut Tx<'_>,
    t: &TimelineId,
    after: u64,
    limit: usize,
) -> Result<Vec<TimelineEntry>, TxError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let range = RangeOption::between(keys::entry(t, first), keys::entries_end(t)).limit(limit);
    let pairs = tx.snapshot_get_range(&range)?;
    let mut out = Vec::with_capacity(pairs.len());
    for kv in pairs {
        let seq = keys::entry_seq(&kv.key)?;
        let entry = keys::decode_entry(&kv.key, &kv.value)?;
        let (body, home) = match entry.content {
            Content::Body(body) => (Some(body), None),
            Content::Ref {
                home,
                seq: home_seq,
            } => {
                let body = home_body(tx, &home, home_seq)?;
                (body, Some((home, home_seq)))
            }
        };
        out.push(TimelineEntry {
            seq,
            id: entry.id,
            created_at_ms: entry.created_at_ms,
            body,
            home,
        });
    }
    Ok(out)
}

/// The body a reference points at; `None` once retention removed it.
fn home_body(
    tx: &mut Tx<'_>,
    home: &TimelineId,
    seq: u64,
) -> Result<Option<bytes::Bytes>, TxError> {
    let key = keys::entry(home, seq);
    let Some(value) = tx.snapshot_get(&key)? else {
        return Ok(None);
    };
    match keys::decode_entry(&key, &value)?.content {
        Content::Body(body) => Ok(Some(body)),
        Content::Ref { .. } => {
            Err(StoreError::corrupt(&key, "a reference points at another reference").into())
        }
    }
}

pub(super) fn trim_to_count(tx: &mut Tx<'_>, t: &TimelineId, keep: u64) -> Result<u64, TxError> {
    let head = head(tx, t, true)?;
    let new_start = head.saturating_sub(keep).saturating_add(1);
    drop_before(tx, t, new_start)
}

/// One bounded step of trimming by age; returns `(seqs dropped, finished)`.
pub(super) fn trim_older_than(
    tx: &mut Tx<'_>,
    t: &TimelineId,
    cutoff_ms: u64,
) -> Result<(u64, bool), TxError> {
    let first = start(tx, t)?;
    let range = RangeOption::between(keys::entry(t, first), keys::entries_end(t)).limit(AGE_SCAN);
    let pairs = tx.snapshot_get_range(&range)?;
    let scanned = pairs.len();
    let mut new_start = None;
    let mut last_old = None;
    for kv in &pairs {
        let seq = keys::entry_seq(&kv.key)?;
        if keys::decode_entry(&kv.key, &kv.value)?.created_at_ms >= cutoff_ms {
            new_start = Some(seq);
            break;
        }
        last_old = Some(seq);
    }
    let finished = new_start.is_some() || scanned < AGE_SCAN;
    let Some(new_start) = new_start.or(last_old.map(|s| s.saturating_add(1))) else {
        return Ok((0, true));
    };
    Ok((drop_before(tx, t, new_start)?, finished))
}

/// Removes the entries of `t` below `new_start` and moves the start mark; returns how many
/// seqs that dropped.
fn drop_before(tx: &mut Tx<'_>, t: &TimelineId, new_start: u64) -> Result<u64, TxError> {
    let old_start = start(tx, t)?;
    if new_start <= old_start {
        return Ok(0);
    }
    tx.clear_range(&keys::entry(t, old_start), &keys::entry(t, new_start))?;
    tx.set(&keys::start(t), &keys::encode_seq(new_start))?;
    tracing::debug!(timeline = %t, from = old_start, to = new_start, "trimmed timeline");
    Ok(new_start - old_start)
}
