//! The sans-IO client state machine, in quinn-proto's style: the caller feeds it what happened
//! (`handle_*`, with the time) and asks it what to do (`poll_*`). No sockets, no clocks, no
//! sleeps: [`crate::client`] drives it over real transports, the unit tests drive it by hand.
//!
//! What it does, over any number of connections one after the other:
//!
//! - **auth**: on [`Session::handle_connected`] it queues AUTH, then in the same flight a SYNC
//!   from the inbox cursor and every unacknowledged SEND (the edge holds frames after AUTH
//!   until its answer);
//! - **heartbeat**: HEARTBEAT every `heartbeat_secs` the server gave (AUTH_REPLY, then each
//!   HEARTBEAT_REPLY); a connection that answers nothing within
//!   [`SessionConfig::heartbeat_timeout`] of a heartbeat, [`SessionConfig::max_heartbeat_misses`]
//!   times in a row, is declared lost ([`Event::ConnectionLost`]);
//! - **SEND until acknowledged**: a message keeps its `client_msg_id` on every retry — on each
//!   new connection, after [`SessionConfig::send_timeout`] without an answer, after a
//!   retryable ERROR — until its SEND_ACK; the server's idempotency makes retries safe;
//! - **the inbox cursor**: pushed messages are delivered in seq order; a push past a gap is
//!   held and a SYNC fills the gap (paged by `next_after`/`has_more`); every delivered seq is
//!   acknowledged with PUSH_ACK; a reconnect resumes with a SYNC from the cursor;
//! - **dedupe**: a message id is delivered once, whether pushed, synced or pulled after a
//!   group NOTICE;
//! - READ receipts, rooms (re-joined on every connection through AUTH), ephemeral pushes,
//!   notices, and DISCONNECT (its reconnect hint and `reconnect_to`; no reconnect when the
//!   server says so or the token was refused).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, FrameError, Op, frame_of};
use thiserror::Error;

use crate::schedule::{Backoff, Schedule};

/// How many delivered message ids are remembered for dedupe.
const SEEN_IDS: usize = 10_000;

/// What the session needs to know to connect, and its timers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The client token (a JWT from the app's backend, or `roam token`).
    pub token: String,
    /// This device's stable id.
    pub device_id: String,
    /// Reported in presence ("ios", "android", "cli", …).
    pub platform: String,
    /// Edge addresses, tried in order (their format is the driver's; see [`crate::client`]).
    pub edges: Vec<String>,
    /// The reconnect delays.
    pub backoff: Backoff,
    /// The inbox cursor to resume from (0: the whole inbox).
    pub cursor: u64,
    /// Messages per SYNC page (0: the server's default).
    pub sync_limit: u32,
    /// How long AUTH may wait for its answer before the connection counts as failed.
    pub auth_timeout: Duration,
    /// How long a heartbeat waits for any frame before it counts as missed.
    pub heartbeat_timeout: Duration,
    /// Missed heartbeats in a row after which the connection is lost.
    pub max_heartbeat_misses: u32,
    /// How long a SEND waits for its answer before it is sent again (same id).
    pub send_timeout: Duration,
}

impl SessionConfig {
    /// A configuration with the default timers: auth 10 s, heartbeat reply 10 s, 2 misses,
    /// SEND resent after 15 s, backoff 500 ms doubling to 30 s.
    pub fn new(token: impl Into<String>, device_id: impl Into<String>, edges: Vec<String>) -> Self {
        SessionConfig {
            token: token.into(),
            device_id: device_id.into(),
            platform: "rust".into(),
            edges,
            backoff: Backoff::default(),
            cursor: 0,
            sync_limit: 0,
            auth_timeout: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(10),
            max_heartbeat_misses: 2,
            send_timeout: Duration::from_secs(15),
        }
    }
}

/// A SEND_ACK: the message is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The id the client chose.
    pub client_msg_id: String,
    /// The message's id.
    pub id: u64,
    /// Its seq in the sender's inbox (a group with read fan-out: its conversation seq).
    pub seq: u64,
    /// The server had stored it before (an earlier try got through).
    pub duplicate: bool,
}

/// Why a connection was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No AUTH_REPLY in time.
    AuthTimeout,
    /// Heartbeats went unanswered.
    HeartbeatMisses(u32),
    /// The server sent DISCONNECT.
    Disconnect {
        /// `Disconnect.reason`.
        reason: pb::disconnect::Reason,
        /// `Disconnect.message`.
        message: String,
    },
    /// The transport closed or failed.
    Transport,
    /// The server broke the protocol (an undecodable frame).
    Protocol(String),
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// AUTH succeeded on a new connection.
    Connected(pb::AuthReply),
    /// A stored message, once, in inbox order (or a group's history order after a NOTICE).
    Message(pb::Message),
    /// An ephemeral push (to the device, user, a room, or everyone).
    Ephemeral(pb::Ephemeral),
    /// A SEND is durable.
    SendAck(Ack),
    /// A SEND was refused for good (e.g. `CODE_INVALID_ARGUMENT`, `CODE_FORBIDDEN`).
    SendFailed {
        /// The message's id.
        client_msg_id: String,
        /// The ERROR's code.
        code: pb::error::Code,
        /// The ERROR's message.
        message: String,
    },
    /// A READ's answer.
    ReadReply(pb::ReadReply),
    /// The connection's rooms after a ROOM_JOIN or ROOM_LEAVE.
    Rooms(Vec<String>),
    /// A NOTICE (read elsewhere, a receipt, presence; KIND_SYNC is also acted on).
    Notice(pb::Notice),
    /// Another request was refused.
    Error {
        /// The op of the refused request.
        op: Option<Op>,
        /// The ERROR's code.
        code: pb::error::Code,
        /// The ERROR's message.
        message: String,
    },
    /// The connection is gone (the driver closes the transport); a reconnect follows unless
    /// [`Event::Closed`] comes too.
    ConnectionLost(LostReason),
    /// The session will not reconnect: the token was refused, the device kicked or replaced,
    /// or [`Session::close`] was called.
    Closed(String),
}

