//! Send: validate, resolve the recipients, then one store transaction (body into the
//! history, references into inboxes, idempotency record, conversation index).

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use roam_proto::client::v1 as pb;
use roam_store::{
    Appended, IdempotencyKey, MultiAppend, NewMessage, StoreError, TimelineId, codec,
};

use crate::conversation::Conversation;
use crate::keys::{self, V1};
use crate::{MAX_CLIENT_MSG_ID, MAX_CONTENT_TYPE, Messaging, MessagingError};

/// A message to store and deliver.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The sending user (the authenticated one: never taken from the client).
    pub from: String,
    /// `bob` or `group:<id>`.
    pub to: String,
    /// The client's idempotency key.
    pub client_msg_id: String,
    /// The content (opaque bytes).
    pub content: Bytes,
    /// A hint for clients; empty means `text/plain`.
    pub content_type: String,
}

/// Whom core delivers a stored message to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Write fan-out: each user (the sender included) with the seq the message got in
    /// their inbox. Empty for a duplicate (the first send delivered it).
    Push(Vec<(String, u64)>),
    /// Read fan-out (a group above the threshold): these members are told that the group's
    /// history reached `seq`, and pull it.
    Notify {
        /// The group's members (the sender included).
        members: Vec<String>,
        /// The message's `conversation_seq`.
        seq: u64,
    },
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its id (the first send's, for a duplicate).
    pub id: u64,
    /// What SEND_ACK and the API answer as `seq`: the seq in the sender's inbox, or in the
    /// group's history for a group with read fan-out.
    pub seq: u64,
    /// True for a retry of an earlier send: nothing new was stored.
    pub duplicate: bool,
    /// The conversation.
    pub conversation: Conversation,
    /// The message as clients see it (its `seq` is 0: each inbox has its own).
    pub message: pb::Message,
    /// Whom to deliver it to.
    pub delivery: Delivery,
}

/// A send checked and ready to store ([`Messaging::plan_send`], then [`Messaging::store`]).
#[derive(Debug)]
pub struct Planned {
    conversation: Conversation,
    message: pb::Message,
    pub(crate) append: MultiAppend,
    fanout_users: Vec<String>,
    group_members: Option<Vec<String>>,
}

impl Planned {
    /// The users whose inboxes the message goes into (the sender first; empty for read
    /// fan-out): what a caller ordering deliveries per inbox tracks.
    pub fn inboxes(&self) -> &[String] {
        &self.fanout_users
    }
}

/// The store's answers to a batch of appends, one per append, in order.
type BatchAnswers = Pin<Box<dyn Future<Output = Vec<Result<Appended, StoreError>>> + Send>>;

/// A batch of sends handed to the store ([`Messaging::store_batch`]).
pub struct StoringBatch {
    planned: Vec<Planned>,
    answers: BatchAnswers,
}

impl std::fmt::Debug for StoringBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoringBatch")
            .field("sends", &self.planned.len())
            .finish_non_exhaustive()
    }
}

/// Times a send is re-planned after its group's membership changed under it.
const MAX_REPLANS: u32 = 3;

/// The membership keys a group send must still find when it commits: every inbox it writes
/// (write fan-out) or the sender alone (read fan-out). Read in the send's transaction, so
/// a removal committed before the send's commit is seen (`remove_members` clears them).
fn required(conversation: &Conversation, from: &str, fanout_users: &[String]) -> Vec<Vec<u8>> {
    match conversation {
        Conversation::Direct { .. } => Vec::new(),
        Conversation::Group(g) if fanout_users.is_empty() => vec![keys::group_member(g, from)],
        Conversation::Group(g) => fanout_users
            .iter()
            .map(|u| keys::group_member(g, u))
            .collect(),
    }
}

/// A request that passed its checks: who it goes to.
struct Checked {
    req: SendRequest,
    conversation: Conversation,
    fanout_users: Vec<String>,
    group_members: Option<Vec<String>>,
}

impl Messaging {
    /// Stores `req` durably (or finds its first send) and says whom to deliver it to.
    /// `now_ms` is the wall clock, `mono` a monotonic clock for the send rate.
    pub async fn send(
        &self,
        req: SendRequest,
        now_ms: u64,
        mono: Duration,
    ) -> Result<Sent, MessagingError> {
        let planned = self.plan_send(req, now_ms, mono).await?;
        self.store(planned).await
    }

    /// Checks `req` (fields, recipient, membership, send rate) and takes its message id;
    /// nothing is stored yet.
    pub async fn plan_send(
        &self,
        req: SendRequest,
        now_ms: u64,
        mono: Duration,
    ) -> Result<Planned, MessagingError> {
        let checked = self.check(req, mono).await?;
        let id = self.next_id().await?;
        Ok(self.without_known_index(build(checked, id, now_ms)))
    }

