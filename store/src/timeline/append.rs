//! The append transaction: a batch of [`MultiAppend`]s applied in order in one transaction.

use super::{
    Appended, MultiAppend, TimelineId,
    keys::{self, Content, Entry},
    read,
};
use crate::{Printable, StoreError, Tx, TxError, idempotency};

/// Applies `batch` in order; one result per request. A request whose reads fail (corrupt
/// data) gets that error and writes nothing; the others still commit. A retryable error
/// restarts the whole batch.
pub(super) fn apply_batch(
    tx: &mut Tx<'_>,
    batch: &[MultiAppend],
) -> Result<Vec<Result<Appended, StoreError>>, TxError> {
    batch.iter().map(|append| apply(tx, append)).collect()
}

fn apply(tx: &mut Tx<'_>, append: &MultiAppend) -> Result<Result<Appended, StoreError>, TxError> {
    // Reads first, so a request that fails here has written nothing.
    let planned = match plan(tx, append) {
        Ok(Plan::Duplicate(first)) => return Ok(Ok(first)),
        Ok(Plan::Write(seqs)) => seqs,
        Err(TxError::Fatal(e)) => return Ok(Err(e)),
        Err(retry) => return Err(retry),
    };
    let message = &append.message;
    let home_seq = planned[0].1;
    for (i, (timeline, seq)) in planned.iter().enumerate() {
        let content = if i == 0 {
            Content::Body(message.body.clone())
        } else {
            Content::Ref {
                home: append.home.clone(),
                seq: home_seq,
            }
        };
        let entry = Entry {
            id: message.id,
            created_at_ms: message.created_at_ms,
            content,
        };
        tx.set(&keys::head(timeline), &keys::encode_seq(*seq))?;
        tx.set(&keys::entry(timeline, *seq), &keys::encode_entry(&entry))?;
    }
    let appended = Appended {
        id: message.id,
        created_at_ms: message.created_at_ms,
        seqs: planned,
        duplicate: false,
    };
    if let Some(key) = &append.idempotency {
        idempotency::record(tx, key, &appended)?;
    }
    for (key, value) in &append.extra {
        tx.set(key, value)?;
    }
    Ok(Ok(appended))
}

enum Plan {
    Duplicate(Appended),
    /// The seq each timeline gets, home first.
    Write(Vec<(TimelineId, u64)>),
}

fn plan(tx: &mut Tx<'_>, append: &MultiAppend) -> Result<Plan, TxError> {
    if let Some(key) = &append.idempotency
        && let Some(first) = idempotency::lookup(tx, key)?
    {
        return Ok(Plan::Duplicate(first));
    }
    for key in &append.require {
        if tx.get(key)?.is_none() {
            return Err(TxError::Fatal(StoreError::Precondition(Printable(
                key.clone(),
            ))));
        }
    }
    std::iter::once(&append.home)
        .chain(&append.fanout)
        .map(|t| {
            let seq = read::head(tx, t, false)?
                .checked_add(1)
                .ok_or_else(|| StoreError::corrupt(&keys::head(t), "seq space exhausted"))?;
            Ok((t.clone(), seq))
        })
        .collect::<Result<_, TxError>>()
        .map(Plan::Write)
}