/// Why a request could not be queued.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The frame would be too large to encode.
    #[error("request too large: {0}")]
    TooLarge(#[from] FrameError),
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
}

/// A SEND waiting for its SEND_ACK.
#[derive(Debug, Clone)]
struct PendingSend {
    client_msg_id: String,
    frame: pb::Send,
    /// When it was last sent on the current connection (`None`: not yet).
    sent_at: Option<Instant>,
    /// A retryable refusal: not before then.
    retry_at: Option<Instant>,
}

/// What a request seq was for.
#[derive(Debug, Clone)]
enum Request {
    Auth,
    Send(String),
    InboxSync,
    ConversationSync(String),
    Other(Op),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection; the next attempt is due at `at` (`None`: not yet planned).
    Offline { at: Option<Instant> },
    /// The driver is dialing.
    Dialing,
    /// AUTH sent at `since`.
    Authenticating { since: Instant },
    /// Authenticated.
    Ready,
    /// No more connections.
    Closed,
}

/// The heartbeat of the current connection.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    interval: Duration,
    /// When the next HEARTBEAT is due.
    next: Instant,
    /// A HEARTBEAT is out with no frame since: it is missed at this time.
    deadline: Option<Instant>,
    misses: u32,
}

/// The client's protocol state across connections. See the [module docs](self).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    schedule: Schedule,
    /// The address being dialed or connected.
    edge: Option<String>,
    next_seq: u32,
    requests: HashMap<u32, Request>,
    transmit: VecDeque<Bytes>,
    events: VecDeque<Event>,
    heartbeat: Option<Heartbeat>,
    rooms: Vec<String>,
    sends: VecDeque<PendingSend>,
    /// READs to send on the next connection (latest per peer).
    reads: BTreeMap<String, u64>,
    /// Highest seq of the inbox delivered in order.
    cursor: u64,
    /// The cursor last acknowledged with PUSH_ACK.
    acked: u64,
    /// Messages past a gap, by seq; `None` for a seq known from our own SEND_ACK.
    held: BTreeMap<u64, Option<pb::Message>>,
    /// An inbox SYNC is out.
    syncing: bool,
    /// Highest conversation_seq pulled per conversation (after NOTICE KIND_SYNC).
    conversations: HashMap<String, u64>,
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
}

impl Session {
    /// A session that has not connected yet: [`Session::poll_connect`] names the first edge.
    pub fn new(config: SessionConfig) -> Self {
        let schedule = Schedule::new(config.edges.clone(), config.backoff);
        let cursor = config.cursor;
        Session {
            config,
            state: State::Offline { at: None },
            schedule,
            edge: None,
            next_seq: 1,
            requests: HashMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            heartbeat: None,
            rooms: Vec::new(),
            sends: VecDeque::new(),
            reads: BTreeMap::new(),
            cursor,
            acked: cursor,
            held: BTreeMap::new(),
            syncing: false,
            conversations: HashMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        }
    }

