//! One client connection's protocol state, without I/O: frames and events in, actions out,
//! time passed in.
//!
//! ```text
//!  AwaitAuth ──AUTH──▶ Authenticating ──ConnectResult ok──▶ Open ──▶ Closed
//!      │ (auth timeout, any other op,        │ (refused, timeout, over the held limit:
//!      ▼  bad frame: ERROR + DISCONNECT)     ▼  ERROR + an ERROR per held frame + DISCONNECT)
//!    Closed                                Closed
//! ```
//!
//! Frames that follow AUTH before core answered it (a reconnecting client sends AUTH, SYNC
//! and its queued SENDs in one flight) are held, bounded in count and bytes
//! ([`SessionConfig::max_held_frames`], [`SessionConfig::max_held_bytes`]), and handled in
//! order right after AUTH_REPLY once AUTH succeeds; if it fails, each is answered with an
//! ERROR. More than the bound is a protocol error (ERROR `CODE_RATE_LIMITED` + DISCONNECT).
//!
//! In `Open`, ROOM_JOIN/ROOM_LEAVE are handled by the edge (the comet holds rooms), every
//! other request goes to core as a client op, and HEARTBEAT resets the idle deadline. Upstream
//! requests are rate-limited by a token bucket (an ERROR `CODE_RATE_LIMITED` answers a request
//! over the limit). A connection silent for its heartbeat interval plus half of it is closed
//! as idle. The transport driver (`crate::conn`) feeds `Session::handle_frame` and the
//! other `handle_*` methods and carries out the `Action`s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roam_proto::client::v1::{self as pb, disconnect::Reason, error::Code};
use roam_proto::{Frame, FrameError, HEADER_LEN, Op, disconnect_frame, error_frame, frame_of};

/// Tunables of a client session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A client must authenticate within this time.
    pub auth_timeout: Duration,
    /// Requests a client may send in a burst.
    pub rate_burst: u32,
    /// Requests per second a client may sustain.
    pub rate_per_sec: u32,
    /// Frames a client may send after AUTH before AUTH_REPLY (held until AUTH is answered).
    pub max_held_frames: usize,
    /// Bytes (frame bodies and headers) of those held frames.
    pub max_held_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            auth_timeout: Duration::from_secs(10),
            rate_burst: 50,
            rate_per_sec: 20,
            max_held_frames: 32,
            max_held_bytes: 64 * 1024,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Write these frames to the client.
    Send(Bytes),
    /// Ask core to authenticate (the driver allocates the connection id).
    Authenticate(pb::Auth),
    /// Pass a request to core.
    ToCore {
        /// The op.
        op: u32,
        /// Its seq.
        seq: u32,
        /// Its body.
        body: Bytes,
    },
    /// Join a room and answer ROOM_JOIN_REPLY to `seq`.
    Join {
        /// The room.
        room: String,
        /// The request's seq.
        seq: u32,
    },
    /// Leave a room and answer ROOM_LEAVE_REPLY to `seq`.
    Leave {
        /// The room.
        room: String,
        /// The request's seq.
        seq: u32,
    },
    /// Close the connection after writing what was sent; `idle` if it timed out.
    Close {
        /// Whether the close is a heartbeat timeout (core lowers the device's interval).
        idle: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    AwaitAuth,
    /// Core has the AUTH; `held` are the frames that followed it (boxed, and only once one
    /// came: most clients wait for AUTH_REPLY, and the state is part of every connection).
    Authenticating {
        held: Option<Box<Held>>,
    },
    Open {
        heartbeat: Duration,
    },
    Closed,
}

/// Frames held behind AUTH, and their size.
#[derive(Debug, Clone, PartialEq, Default)]
struct Held {
    frames: Vec<Frame>,
    bytes: usize,
}

/// The protocol state of one connection.
///
/// Every connection's driver holds one for the connection's life, so it stays small: the
/// configuration is shared, not copied, and rare state (held frames) is boxed.
/// `the_session_stays_small` pins its size.
#[derive(Debug)]
pub(crate) struct Session {
    state: State,
    config: Arc<SessionConfig>,
    /// When the current state times out (auth) or the client last spoke (open).
    deadline: Instant,
    tokens: f64,
    refilled: Instant,
    /// The session closed because a client sent more than the bound before AUTH_REPLY
    /// (the close counter's `held_frames`, else `protocol`).
    held_overflow: bool,
}

