//! Reading: inbox pages (SYNC), history pages of a conversation, read cursors and unread
//! counts.

use prost::Message as _;
use roam_proto::client::v1 as pb;
use roam_store::{RangeOption, TimelineEntry, TimelineId, codec, strinc};
use tracing::warn;

use crate::conversation::{Conversation, check_user};
use crate::groups::decode_refusal;
use crate::keys::{self, V1};
use crate::{DEFAULT_PAGE, MAX_PAGE, Messaging, MessagingError};

/// Most history entries an unread count looks at: counts stop there.
pub const MAX_UNREAD_SCAN: usize = 1000;

/// A page of messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// In seq order.
    pub messages: Vec<pb::Message>,
    /// The cursor for the next page: the last seq returned (or `after` if none); for a page
    /// before a seq, the first seq returned (the next page's `before`).
    pub next_after: u64,
    /// Whether more messages lie beyond this page.
    pub has_more: bool,
}

/// The outcome of a READ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The conversation read.
    pub conversation: Conversation,
    /// The read cursor after the move (it never moves back, nor past the newest message).
    pub seq: u64,
    /// Messages from others after the cursor (counted up to [`MAX_UNREAD_SCAN`]).
    pub unread: u64,
}

/// Unread messages of one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    /// How the user names it (peer or `group:<id>`).
    pub conversation: String,
    /// The user's read cursor there.
    pub read_seq: u64,
    /// The newest `conversation_seq`.
    pub latest_seq: u64,
    /// Messages from others after the cursor (counted up to [`MAX_UNREAD_SCAN`]).
    pub unread: u64,
}

