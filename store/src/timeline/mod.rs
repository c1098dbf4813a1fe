//! Timelines: ordered, gap-free message sequences (inboxes, outboxes, group timelines).
//!
//! - [`Timelines::append`] adds a message to one timeline and returns its seq: the
//!   timeline's previous seq + 1, allocated in the same transaction as the write, so seqs
//!   are gap-free and strictly increasing.
//! - [`Timelines::append_multi`] adds one message to a home timeline and references to it
//!   to a fan-out list (a 1:1 message: sender's outbox + recipient's inbox; a small group:
//!   group timeline + every member's inbox) in one transaction: all or nothing. With an
//!   [`IdempotencyKey`], a retried send returns the first result and writes nothing.
//! - [`Timelines::read`], [`Timelines::latest_seq`]; retention by count and by age.
//!
//! Every append goes through the sequencer (`timeline/sequencer.rs`): concurrent appends are
//! grouped into one transaction per batch (at most one in flight per timeline), so a hot
//! timeline costs one commit per batch instead of a storm of conflicting retries. Key
//! layout: `timeline/keys.rs` and `docs/data-model.md`.

mod append;
mod keys;
mod read;
mod sequencer;

use crate::{IdempotencyKey, Store, StoreError, range::MAX_VALUE_SIZE};
use bytes::Bytes;
use std::fmt;

pub(crate) use read::head as read_head;
pub(crate) use sequencer::Sequencer;

/// What a timeline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimelineKind {
    /// A user's inbox: what the user receives.
    Inbox,
    /// A user's outbox: what the user sent (home of 1:1 message bodies).
    Outbox,
    /// A group's timeline (home of group message bodies).
    Group,
    /// A 1:1 conversation's history (home of 1:1 message bodies); the owner names the pair.
    Direct,
}

impl TimelineKind {
    pub(crate) fn code(self) -> u16 {
        match self {
            Self::Inbox => 1,
            Self::Outbox => 2,
            Self::Group => 3,
            Self::Direct => 4,
        }
    }

    pub(crate) fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(Self::Inbox),
            2 => Some(Self::Outbox),
            3 => Some(Self::Group),
            4 => Some(Self::Direct),
            _ => None,
        }
    }
}

/// One timeline: a kind and its owner (user id or group id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimelineId {
    /// What it belongs to.
    pub kind: TimelineKind,
    /// Whose it is.
    pub owner: String,
}

impl TimelineId {
    /// `user`'s inbox.
    pub fn inbox(user: impl Into<String>) -> Self {
        Self {
            kind: TimelineKind::Inbox,
            owner: user.into(),
        }
    }

    /// `user`'s outbox.
    pub fn outbox(user: impl Into<String>) -> Self {
        Self {
            kind: TimelineKind::Outbox,
            owner: user.into(),
        }
    }

    /// Group `group`'s timeline.
    pub fn group(group: impl Into<String>) -> Self {
        Self {
            kind: TimelineKind::Group,
            owner: group.into(),
        }
    }

    /// The 1:1 conversation history named `pair` (the caller's canonical name of the pair).
    pub fn direct(pair: impl Into<String>) -> Self {
        Self {
            kind: TimelineKind::Direct,
            owner: pair.into(),
        }
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            TimelineKind::Inbox => "inbox",
            TimelineKind::Outbox => "outbox",
            TimelineKind::Group => "group",
            TimelineKind::Direct => "direct",
        };
        write!(f, "{kind}:{}", self.owner)
    }
}

/// A message to append. The id comes from the ID service; the time from the caller's clock
/// (retention by age compares it with the cutoff the caller passes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Globally unique message id.
    pub id: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The encoded message (opaque to the store).
    pub body: Bytes,
}

/// One atomic append: the body into `home`, references into each of `fanout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiAppend {
    /// Where the body is stored (the sender's outbox, or the group timeline).
    pub home: TimelineId,
    /// Timelines that get a reference (recipients' inboxes); distinct, without `home`.
    pub fanout: Vec<TimelineId>,
    /// The message.
    pub message: NewMessage,
    /// Deduplicate on this key: a second append with it returns the first result.
    pub idempotency: Option<IdempotencyKey>,
    /// Further keys the caller's layer sets in the same transaction (indexes such as "this
    /// user has this conversation"): blind writes, made only when the message is written
    /// (not for a duplicate). Keys must lie outside the store's own prefixes.
    pub extra: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys that must exist when the append commits (a group membership the fan-out was
    /// planned from). They are read in the append's transaction, so a transaction that
    /// clears one and commits first makes the append re-run and see it gone; then the
    /// append writes nothing and fails with [`StoreError::Precondition`]. A duplicate is
    /// answered before they are checked.
    pub require: Vec<Vec<u8>>,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The message id (the first send's, for a duplicate).
    pub id: u64,
    /// The message time (the first send's, for a duplicate).
    pub created_at_ms: u64,
    /// Every timeline written with the seq the message got there; the home timeline first.
    pub seqs: Vec<(TimelineId, u64)>,
    /// True when this was a retry of an earlier send: nothing new was written.
    pub duplicate: bool,
}

impl Appended {
    /// The seq in the home timeline.
    pub fn home_seq(&self) -> u64 {
        self.seqs.first().map_or(0, |(_, seq)| *seq)
    }

    /// The seq the message got in `timeline`, if it was written there.
    pub fn seq_in(&self, timeline: &TimelineId) -> Option<u64> {
        self.seqs
            .iter()
            .find(|(t, _)| t == timeline)
            .map(|(_, s)| *s)
    }
}

/// One message as read from a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Its seq in the timeline read.
    pub seq: u64,
    /// The message id.
    pub id: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The body; `None` when this is a reference whose home entry was trimmed.
    pub body: Option<Bytes>,
    /// For a reference: the home timeline and seq of the body.
    pub home: Option<(TimelineId, u64)>,
}