    /// The inbox cursor: every seq up to it was delivered. Save it to resume later
    /// ([`SessionConfig::cursor`]).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether the current connection is authenticated.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the session has ended for good.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// SENDs not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.sends.len()
    }

    /// Replaces the token for the next connections (e.g. after [`Event::Closed`] for an
    /// expired one, followed by [`Session::reopen`]).
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.config.token = token.into();
    }

    /// Replaces the edge list.
    pub fn set_edges(&mut self, edges: Vec<String>) {
        self.schedule.set_edges(edges);
    }

    /// Starts connecting again after [`Event::Closed`].
    pub fn reopen(&mut self) {
        if self.state == State::Closed {
            self.state = State::Offline { at: None };
        }
    }

    /// Ends the session: no more connections; the driver closes the transport.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.transmit.clear();
        self.heartbeat = None;
        self.events
            .push_back(Event::Closed("closed by the application".into()));
    }

    // ---- what the application asks --------------------------------------------------------

    /// Queues a message to `to` (a user id or `group:<id>`) under `client_msg_id`; it is
    /// sent now if connected, else on the next connection, and again until acknowledged.
    pub fn send(
        &mut self,
        now: Instant,
        to: impl Into<String>,
        client_msg_id: impl Into<String>,
        content: impl Into<Bytes>,
        content_type: impl Into<String>,
    ) -> Result<(), RequestError> {
        if self.state == State::Closed {
            return Err(RequestError::Closed);
        }
        let client_msg_id = client_msg_id.into();
        let frame = pb::Send {
            to: to.into(),
            client_msg_id: client_msg_id.clone(),
            content: content.into(),
            content_type: content_type.into(),
        };
        frame_of(Op::Send, 0, &frame)?;
        self.sends.push_back(PendingSend {
            client_msg_id,
            frame,
            sent_at: None,
            retry_at: None,
        });
        self.flush_sends(now);
        Ok(())
    }

    /// Marks the conversation with `peer` read up to `seq` (a conversation_seq).
    pub fn read(&mut self, peer: impl Into<String>, seq: u64) {
        let peer = peer.into();
        if self.is_ready() {
            self.request(Op::Read, Request::Other(Op::Read), &pb::Read { peer, seq });
        } else {
            let e = self.reads.entry(peer).or_default();
            *e = (*e).max(seq);
        }
    }

    /// Joins `room` now and on every later connection.
    pub fn join_room(&mut self, room: impl Into<String>) {
        let room = room.into();
        if !self.rooms.contains(&room) {
            self.rooms.push(room.clone());
        }
        if self.is_ready() {
            self.request(
                Op::RoomJoin,
                Request::Other(Op::RoomJoin),
                &pb::Room { room },
            );
        }
    }

    /// Leaves `room`.
    pub fn leave_room(&mut self, room: &str) {
        self.rooms.retain(|r| r != room);
        if self.is_ready() {
            let body = pb::Room { room: room.into() };
            self.request(Op::RoomLeave, Request::Other(Op::RoomLeave), &body);
        }
    }

    /// Pulls the history of a conversation (a user id or `group:<id>`) after `after`; its
    /// messages come as [`Event::Message`] (deduplicated).
    pub fn sync_conversation(&mut self, conversation: impl Into<String>, after: u64) {
        let conversation = conversation.into();
        if self.is_ready() {
            let body = pb::Sync {
                after,
                limit: self.config.sync_limit,
                conversation: conversation.clone(),
                before: 0,
            };
            self.request(Op::Sync, Request::ConversationSync(conversation), &body);
        }
    }

    // ---- what the driver asks -------------------------------------------------------------

    /// The address to dial now, if a connection attempt is due at `now`. While offline, call
    /// it before [`Session::poll_timeout`]: it plans the next attempt (whose time
    /// `poll_timeout` then reports).
    pub fn poll_connect(&mut self, now: Instant, rng: &mut impl Rng) -> Option<String> {
        let State::Offline { at } = self.state else {
            return None;
        };
        let at = match at {
            Some(at) => at,
            None => {
                let (edge, at) = self.schedule.next(now, rng)?;
                self.edge = Some(edge);
                self.state = State::Offline { at: Some(at) };
                at
            }
        };
        if at > now {
            return None;
        }
        self.state = State::Dialing;
        self.edge.clone()
    }

    /// The next frame to write (already encoded), if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.transmit.pop_front() {
            return Some(frame);
        }
        if self.is_ready() && self.cursor > self.acked {
            self.acked = self.cursor;
            return frame_of(Op::PushAck, 0, &pb::PushAck { seq: self.cursor }).ok();
        }
        None
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match self.state {
            State::Offline { at: Some(t) } => at(t),
            State::Authenticating { since } => at(since + self.config.auth_timeout),
            State::Ready => {
                if let Some(hb) = self.heartbeat {
                    at(hb.deadline.unwrap_or(hb.next));
                }
                for s in &self.sends {
                    if let Some(t) = s.retry_at {
                        at(t);
                    } else if let Some(t) = s.sent_at {
                        at(t + self.config.send_timeout);
                    }
                }
            }
            _ => {}
        }
        next
    }

    /// Timers due at `now`: the next connection attempt, the auth deadline, heartbeats, SEND
    /// retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Authenticating { since } if now >= since + self.config.auth_timeout => {
                self.lost(now, LostReason::AuthTimeout);
            }
            State::Ready => {
                if let Some(mut hb) = self.heartbeat {
                    if let Some(deadline) = hb.deadline
                        && now >= deadline
                    {
                        hb.misses += 1;
                        hb.deadline = None;
                        hb.next = now;
                        if hb.misses >= self.config.max_heartbeat_misses {
                            self.lost(now, LostReason::HeartbeatMisses(hb.misses));
                            return;
                        }
                    }
                    if hb.deadline.is_none() && now >= hb.next {
                        self.request(
                            Op::Heartbeat,
                            Request::Other(Op::Heartbeat),
                            &pb::Heartbeat {},
                        );
                        hb.next = now + hb.interval;
                        hb.deadline = Some(now + self.config.heartbeat_timeout);
                    }
                    self.heartbeat = Some(hb);
                }
                self.flush_sends(now);
            }
            _ => {}
        }
    }

    /// The driver connected the transport to the address [`Session::poll_connect`] gave:
    /// AUTH goes out first, with SYNC, the waiting SENDs and READs in the same flight.
    pub fn handle_connected(&mut self, now: Instant) {
        if self.state != State::Dialing {
            return;
        }
        self.state = State::Authenticating { since: now };
        self.transmit.clear();
        self.requests.clear();
        let auth = pb::Auth {
            token: self.config.token.clone(),
            device_id: self.config.device_id.clone(),
            platform: self.config.platform.clone(),
            rooms: self.rooms.clone(),
        };
        self.request(Op::Auth, Request::Auth, &auth);
        self.syncing = false;
        self.sync_inbox();
        for s in &mut self.sends {
            s.sent_at = None;
            s.retry_at = None;
        }
        self.flush_sends(now);
        for (peer, seq) in std::mem::take(&mut self.reads) {
            self.request(Op::Read, Request::Other(Op::Read), &pb::Read { peer, seq });
        }
    }

    /// The dial failed: the next attempt waits longer and tries the next edge.
    pub fn handle_connect_failed(&mut self, _now: Instant) {
        if self.state == State::Dialing {
            self.schedule.failed();
            self.state = State::Offline { at: None };
        }
    }

    /// The transport closed or failed.
    pub fn handle_closed(&mut self, now: Instant) {
        if matches!(
            self.state,
            State::Authenticating { .. } | State::Ready | State::Dialing
        ) {
            self.lost(now, LostReason::Transport);
        }
    }

    /// A frame from the server.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if !matches!(self.state, State::Authenticating { .. } | State::Ready) {
            return;
        }
        // Any frame shows the connection is alive.
        if let Some(hb) = &mut self.heartbeat {
            hb.deadline = None;
            hb.misses = 0;
        }
        if let Err(e) = self.dispatch(now, &frame) {
            self.lost(
                now,
                LostReason::Protocol(format!("{:?}: {e}", frame.op_kind())),
            );
        }
    }

    fn dispatch(&mut self, now: Instant, frame: &Frame) -> Result<(), prost::DecodeError> {
        let request = self.requests.remove(&frame.seq);
        match frame.op_kind() {
            Some(Op::AuthReply) => {
                let reply: pb::AuthReply = frame.decode_body()?;
                self.state = State::Ready;
                self.schedule.succeeded();
                let interval = Duration::from_secs(u64::from(reply.heartbeat_secs.max(1)));
                self.heartbeat = Some(Heartbeat {
                    interval,
                    next: now + interval,
                    deadline: None,
                    misses: 0,
                });
                self.events.push_back(Event::Connected(reply));
            }
            Some(Op::HeartbeatReply) => {
                let reply: pb::HeartbeatReply = frame.decode_body()?;
                if let Some(hb) = &mut self.heartbeat
                    && reply.heartbeat_secs > 0
                {
                    let interval = Duration::from_secs(u64::from(reply.heartbeat_secs));
                    hb.next = hb.next - hb.interval + interval;
                    hb.interval = interval;
                }
            }
            Some(Op::SendAck) => {
                let ack: pb::SendAck = frame.decode_body()?;
                self.acked_send(ack);
            }
            Some(Op::Push) => {
                let push: pb::Push = frame.decode_body()?;
                match push.kind {
                    Some(pb::push::Kind::Message(m)) => self.pushed(m),
                    Some(pb::push::Kind::Ephemeral(e)) => {
                        self.events.push_back(Event::Ephemeral(e))
                    }
                    None => {}
                }
            }
            Some(Op::SyncReply) => {
                let reply: pb::SyncReply = frame.decode_body()?;
                self.synced(request, reply);
            }
            Some(Op::ReadReply) => self
                .events
                .push_back(Event::ReadReply(frame.decode_body()?)),
            Some(Op::RoomJoinReply | Op::RoomLeaveReply) => {
                let reply: pb::RoomReply = frame.decode_body()?;
                self.events.push_back(Event::Rooms(reply.rooms));
            }
            Some(Op::Notice) => {
                let notice: pb::Notice = frame.decode_body()?;
                if notice.kind() == pb::notice::Kind::Sync {
                    self.group_notice(&notice);
                }
                self.events.push_back(Event::Notice(notice));
            }
            Some(Op::Disconnect) => {
                let d: pb::Disconnect = frame.decode_body()?;
                self.disconnected(now, d);
            }
            Some(Op::Error) => {
                let e: pb::Error = frame.decode_body()?;
                self.refused(now, request, e);
            }
            _ => {}
        }
        Ok(())
    }

    // ---- internals --------------------------------------------------------------------------

    fn request<M: prost::Message>(&mut self, op: Op, what: Request, body: &M) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        // Bodies were size-checked when queued (SEND) or are small.
        if let Ok(frame) = frame_of(op, seq, body) {
            self.requests.insert(seq, what);
            self.transmit.push_back(frame);
        }
    }

    fn sync_inbox(&mut self) {
        if self.syncing {
            return;
        }
        self.syncing = true;
        let body = pb::Sync {
            after: self.cursor,
            limit: self.config.sync_limit,
            conversation: String::new(),
            before: 0,
        };
        self.request(Op::Sync, Request::InboxSync, &body);
    }

    fn flush_sends(&mut self, now: Instant) {
        if !matches!(self.state, State::Authenticating { .. } | State::Ready) {
            return;
        }
        let timeout = self.config.send_timeout;
        let mut out = Vec::new();
        for s in &mut self.sends {
            let due = match (s.retry_at, s.sent_at) {
                (Some(t), _) => now >= t,
                (None, None) => true,
                (None, Some(t)) => now >= t + timeout,
            };
            if due {
                s.sent_at = Some(now);
                s.retry_at = None;
                out.push((s.client_msg_id.clone(), s.frame.clone()));
            }
        }
        for (id, frame) in out {
            self.request(Op::Send, Request::Send(id), &frame);
        }
    }

    fn acked_send(&mut self, ack: pb::SendAck) {
        let Some(pos) = self
            .sends
            .iter()
            .position(|s| s.client_msg_id == ack.client_msg_id)
        else {
            return; // an answer to a retry of an already acknowledged SEND
        };
        let Some(sent) = self.sends.remove(pos) else {
            return;
        };
        self.remember(ack.id);
        // A 1:1 message is in our inbox at `seq`: the cursor may pass it without a push.
        if !sent.frame.to.starts_with("group:") && ack.seq > self.cursor {
            self.held.entry(ack.seq).or_insert(None);
            self.drain_held();
        }
        self.events.push_back(Event::SendAck(Ack {
            client_msg_id: ack.client_msg_id,
            id: ack.id,
            seq: ack.seq,
            duplicate: ack.duplicate,
        }));
    }

    fn pushed(&mut self, m: pb::Message) {
        if m.seq <= self.cursor {
            return;
        }
        if m.seq == self.cursor + 1 {
            self.cursor = m.seq;
            self.deliver(m);
            self.drain_held();
        } else {
            self.held.insert(m.seq, Some(m));
            self.sync_inbox();
        }
    }

    fn synced(&mut self, request: Option<Request>, reply: pb::SyncReply) {
        match request {
            Some(Request::InboxSync) => {
                self.syncing = false;
                for m in reply.messages {
                    if m.seq > self.cursor {
                        self.held.insert(m.seq, Some(m));
                    }
                }
                let progressed = self.drain_held();
                if reply.has_more || (progressed && !self.held.is_empty()) {
                    self.sync_inbox();
                } else if !self.held.is_empty() {
                    // The server has nothing to fill the gap with: skip it rather than stall.
                    if let Some(first) = self.held.keys().next() {
                        self.cursor = first - 1;
                    }
                    self.drain_held();
                }
            }
            Some(Request::ConversationSync(conversation)) => {
                let mut last = 0;
                for m in reply.messages {
                    last = last.max(m.conversation_seq);
                    self.deliver(m);
                }
                let cursor = self.conversations.entry(conversation.clone()).or_default();
                *cursor = (*cursor).max(last).max(reply.next_after);
                if reply.has_more {
                    let after = *cursor;
                    self.sync_conversation(conversation, after);
                }
            }
            _ => {}
        }
    }

    /// Delivers the held messages that follow the cursor; whether the cursor moved.
    fn drain_held(&mut self) -> bool {
        let before = self.cursor;
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= self.cursor {
                entry.remove();
                continue;
            }
            if seq != self.cursor + 1 {
                break;
            }
            self.cursor = seq;
            if let Some(m) = entry.remove() {
                self.deliver(m);
            }
        }
        self.cursor > before
    }

    fn group_notice(&mut self, notice: &pb::Notice) {
        let after = self
            .conversations
            .get(&notice.peer)
            .copied()
            .unwrap_or(notice.seq.saturating_sub(1));
        if notice.seq > after {
            self.sync_conversation(notice.peer.clone(), after);
        }
    }

    fn deliver(&mut self, m: pb::Message) {
        if self.remember(m.id) {
            self.events.push_back(Event::Message(m));
        }
    }

    /// Records a message id; false when it was seen already.
    fn remember(&mut self, id: u64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > SEEN_IDS
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    fn refused(&mut self, now: Instant, request: Option<Request>, e: pb::Error) {
        use pb::error::Code;
        let code = e.code();
        match request {
            Some(Request::Auth) => match code {
                Code::AuthFailed | Code::AuthExpired => self.fatal(format!(
                    "the server refused the token ({}): {}",
                    code.as_str_name(),
                    e.message
                )),
                _ => self.lost(
                    now,
                    LostReason::Protocol(format!("AUTH refused: {}", e.message)),
                ),
            },
            Some(Request::Send(id)) => match code {
                Code::InvalidArgument | Code::Forbidden | Code::NotFound | Code::BadBody => {
                    self.sends.retain(|s| s.client_msg_id != id);
                    self.events.push_back(Event::SendFailed {
                        client_msg_id: id,
                        code,
                        message: e.message,
                    });
                }
                _ => {
                    // Retryable (rate limited, unavailable, held frames refused): same id later.
                    let delay = self.config.backoff.base;
                    if let Some(s) = self.sends.iter_mut().find(|s| s.client_msg_id == id) {
                        s.retry_at = Some(now + delay);
                    }
                }
            },
            Some(Request::InboxSync) => {
                self.syncing = false;
                self.events.push_back(Event::Error {
                    op: Some(Op::Sync),
                    code,
                    message: e.message,
                });
            }
            other => {
                let op = match other {
                    Some(Request::Other(op)) => Some(op),
                    Some(Request::ConversationSync(_)) => Some(Op::Sync),
                    _ => None,
                };
                self.events.push_back(Event::Error {
                    op,
                    code,
                    message: e.message,
                });
            }
        }
    }

    fn disconnected(&mut self, now: Instant, d: pb::Disconnect) {
        use pb::disconnect::Reason;
        let reason = d.reason();
        // A bare `host:port` keeps the scheme (the transport) of the edge it came from.
        let reconnect_to = (!d.reconnect_to.is_empty()).then(|| {
            match (d.reconnect_to.contains("://"), self.edge.as_deref()) {
                (false, Some(edge)) => match edge.split_once("://") {
                    Some((scheme, _)) => format!("{scheme}://{}", d.reconnect_to),
                    None => d.reconnect_to.clone(),
                },
                _ => d.reconnect_to.clone(),
            }
        });
        let lost = LostReason::Disconnect {
            reason,
            message: d.message.clone(),
        };
        // Kicked or replaced by the same device elsewhere: coming back would fight it.
        if !d.reconnect || matches!(reason, Reason::Kicked | Reason::Replaced) {
            self.lost(now, lost);
            self.fatal(format!(
                "disconnected by the server ({}): {}",
                reason.as_str_name(),
                d.message
            ));
            return;
        }
        self.lost(now, lost);
        self.schedule.hint(
            Duration::from_millis(u64::from(d.reconnect_after_ms)),
            reconnect_to,
        );
    }

    fn fatal(&mut self, why: String) {
        self.state = State::Closed;
        self.transmit.clear();
        self.heartbeat = None;
        self.events.push_back(Event::Closed(why));
    }

    fn lost(&mut self, _now: Instant, reason: LostReason) {
        if matches!(self.state, State::Dialing | State::Authenticating { .. }) {
            self.schedule.failed();
        }
        self.state = State::Offline { at: None };
        self.transmit.clear();
        self.requests.clear();
        self.heartbeat = None;
        self.syncing = false;
        for s in &mut self.sends {
            s.sent_at = None;
            s.retry_at = None;
        }
        self.events.push_back(Event::ConnectionLost(reason));
    }

    /// Failed attempts since the last working connection.
    pub fn failed_attempts(&self) -> u32 {
        self.schedule.attempts()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use roam_proto::FrameDecoder;

    /// A session connected to "raw://a" at `t0`, AUTH_REPLY not yet in.
    fn connecting(t0: Instant) -> (Session, StdRng) {
        let mut config = SessionConfig::new("tok", "dev", vec!["raw://a".into(), "raw://b".into()]);
        config.backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        let mut s = Session::new(config);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(s.poll_connect(t0, &mut rng).as_deref(), Some("raw://a"));
        s.handle_connected(t0);
        (s, rng)
    }

    /// [`connecting`], then its AUTH answered.
    fn authenticated(t0: Instant) -> (Session, StdRng) {
        let (mut s, rng) = connecting(t0);
        let out = sent(&mut s);
        auth_reply(&mut s, t0, out[0].seq);
        (s, rng)
    }

    fn sent(s: &mut Session) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(b) = s.poll_transmit() {
            let mut b = b;
            out.push(
                FrameDecoder::default()
                    .decode_bytes(&mut b)
                    .unwrap()
                    .unwrap(),
            );
        }
        out
    }

    fn ops(frames: &[Frame]) -> Vec<Op> {
        frames.iter().filter_map(Frame::op_kind).collect()
    }

    fn frame<M: prost::Message>(op: Op, seq: u32, m: &M) -> Frame {
        let mut b = frame_of(op, seq, m).unwrap();
        FrameDecoder::default()
            .decode_bytes(&mut b)
            .unwrap()
            .unwrap()
    }

    fn auth_reply(s: &mut Session, now: Instant, auth_seq: u32) {
        let reply = pb::AuthReply {
            user_id: "alice".into(),
            device_id: "dev".into(),
            heartbeat_secs: 60,
            ..Default::default()
        };
        s.handle_frame(now, frame(Op::AuthReply, auth_seq, &reply));
    }

    fn msg(id: u64, seq: u64) -> pb::Message {
        pb::Message {
            id,
            seq,
            from: "bob".into(),
            to: "alice".into(),
            content: format!("m{id}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn push(m: pb::Message) -> Frame {
        frame(
            Op::Push,
            0,
            &pb::Push {
                kind: Some(pb::push::Kind::Message(m)),
            },
        )
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn delivered(s: &mut Session) -> Vec<u64> {
        events(s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.id),
                _ => None,
            })
            .collect()
    }

    fn sync_of(f: &Frame) -> pb::Sync {
        assert_eq!(f.op_kind(), Some(Op::Sync), "{f:?}");
        f.decode_body().unwrap()
    }

    #[test]
    fn auth_sync_and_queued_sends_go_in_one_flight() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::new("tok", "dev", vec!["raw://a".into()]));
        s.send(t0, "bob", "c1", &b"hi"[..], "").unwrap();
        s.join_room("lobby");
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(s.poll_connect(t0, &mut rng).as_deref(), Some("raw://a"));
        s.handle_connected(t0);
        let out = sent(&mut s);
        assert_eq!(ops(&out), [Op::Auth, Op::Sync, Op::Send]);
        let auth: pb::Auth = out[0].decode_body().unwrap();
        assert_eq!(
            (auth.token.as_str(), auth.rooms.as_slice()),
            ("tok", &["lobby".to_owned()][..])
        );
        assert_eq!(sync_of(&out[1]).after, 0);
    }

    #[test]
    fn a_send_is_retried_with_the_same_id_until_acked() {
        let t0 = Instant::now();
        let (mut s, mut rng) = connecting(t0);
        s.send(t0, "bob", "c1", &b"hi"[..], "").unwrap();
        let first = sent(&mut s);
        assert_eq!(ops(&first), [Op::Auth, Op::Sync, Op::Send]);
        auth_reply(&mut s, t0, first[0].seq);

        // Unavailable: sent again after the backoff base, same id.
        let err = pb::Error {
            code: pb::error::Code::Unavailable as i32,
            message: "store down".into(),
        };
        s.handle_frame(t0, frame(Op::Error, first[2].seq, &err));
        assert!(sent(&mut s).is_empty());
        let t1 = s.poll_timeout().unwrap();
        assert_eq!(t1, t0 + Duration::from_secs(1));
        s.handle_timeout(t1);
        let retry = sent(&mut s);
        assert_eq!(ops(&retry), [Op::Send]);
        assert_eq!(
            retry[0].decode_body::<pb::Send>().unwrap().client_msg_id,
            "c1"
        );

        // No answer within the send timeout: sent again on the same connection.
        let t2 = t1 + Duration::from_secs(15);
        s.handle_timeout(t2);
        let again = sent(&mut s);
        assert!(ops(&again).contains(&Op::Send), "{again:?}");

        // The connection dies: on the next one, the SEND goes out again with AUTH.
        s.handle_closed(t2);
        let edge = s.poll_connect(t2, &mut rng);
        assert_eq!(
            edge.as_deref(),
            Some("raw://a"),
            "a working edge is retried at once"
        );
        s.handle_connected(t2);
        let resent = sent(&mut s);
        assert_eq!(ops(&resent), [Op::Auth, Op::Sync, Op::Send]);
        assert_eq!(
            resent[2].decode_body::<pb::Send>().unwrap().client_msg_id,
            "c1"
        );
        auth_reply(&mut s, t2, resent[0].seq);

        let ack = pb::SendAck {
            client_msg_id: "c1".into(),
            id: 77,
            seq: 1,
            duplicate: true,
        };
        s.handle_frame(t2, frame(Op::SendAck, resent[2].seq, &ack));
        assert!(
            events(&mut s)
                .iter()
                .any(|e| matches!(e, Event::SendAck(a) if a.id == 77 && a.duplicate))
        );
        assert_eq!(s.unacked(), 0);
        // Nothing more to retry; an ack of an old try changes nothing.
        s.handle_frame(t2, frame(Op::SendAck, again[0].seq, &ack));
        assert!(events(&mut s).is_empty());
        s.handle_timeout(t2 + Duration::from_secs(30));
        assert!(!ops(&sent(&mut s)).contains(&Op::Send));
    }

    #[test]
    fn a_refused_send_fails_once_and_is_dropped() {
        let t0 = Instant::now();
        let (mut s, _) = connecting(t0);
        let auth = sent(&mut s);
        auth_reply(&mut s, t0, auth[0].seq);
        s.send(t0, "group:nope", "c9", &b"x"[..], "").unwrap();
        let out = sent(&mut s);
        let err = pb::Error {
            code: pb::error::Code::NotFound as i32,
            message: "no such group".into(),
        };
        s.handle_frame(t0, frame(Op::Error, out[0].seq, &err));
        let ev = events(&mut s);
        assert!(
            ev.iter().any(
                |e| matches!(e, Event::SendFailed { client_msg_id, .. } if client_msg_id == "c9")
            ),
            "{ev:?}"
        );
        assert_eq!(s.unacked(), 0);
    }

    #[test]
    fn pushes_and_syncs_deliver_each_message_once() {
        let t0 = Instant::now();
        let (mut s, _) = connecting(t0);
        let out = sent(&mut s);
        auth_reply(&mut s, t0, out[0].seq);
        s.handle_frame(t0, push(msg(10, 1)));
        s.handle_frame(t0, push(msg(10, 1))); // the same push twice
        s.handle_frame(t0, push(msg(11, 2)));
        // The connect-time SYNC answers with what was pushed meanwhile.
        let reply = pb::SyncReply {
            messages: vec![msg(10, 1), msg(11, 2), msg(12, 3)],
            next_after: 3,
            has_more: false,
        };
        s.handle_frame(t0, frame(Op::SyncReply, out[1].seq, &reply));
        assert_eq!(delivered(&mut s), [10, 11, 12]);
        assert_eq!(s.cursor(), 3);
        // A group message pulled after a NOTICE that was also pushed: once.
        let notice = pb::Notice {
            kind: pb::notice::Kind::Sync as i32,
            peer: "group:g".into(),
            seq: 5,
            payload: Default::default(),
        };
        s.handle_frame(t0, frame(Op::Notice, 0, &notice));
        let pull = sent(&mut s);
        let sync = pull.iter().find(|f| f.op_kind() == Some(Op::Sync)).unwrap();
        assert_eq!(
            (sync_of(sync).conversation.as_str(), sync_of(sync).after),
            ("group:g", 4)
        );
        let mut g = msg(12, 0);
        g.conversation_seq = 5;
        let reply = pb::SyncReply {
            messages: vec![g],
            next_after: 5,
            has_more: false,
        };
        s.handle_frame(t0, frame(Op::SyncReply, sync.seq, &reply));
        assert_eq!(delivered(&mut s), Vec::<u64>::new());
    }

    #[test]
    fn a_seq_gap_is_filled_by_sync_in_order_and_acked() {
        let t0 = Instant::now();
        let (mut s, _) = connecting(t0);
        let out = sent(&mut s);
        auth_reply(&mut s, t0, out[0].seq);
        let empty = pb::SyncReply::default();
        s.handle_frame(t0, frame(Op::SyncReply, out[1].seq, &empty));
        s.handle_frame(t0, push(msg(1, 1)));
        assert_eq!(delivered(&mut s), [1]);
        let acks = sent(&mut s);
        assert_eq!(ops(&acks), [Op::PushAck]);
        assert_eq!(acks[0].decode_body::<pb::PushAck>().unwrap().seq, 1);

        // Seq 2 and 3 were dropped: 4 is held, a SYNC from 1 goes out.
        s.handle_frame(t0, push(msg(4, 4)));
        assert_eq!(delivered(&mut s), Vec::<u64>::new());
        let out = sent(&mut s);
        assert_eq!(ops(&out), [Op::Sync]);
        assert_eq!(sync_of(&out[0]).after, 1);
        // A page of one with more to come, then the rest.
        let page = pb::SyncReply {
            messages: vec![msg(2, 2)],
            next_after: 2,
            has_more: true,
        };
        s.handle_frame(t0, frame(Op::SyncReply, out[0].seq, &page));
        assert_eq!(delivered(&mut s), [2]);
        let out = sent(&mut s);
        assert_eq!(ops(&out), [Op::Sync, Op::PushAck]);
        assert_eq!(sync_of(&out[0]).after, 2);
        let page = pb::SyncReply {
            messages: vec![msg(3, 3), msg(4, 4), msg(5, 5)],
            next_after: 5,
            has_more: false,
        };
        s.handle_frame(t0, frame(Op::SyncReply, out[0].seq, &page));
        assert_eq!(delivered(&mut s), [3, 4, 5]);
        assert_eq!(s.cursor(), 5);
        let out = sent(&mut s);
        assert_eq!(ops(&out), [Op::PushAck]);
        assert_eq!(out[0].decode_body::<pb::PushAck>().unwrap().seq, 5);
    }

    #[test]
    fn a_reconnect_resumes_from_the_cursor() {
        let t0 = Instant::now();
        let mut config = SessionConfig::new("tok", "dev", vec!["raw://a".into()]);
        config.cursor = 41;
        let mut s = Session::new(config);
        let mut rng = StdRng::seed_from_u64(1);
        s.poll_connect(t0, &mut rng).unwrap();
        s.handle_connected(t0);
        let out = sent(&mut s);
        assert_eq!(sync_of(&out[1]).after, 41);
        auth_reply(&mut s, t0, out[0].seq);
        s.handle_frame(t0, push(msg(42, 42)));
        s.handle_frame(t0, push(msg(43, 43)));
        assert_eq!(delivered(&mut s), [42, 43]);

        // The edge goes away; a push on the old connection after the loss is ignored.
        s.handle_closed(t0);
        s.handle_frame(t0, push(msg(44, 44)));
        assert_eq!(s.poll_connect(t0, &mut rng).as_deref(), Some("raw://a"));
        s.handle_connected(t0);
        let out = sent(&mut s);
        assert_eq!(ops(&out), [Op::Auth, Op::Sync]);
        assert_eq!(sync_of(&out[1]).after, 43);
        auth_reply(&mut s, t0, out[0].seq);
        // The new edge pushes 44 before the SYNC's answer also holds it.
        s.handle_frame(t0, push(msg(44, 44)));
        let reply = pb::SyncReply {
            messages: vec![msg(44, 44), msg(45, 45)],
            next_after: 45,
            has_more: false,
        };
        s.handle_frame(t0, frame(Op::SyncReply, out[1].seq, &reply));
        assert_eq!(delivered(&mut s), [44, 45]);
    }

    #[test]
    fn an_own_1to1_send_moves_the_cursor_without_a_sync() {
        let t0 = Instant::now();
        let (mut s, _) = connecting(t0);
        let out = sent(&mut s);
        auth_reply(&mut s, t0, out[0].seq);
        s.handle_frame(
            t0,
            frame(Op::SyncReply, out[1].seq, &pb::SyncReply::default()),
        );
        s.send(t0, "bob", "c1", &b"hi"[..], "").unwrap();
        let out = sent(&mut s);
        let ack = pb::SendAck {
            client_msg_id: "c1".into(),
            id: 5,
            seq: 1,
            duplicate: false,
        };
        s.handle_frame(t0, frame(Op::SendAck, out[0].seq, &ack));
        s.handle_frame(t0, push(msg(6, 2)));
        assert_eq!(delivered(&mut s), [6]);
        assert_eq!(ops(&sent(&mut s)), [Op::PushAck]);
    }

    #[test]
    fn heartbeats_follow_the_server_interval_and_misses_lose_the_connection() {
        let t0 = Instant::now();
        let (mut s, mut rng) = connecting(t0);
        let out = sent(&mut s);
        auth_reply(&mut s, t0, out[0].seq); // 60 s
        let t1 = s.poll_timeout().unwrap();
        assert_eq!(t1, t0 + Duration::from_secs(60));
        s.handle_timeout(t1);
        let hb = sent(&mut s);
        assert_eq!(ops(&hb), [Op::Heartbeat]);
        // The reply moves the interval to 90 s.
        let reply = pb::HeartbeatReply { heartbeat_secs: 90 };
        s.handle_frame(t1, frame(Op::HeartbeatReply, hb[0].seq, &reply));
        let t2 = s.poll_timeout().unwrap();
        assert_eq!(t2, t1 + Duration::from_secs(90));

        // Silence: one miss sends another heartbeat at once, the second loses the connection.
        s.handle_timeout(t2);
        assert_eq!(ops(&sent(&mut s)), [Op::Heartbeat]);
        let miss1 = s.poll_timeout().unwrap();
        assert_eq!(miss1, t2 + Duration::from_secs(10));
        s.handle_timeout(miss1);
        assert_eq!(ops(&sent(&mut s)), [Op::Heartbeat]);
        assert!(s.is_ready());
        let miss2 = s.poll_timeout().unwrap();
        s.handle_timeout(miss2);
        assert!(!s.is_ready());
        assert!(events(&mut s).contains(&Event::ConnectionLost(LostReason::HeartbeatMisses(2))));
        // It reconnects to the same edge at once (it worked).
        assert_eq!(s.poll_connect(miss2, &mut rng).as_deref(), Some("raw://a"));
    }

    #[test]
    fn any_frame_counts_as_a_heartbeat_answer() {
        let t0 = Instant::now();
        let (mut s, _) = connecting(t0);
        let out = sent(&mut s);
        auth_reply(&mut s, t0, out[0].seq);
        let t1 = t0 + Duration::from_secs(60);
        s.handle_timeout(t1);
        sent(&mut s);
        s.handle_frame(t1, push(msg(1, 1)));
        // No miss is counted: the next event is the next heartbeat.
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn failed_dials_back_off_over_the_edges() {
        let t0 = Instant::now();
        let (mut s, mut rng) = connecting(t0);
        sent(&mut s);
        // No AUTH_REPLY in time.
        s.handle_timeout(t0 + Duration::from_secs(10));
        assert!(events(&mut s).contains(&Event::ConnectionLost(LostReason::AuthTimeout)));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(s.poll_connect(t1, &mut rng), None, "the retry waits");
        let at = s.poll_timeout().unwrap();
        assert!(
            at > t1 && at <= t1 + Duration::from_secs(1),
            "{:?}",
            at - t1
        );
        assert_eq!(s.poll_connect(at, &mut rng).as_deref(), Some("raw://b"));
        s.handle_connect_failed(at);
        assert_eq!(s.poll_connect(at, &mut rng), None, "plans the next attempt");
        let at2 = s.poll_timeout().unwrap();
        assert!(at2 - at >= Duration::from_secs(1) && at2 - at <= Duration::from_secs(2));
        assert_eq!(s.poll_connect(at2, &mut rng).as_deref(), Some("raw://a"));
    }

    #[test]
    fn disconnect_hints_and_refusals() {
        use pb::disconnect::Reason;
        let t0 = Instant::now();
        let (mut s, mut rng) = authenticated(t0);
        let drain = pb::Disconnect {
            reason: Reason::Drain as i32,
            reconnect: true,
            reconnect_after_ms: 1000,
            reconnect_to: "raw://c".into(),
            ..Default::default()
        };
        s.handle_frame(t0, frame(Op::Disconnect, 0, &drain));
        assert!(!s.is_ready());
        assert_eq!(s.poll_connect(t0, &mut rng), None);
        let at = s.poll_timeout().unwrap();
        assert!(at - t0 >= Duration::from_millis(500) && at - t0 <= Duration::from_secs(1));
        assert_eq!(s.poll_connect(at, &mut rng).as_deref(), Some("raw://c"));
        s.handle_connected(at);
        let out = sent(&mut s);
        // The token is refused: no more connections.
        let err = pb::Error {
            code: pb::error::Code::AuthExpired as i32,
            message: "expired".into(),
        };
        s.handle_frame(at, frame(Op::Error, out[0].seq, &err));
        assert!(s.is_closed());
        assert!(events(&mut s).iter().any(|e| matches!(e, Event::Closed(_))));
        assert_eq!(s.poll_connect(at + Duration::from_secs(60), &mut rng), None);
        // A kicked device does not come back either.
        s.set_token("fresh");
        s.reopen();
        s.poll_connect(at, &mut rng).unwrap();
        s.handle_connected(at);
        let out = sent(&mut s);
        auth_reply(&mut s, at, out[0].seq);
        let kick = pb::Disconnect {
            reason: Reason::Kicked as i32,
            ..Default::default()
        };
        s.handle_frame(at, frame(Op::Disconnect, 0, &kick));
        assert!(s.is_closed());
    }

    #[test]
    fn a_bare_reconnect_to_keeps_the_transport() {
        use pb::disconnect::Reason;
        let t0 = Instant::now();
        let (mut s, mut rng) = authenticated(t0);
        let drain = pb::Disconnect {
            reason: Reason::Drain as i32,
            reconnect: true,
            reconnect_to: "other:8444".into(),
            ..Default::default()
        };
        s.handle_frame(t0, frame(Op::Disconnect, 0, &drain));
        assert_eq!(
            s.poll_connect(t0, &mut rng).as_deref(),
            Some("raw://other:8444")
        );
    }
}
