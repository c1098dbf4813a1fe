//! Stored messaging, core's side: the SEND, SYNC, READ and PUSH_ACK frames of a client
//! connection, and delivery of what was stored (layer: [`roam_messaging`]).
//!
//! A send is stored first (one transaction, durable) and acknowledged; then it is delivered:
//! a PUSH `{message}` to every online device of each recipient and to the sender's other
//! devices — each user's copy carrying the seq of *their* inbox — or, for a group with read
//! fan-out, a NOTICE `{KIND_SYNC, group:<id>, seq}` to its online members, who pull with
//! SYNC. Deliveries go through the edges' queues without waiting: a full queue drops the
//! delivery (`roam_core_deliveries_dropped_total`), and the device finds the gap in its
//! inbox seqs and SYNCs. Who had no online device is `offline_recipients`.

use bytes::Bytes;
use prost::Message as _;
use roam_messaging::{Conversation, Delivery, MessagingError, SendRequest, Sent};
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::{self as link, EdgeDown, deliver, edge_down};
use roam_proto::{Op, error_frame, frame_of};
use roam_store::TimelineId;
use std::collections::{HashMap, HashSet};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use crate::webhook::OfflineNotice;

use crate::edges::Conn;
use crate::inbox_order::InboxOrder;
use crate::metrics::KindLabel;
use crate::service::{Core, now_ms};
use crate::sessions::Session;

/// The most users one PRESENCE may ask about.
const MAX_PRESENCE_USERS: usize = 100;

/// The connection a request came from (its device is not delivered to again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin<'a> {
    pub(crate) edge: &'a str,
    pub(crate) conn: u64,
}

/// One user's copy of a stored message, held until it may go in seq order.
#[derive(Debug)]
pub(crate) struct Release {
    frames: Bytes,
    /// (edge, connection) of each device it goes to.
    targets: Vec<(String, u64)>,
}

/// A recipient with no online device when its message was stored: what the offline
/// webhook is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OfflineRecipient {
    /// The user.
    pub(crate) user: String,
    /// The message's seq in their inbox (or the group history's, for read fan-out).
    pub(crate) seq: u64,
}

/// Recipients of `sent` (never its sender) without an online device among `online` users:
/// each is told to the offline webhook (`core/src/webhook.rs`).
pub(crate) fn offline_recipients(sent: &Sent, online: &HashSet<&str>) -> Vec<OfflineRecipient> {
    let from = sent.message.from.as_str();
    let offline = |user: &str| user != from && !online.contains(user);
    match &sent.delivery {
        Delivery::Push(users) => users
            .iter()
            .filter(|(u, _)| offline(u))
            .map(|(u, seq)| OfflineRecipient {
                user: u.clone(),
                seq: *seq,
            })
            .collect(),
        Delivery::Notify { members, seq } => members
            .iter()
            .filter(|u| offline(u))
            .map(|u| OfflineRecipient {
                user: u.clone(),
                seq: *seq,
            })
            .collect(),
    }
}

/// `sessions` by user.
pub(crate) fn sessions_by_user(sessions: &[Session]) -> HashMap<&str, Vec<&Session>> {
    let mut by_user: HashMap<&str, Vec<&Session>> = HashMap::new();
    for s in sessions {
        by_user.entry(s.user.as_str()).or_default().push(s);
    }
    by_user
}

/// The users `sent` is delivered to (each user's devices are looked up).
pub(crate) fn delivery_users(sent: &Sent) -> Vec<String> {
    match &sent.delivery {
        Delivery::Push(users) => users.iter().map(|(u, _)| u.clone()).collect(),
        Delivery::Notify { members, .. } => members.clone(),
    }
}