    /// [`Self::plan_send`] for a batch: each request is checked on its own (one refused
    /// request never fails the others), and the message ids of those that pass come from
    /// the ID service in one call. One result per request, in order.
    pub async fn plan_batch(
        &self,
        reqs: Vec<SendRequest>,
        now_ms: u64,
        mono: Duration,
    ) -> Vec<Result<Planned, MessagingError>> {
        let mut checked = Vec::with_capacity(reqs.len());
        for req in reqs {
            checked.push(self.check(req, mono).await);
        }
        let wanted = checked.iter().filter(|c| c.is_ok()).count();
        let mut ids = match self.next_ids(wanted).await {
            Ok(ids) => ids.into_iter(),
            Err(e) => {
                // No ids: every request that passed its checks fails with the id service.
                let e = e.to_string();
                return checked
                    .into_iter()
                    .map(|c| {
                        c.and_then(|_| {
                            Err(MessagingError::Ids(roam_idsvc::IdError::Unavailable(
                                e.clone(),
                            )))
                        })
                    })
                    .collect();
            }
        };
        checked
            .into_iter()
            .map(|c| {
                let c = c?;
                let id = ids.next().ok_or_else(|| {
                    MessagingError::Ids(roam_idsvc::IdError::Unavailable(
                        "the id service returned too few IDs".into(),
                    ))
                })?;
                Ok(self.without_known_index(build(c, id, now_ms)))
            })
            .collect()
    }

    /// The checks of a send (fields, recipient, membership, send rate), in that order.
    async fn check(&self, req: SendRequest, mono: Duration) -> Result<Checked, MessagingError> {
        if req.client_msg_id.is_empty() {
            return Err(MessagingError::Invalid(
                "client_msg_id is required (the client's idempotency key)".into(),
            ));
        }
        if req.client_msg_id.len() > MAX_CLIENT_MSG_ID {
            return Err(MessagingError::Invalid(format!(
                "client_msg_id is {} bytes; the maximum is {MAX_CLIENT_MSG_ID}",
                req.client_msg_id.len()
            )));
        }
        if req.content_type.len() > MAX_CONTENT_TYPE {
            return Err(MessagingError::Invalid(format!(
                "content_type is over {MAX_CONTENT_TYPE} bytes"
            )));
        }
        if req.content.len() > self.options.max_content_bytes {
            return Err(MessagingError::TooLarge {
                len: req.content.len(),
                max: self.options.max_content_bytes,
            });
        }
        let conversation = Conversation::parse(&req.from, &req.to)?;
        // Recipients' inboxes, the sender's first; empty for read fan-out.
        let (fanout_users, group_members) = match &conversation {
            Conversation::Direct { a, b } => {
                let mut users = vec![req.from.clone()];
                let other = if *a == req.from { b } else { a };
                if *other != req.from {
                    users.push(other.clone());
                }
                (users, None)
            }
            Conversation::Group(g) => {
                let members = self.members_if_member(g, &req.from).await?;
                if members.len() <= self.options.fanout_threshold {
                    let mut users = vec![req.from.clone()];
                    users.extend(members.iter().filter(|m| **m != req.from).cloned());
                    (users, None)
                } else {
                    (Vec::new(), Some(members))
                }
            }
        };
        self.admit(&req.from, mono)?;
        Ok(Checked {
            req,
            conversation,
            fanout_users,
            group_members,
        })
    }

    /// Stores a planned send in one transaction; returns once durable. A group send
    /// commits only while the memberships it was planned with hold (read in its
    /// transaction): when a member was removed meanwhile it is re-planned without them,
    /// and refused when that member is the sender.
    pub async fn store(&self, planned: Planned) -> Result<Sent, MessagingError> {
        let first = self
            .store
            .timelines()
            .append_multi(planned.append.clone())
            .await;
        self.settle(planned, first).await
    }

    /// Stores planned sends together: one store batch (group commit — those whose
    /// timelines are free share one transaction and one fsync), each still on its own
    /// inside it: a duplicate, a failed precondition (re-planned as in [`Self::store`]) or
    /// a store refusal is that send's result alone. The batch is handed to the store before
    /// this returns, so batches stored one after the other keep their order on every
    /// timeline; [`Self::finish_batch`] waits for it and gives one result per send, in
    /// order, each once durable.
    pub fn store_batch(&self, batch: Vec<Planned>) -> StoringBatch {
        let appends = batch.iter().map(|p| p.append.clone()).collect();
        let answers = Box::pin(self.store.timelines().append_batch(appends));
        StoringBatch {
            planned: batch,
            answers,
        }
    }

    /// Waits for a batch of [`Self::store_batch`]: one result per send, in order.
    pub async fn finish_batch(&self, batch: StoringBatch) -> Vec<Result<Sent, MessagingError>> {
        let StoringBatch { planned, answers } = batch;
        let results = answers.await;
        let mut out = Vec::with_capacity(results.len());
        for (planned, result) in planned.into_iter().zip(results) {
            out.push(self.settle(planned, result).await);
        }
        out
    }

