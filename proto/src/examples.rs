//! One example of every frame, checked against docs/protocol.md so the document can never
//! drift from the codec: if this test fails, paste the block it prints into the document.

use bytes::BytesMut;
use prost::Message;

use crate::client::v1 as pb;
use crate::{Op, encode_msg};

fn message() -> pb::Message {
    pb::Message {
        id: 1001,
        seq: 1,
        from: "alice".into(),
        to: "bob".into(),
        content: "hi".into(),
        content_type: String::new(),
        created_at: 1_790_000_000_000,
        conversation_seq: 1,
    }
}

/// (op, seq, the body as text, the encoded frame).
fn examples() -> Vec<(Op, u32, String, Vec<u8>)> {
    fn ex<M: Message + std::fmt::Debug>(op: Op, seq: u32, msg: M) -> (Op, u32, String, Vec<u8>) {
        let mut buf = BytesMut::new();
        encode_msg(op, seq, &msg, &mut buf).expect("a small example encodes");
        (op, seq, format!("{msg:?}"), buf.to_vec())
    }
    vec![
        ex(
            Op::Auth,
            1,
            pb::Auth {
                token: "t0k3n".into(),
                device_id: "phone-1".into(),
                platform: "ios".into(),
                rooms: vec![],
            },
        ),
        ex(
            Op::AuthReply,
            1,
            pb::AuthReply {
                user_id: "alice".into(),
                device_id: "phone-1".into(),
                session_id: "s-1".into(),
                heartbeat_secs: 60,
                server_time_ms: 1_790_000_000_000,
            },
        ),
        ex(Op::Heartbeat, 2, pb::Heartbeat {}),
        ex(
            Op::HeartbeatReply,
            2,
            pb::HeartbeatReply { heartbeat_secs: 90 },
        ),
        ex(
            Op::Send,
            3,
            pb::Send {
                to: "bob".into(),
                client_msg_id: "c-1".into(),
                content: "hi".into(),
                content_type: String::new(),
            },
        ),
        ex(
            Op::SendAck,
            3,
            pb::SendAck {
                client_msg_id: "c-1".into(),
                id: 1001,
                seq: 1,
                duplicate: false,
            },
        ),
        ex(
            Op::Push,
            0,
            pb::Push {
                kind: Some(pb::push::Kind::Message(message())),
            },
        ),
        ex(Op::PushAck, 4, pb::PushAck { seq: 1 }),
        ex(
            Op::Sync,
            5,
            pb::Sync {
                after: 0,
                limit: 100,
                ..Default::default()
            },
        ),
        ex(
            Op::Sync,
            10,
            pb::Sync {
                limit: 20,
                conversation: "alice".into(),
                before: 41,
                ..Default::default()
            },
        ),
        ex(
            Op::SyncReply,
            5,
            pb::SyncReply {
                messages: vec![message()],
                next_after: 1,
                has_more: false,
            },
        ),
        ex(
            Op::Read,
            6,
            pb::Read {
                peer: "alice".into(),
                seq: 1,
            },
        ),
        ex(
            Op::ReadReply,
            6,
            pb::ReadReply {
                peer: "alice".into(),
                seq: 1,
                unread: 0,
            },
        ),
        ex(
            Op::RoomJoin,
            7,
            pb::Room {
                room: "lobby".into(),
            },
        ),
        ex(
            Op::RoomJoinReply,
            7,
            pb::RoomReply {
                room: "lobby".into(),
                rooms: vec!["lobby".into()],
            },
        ),
        ex(
            Op::RoomLeave,
            8,
            pb::Room {
                room: "lobby".into(),
            },
        ),
        ex(
            Op::RoomLeaveReply,
            8,
            pb::RoomReply {
                room: "lobby".into(),
                rooms: vec![],
            },
        ),
        ex(
            Op::Notice,
            0,
            pb::Notice {
                kind: pb::notice::Kind::Sync as i32,
                peer: "group:7".into(),
                seq: 42,
                payload: Default::default(),
            },
        ),
        ex(
            Op::Notice,
            0,
            pb::Notice {
                kind: pb::notice::Kind::Receipt as i32,
                peer: "bob".into(),
                seq: 1,
                payload: Default::default(),
            },
        ),
        ex(
            Op::Disconnect,
            0,
            pb::Disconnect {
                reason: pb::disconnect::Reason::Drain as i32,
                message: "edge restarting".into(),
                reconnect: true,
                reconnect_after_ms: 1000,
                reconnect_to: String::new(),
            },
        ),
        ex(
            Op::Error,
            9,
            pb::Error {
                code: pb::error::Code::FrameTooLarge as i32,
                message: "frame too large: packet_len 70000 exceeds the maximum of 65536 bytes"
                    .into(),
            },
        ),
        ex(
            Op::Presence,
            10,
            pb::PresenceQuery {
                users: vec!["bob".into(), "carol".into()],
            },
        ),
        ex(
            Op::PresenceReply,
            10,
            pb::PresenceReply {
                users: vec![
                    pb::UserPresence {
                        user: "bob".into(),
                        online: true,
                        last_seen_ms: 0,
                    },
                    pb::UserPresence {
                        user: "carol".into(),
                        online: false,
                        last_seen_ms: 1_790_000_000_000,
                    },
                ],
            },
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The examples section of docs/protocol.md, as it must read.
fn section() -> String {
    let mut out = String::new();
    for (op, seq, body, frame) in examples() {
        let dir = match op.direction() {
            crate::Direction::Up => "client → server",
            crate::Direction::Down => "server → client",
        };
        out.push_str(&format!(
            "### {} ({}) — {}, body `{}`\n\nseq {seq}, body {body}\n\n```text\nheader {}\nbody   {}\n```\n\n",
            op.name(),
            op.code(),
            dir,
            op.body(),
            hex(&frame[..16]),
            if frame.len() > 16 { hex(&frame[16..]) } else { "(empty)".into() },
        ));
    }
    out
}

#[test]
fn protocol_doc_has_an_example_of_every_frame() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(doc_path).unwrap_or_default();
    let want = section();
    assert!(
        doc.contains(&want),
        "docs/protocol.md is out of date; its examples section must read:\n\n{want}"
    );
}