fn page_size(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// A stored entry as a client sees it; `None` for a reference whose body was trimmed or a
/// body that does not decode (logged).
fn to_message(entry: TimelineEntry) -> Option<pb::Message> {
    let body = entry.body?;
    let mut m = match pb::Message::decode(body) {
        Ok(m) => m,
        Err(e) => {
            warn!(id = entry.id, error = %e, "a stored message does not decode; skipped");
            return None;
        }
    };
    m.seq = entry.seq;
    m.conversation_seq = entry.home.map_or(entry.seq, |(_, s)| s);
    Some(m)
}

impl Messaging {
    /// `user`'s inbox after `after`: up to `limit` (0: 100, at most 1000) messages.
    pub async fn sync(&self, user: &str, after: u64, limit: usize) -> Result<Page, MessagingError> {
        self.page_after(&TimelineId::inbox(user), after, page_size(limit))
            .await
    }

    /// A page of the history `user` names `conversation` (a peer or `group:<id>`): after
    /// `after`, or, when `before > 0`, the newest `limit` messages before `before`. Group
    /// history is for members only.
    pub async fn history(
        &self,
        user: &str,
        conversation: &str,
        after: u64,
        before: u64,
        limit: usize,
    ) -> Result<Page, MessagingError> {
        let c = self.readable(user, conversation).await?;
        let timeline = c.timeline();
        let limit = page_size(limit);
        if before == 0 {
            return self.page_after(&timeline, after, limit).await;
        }
        let from = before.saturating_sub(limit as u64 + 1);
        let timelines = self.store.timelines();
        let entries = timelines.read(&timeline, from, limit).await?;
        let messages: Vec<_> = entries
            .into_iter()
            .filter(|e| e.seq < before)
            .filter_map(to_message)
            .collect();
        let first = messages.first().map_or(from + 1, |m| m.conversation_seq);
        let has_more = first > timelines.first_seq(&timeline).await?;
        Ok(Page {
            messages,
            next_after: first,
            has_more,
        })
    }

    async fn page_after(
        &self,
        timeline: &TimelineId,
        after: u64,
        limit: usize,
    ) -> Result<Page, MessagingError> {
        let mut entries = self
            .store
            .timelines()
            .read(timeline, after, limit + 1)
            .await?;
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        let next_after = entries.last().map_or(after, |e| e.seq);
        Ok(Page {
            messages: entries.into_iter().filter_map(to_message).collect(),
            next_after,
            has_more,
        })
    }

    /// The conversation `user` names `name`, if `user` may read it (a pair always includes
    /// `user`; a group needs membership).
    async fn readable(&self, user: &str, name: &str) -> Result<Conversation, MessagingError> {
        let c = Conversation::parse(user, name)?;
        if let Conversation::Group(g) = &c {
            self.check_member(g, user).await?;
        }
        debug_assert!(matches!(c, Conversation::Group(_)) || c.is_pair_member(user));
        Ok(c)
    }

    /// Moves `user`'s read cursor in `conversation` to `seq` (never back, never past the
    /// newest message) and counts what stays unread.
    pub async fn read(
        &self,
        user: &str,
        conversation: &str,
        seq: u64,
    ) -> Result<ReadOutcome, MessagingError> {
        let c = self.readable(user, conversation).await?;
        let key = keys::read_cursor(user, &c);
        let timeline = c.timeline();
        let timelines = self.store.timelines();
        let latest = timelines.latest_seq(&timeline).await?;
        let target = seq.min(latest);
        let cursor = self
            .store
            .transact(move |tx| {
                let old: u64 = match tx.get(&key)? {
                    Some(v) => codec::decode::<(u64,)>(&key, &v, V1)?.0,
                    None => 0,
                };
                if target > old {
                    tx.set(&key, &codec::encode(V1, &(target,)))?;
                }
                Ok(old.max(target))
            })
            .await
            .map_err(decode_refusal)?;
        let unread = self.count_unread(user, &timeline, cursor).await?;
        Ok(ReadOutcome {
            conversation: c,
            seq: cursor,
            unread,
        })
    }

    async fn read_cursor(&self, user: &str, c: &Conversation) -> Result<u64, MessagingError> {
        let key = keys::read_cursor(user, c);
        Ok(self
            .store
            .transact(move |tx| {
                Ok(match tx.get(&key)? {
                    Some(v) => codec::decode::<(u64,)>(&key, &v, V1)?.0,
                    None => 0,
                })
            })
            .await?)
    }

    async fn count_unread(
        &self,
        user: &str,
        timeline: &TimelineId,
        after: u64,
    ) -> Result<u64, MessagingError> {
        let entries = self
            .store
            .timelines()
            .read(timeline, after, MAX_UNREAD_SCAN)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(to_message)
            .filter(|m| m.from != user)
            .count() as u64)
    }

    /// `user`'s unread counts: every 1:1 conversation they took part in and every group
    /// they are a member of.
    pub async fn unread(&self, user: &str) -> Result<Vec<Unread>, MessagingError> {
        check_user(user)?;
        let prefix = keys::user_conversations(user);
        let peers: Vec<String> = self
            .store
            .transact(move |tx| {
                let range = RangeOption::between(prefix.clone(), strinc(&prefix));
                Ok(tx
                    .get_range(&range)?
                    .iter()
                    .filter_map(|kv| keys::last_string(&prefix, &kv.key))
                    .collect())
            })
            .await?;
        let mut conversations = Vec::new();
        for peer in peers {
            conversations.push(Conversation::direct(user, &peer)?);
        }
        for g in self.groups_of(user).await? {
            conversations.push(Conversation::Group(g));
        }
        let timelines = self.store.timelines();
        let mut out = Vec::with_capacity(conversations.len());
        for c in conversations {
            let timeline = c.timeline();
            let read_seq = self.read_cursor(user, &c).await?;
            let latest_seq = timelines.latest_seq(&timeline).await?;
            let unread = self.count_unread(user, &timeline, read_seq).await?;
            out.push(Unread {
                conversation: c.name_for(user),
                read_seq,
                latest_seq,
                unread,
            });
        }
        Ok(out)
    }
}

impl Messaging {
    /// The newest seq of `user`'s inbox.
    pub async fn inbox_head(&self, user: &str) -> Result<u64, MessagingError> {
        Ok(self
            .store
            .timelines()
            .latest_seq(&TimelineId::inbox(user))
            .await?)
    }
}