    /// A planned send's outcome from its first append: re-planned and appended again while
    /// a group's membership changed under it, then what to deliver.
    async fn settle(
        &self,
        planned: Planned,
        first: Result<Appended, StoreError>,
    ) -> Result<Sent, MessagingError> {
        let Planned {
            conversation,
            mut message,
            mut append,
            mut fanout_users,
            mut group_members,
        } = planned;
        let mut attempts = 0;
        let mut outcome = first;
        let appended = loop {
            match outcome {
                Err(StoreError::Precondition(_)) if attempts < MAX_REPLANS => {
                    // The group's membership changed since the send was planned: the
                    // sender must still be a member, and the message reaches only those
                    // who still are (a member added meanwhile joined after it).
                    attempts += 1;
                    let Conversation::Group(g) = &conversation else {
                        return Err(StoreError::Aborted(
                            "a 1:1 send cannot have a precondition".into(),
                        )
                        .into());
                    };
                    let members = self.members_if_member(g, &message.from).await?;
                    let still = |u: &String| members.binary_search(u).is_ok();
                    fanout_users.retain(still);
                    if group_members.is_some() {
                        group_members = Some(members.clone());
                    }
                    append.fanout = fanout_users.iter().map(TimelineId::inbox).collect();
                    append.require = required(&conversation, &message.from, &fanout_users);
                    outcome = self.store.timelines().append_multi(append.clone()).await;
                }
                other => break other?,
            }
        };
        // Durable now. Not for a duplicate: it wrote nothing, and its first send may have
        // gone to another conversation (a client reusing a client_msg_id).
        if !appended.duplicate {
            self.indexed
                .lock()
                .insert_all(append.extra.iter().map(|(k, _)| k));
        }
        message.id = appended.id;
        message.created_at = appended.created_at_ms;
        message.conversation_seq = appended.home_seq();
        let seq = appended
            .seq_in(&TimelineId::inbox(&message.from))
            .unwrap_or_else(|| appended.home_seq());
        let delivery = match group_members {
            _ if appended.duplicate => Delivery::Push(Vec::new()),
            Some(members) => Delivery::Notify {
                members,
                seq: appended.home_seq(),
            },
            None => Delivery::Push(
                fanout_users
                    .into_iter()
                    .filter_map(|u| {
                        let s = appended.seq_in(&TimelineId::inbox(&u))?;
                        Some((u, s))
                    })
                    .collect(),
            ),
        };
        Ok(Sent {
            id: appended.id,
            seq,
            duplicate: appended.duplicate,
            conversation,
            message,
            delivery,
        })
    }
}

/// Most conversation-index keys [`Messaging`] remembers as written; when full it starts
/// over (a miss only costs a write the cache saves). About 100 B an entry.
const INDEXED_ENTRIES: usize = 100_000;

/// Conversation-index keys known to be durable in the store. The index is only ever added
/// to (a conversation never leaves it), so a key seen committed stays true for every
/// process sharing the store, and a send need not write it again: two blind writes fewer
/// per 1:1 message between users who talked before.
#[derive(Debug, Default)]
pub(crate) struct IndexedKeys {
    keys: HashSet<Vec<u8>>,
}

impl IndexedKeys {
    fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains(key)
    }

    fn insert_all<'a>(&mut self, keys: impl Iterator<Item = &'a Vec<u8>>) {
        for key in keys {
            if self.keys.len() >= INDEXED_ENTRIES && !self.keys.contains(key) {
                self.keys.clear();
            }
            self.keys.insert(key.clone());
        }
    }
}

impl Messaging {
    /// `planned` without the conversation-index writes known to be durable already.
    fn without_known_index(&self, mut planned: Planned) -> Planned {
        let indexed = self.indexed.lock();
        planned.append.extra.retain(|(k, _)| !indexed.contains(k));
        planned
    }
}

/// The planned send of a checked request with message id `id`.
fn build(checked: Checked, id: u64, now_ms: u64) -> Planned {
    let Checked {
        req,
        conversation,
        fanout_users,
        group_members,
    } = checked;
    let home = conversation.timeline();
    let to = conversation.name_for(&req.from);
    let message = pb::Message {
        id,
        seq: 0,
        from: req.from.clone(),
        to: to.clone(),
        content: req.content,
        content_type: req.content_type,
        created_at: now_ms,
        conversation_seq: 0,
    };
    let extra = match &conversation {
        Conversation::Direct { .. } => {
            let value = codec::encode(V1, &());
            let mut extra = vec![(keys::user_conversation(&req.from, &to), value.clone())];
            if to != req.from {
                extra.push((keys::user_conversation(&to, &req.from), value));
            }
            extra
        }
        Conversation::Group(_) => Vec::new(),
    };
    let append = MultiAppend {
        home,
        fanout: fanout_users.iter().map(TimelineId::inbox).collect(),
        message: NewMessage {
            id,
            created_at_ms: now_ms,
            body: Bytes::from(message.encode_to_vec()),
        },
        idempotency: Some(IdempotencyKey::new(&req.from, &req.client_msg_id)),
        extra,
        require: required(&conversation, &req.from, &fanout_users),
    };
    Planned {
        conversation,
        message,
        append,
        fanout_users,
        group_members,
    }
}
