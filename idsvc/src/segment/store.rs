//! The two store transactions of the segment allocator: create a tag, take a segment.

use super::{MAX_SEGMENT_ID, policy::Segment};
use crate::{
    IdError,
    keys::{self, TagRecord},
};
use roam_store::Store;
use std::sync::Arc;

/// A segment taken from the store, with the tag's steps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    pub(crate) segment: Segment,
    /// The step used (persisted as the tag's step).
    pub(crate) step: u64,
    /// The tag's configured step.
    pub(crate) base_step: u64,
}

/// Why a take found no segment to give.
enum Refusal {
    UnknownTag,
    Exhausted,
}

/// Creates `tag`: its first segment starts at `start` (at least 1, see `first_id`).
pub(crate) async fn create_tag(
    store: &Store,
    tag: &str,
    step: u64,
    start: u64,
    now_ms: u64,
) -> Result<(), IdError> {
    let key = keys::tag(tag);
    let record = TagRecord {
        max_id: start,
        step,
        base_step: step,
        updated_at_ms: now_ms,
    };
    let created = store
        .transact(move |tx| {
            if tx.get(&key)?.is_some() {
                return Ok(false);
            }
            tx.set(&key, &keys::encode_tag(&record))?;
            Ok(true)
        })
        .await?;
    if created {
        Ok(())
    } else {
        Err(IdError::TagExists { tag: tag.into() })
    }
}

/// Takes the next segment of `tag`: `[max_id, max_id + step)` in one transaction, cut at
/// 2^53. `step: None` uses the step stored with the tag (a freshly started allocator).
pub(crate) async fn take_segment(
    store: &Store,
    tag: Arc<str>,
    step: Option<u64>,
    now_ms: u64,
) -> Result<Taken, IdError> {
    let key = keys::tag(&tag);
    let outcome = store
        .transact(move |tx| {
            let Some(value) = tx.get(&key)? else {
                return Ok(Err(Refusal::UnknownTag));
            };
            let mut record = keys::decode_tag(&key, &value)?;
            let step = step.unwrap_or(record.step).max(1);
            let start = record.max_id.max(1);
            if start >= MAX_SEGMENT_ID {
                return Ok(Err(Refusal::Exhausted));
            }
            let end = start.saturating_add(step).min(MAX_SEGMENT_ID);
            record.max_id = end;
            record.step = step;
            record.updated_at_ms = now_ms;
            tx.set(&key, &keys::encode_tag(&record))?;
            Ok(Ok(Taken {
                segment: Segment { start, end },
                step,
                base_step: record.base_step.max(1),
            }))
        })
        .await?;
    outcome.map_err(|refusal| match refusal {
        Refusal::UnknownTag => IdError::UnknownTag {
            tag: tag.as_ref().into(),
        },
        Refusal::Exhausted => {
            IdError::Exhausted(format!("tag {tag:?} has issued every ID below 2^53"))
        }
    })
}
