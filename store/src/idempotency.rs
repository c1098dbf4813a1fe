//! Idempotency records: a retried send returns the first send's result and writes nothing.
//!
//! # Key Schema
//!
//! ```text
//! ("idem", sender, client_msg_id) -> v1 (msg_id, created_at_ms, ((kind, owner, seq), ...))
//! ```
//!
//! The list holds every timeline the message landed in with its seq, the home timeline
//! first. The record is written in the same transaction as the append it describes, so it
//! exists exactly when the append does. Contention: one key per `(sender, client_msg_id)`;
//! only retries of the same send touch it.

use crate::{
    StoreError, Tx, TxError, codec,
    timeline::{Appended, TimelineId, TimelineKind},
};
use foundationdb_tuple::pack;

const PREFIX: &str = "idem";
const V1: u8 = 1;

/// Names one send for deduplication: the sender and the id its client chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The sending user.
    pub sender: String,
    /// The client's id for this send, unique per sender.
    pub client_msg_id: String,
}

impl IdempotencyKey {
    /// A key for `sender`'s send `client_msg_id`.
    pub fn new(sender: impl Into<String>, client_msg_id: impl Into<String>) -> Self {
        Self {
            sender: sender.into(),
            client_msg_id: client_msg_id.into(),
        }
    }

    fn key(&self) -> Vec<u8> {
        pack(&(PREFIX, self.sender.as_str(), self.client_msg_id.as_str()))
    }

    /// Bytes the record adds to a transaction (for batching budgets).
    pub(crate) fn approximate_size(&self) -> usize {
        self.sender.len() + self.client_msg_id.len() + 32
    }
}

/// The recorded result of the first send under `key`, if any (a plain read: a concurrent
/// first send conflicts).
pub(crate) fn lookup(tx: &mut Tx<'_>, key: &IdempotencyKey) -> Result<Option<Appended>, TxError> {
    let k = key.key();
    let Some(value) = tx.get(&k)? else {
        return Ok(None);
    };
    let (id, created_at_ms, raw): (u64, u64, Vec<(u16, String, u64)>) =
        codec::decode(&k, &value, V1)?;
    if raw.is_empty() {
        return Err(StoreError::corrupt(&k, "idempotency record lists no timeline").into());
    }
    let mut seqs = Vec::with_capacity(raw.len());
    for (kind, owner, seq) in raw {
        let kind = TimelineKind::from_code(kind)
            .ok_or_else(|| StoreError::corrupt(&k, format!("unknown timeline kind {kind}")))?;
        seqs.push((TimelineId { kind, owner }, seq));
    }
    Ok(Some(Appended {
        id,
        created_at_ms,
        seqs,
        duplicate: true,
    }))
}

/// Records `appended` as the result of the send under `key`.
pub(crate) fn record(
    tx: &mut Tx<'_>,
    key: &IdempotencyKey,
    appended: &Appended,
) -> Result<(), TxError> {
    let seqs: Vec<(u16, &str, u64)> = appended
        .seqs
        .iter()
        .map(|(t, seq)| (t.kind.code(), t.owner.as_str(), *seq))
        .collect();
    let value = codec::encode(V1, &(appended.id, appended.created_at_ms, seqs));
    tx.set(&key.key(), &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_pinned() {
        assert_eq!(
            IdempotencyKey::new("a", "c1").key(),
            b"\x02idem\x00\x02a\x00\x02c1\x00"
        );
    }
}
