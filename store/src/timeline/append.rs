//! The append transaction: a batch of [`MultiAppend`]s applied in order in one transaction.

use super::{
    Appended, MultiAppend, TimelineId,
    keys::{self, Content, Entry},
    read,
};
use crate::{Printable, StoreError, Tx, TxError, idempotency};
use std::collections::HashMap;

/// Applies `batch` in order; one result per request. A request whose reads fail (corrupt
/// data) gets that error and writes nothing; the others still commit. A retryable error
/// restarts the whole batch.
///
/// `known` holds heads the caller knows to be current (the sequencer's cache on an
/// exclusive store); a timeline found there is not read, the others are.
pub(super) fn apply_batch(
    tx: &mut Tx<'_>,
    batch: &[MultiAppend],
    known: &HashMap<TimelineId, u64>,
) -> Result<Vec<Result<Appended, StoreError>>, TxError> {
    let mut heads = Heads {
        known,
        written: HashMap::new(),
    };
    batch
        .iter()
        .map(|append| apply(tx, append, &mut heads))
        .collect()
}

/// The heads a batch transaction starts from and those it has written so far.
struct Heads<'a> {
    known: &'a HashMap<TimelineId, u64>,
    written: HashMap<&'a TimelineId, u64>,
}

impl<'a> Heads<'a> {
    /// The newest seq of `t` as this transaction sees it.
    fn get(&self, tx: &mut Tx<'_>, t: &TimelineId) -> Result<u64, TxError> {
        match self.written.get(t).or_else(|| self.known.get(t)) {
            Some(seq) => Ok(*seq),
            None => read::head(tx, t, false),
        }
    }
}

fn apply<'a>(
    tx: &mut Tx<'_>,
    append: &'a MultiAppend,
    heads: &mut Heads<'a>,
) -> Result<Result<Appended, StoreError>, TxError> {
    // Reads first, so a request that fails here has written nothing.
    let planned = match plan(tx, append, heads) {
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
    for (timeline, seq) in std::iter::once(&append.home)
        .chain(&append.fanout)
        .zip(planned.iter().map(|(_, seq)| *seq))
    {
        heads.written.insert(timeline, seq);
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

fn plan(tx: &mut Tx<'_>, append: &MultiAppend, heads: &Heads<'_>) -> Result<Plan, TxError> {
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
            let seq = heads
                .get(tx, t)?
                .checked_add(1)
                .ok_or_else(|| StoreError::corrupt(&keys::head(t), "seq space exhausted"))?;
            Ok((t.clone(), seq))
        })
        .collect::<Result<_, TxError>>()
        .map(Plan::Write)
}