/// The timelines layer; get one with [`Store::timelines`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Timelines {
    store: Store,
}

impl Timelines {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Appends `message` to `timeline`; returns its seq once durable.
    pub async fn append(
        &self,
        timeline: &TimelineId,
        message: NewMessage,
    ) -> Result<u64, StoreError> {
        let appended = self
            .append_multi(MultiAppend {
                home: timeline.clone(),
                fanout: Vec::new(),
                message,
                idempotency: None,
                extra: Vec::new(),
                require: Vec::new(),
            })
            .await?;
        Ok(appended.home_seq())
    }

    /// Appends one message to several timelines atomically (see [`MultiAppend`]); returns
    /// every seq once durable.
    pub async fn append_multi(&self, append: MultiAppend) -> Result<Appended, StoreError> {
        validate(&append)?;
        self.store.sequencer().submit(&self.store, append).await
    }

    /// Appends a batch of messages (see [`MultiAppend`]); one result per append, in order,
    /// each once durable. The batch is queued at once, so appends whose timelines are free
    /// share one transaction and one fsync (group commit); each is still applied on its own
    /// inside it: one that is invalid, fails its precondition or is a duplicate gets its own
    /// result and never fails the others. The appends are queued before this returns, so
    /// batches submitted one after the other keep their order on every timeline.
    pub fn append_batch(
        &self,
        batch: Vec<MultiAppend>,
    ) -> impl Future<Output = Vec<Result<Appended, StoreError>>> + use<> {
        let mut invalid: Vec<Option<StoreError>> = Vec::with_capacity(batch.len());
        let mut valid = Vec::with_capacity(batch.len());
        for append in batch {
            match validate(&append) {
                Ok(()) => {
                    invalid.push(None);
                    valid.push(append);
                }
                Err(e) => invalid.push(Some(e)),
            }
        }
        let answers = self.store.sequencer().submit_batch(&self.store, valid);
        async move {
            let mut answers = answers.await.into_iter();
            invalid
                .into_iter()
                .map(|bad| match bad {
                    Some(e) => Err(e),
                    None => answers.next().unwrap_or(Err(StoreError::Closed)),
                })
                .collect()
        }
    }

    /// Up to `limit` entries of `timeline` with seq `> after`, in seq order. Entries trimmed
    /// by retention are skipped: a first seq above `after + 1` means the reader missed some.
    pub async fn read(
        &self,
        timeline: &TimelineId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| read::entries(tx, &timeline, after, limit))
            .await
    }

    /// The newest seq of `timeline` (0 when nothing was ever appended).
    pub async fn latest_seq(&self, timeline: &TimelineId) -> Result<u64, StoreError> {
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| read::head(tx, &timeline, true))
            .await
    }

    /// The oldest seq retention keeps in `timeline` (1 when nothing was trimmed).
    pub async fn first_seq(&self, timeline: &TimelineId) -> Result<u64, StoreError> {
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| read::start(tx, &timeline))
            .await
    }

    /// The recorded result of the send under `key`, if it happened.
    pub async fn find_sent(&self, key: &IdempotencyKey) -> Result<Option<Appended>, StoreError> {
        let key = key.clone();
        self.store
            .transact(move |tx| crate::idempotency::lookup(tx, &key))
            .await
    }

    /// Retention by count: removes all but the newest `keep` entries of `timeline`; returns
    /// how many seqs were dropped.
    pub async fn trim_to_count(&self, timeline: &TimelineId, keep: u64) -> Result<u64, StoreError> {
        let timeline = timeline.clone();
        self.store
            .transact(move |tx| read::trim_to_count(tx, &timeline, keep))
            .await
    }

    /// Retention by age: removes the oldest entries of `timeline` created before
    /// `cutoff_ms`, stopping at the first newer one; returns how many seqs were dropped.
    /// Works in bounded transactions, so a long backlog takes several.
    pub async fn trim_older_than(
        &self,
        timeline: &TimelineId,
        cutoff_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let timeline = timeline.clone();
            let (dropped, done) = self
                .store
                .transact(move |tx| read::trim_older_than(tx, &timeline, cutoff_ms))
                .await?;
            total += dropped;
            if done {
                return Ok(total);
            }
        }
    }
}

/// Rejects what would fail inside the batch transaction, before it is queued.
fn validate(append: &MultiAppend) -> Result<(), StoreError> {
    let invalid = |m: String| Err(StoreError::InvalidRequest(m));
    if append.message.body.len() + keys::ENTRY_OVERHEAD > MAX_VALUE_SIZE {
        return invalid(format!(
            "message body of {} bytes is over the {}-byte limit",
            append.message.body.len(),
            MAX_VALUE_SIZE - keys::ENTRY_OVERHEAD
        ));
    }
    for (key, value) in &append.extra {
        if key.len() > crate::MAX_KEY_SIZE || value.len() > MAX_VALUE_SIZE {
            return invalid(format!(
                "an extra write of {} + {} bytes is over the key or value limit",
                key.len(),
                value.len()
            ));
        }
    }
    let mut seen = std::collections::HashSet::from([&append.home]);
    for t in &append.fanout {
        if !seen.insert(t) {
            return invalid(format!("timeline {t} appears twice in one append"));
        }
    }
    Ok(())
}