/// The ERROR frame code and metric reason of a refusal.
pub(crate) fn refusal(e: &MessagingError) -> (pb::error::Code, &'static str) {
    use pb::error::Code;
    match e {
        MessagingError::Invalid(_) | MessagingError::Exists(_) => {
            (Code::InvalidArgument, "invalid")
        }
        MessagingError::TooLarge { .. } => (Code::InvalidArgument, "too_large"),
        MessagingError::NotFound(_) => (Code::NotFound, "not_found"),
        MessagingError::Forbidden(_) => (Code::Forbidden, "forbidden"),
        MessagingError::Limit(_) => (Code::InvalidArgument, "limit"),
        MessagingError::RateLimited { .. } => (Code::RateLimited, "rate_limited"),
        MessagingError::Store(_) | MessagingError::Ids(_) => (Code::Unavailable, "unavailable"),
    }
}

/// Drops messages from `reply` until its body is at most `max` bytes (a page of large
/// messages must still fit a client frame): the newest ones for a page after a cursor, the
/// oldest for a page before one; the cursor and `has_more` then say where to go on.
fn fit(mut reply: pb::SyncReply, max: usize, backwards: bool) -> pb::SyncReply {
    if reply.encoded_len() <= max {
        return reply;
    }
    let mut size = reply.encoded_len();
    while size > max && !reply.messages.is_empty() {
        let m = if backwards {
            reply.messages.remove(0)
        } else {
            reply.messages.pop().unwrap_or_default()
        };
        // Each message is a length-delimited field: its bytes, its length prefix, its tag.
        let len = m.encoded_len();
        size = size.saturating_sub(len + prost::length_delimiter_len(len) + 1);
    }
    reply.has_more = true;
    let edge = if backwards {
        reply.messages.first()
    } else {
        reply.messages.last()
    };
    if let Some(m) = edge {
        reply.next_after = m.seq;
    }
    reply
}

fn notice(kind: pb::notice::Kind, peer: String, seq: u64) -> Bytes {
    let n = pb::Notice {
        kind: kind as i32,
        peer,
        seq,
        payload: Bytes::new(),
    };
    frame_of(Op::Notice, 0, &n).unwrap_or_default()
}

impl Core {
    pub(crate) fn refused(&self, e: &MessagingError) -> pb::error::Code {
        let (code, kind) = refusal(e);
        if code == pb::error::Code::Unavailable {
            warn!(error = %e, "stored messaging failed");
        }
        self.metrics
            .messaging_refused
            .get_or_create(&KindLabel { kind })
            .inc();
        code
    }

