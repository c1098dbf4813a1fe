//! # roam-messaging — stored chat over the store's timelines
//!
//! The layer between core (which speaks frames and HTTP) and the store (which keeps ordered,
//! gap-free timelines). It owns the data model of chat; `docs/data-model.md` has every key.
//!
//! - **Conversations** ([`Conversation`]): a 1:1 pair or a group. Each has one *history*
//!   timeline (a pair's is `TimelineKind::Direct`, a group's `TimelineKind::Group`), which
//!   holds every message body once and numbers it with a gap-free `conversation_seq`.
//! - **Inboxes**: per user a timeline of references to what the user sent and received
//!   (the *sync* timeline, with gap-free `seq`), which every device of the user follows with
//!   SYNC and PUSH_ACK (the store's per-device cursors, [`roam_store::Cursors`]).
//! - **Send** ([`Messaging::send`]): one store transaction writes the body into the history,
//!   a reference into the sender's inbox and each recipient's inbox (write fan-out), the
//!   idempotency record `(from, client_msg_id)` and the conversation index; it returns once
//!   durable, with what core must deliver ([`Delivery`]). Groups above
//!   [`MessagingOptions::fanout_threshold`] members use read fan-out instead: the message
//!   goes into the group timeline only, and members are told to pull it.
//! - **Sync and history** ([`Messaging::sync`], [`Messaging::history`]): pages of an inbox
//!   or of a conversation's history.
//! - **Read cursors** ([`Messaging::read`]): per user and conversation, with unread counts.
//! - **Groups** ([`Messaging::create_group`] and the membership calls): members, a user's
//!   groups, limits on both; membership is checked on send and on every read of a group.
//!
//! Message ids come from the ID service ([`roam_idsvc::IdSource`], segment tag `msg`), never
//! from a local counter. Everything here is sans-IO apart from the store and the ID service:
//! time is passed in.

#![forbid(unsafe_code)]

mod conversation;
mod groups;
mod keys;
mod rate;
mod read;
mod send;

use std::time::Duration;

use parking_lot::Mutex;
use roam_idsvc::{IdError, IdSource};
use roam_store::{Store, StoreError};

pub use conversation::{Conversation, GROUP_PREFIX, MAX_ID_LEN, check_group, check_user};
pub use groups::Group;
pub use read::{MAX_UNREAD_SCAN, Page, ReadOutcome, Unread};
pub use send::{Delivery, Planned, SendRequest, Sent, StoringBatch};

/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;
/// Longest `content_type`, in bytes.
pub const MAX_CONTENT_TYPE: usize = 128;
/// Page size when the client asks for 0.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page.
pub const MAX_PAGE: usize = 1000;
/// The segment tag message ids come from.
pub const ID_TAG: &str = "msg";

/// Messaging's tunables (`[messaging]` in the configuration).
#[derive(Debug, Clone)]
pub struct MessagingOptions {
    /// Groups up to this many members get write fan-out (an inbox entry per member); larger
    /// ones read fan-out (one group timeline, members notified to pull).
    pub fanout_threshold: usize,
    /// Largest message content, in bytes.
    pub max_content_bytes: usize,
    /// Most members of one group.
    pub max_group_members: usize,
    /// Most groups one user may be a member of.
    pub max_groups_per_user: usize,
    /// Sends per second per user (sustained); 0: no limit.
    pub send_rate: u32,
    /// Sends one user may make at once above the rate.
    pub send_burst: u32,
    /// Most SENDs core stores as one batch (group commit: one store transaction and one
    /// fsync for those whose timelines are free).
    pub batch_max: usize,
    /// How long core waits for more SENDs to join a batch that is not full; zero: a batch
    /// is what is waiting when the previous one is handed over.
    pub batch_wait: Duration,
    /// Send batches core has in the store at once; more SENDs wait and form the next.
    pub batches_in_flight: usize,
}

