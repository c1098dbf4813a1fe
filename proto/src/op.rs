//! The operation table: which op number a frame carries, its direction and its body.
//!
//! Op numbers are part of the wire contract (docs/contract.md §3, docs/protocol.md) and never change
//! meaning once shipped; new ops take new numbers. The body of each op is the protobuf message
//! named by [`Op::body`] in `roam.client.v1` (`proto/roam/client/v1/client.proto`).

use std::fmt;

/// Which way an op travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

macro_rules! ops {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $dir:ident, $body:literal; )*) => {
        /// A frame operation. See the module doc for the rules.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Op {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl Op {
            /// Every op, in code order.
            pub const ALL: &'static [Op] = &[$(Op::$variant),*];

            /// The op for a wire code, if the table has it.
            pub const fn from_code(code: u32) -> Option<Op> {
                match code {
                    $( $code => Some(Op::$variant), )*
                    _ => None,
                }
            }

            /// The wire code.
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The name used in docs, logs and metrics (`SEND_ACK`).
            pub const fn name(self) -> &'static str {
                match self { $( Op::$variant => $name, )* }
            }

            /// Which way the op travels.
            pub const fn direction(self) -> Direction {
                match self { $( Op::$variant => Direction::$dir, )* }
            }

            /// The `roam.client.v1` message that is the op's body.
            pub const fn body(self) -> &'static str {
                match self { $( Op::$variant => $body, )* }
            }
        }
    };
}

ops! {
    /// First frame of a connection: token, device, platform.
    Auth = 1, "AUTH", Up, "Auth";
    /// Authentication accepted: user, session, heartbeat interval.
    AuthReply = 2, "AUTH_REPLY", Down, "AuthReply";
    /// Keep-alive from the client.
    Heartbeat = 3, "HEARTBEAT", Up, "Heartbeat";
    /// Keep-alive answer, with the interval to use next.
    HeartbeatReply = 4, "HEARTBEAT_REPLY", Down, "HeartbeatReply";
    /// Store and deliver a message (idempotent on `client_msg_id`).
    Send = 5, "SEND", Up, "Send";
    /// The message is durable: its id and seq.
    SendAck = 6, "SEND_ACK", Down, "SendAck";
    /// A message or an ephemeral push for the client.
    Push = 7, "PUSH", Down, "Push";
    /// The client received everything up to a seq.
    PushAck = 8, "PUSH_ACK", Up, "PushAck";
    /// Pull messages after a cursor.
    Sync = 9, "SYNC", Up, "Sync";
    /// Messages after the cursor.
    SyncReply = 10, "SYNC_REPLY", Down, "SyncReply";
    /// Read receipt: read a conversation up to a seq.
    Read = 11, "READ", Up, "Read";
    /// Read receipt stored: unread count.
    ReadReply = 12, "READ_REPLY", Down, "ReadReply";
    /// Join a room (ephemeral broadcast group).
    RoomJoin = 13, "ROOM_JOIN", Up, "Room";
    /// Joined: the connection's rooms.
    RoomJoinReply = 14, "ROOM_JOIN_REPLY", Down, "RoomReply";
    /// Leave a room.
    RoomLeave = 15, "ROOM_LEAVE", Up, "Room";
    /// Left: the connection's rooms.
    RoomLeaveReply = 16, "ROOM_LEAVE_REPLY", Down, "RoomReply";
    /// Something changed that the client may act on (sync needed, read elsewhere, presence).
    Notice = 17, "NOTICE", Down, "Notice";
    /// The server is closing the connection, with the reason and a reconnect hint.
    Disconnect = 18, "DISCONNECT", Down, "Disconnect";
    /// A request failed, or the client broke the protocol.
    Error = 19, "ERROR", Down, "Error";
    /// Who of some users is online (only users sharing a conversation with the caller).
    Presence = 20, "PRESENCE", Up, "PresenceQuery";
    /// Their presence.
    PresenceReply = 21, "PRESENCE_REPLY", Down, "PresenceReply";
}

impl Op {
    /// The op that answers this request, for requests that have one (`PUSH_ACK` has none;
    /// any request may also be answered by `ERROR`).
    pub const fn reply(self) -> Option<Op> {
        match self {
            Op::Auth => Some(Op::AuthReply),
            Op::Heartbeat => Some(Op::HeartbeatReply),
            Op::Send => Some(Op::SendAck),
            Op::Sync => Some(Op::SyncReply),
            Op::Read => Some(Op::ReadReply),
            Op::RoomJoin => Some(Op::RoomJoinReply),
            Op::RoomLeave => Some(Op::RoomLeaveReply),
            Op::Presence => Some(Op::PresenceReply),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(Op::from_code(op.code()), Some(*op));
            assert_eq!(op.code(), i as u32 + 1, "codes are dense from 1, in order");
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(Op::ALL.len() as u32 + 1), None);
    }

    #[test]
    fn replies_travel_down_and_answer_one_request() {
        let mut seen = Vec::new();
        for op in Op::ALL {
            if let Some(reply) = op.reply() {
                assert_eq!(op.direction(), Direction::Up, "{op}");
                assert_eq!(reply.direction(), Direction::Down, "{reply}");
                assert!(!seen.contains(&reply), "{reply} answers two requests");
                seen.push(reply);
            }
        }
        assert_eq!(Op::Heartbeat.reply(), Some(Op::HeartbeatReply));
        assert_eq!(Op::PushAck.reply(), None);
    }
}