    /// Stores `req` and delivers it (from the connection `origin`, or the API); returns
    /// what was stored.
    pub(crate) async fn send_message(
        &self,
        req: SendRequest,
        origin: Option<Origin<'_>>,
    ) -> Result<Sent, MessagingError> {
        let planned = match self
            .messaging
            .plan_send(req, now_ms(), self.started.elapsed())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                self.refused(&e);
                return Err(e);
            }
        };
        let inboxes = planned.inboxes().to_vec();
        self.begin_inboxes(&inboxes).await;
        let stored = self.messaging.store(planned).await;
        let sent = self.stored(stored, &inboxes)?;
        if sent.duplicate {
            return Ok(sent);
        }
        let offline = self.deliver(&sent, &inboxes, origin).await;
        self.notify_offline(&sent, offline);
        Ok(sent)
    }

    /// Registers a send with each inbox it writes (before it is handed to the store), so
    /// that deliveries go out in inbox seq order; an inbox new here learns its head first.
    pub(crate) async fn begin_inboxes(&self, inboxes: &[String]) {
        let fresh: Vec<&String> = {
            let mut order = self.order();
            inboxes.iter().filter(|u| order.begin(u)).collect()
        };
        for user in fresh {
            let head = self.messaging.inbox_head(user).await.unwrap_or_else(|e| {
                debug!(error = %e, "cannot read an inbox head; its deliveries wait for quiet");
                0
            });
            let mut order = self.order();
            let due = order.floor(user, head);
            self.release(due);
        }
    }

    /// The store's answer to a send registered with `inboxes`: a refusal or a duplicate
    /// ends the send there (counted); a new message is counted and left to deliver.
    pub(crate) fn stored(
        &self,
        stored: Result<Sent, MessagingError>,
        inboxes: &[String],
    ) -> Result<Sent, MessagingError> {
        let sent = match stored {
            Ok(s) => s,
            Err(e) => {
                self.finish_none(inboxes);
                self.refused(&e);
                return Err(e);
            }
        };
        if sent.duplicate {
            self.finish_none(inboxes);
            self.metrics.messages_duplicate.inc();
            return Ok(sent);
        }
        let kind = match sent.delivery {
            Delivery::Push(_) => "push",
            Delivery::Notify { .. } => "pull",
        };
        self.metrics
            .messages_stored
            .get_or_create(&KindLabel { kind })
            .inc();
        Ok(sent)
    }

    /// Tells the offline webhook about `sent`'s recipients without an online device.
    pub(crate) fn notify_offline(&self, sent: &Sent, offline: Vec<OfflineRecipient>) {
        for r in offline {
            self.webhook.offline(OfflineNotice {
                conversation: sent.conversation.name_for(&r.user),
                user: r.user,
                from: sent.message.from.clone(),
                message_id: sent.id,
                seq: r.seq,
                created_at_ms: sent.message.created_at,
            });
        }
    }

    fn order(&self) -> parking_lot::MutexGuard<'_, InboxOrder<Release>> {
        self.inbox_order.lock()
    }

    fn finish_none(&self, inboxes: &[String]) {
        let mut order = self.order();
        for user in inboxes {
            let due = order.finish(user, None);
            self.release(due);
        }
    }

    /// Queues released deliveries (called with the order lock held, so that releases of
    /// one inbox reach the edges' queues in seq order).
    fn release(&self, due: Vec<Release>) {
        for r in due {
            let targets: Vec<(&str, u64)> =
                r.targets.iter().map(|(e, c)| (e.as_str(), *c)).collect();
            self.queue_to(&targets, r.frames);
        }
    }

    /// Queues `sent` for every online device it is for (but `origin`'s) and ends its
    /// sends in `inboxes`; returns the recipients that had no online device.
    async fn deliver(
        &self,
        sent: &Sent,
        inboxes: &[String],
        origin: Option<Origin<'_>>,
    ) -> Vec<OfflineRecipient> {
        let users = delivery_users(sent);
        match self.sessions.sessions_of_users(&users).await {
            Ok(sessions) => self.deliver_to(sent, inboxes, origin, &sessions_by_user(&sessions)),
            Err(e) => {
                self.sessions_unknown(&e, inboxes);
                Vec::new()
            }
        }
    }

    /// The recipients' sessions could not be read: what was stored and acknowledged
    /// reaches the devices with SYNC.
    pub(crate) fn sessions_unknown(&self, e: &roam_store::StoreError, inboxes: &[String]) {
        warn!(error = %e, "cannot look up the recipients' sessions; they will SYNC");
        self.metrics
            .store_errors
            .get_or_create(&KindLabel { kind: "deliver" })
            .inc();
        self.finish_none(inboxes);
    }

    /// [`Self::deliver`] with the sessions of `sent`'s recipients already read, by user
    /// (`by_user` may hold other users' too: a batch reads its recipients' sessions once).
    pub(crate) fn deliver_to(
        &self,
        sent: &Sent,
        inboxes: &[String],
        origin: Option<Origin<'_>>,
        by_user: &HashMap<&str, Vec<&Session>>,
    ) -> Vec<OfflineRecipient> {
        let users: Vec<&str> = match &sent.delivery {
            Delivery::Push(users) => users.iter().map(|(u, _)| u.as_str()).collect(),
            Delivery::Notify { members, .. } => members.iter().map(String::as_str).collect(),
        };
        let sessions: Vec<&Session> = users
            .iter()
            .filter_map(|u| by_user.get(u))
            .flatten()
            .copied()
            .collect();
        let online: HashSet<&str> = sessions.iter().map(|s| s.user.as_str()).collect();
        let offline = offline_recipients(sent, &online);
        let targets: Vec<&Session> = sessions
            .iter()
            .copied()
            .filter(|s| origin.is_none_or(|o| !(o.edge == s.edge && o.conn == s.conn)))
            .collect();
        match &sent.delivery {
            Delivery::Push(users) => {
                let mut by_user: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
                for s in &targets {
                    by_user
                        .entry(s.user.as_str())
                        .or_default()
                        .push((s.edge.clone(), s.conn));
                }
                let mut order = self.order();
                for (user, seq) in users {
                    let devices = by_user.remove(user.as_str()).unwrap_or_default();
                    let frames = if devices.is_empty() {
                        Bytes::new()
                    } else {
                        let mut message = sent.message.clone();
                        message.seq = *seq;
                        let push = pb::Push {
                            kind: Some(pb::push::Kind::Message(message)),
                        };
                        frame_of(Op::Push, 0, &push).unwrap_or_default()
                    };
                    let release = Release {
                        frames,
                        targets: devices,
                    };
                    let due = order.finish(user, Some((*seq, release)));
                    self.release(due);
                }
                // Inboxes the store did not report (none, unless the layer changes).
                for user in inboxes {
                    if !users.iter().any(|(u, _)| u == user) {
                        let due = order.finish(user, None);
                        self.release(due);
                    }
                }
            }
            Delivery::Notify { seq, .. } => {
                let frame = notice(pb::notice::Kind::Sync, sent.message.to.clone(), *seq);
                let targets: Vec<(&str, u64)> =
                    targets.iter().map(|s| (s.edge.as_str(), s.conn)).collect();
                self.queue_to(&targets, frame);
                self.finish_none(inboxes);
            }
        }
        offline
    }

    /// Queues `frames` for these connections, one delivery per edge, without waiting.
    fn queue_to(&self, targets: &[(&str, u64)], frames: Bytes) {
        if targets.is_empty() || frames.is_empty() {
            return;
        }
        let mut per_edge: HashMap<&str, Vec<u64>> = HashMap::new();
        for (edge, conn) in targets {
            per_edge.entry(edge).or_default().push(*conn);
        }
        for (edge_id, conns) in per_edge {
            let Some(edge) = self.edges.get(edge_id) else {
                continue;
            };
            let down = EdgeDown {
                msg: Some(edge_down::Msg::Deliver(link::Deliver {
                    target: Some(deliver::Target::Conns(link::ConnIds { ids: conns })),
                    frames: frames.clone(),
                })),
            };
            match edge.sender().try_send(down) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    debug!(
                        edge = edge_id,
                        "edge queue full: a stored delivery is left to SYNC"
                    );
                    self.metrics.deliveries_dropped.inc();
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Sends `frames` to `user`'s online devices but `origin`'s connection.
    async fn tell_user(&self, user: &str, frames: Bytes, origin: Option<Origin<'_>>) {
        match self.sessions.sessions_of_users(&[user.to_owned()]).await {
            Ok(sessions) => {
                let targets: Vec<(&str, u64)> = sessions
                    .iter()
                    .filter(|s| origin.is_none_or(|o| !(o.edge == s.edge && o.conn == s.conn)))
                    .map(|s| (s.edge.as_str(), s.conn))
                    .collect();
                self.queue_to(&targets, frames);
            }
            Err(e) => debug!(error = %e, "cannot look up sessions for a notice"),
        }
    }

    /// Answers one stored-messaging op (`Send`, `Sync`, `Read`, `PushAck`, `Presence`) of
    /// `conn`, which is `origin`; returns the reply frames (empty for PUSH_ACK).
    pub(crate) async fn chat_op(
        &self,
        conn: &Conn,
        origin: Origin<'_>,
        op: Op,
        seq: u32,
        body: &[u8],
    ) -> Bytes {
        let bad_body = |what: &str, e: prost::DecodeError| {
            error_frame(
                seq,
                pb::error::Code::BadBody,
                &format!("the body is not a {what}: {e}"),
            )
        };
        let fail = |e: MessagingError| error_frame(seq, self.refused(&e), &e.to_string());
        match op {
            Op::Send => {
                let s = match pb::Send::decode(body) {
                    Ok(s) => s,
                    Err(e) => return bad_body("Send", e),
                };
                let client_msg_id = s.client_msg_id.clone();
                let req = SendRequest {
                    from: conn.user.clone(),
                    to: s.to,
                    client_msg_id: s.client_msg_id,
                    content: s.content,
                    content_type: s.content_type,
                };
                // Refusals are counted by `send_message`.
                let result = self.send_message(req, Some(origin)).await;
                crate::send_batch::ack_frame(seq, client_msg_id, result)
            }
            Op::Sync => {
                let s = match pb::Sync::decode(body) {
                    Ok(s) => s,
                    Err(e) => return bad_body("Sync", e),
                };
                let page = if s.conversation.is_empty() {
                    self.messaging
                        .sync(&conn.user, s.after, s.limit as usize)
                        .await
                } else {
                    self.messaging
                        .history(
                            &conn.user,
                            &s.conversation,
                            s.after,
                            s.before,
                            s.limit as usize,
                        )
                        .await
                };
                let backwards = !s.conversation.is_empty() && s.before > 0;
                match page {
                    Ok(p) => {
                        let reply = fit(
                            pb::SyncReply {
                                messages: p.messages,
                                next_after: p.next_after,
                                has_more: p.has_more,
                            },
                            self.options.max_content,
                            backwards,
                        );
                        frame_of(Op::SyncReply, seq, &reply).unwrap_or_else(|e| {
                            error_frame(
                                seq,
                                pb::error::Code::Internal,
                                &format!(
                                    "the page does not fit a frame ({e}); ask for a smaller limit"
                                ),
                            )
                        })
                    }
                    Err(e) => fail(e),
                }
            }
            Op::Read => {
                let r = match pb::Read::decode(body) {
                    Ok(r) => r,
                    Err(e) => return bad_body("Read", e),
                };
                match self.messaging.read(&conn.user, &r.peer, r.seq).await {
                    Ok(outcome) => {
                        self.after_read(
                            &conn.user,
                            &outcome.conversation,
                            outcome.seq,
                            Some(origin),
                        )
                        .await;
                        let reply = pb::ReadReply {
                            peer: r.peer,
                            seq: outcome.seq,
                            unread: outcome.unread,
                        };
                        frame_of(Op::ReadReply, seq, &reply).unwrap_or_default()
                    }
                    Err(e) => fail(e),
                }
            }
            Op::PushAck => {
                let a = match pb::PushAck::decode(body) {
                    Ok(a) => a,
                    Err(e) => return bad_body("PushAck", e),
                };
                let inbox = TimelineId::inbox(&conn.user);
                if let Err(e) = self
                    .store_cursors
                    .mark_delivered(&conn.user, &conn.device, &inbox, a.seq)
                    .await
                {
                    warn!(error = %e, "cannot move a delivered cursor");
                    self.metrics
                        .store_errors
                        .get_or_create(&KindLabel { kind: "push_ack" })
                        .inc();
                }
                Bytes::new()
            }
            Op::Presence => {
                let q = match pb::PresenceQuery::decode(body) {
                    Ok(q) => q,
                    Err(e) => return bad_body("PresenceQuery", e),
                };
                self.presence_op(&conn.user, q.users, seq).await
            }
            other => error_frame(
                seq,
                pb::error::Code::UnknownOp,
                &format!("{other} is not a stored-messaging request"),
            ),
        }
    }

    /// PRESENCE: the presence of those of `users` who share a conversation with `user`
    /// (themself included); the others are left out, so a user learns nothing of strangers.
    async fn presence_op(&self, user: &str, users: Vec<String>, seq: u32) -> Bytes {
        if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
            return error_frame(
                seq,
                pb::error::Code::InvalidArgument,
                &format!("ask for 1 to {MAX_PRESENCE_USERS} users"),
            );
        }
        let allowed = match self.messaging.shares_conversation(user, &users).await {
            Ok(a) => a,
            Err(e) => return error_frame(seq, self.refused(&e), &e.to_string()),
        };
        let peers: Vec<String> = users
            .into_iter()
            .zip(allowed)
            .filter_map(|(u, ok)| ok.then_some(u))
            .collect();
        let presence = match self.sessions.presence(&peers).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read presence");
                return error_frame(
                    seq,
                    pb::error::Code::Unavailable,
                    "presence is unavailable: retry",
                );
            }
        };
        let reply = pb::PresenceReply {
            users: presence
                .into_iter()
                .map(|p| pb::UserPresence {
                    online: !p.sessions.is_empty(),
                    last_seen_ms: if p.sessions.is_empty() {
                        p.last_seen_ms.unwrap_or(0)
                    } else {
                        0
                    },
                    user: p.user,
                })
                .collect(),
        };
        frame_of(Op::PresenceReply, seq, &reply).unwrap_or_default()
    }

    /// After `user` read `conversation` up to `seq`: a KIND_READ notice to their other
    /// devices and, for a 1:1 conversation, a KIND_RECEIPT to the peer's devices.
    pub(crate) async fn after_read(
        &self,
        user: &str,
        conversation: &Conversation,
        seq: u64,
        origin: Option<Origin<'_>>,
    ) {
        let name = conversation.name_for(user);
        self.tell_user(
            user,
            notice(pb::notice::Kind::Read, name.clone(), seq),
            origin,
        )
        .await;
        if let Conversation::Direct { .. } = conversation
            && name != user
        {
            self.tell_user(
                &name,
                notice(pb::notice::Kind::Receipt, user.to_owned(), seq),
                None,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u64, size: usize) -> pb::SyncReply {
        pb::SyncReply {
            messages: (1..=n)
                .map(|seq| pb::Message {
                    seq,
                    content: vec![b'x'; size].into(),
                    ..Default::default()
                })
                .collect(),
            next_after: n,
            has_more: false,
        }
    }

    #[test]
    fn offline_recipients_are_those_without_a_device_but_never_the_sender() {
        let sent = |delivery| Sent {
            id: 7,
            seq: 1,
            duplicate: false,
            conversation: Conversation::Group("g".into()),
            message: pb::Message {
                from: "alice".into(),
                ..Default::default()
            },
            delivery,
        };
        let online: HashSet<&str> = ["bob"].into();
        let push = sent(Delivery::Push(vec![
            ("alice".into(), 3),
            ("bob".into(), 4),
            ("carol".into(), 5),
        ]));
        assert_eq!(
            offline_recipients(&push, &online),
            [OfflineRecipient {
                user: "carol".into(),
                seq: 5
            }]
        );
        let pull = sent(Delivery::Notify {
            members: vec!["alice".into(), "bob".into(), "dave".into()],
            seq: 9,
        });
        assert_eq!(
            offline_recipients(&pull, &online),
            [OfflineRecipient {
                user: "dave".into(),
                seq: 9
            }]
        );
    }

    #[test]
    fn a_page_is_cut_to_fit_a_frame() {
        let small = fit(page(3, 10), 10_000, false);
        assert_eq!(
            (small.messages.len(), small.next_after, small.has_more),
            (3, 3, false)
        );
        let after = fit(page(10, 1000), 3500, false);
        let seqs: Vec<u64> = after.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            (seqs, after.next_after, after.has_more),
            (vec![1, 2, 3], 3, true)
        );
        assert!(after.encoded_len() <= 3500);
        let before = fit(page(10, 1000), 3500, true);
        let seqs: Vec<u64> = before.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            (seqs, before.next_after, before.has_more),
            (vec![8, 9, 10], 8, true)
        );
    }
}