impl Default for MessagingOptions {
    fn default() -> Self {
        MessagingOptions {
            fanout_threshold: 100,
            max_content_bytes: 64 * 1024,
            max_group_members: 10_000,
            max_groups_per_user: 1_000,
            send_rate: 200,
            send_burst: 400,
            batch_max: 256,
            batch_wait: Duration::ZERO,
            batches_in_flight: 4,
        }
    }
}

/// Why a messaging call failed; each maps to an ERROR frame code and an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// Malformed input (a recipient, an id, a missing field).
    #[error("{0}")]
    Invalid(String),
    /// The content is over the size cap.
    #[error("content is {len} bytes; the maximum is {max} (messaging.max_content_bytes)")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The group does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The user is not allowed to (not a member of the group).
    #[error("{0}")]
    Forbidden(String),
    /// The group already exists.
    #[error("{0}")]
    Exists(String),
    /// A configured limit (members per group, groups per user) would be exceeded.
    #[error("{0}")]
    Limit(String),
    /// The user sends faster than `messaging.send_rate`.
    #[error("{user} sends faster than {rate} messages/s (messaging.send_rate); slow down")]
    RateLimited {
        /// The user.
        user: String,
        /// The configured rate.
        rate: u32,
    },
    /// The store failed: nothing was stored, or (for an unknown commit outcome) a retry with
    /// the same `client_msg_id` is safe.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// No message id could be had.
    #[error("the id service failed: {0}")]
    Ids(#[from] IdError),
}

/// The messaging layer; core holds one.
#[derive(Debug)]
pub struct Messaging {
    store: Store,
    ids: IdSource,
    options: MessagingOptions,
    rate: Mutex<rate::SendRate>,
    /// Conversation-index keys known to be written (sends skip them).
    indexed: Mutex<send::IndexedKeys>,
}

impl Messaging {
    /// Messaging over `store`, with message ids from `ids`.
    pub fn new(store: Store, ids: IdSource, options: MessagingOptions) -> Self {
        let rate = rate::SendRate::new(options.send_rate, options.send_burst);
        Messaging {
            store,
            ids,
            options,
            rate: Mutex::new(rate),
            indexed: Mutex::default(),
        }
    }

    /// Its tunables.
    pub fn options(&self) -> &MessagingOptions {
        &self.options
    }

    /// One message id from the ID service (creating the `msg` tag on first use).
    async fn next_id(&self) -> Result<u64, MessagingError> {
        match self.ids.next_id(ID_TAG).await {
            Err(IdError::UnknownTag { .. }) => {
                match self.ids.create_tag(ID_TAG, 1000, 1).await {
                    Ok(()) | Err(IdError::TagExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(self.ids.next_id(ID_TAG).await?)
            }
            other => Ok(other?),
        }
    }

    /// `count` message ids from the ID service in one call (creating the `msg` tag on
    /// first use); none for 0.
    async fn next_ids(&self, count: usize) -> Result<Vec<u64>, MessagingError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let count = u32::try_from(count)
            .map_err(|_| MessagingError::Invalid(format!("{count} ids at once")))?;
        match self.ids.next_ids(ID_TAG, count).await {
            Err(IdError::UnknownTag { .. }) => {
                match self.ids.create_tag(ID_TAG, 1000, 1).await {
                    Ok(()) | Err(IdError::TagExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(self.ids.next_ids(ID_TAG, count).await?)
            }
            other => Ok(other?),
        }
    }

    /// Whether `user` may send now (the per-user token bucket); `now` from a monotonic clock.
    fn admit(&self, user: &str, now: Duration) -> Result<(), MessagingError> {
        let mut rate = self.rate.lock();
        if rate.allow(user, now) {
            Ok(())
        } else {
            Err(MessagingError::RateLimited {
                user: user.to_owned(),
                rate: self.options.send_rate,
            })
        }
    }
}

#[cfg(test)]
mod tests;