impl Session {
    /// A new connection, accepted at `now`.
    pub(crate) fn new(config: impl Into<Arc<SessionConfig>>, now: Instant) -> Self {
        let config = config.into();
        Session {
            state: State::AwaitAuth,
            deadline: now + config.auth_timeout,
            tokens: f64::from(config.rate_burst),
            refilled: now,
            held_overflow: false,
            config,
        }
    }

    /// Whether core has accepted the connection.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Whether the connection is done.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why a session closed other than idle: `protocol`, or `held_frames` (more frames than
    /// the bound followed AUTH before its answer).
    pub(crate) fn close_reason(&self) -> &'static str {
        if self.held_overflow {
            "held_frames"
        } else {
            "protocol"
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    fn fail(&mut self, out: &mut Vec<Action>, seq: u32, code: Code, message: &str, reason: Reason) {
        let mut frames = error_frame(seq, code, message).to_vec();
        // Frames held behind AUTH are not handled: each gets an ERROR so that its sender
        // knows (AUTH_FAILED when core refused the AUTH, AUTH_REQUIRED otherwise).
        if let State::Authenticating { held, .. } = &self.state {
            let (held_code, held_message) = match code {
                Code::AuthFailed | Code::AuthExpired => {
                    (Code::AuthFailed, "not handled: AUTH was refused")
                }
                Code::Unavailable => (Code::Unavailable, "not handled: AUTH could not be checked"),
                _ => (Code::AuthRequired, "not handled: no successful AUTH"),
            };
            for f in held.iter().flat_map(|h| &h.frames) {
                frames.extend_from_slice(&error_frame(f.seq, held_code, held_message));
            }
        }
        frames.extend_from_slice(&disconnect_frame(reason, message, None));
        out.push(Action::Send(frames.into()));
        out.push(Action::Close { idle: false });
        self.state = State::Closed;
    }

    /// The byte stream broke the frame protocol.
    pub(crate) fn handle_decode_error(&mut self, e: &FrameError, out: &mut Vec<Action>) {
        if self.state != State::Closed {
            self.fail(out, 0, e.code(), &e.to_string(), Reason::Protocol);
        }
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let burst = f64::from(self.config.rate_burst);
        self.tokens = (self.tokens + elapsed * f64::from(self.config.rate_per_sec)).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A frame from the client.
    pub(crate) fn handle_frame(&mut self, frame: Frame, now: Instant, out: &mut Vec<Action>) {
        let op = Op::from_code(frame.op);
        match (&self.state, op) {
            (State::Closed, _) => {}
            (State::AwaitAuth, Some(Op::Auth)) => match frame.decode_body::<pb::Auth>() {
                Ok(auth) => {
                    self.state = State::Authenticating { held: None };
                    out.push(Action::Authenticate(auth));
                }
                Err(e) => self.fail(
                    out,
                    frame.seq,
                    Code::BadBody,
                    &format!("AUTH body: {e}"),
                    Reason::Protocol,
                ),
            },
            (State::AwaitAuth, _) => self.fail(
                out,
                frame.seq,
                Code::AuthRequired,
                "the first frame must be AUTH",
                Reason::Protocol,
            ),
            (State::Authenticating { held }, _) => {
                let size = HEADER_LEN + frame.body.len();
                let (count, bytes) = held.as_ref().map_or((0, 0), |h| (h.frames.len(), h.bytes));
                if count >= self.config.max_held_frames || bytes + size > self.config.max_held_bytes
                {
                    let message = format!(
                        "more than {} frames or {} bytes sent after AUTH before AUTH_REPLY",
                        self.config.max_held_frames, self.config.max_held_bytes
                    );
                    self.held_overflow = true;
                    self.fail(
                        out,
                        frame.seq,
                        Code::RateLimited,
                        &message,
                        Reason::Protocol,
                    );
                    return;
                }
                if let State::Authenticating { held } = &mut self.state {
                    let held = held.get_or_insert_default();
                    held.bytes += size;
                    held.frames.push(frame);
                }
            }
            (State::Open { heartbeat }, op) => {
                self.deadline = now + idle_limit(*heartbeat);
                // Every frame spends a token, an unknown or downstream-only op too: each
                // answer costs a write, so none is free.
                if !self.take_token(now) {
                    out.push(Action::Send(error_frame(
                        frame.seq,
                        Code::RateLimited,
                        "too many requests: slow down",
                    )));
                    return;
                }
                let Some(op) = op.filter(|o| o.direction() == roam_proto::Direction::Up) else {
                    out.push(Action::Send(error_frame(
                        frame.seq,
                        Code::UnknownOp,
                        &format!("op {} is not a client request", frame.op),
                    )));
                    return;
                };
                match op {
                    Op::Auth => out.push(Action::Send(error_frame(
                        frame.seq,
                        Code::InvalidArgument,
                        "already authenticated",
                    ))),
                    Op::RoomJoin | Op::RoomLeave => match frame.decode_body::<pb::Room>() {
                        Ok(r) if !r.room.is_empty() && r.room.len() <= 256 => {
                            out.push(if op == Op::RoomJoin {
                                Action::Join {
                                    room: r.room,
                                    seq: frame.seq,
                                }
                            } else {
                                Action::Leave {
                                    room: r.room,
                                    seq: frame.seq,
                                }
                            })
                        }
                        Ok(_) => out.push(Action::Send(error_frame(
                            frame.seq,
                            Code::InvalidArgument,
                            "room must be 1 to 256 bytes",
                        ))),
                        Err(e) => out.push(Action::Send(error_frame(
                            frame.seq,
                            Code::BadBody,
                            &format!("{op} body: {e}"),
                        ))),
                    },
                    _ => out.push(Action::ToCore {
                        op: frame.op,
                        seq: frame.seq,
                        body: frame.body,
                    }),
                }
            }
        }
    }

    /// Core's answer to this connection's AUTH.
    pub(crate) fn handle_auth_result(
        &mut self,
        ok: bool,
        heartbeat_secs: u32,
        reply: pb::AuthReply,
        error: (i32, &str),
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !matches!(self.state, State::Authenticating { .. }) {
            return;
        }
        if ok {
            let heartbeat = Duration::from_secs(u64::from(heartbeat_secs.max(1)));
            let held = match std::mem::replace(&mut self.state, State::Open { heartbeat }) {
                State::Authenticating { held: Some(held) } => held.frames,
                _ => Vec::new(),
            };
            self.deadline = now + idle_limit(heartbeat);
            if let Ok(f) = frame_of(Op::AuthReply, 1, &reply) {
                out.push(Action::Send(f));
            }
            // What followed AUTH, in order, as if it came now.
            for frame in held {
                self.handle_frame(frame, now, out);
            }
        } else {
            let code = Code::try_from(error.0).unwrap_or(Code::AuthFailed);
            let reason = if code == Code::Unavailable {
                Reason::Unspecified
            } else {
                Reason::Auth
            };
            self.fail(out, 1, code, error.1, reason);
        }
    }

    /// Core told the client a new heartbeat interval.
    pub(crate) fn handle_heartbeat_interval(&mut self, secs: u32, now: Instant) {
        if let State::Open { heartbeat } = &mut self.state {
            *heartbeat = Duration::from_secs(u64::from(secs.max(1)));
            self.deadline = now + idle_limit(*heartbeat);
        }
    }

    /// Time passed: closes a connection that did not authenticate, or went silent, in time.
    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now < self.deadline || self.state == State::Closed {
            return;
        }
        match self.state {
            State::AwaitAuth | State::Authenticating { .. } => self.fail(
                out,
                0,
                Code::AuthRequired,
                "no successful AUTH in time",
                Reason::Protocol,
            ),
            State::Open { .. } => {
                out.push(Action::Send(disconnect_frame(
                    Reason::Idle,
                    "no heartbeat within the interval",
                    Some(0),
                )));
                out.push(Action::Close { idle: true });
                self.state = State::Closed;
            }
            State::Closed => {}
        }
    }
}

/// How long an open connection may stay silent: its interval and half again.
fn idle_limit(heartbeat: Duration) -> Duration {
    heartbeat + heartbeat / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_proto::FrameDecoder;

    fn frame(op: Op, seq: u32, body: impl prost::Message) -> Frame {
        Frame::new(op, seq, body.encode_to_vec())
    }

    fn sent_ops(actions: &[Action]) -> Vec<(Op, u32)> {
        let mut ops = Vec::new();
        for a in actions {
            if let Action::Send(bytes) = a {
                let mut b = bytes.clone();
                while let Ok(Some(f)) = FrameDecoder::default().decode_bytes(&mut b) {
                    ops.push((f.op_kind().unwrap(), f.seq));
                }
            }
        }
        ops
    }

    /// Every connection's driver holds its session for the connection's life: the
    /// configuration shared, rare state (frames held behind AUTH) boxed, a flag instead of
    /// a string. Issues 10 and 14 had grown it from 80 to 128 bytes (a copied configuration
    /// with two more fields, the held frames inline, a `&'static str`); it is 72 now.
    #[test]
    fn the_session_stays_small() {
        let size = std::mem::size_of::<Session>();
        assert!(size <= 72, "Session grew to {size} bytes");
    }

    fn open(now: Instant) -> Session {
        let mut s = Session::new(SessionConfig::default(), now);
        let mut out = Vec::new();
        s.handle_frame(
            frame(
                Op::Auth,
                1,
                pb::Auth {
                    token: "t".into(),
                    device_id: "d".into(),
                    ..Default::default()
                },
            ),
            now,
            &mut out,
        );
        assert!(matches!(out[0], Action::Authenticate(_)));
        out.clear();
        s.handle_auth_result(true, 60, pb::AuthReply::default(), (0, ""), now, &mut out);
        assert_eq!(sent_ops(&out), [(Op::AuthReply, 1)]);
        assert!(s.is_open());
        s
    }

    #[test]
    fn anything_before_auth_is_refused_with_error_and_disconnect() {
        let now = Instant::now();
        let mut s = Session::new(SessionConfig::default(), now);
        let mut out = Vec::new();
        s.handle_frame(frame(Op::Heartbeat, 5, pb::Heartbeat {}), now, &mut out);
        assert_eq!(sent_ops(&out), [(Op::Error, 5), (Op::Disconnect, 0)]);
        assert_eq!(out.last(), Some(&Action::Close { idle: false }));
        assert!(s.is_closed());
    }

    fn auth(s: &mut Session, now: Instant) {
        let mut out = Vec::new();
        s.handle_frame(frame(Op::Auth, 1, pb::Auth::default()), now, &mut out);
        assert!(matches!(out[..], [Action::Authenticate(_)]));
    }

    #[test]
    fn frames_after_auth_are_held_and_handled_in_order_once_it_succeeds() {
        let now = Instant::now();
        let mut s = Session::new(SessionConfig::default(), now);
        auth(&mut s, now);
        let mut out = Vec::new();
        s.handle_frame(frame(Op::Heartbeat, 2, pb::Heartbeat {}), now, &mut out);
        s.handle_frame(
            frame(Op::RoomJoin, 3, pb::Room { room: "r".into() }),
            now,
            &mut out,
        );
        s.handle_frame(frame(Op::Sync, 4, pb::Sync::default()), now, &mut out);
        assert!(out.is_empty(), "held until AUTH is answered");
        assert!(!s.is_closed());
        let later = now + Duration::from_secs(1);
        s.handle_auth_result(true, 60, pb::AuthReply::default(), (0, ""), later, &mut out);
        assert_eq!(
            sent_ops(&out[..1]),
            [(Op::AuthReply, 1)],
            "AUTH_REPLY first"
        );
        assert!(matches!(out[1], Action::ToCore { op: 3, seq: 2, .. }));
        assert_eq!(
            out[2],
            Action::Join {
                room: "r".into(),
                seq: 3
            }
        );
        assert!(matches!(out[3], Action::ToCore { op: 9, seq: 4, .. }));
        assert_eq!(out.len(), 4);
        assert!(s.is_open());
        assert_eq!(
            s.deadline(),
            later + Duration::from_secs(90),
            "idle deadline from when they were handled"
        );
    }

    #[test]
    fn held_frames_are_each_answered_with_an_error_when_auth_fails() {
        let now = Instant::now();
        for (code, held_code) in [
            (Code::AuthExpired, Code::AuthFailed),
            (Code::AuthFailed, Code::AuthFailed),
            (Code::Unavailable, Code::Unavailable),
        ] {
            let mut s = Session::new(SessionConfig::default(), now);
            auth(&mut s, now);
            let mut out = Vec::new();
            s.handle_frame(frame(Op::Heartbeat, 2, pb::Heartbeat {}), now, &mut out);
            s.handle_frame(frame(Op::Sync, 3, pb::Sync::default()), now, &mut out);
            s.handle_auth_result(
                false,
                0,
                pb::AuthReply::default(),
                (code as i32, "refused"),
                now,
                &mut out,
            );
            assert_eq!(
                sent_ops(&out),
                [
                    (Op::Error, 1),
                    (Op::Error, 2),
                    (Op::Error, 3),
                    (Op::Disconnect, 0)
                ]
            );
            assert_eq!(error_codes(&out)[1..], [held_code, held_code]);
            assert!(s.is_closed());
        }
        // No answer in time: AUTH_REQUIRED for AUTH and for what followed it.
        let mut s = Session::new(SessionConfig::default(), now);
        auth(&mut s, now);
        let mut out = Vec::new();
        s.handle_frame(frame(Op::Heartbeat, 2, pb::Heartbeat {}), now, &mut out);
        s.handle_timeout(now + Duration::from_secs(10), &mut out);
        assert_eq!(error_codes(&out), [Code::AuthRequired, Code::AuthRequired]);
        assert_eq!(
            sent_ops(&out),
            [(Op::Error, 0), (Op::Error, 2), (Op::Disconnect, 0)]
        );
    }

    #[test]
    fn more_held_frames_or_bytes_than_the_bound_is_a_protocol_error() {
        let now = Instant::now();
        let config = SessionConfig {
            max_held_frames: 3,
            max_held_bytes: 200,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config.clone(), now);
        auth(&mut s, now);
        let mut out = Vec::new();
        for seq in 2..5 {
            s.handle_frame(frame(Op::Heartbeat, seq, pb::Heartbeat {}), now, &mut out);
        }
        assert!(out.is_empty(), "three frames fit");
        s.handle_frame(frame(Op::Heartbeat, 5, pb::Heartbeat {}), now, &mut out);
        assert_eq!(
            sent_ops(&out),
            [
                (Op::Error, 5),
                (Op::Error, 2),
                (Op::Error, 3),
                (Op::Error, 4),
                (Op::Disconnect, 0)
            ]
        );
        assert_eq!(error_codes(&out)[0], Code::RateLimited);
        assert_eq!(out.last(), Some(&Action::Close { idle: false }));
        assert!(s.is_closed());
        assert_eq!(s.close_reason(), "held_frames");
        // Bytes: 16 + 150 fits in 200, a second such frame does not.
        let mut s = Session::new(config, now);
        auth(&mut s, now);
        out.clear();
        let big = || Frame::new(Op::Send, 2, vec![0u8; 150]);
        s.handle_frame(big(), now, &mut out);
        assert!(out.is_empty());
        s.handle_frame(big(), now, &mut out);
        assert!(s.is_closed());
        // A late answer to the AUTH changes nothing.
        out.clear();
        s.handle_auth_result(true, 60, pb::AuthReply::default(), (0, ""), now, &mut out);
        assert!(out.is_empty());
    }

    fn error_codes(actions: &[Action]) -> Vec<Code> {
        let mut codes = Vec::new();
        for a in actions {
            if let Action::Send(bytes) = a {
                let mut b = bytes.clone();
                while let Ok(Some(f)) = FrameDecoder::default().decode_bytes(&mut b) {
                    if f.op_kind() == Some(Op::Error) {
                        let e: pb::Error = f.decode_body().unwrap();
                        codes.push(e.code());
                    }
                }
            }
        }
        codes
    }

    #[test]
    fn a_refused_auth_names_the_fault() {
        let now = Instant::now();
        let mut s = Session::new(SessionConfig::default(), now);
        let mut out = Vec::new();
        s.handle_frame(frame(Op::Auth, 1, pb::Auth::default()), now, &mut out);
        out.clear();
        s.handle_auth_result(
            false,
            0,
            pb::AuthReply::default(),
            (Code::AuthExpired as i32, "token expired"),
            now,
            &mut out,
        );
        assert_eq!(sent_ops(&out), [(Op::Error, 1), (Op::Disconnect, 0)]);
        assert!(s.is_closed());
    }

    #[test]
    fn no_auth_in_time_closes() {
        let now = Instant::now();
        let mut s = Session::new(SessionConfig::default(), now);
        let mut out = Vec::new();
        s.handle_timeout(now + Duration::from_secs(9), &mut out);
        assert!(out.is_empty());
        s.handle_timeout(now + Duration::from_secs(10), &mut out);
        assert_eq!(sent_ops(&out), [(Op::Error, 0), (Op::Disconnect, 0)]);
    }

    #[test]
    fn open_sessions_route_ops_and_close_when_silent() {
        let now = Instant::now();
        let mut s = open(now);
        let mut out = Vec::new();
        s.handle_frame(
            frame(
                Op::RoomJoin,
                2,
                pb::Room {
                    room: "lobby".into(),
                },
            ),
            now,
            &mut out,
        );
        s.handle_frame(frame(Op::Heartbeat, 3, pb::Heartbeat {}), now, &mut out);
        s.handle_frame(frame(Op::Push, 4, pb::Push::default()), now, &mut out);
        assert_eq!(
            out[0],
            Action::Join {
                room: "lobby".into(),
                seq: 2
            }
        );
        assert!(matches!(out[1], Action::ToCore { op: 3, seq: 3, .. }));
        assert_eq!(
            sent_ops(&out[2..]),
            [(Op::Error, 4)],
            "PUSH is not a client request"
        );
        out.clear();
        let t = now + Duration::from_secs(89);
        s.handle_timeout(t, &mut out);
        assert!(
            out.is_empty(),
            "60 s interval: closed after 90 s of silence"
        );
        s.handle_heartbeat_interval(90, t);
        s.handle_timeout(t + Duration::from_secs(134), &mut out);
        assert!(out.is_empty());
        s.handle_timeout(t + Duration::from_secs(135), &mut out);
        assert_eq!(sent_ops(&out), [(Op::Disconnect, 0)]);
        assert_eq!(out.last(), Some(&Action::Close { idle: true }));
    }

    #[test]
    fn requests_over_the_rate_are_answered_with_rate_limited() {
        let now = Instant::now();
        let mut s = open(now);
        let mut out = Vec::new();
        for seq in 0..60 {
            s.handle_frame(frame(Op::Heartbeat, seq, pb::Heartbeat {}), now, &mut out);
        }
        let limited = sent_ops(&out)
            .iter()
            .filter(|(op, _)| *op == Op::Error)
            .count();
        assert_eq!(limited, 10, "a burst of 50 passes");
        out.clear();
        s.handle_frame(
            frame(Op::Heartbeat, 99, pb::Heartbeat {}),
            now + Duration::from_secs(1),
            &mut out,
        );
        assert!(
            matches!(out[0], Action::ToCore { .. }),
            "refilled after a second"
        );
    }

    #[test]
    fn unknown_and_downstream_ops_spend_tokens_like_any_frame() {
        let now = Instant::now();
        let mut s = open(now);
        let mut out = Vec::new();
        for seq in 0..50 {
            let op = if seq % 2 == 0 { 999 } else { Op::Push.code() };
            s.handle_frame(
                Frame {
                    op,
                    seq,
                    body: Bytes::new(),
                },
                now,
                &mut out,
            );
        }
        assert!(
            sent_ops(&out).iter().all(|(op, _)| *op == Op::Error),
            "each answered UNKNOWN_OP"
        );
        out.clear();
        s.handle_frame(frame(Op::Heartbeat, 50, pb::Heartbeat {}), now, &mut out);
        assert_eq!(
            sent_ops(&out),
            [(Op::Error, 50)],
            "the burst is spent: the next request is RATE_LIMITED"
        );
    }

    #[test]
    fn a_bad_frame_or_body_is_named() {
        let now = Instant::now();
        let mut s = open(now);
        let mut out = Vec::new();
        s.handle_frame(
            Frame {
                op: Op::RoomJoin.code(),
                seq: 7,
                body: Bytes::from_static(&[0xff, 0xff]),
            },
            now,
            &mut out,
        );
        assert_eq!(sent_ops(&out), [(Op::Error, 7)]);
        assert!(
            s.is_open(),
            "a bad body fails the request, not the connection"
        );
        out.clear();
        s.handle_decode_error(
            &FrameError::TooLarge {
                len: 1 << 20,
                max: 65536,
            },
            &mut out,
        );
        assert_eq!(sent_ops(&out), [(Op::Error, 0), (Op::Disconnect, 0)]);
        assert!(s.is_closed());
    }
}
