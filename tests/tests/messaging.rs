//! Stored messaging end to end (issue 11): clients on the raw port of a real `roam serve`,
//! sending, syncing and reading 1:1 and in groups, and the business routes beside them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use roam_bench::child::ChildServer;
use roam_client::raw::RawConnection;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, Op};
use roam_tests::{admin, auth, next_frame, raw_login, token};
use serde_json::{Value, json};

/// No per-user send rate nor per-connection request rate: the tests send bursts.
const UNLIMITED: &str =
    "[messaging]\nsend_rate = 0\n[edge]\nrate_burst = 100000\nrate_per_sec = 100000\n";

async fn login(server: &ChildServer, user: &str, device: &str) -> RawConnection {
    raw_login(server, &auth(server, user, device)).await.0
}

fn send_frame(to: &str, client_msg_id: &str, content: &str) -> pb::Send {
    pb::Send {
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        content: content.as_bytes().to_vec().into(),
        content_type: String::new(),
    }
}

fn text(m: &pb::Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

fn error_of(f: &Frame) -> pb::Error {
    assert_eq!(f.op_kind(), Some(Op::Error), "{f:?}");
    f.decode_body().unwrap()
}

/// The connection has nothing queued: a HEARTBEAT's reply is the next frame.
async fn nothing_more(c: &mut RawConnection, who: &str) {
    c.send(Op::Heartbeat, 999, &pb::Heartbeat {}).await.unwrap();
    let f = next_frame(c).await;
    assert_eq!(
        (f.op_kind(), f.seq),
        (Some(Op::HeartbeatReply), 999),
        "{who} got {f:?}"
    );
}

/// A device's view of its inbox: every seq it learned, from a SEND_ACK of its own or a PUSH.
#[derive(Default)]
struct Inbox {
    /// Messages pushed, in arrival order.
    pushed: Vec<pb::Message>,
    /// SEND_ACKs, in arrival order (client seq, ack).
    acks: Vec<(u32, pb::SendAck)>,
    /// Other frames (notices, read replies).
    other: Vec<Frame>,
}

impl Inbox {
    fn take(&mut self, f: Frame) {
        match f.op_kind() {
            Some(Op::Push) => match f.decode_body::<pb::Push>().unwrap().kind {
                Some(pb::push::Kind::Message(m)) => self.pushed.push(m),
                other => panic!("not a stored message: {other:?}"),
            },
            Some(Op::SendAck) => self.acks.push((f.seq, f.decode_body().unwrap())),
            _ => self.other.push(f),
        }
    }

    fn seqs(&self) -> usize {
        self.pushed.len() + self.acks.len()
    }
}

/// Reads frames into an [`Inbox`] until it knows `n` inbox seqs.
async fn collect(c: &mut RawConnection, n: usize) -> Inbox {
    let mut inbox = Inbox::default();
    while inbox.seqs() < n {
        inbox.take(next_frame(c).await);
    }
    inbox
}

/// Sends `n` messages pipelined (all frames first), client seqs from 100.
async fn send_many(c: &mut RawConnection, to: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let f = send_frame(to, &format!("{prefix}{i}"), &format!("{prefix}{i}"));
        c.send(Op::Send, 100 + i as u32, &f).await.unwrap();
    }
}

/// Sends `n` messages with at most 100 unacknowledged (a connection may have 256 requests
/// waiting); returns the acks in order.
async fn send_windowed(
    c: &mut RawConnection,
    to: &str,
    prefix: &str,
    n: usize,
) -> Vec<pb::SendAck> {
    let mut acks = Vec::new();
    let mut sent = 0;
    while acks.len() < n {
        while sent < n && sent - acks.len() < 100 {
            let f = send_frame(to, &format!("{prefix}{sent}"), &format!("{prefix}{sent}"));
            c.send(Op::Send, sent as u32, &f).await.unwrap();
            sent += 1;
        }
        let f = next_frame(c).await;
        assert_eq!(
            (f.op_kind(), f.seq),
            (Some(Op::SendAck), acks.len() as u32),
            "{f:?}"
        );
        acks.push(f.decode_body().unwrap());
    }
    acks
}

#[tokio::test]
async fn two_users_three_devices_see_every_message_once_and_in_order() {
    let server = roam_tests::start(UNLIMITED);
    let mut a_phone = login(&server, "alice", "phone").await;
    let mut a_laptop = login(&server, "alice", "laptop").await;
    let mut b_phone = login(&server, "bob", "phone").await;
    const N: usize = 40;
    // Both users send at once: their inboxes interleave the two streams.
    let (a, b) = tokio::join!(
        async {
            send_many(&mut a_phone, "bob", "a", N).await;
            collect(&mut a_phone, 2 * N).await
        },
        async {
            send_many(&mut b_phone, "alice", "b", N).await;
            collect(&mut b_phone, 2 * N).await
        },
    );
    let laptop = collect(&mut a_laptop, 2 * N).await;
    for (who, inbox) in [("alice/phone", &a), ("bob/phone", &b)] {
        // Acks come in the order the SENDs went, with increasing seqs.
        let order: Vec<u32> = inbox.acks.iter().map(|(s, _)| *s).collect();
        assert_eq!(order, (100..100 + N as u32).collect::<Vec<_>>(), "{who}");
        assert!(inbox.acks.iter().all(|(_, a)| !a.duplicate));
        // Pushes (the peer's messages) come in seq order.
        let pushed: Vec<u64> = inbox.pushed.iter().map(|m| m.seq).collect();
        assert!(pushed.windows(2).all(|w| w[0] < w[1]), "{who}: {pushed:?}");
        // Acked and pushed seqs together: every inbox seq exactly once.
        let mut all: Vec<u64> = inbox
            .acks
            .iter()
            .map(|(_, a)| a.seq)
            .chain(pushed)
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=2 * N as u64).collect::<Vec<_>>(), "{who}");
    }
    // The laptop sent nothing: it gets all of alice's inbox pushed, in order, once.
    let seqs: Vec<u64> = laptop.pushed.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=2 * N as u64).collect::<Vec<_>>());
    let from_alice: Vec<String> = laptop
        .pushed
        .iter()
        .filter(|m| m.from == "alice")
        .map(text)
        .collect();
    assert_eq!(
        from_alice,
        (0..N).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert!(
        laptop
            .pushed
            .iter()
            .all(|m| m.to == if m.from == "alice" { "bob" } else { "alice" })
    );
    // Each pushed message is the one acked to its sender (same id, same conversation seq).
    let acked: BTreeMap<u64, u64> = b
        .pushed
        .iter()
        .map(|m| (m.id, m.conversation_seq))
        .collect();
    for (_, ack) in &a.acks {
        assert!(
            acked.contains_key(&ack.id),
            "bob got every message alice sent"
        );
    }

    // PUSH_ACK moves the device's delivered cursor; no reply.
    a_laptop
        .send(Op::PushAck, 5, &pb::PushAck { seq: 2 * N as u64 })
        .await
        .unwrap();

    // READ: alice read bob's messages up to the newest; her laptop is told, bob gets a
    // receipt.
    let latest = laptop
        .pushed
        .iter()
        .map(|m| m.conversation_seq)
        .max()
        .unwrap();
    let read = pb::Read {
        peer: "bob".into(),
        seq: latest,
    };
    a_phone.send(Op::Read, 7, &read).await.unwrap();
    let f = next_frame(&mut a_phone).await;
    assert_eq!((f.op_kind(), f.seq), (Some(Op::ReadReply), 7), "{f:?}");
    let reply: pb::ReadReply = f.decode_body().unwrap();
    assert_eq!(
        (reply.peer.as_str(), reply.seq, reply.unread),
        ("bob", latest, 0)
    );
    let n: pb::Notice = next_frame(&mut a_laptop).await.decode_body().unwrap();
    assert_eq!(
        (n.kind, n.peer.as_str(), n.seq),
        (pb::notice::Kind::Read as i32, "bob", latest)
    );
    let r: pb::Notice = next_frame(&mut b_phone).await.decode_body().unwrap();
    assert_eq!(
        (r.kind, r.peer.as_str(), r.seq),
        (pb::notice::Kind::Receipt as i32, "alice", latest)
    );
    for (c, who) in [
        (&mut a_phone, "a"),
        (&mut a_laptop, "l"),
        (&mut b_phone, "b"),
    ] {
        nothing_more(c, who).await;
    }
    // The business API sees the same inbox and the unread counts.
    let t = admin(
        &server,
        "GET",
        "/api/v1/users/bob/timeline?after=0&limit=1000",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(t["messages"].as_array().unwrap().len(), 2 * N);
    let u = admin(&server, "GET", "/api/v1/users/bob/unread", None, None)
        .await
        .json();
    assert_eq!(u["conversations"][0]["conversation"], "alice");
    assert_eq!(u["total"], N as u64, "bob read nothing of alice's {N}");
}

#[tokio::test]
async fn pushes_from_many_concurrent_senders_arrive_in_inbox_seq_order() {
    let server = roam_tests::start(UNLIMITED);
    let mut alice = login(&server, "alice", "phone").await;
    let mut senders = Vec::new();
    for i in 0..6 {
        senders.push(login(&server, &format!("friend{i}"), "phone").await);
    }
    const N: usize = 40;
    let sends = senders.iter_mut().enumerate().map(|(i, c)| async move {
        send_windowed(c, "alice", &format!("f{i}-"), N).await;
    });
    let (_, got) = tokio::join!(
        futures_util::future::join_all(sends),
        collect(&mut alice, 6 * N)
    );
    let seqs: Vec<u64> = got.pushed.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=6 * N as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_device_offline_during_500_messages_syncs_them_all_in_order_once() {
    let server = roam_tests::start(UNLIMITED);
    // The tablet was online once, then went away.
    drop(login(&server, "bob", "tablet").await);
    let mut alice = login(&server, "alice", "phone").await;
    const N: usize = 500;
    let acks = send_windowed(&mut alice, "bob", "m", N).await;
    assert_eq!(acks.len(), N);

    let mut tablet = login(&server, "bob", "tablet").await;
    let mut got: Vec<pb::Message> = Vec::new();
    let mut after = 0;
    for page in 1.. {
        let sync = pb::Sync {
            after,
            limit: 0,
            ..Default::default()
        };
        tablet.send(Op::Sync, page, &sync).await.unwrap();
        let f = next_frame(&mut tablet).await;
        assert_eq!((f.op_kind(), f.seq), (Some(Op::SyncReply), page), "{f:?}");
        let reply: pb::SyncReply = f.decode_body().unwrap();
        got.extend(reply.messages);
        after = reply.next_after;
        if !reply.has_more {
            break;
        }
    }
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    let texts: Vec<String> = got.iter().map(text).collect();
    assert_eq!(texts, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Nothing arrives twice: no push of what was synced follows.
    nothing_more(&mut tablet, "tablet").await;
}

#[tokio::test]
async fn a_resent_client_msg_id_is_stored_once_and_answered_with_the_first_ack() {
    let server = roam_tests::start(UNLIMITED);
    let mut alice = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "phone").await;
    let f = send_frame("bob", "same", "once");
    alice.send(Op::Send, 1, &f).await.unwrap();
    alice.send(Op::Send, 2, &f).await.unwrap();
    let first: pb::SendAck = next_frame(&mut alice).await.decode_body().unwrap();
    let second = next_frame(&mut alice).await;
    assert_eq!(second.seq, 2);
    let second: pb::SendAck = second.decode_body().unwrap();
    assert!(!first.duplicate && second.duplicate);
    assert_eq!((first.id, first.seq), (second.id, second.seq));
    // Bob got it once.
    let push = collect(&mut bob, 1).await;
    assert_eq!(push.pushed[0].id, first.id);
    nothing_more(&mut bob, "bob").await;
    // The API: the same key again is the first answer, with duplicate=true.
    let body = json!({"from": "alice", "to": "bob", "client_msg_id": "same", "content": "once"});
    let r = admin(
        &server,
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            v["id"].as_u64(),
            v["seq"].as_u64(),
            v["duplicate"].as_bool()
        ),
        (Some(first.id), Some(first.seq), Some(true))
    );
    let body =
        json!({"from": "alice", "to": "bob", "client_msg_id": "api-1", "content": "via api"});
    for dup in [false, true] {
        let v = admin(
            &server,
            "POST",
            "/api/v1/messages",
            Some(&body.to_string()),
            None,
        )
        .await
        .json();
        assert_eq!(v["duplicate"], dup);
    }
    let t = admin(&server, "GET", "/api/v1/users/bob/timeline", None, None)
        .await
        .json();
    let texts: Vec<&str> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["once", "via api"]);
    let h = admin(
        &server,
        "GET",
        "/api/v1/users/bob/conversations/alice?before=3&limit=1",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(h["messages"][0]["content"], "via api");
    assert_eq!(h["has_more"], true);
}

async fn api(server: &ChildServer, method: &str, path: &str, body: Value) -> Value {
    let r = admin(server, method, path, Some(&body.to_string()), None).await;
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        r.body
    );
    r.json()
}

/// The group messages a member sees: pushed to its inbox (write fan-out), or announced by a
/// NOTICE and pulled with SYNC on the group (read fan-out) — as (from, to, content).
async fn group_view(c: &mut RawConnection, group: &str, n: usize) -> Vec<(String, String, String)> {
    let mut got: Vec<pb::Message> = Vec::new();
    let mut pulled = 0;
    let mut req = 50;
    while got.len() < n {
        let f = next_frame(c).await;
        match f.op_kind() {
            Some(Op::Push) => {
                let Some(pb::push::Kind::Message(m)) = f.decode_body::<pb::Push>().unwrap().kind
                else {
                    panic!("{f:?}")
                };
                got.push(m);
            }
            Some(Op::Notice) => {
                let n: pb::Notice = f.decode_body().unwrap();
                assert_eq!(
                    (n.kind, n.peer.as_str()),
                    (pb::notice::Kind::Sync as i32, group)
                );
                if n.seq <= pulled {
                    continue;
                }
                req += 1;
                let sync = pb::Sync {
                    after: pulled,
                    conversation: group.into(),
                    ..Default::default()
                };
                c.send(Op::Sync, req, &sync).await.unwrap();
                // Notices may arrive before the reply; the reply is what counts.
                loop {
                    let f = next_frame(c).await;
                    if f.op_kind() == Some(Op::SyncReply) {
                        let reply: pb::SyncReply = f.decode_body().unwrap();
                        pulled = reply.next_after;
                        got.extend(reply.messages);
                        break;
                    }
                    assert_eq!(f.op_kind(), Some(Op::Notice), "{f:?}");
                }
            }
            _ => panic!("unexpected {f:?}"),
        }
    }
    got.iter()
        .map(|m| (m.from.clone(), m.to.clone(), text(m)))
        .collect()
}

#[tokio::test]
async fn groups_below_and_above_the_threshold_look_the_same_to_members() {
    let server = roam_tests::start("[messaging]\nsend_rate = 0\nfanout_threshold = 2\n");
    api(
        &server,
        "POST",
        "/api/v1/groups",
        json!({"id": "small", "members": ["alice", "bob"]}),
    )
    .await;
    api(
        &server,
        "POST",
        "/api/v1/groups",
        json!({"id": "big", "members": ["alice", "bob", "carol"]}),
    )
    .await;
    let mut alice = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "phone").await;
    for g in ["small", "big"] {
        let to = format!("group:{g}");
        send_many(&mut alice, &to, &format!("{g}-"), 5).await;
        let acks = collect(&mut alice, 5).await;
        assert_eq!(acks.acks.len(), 5);
        let seen = group_view(&mut bob, &to, 5).await;
        let want: Vec<(String, String, String)> = (0..5)
            .map(|i| ("alice".into(), to.clone(), format!("{g}-{i}")))
            .collect();
        assert_eq!(seen, want, "{g}");
        // History paging reads the same either way.
        let sync = pb::Sync {
            conversation: to.clone(),
            before: 6,
            limit: 2,
            ..Default::default()
        };
        bob.send(Op::Sync, 77, &sync).await.unwrap();
        let reply: pb::SyncReply = next_frame(&mut bob).await.decode_body().unwrap();
        assert_eq!(
            reply.messages.iter().map(text).collect::<Vec<_>>(),
            [format!("{g}-3"), format!("{g}-4")],
            "{g}"
        );
        assert!(reply.has_more);
        // Alice's own messages: her other devices would see them the same way.
        alice
            .send(Op::Heartbeat, 1, &pb::Heartbeat {})
            .await
            .unwrap();
        loop {
            let f = next_frame(&mut alice).await;
            if f.op_kind() == Some(Op::HeartbeatReply) {
                break;
            }
        }
    }
    let members = api(&server, "GET", "/api/v1/groups/big/members", Value::Null).await;
    assert_eq!(members["members"], json!(["alice", "bob", "carol"]));
    let groups = api(&server, "GET", "/api/v1/users/bob/groups", Value::Null).await;
    assert_eq!(groups["groups"], json!(["big", "small"]));
}

#[tokio::test]
async fn non_members_neither_send_to_nor_read_a_group_and_removal_stops_delivery() {
    let server = roam_tests::start(UNLIMITED);
    api(
        &server,
        "POST",
        "/api/v1/groups",
        json!({"id": "team", "members": ["alice", "bob"]}),
    )
    .await;
    let mut alice = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "phone").await;
    let mut carol = login(&server, "carol", "phone").await;
    carol
        .send(Op::Send, 1, &send_frame("group:team", "c1", "let me in"))
        .await
        .unwrap();
    assert_eq!(
        error_of(&next_frame(&mut carol).await).code,
        pb::error::Code::Forbidden as i32
    );
    let sync = pb::Sync {
        conversation: "group:team".into(),
        ..Default::default()
    };
    carol.send(Op::Sync, 2, &sync).await.unwrap();
    assert_eq!(
        error_of(&next_frame(&mut carol).await).code,
        pb::error::Code::Forbidden as i32
    );
    let read = pb::Read {
        peer: "group:team".into(),
        seq: 1,
    };
    carol.send(Op::Read, 3, &read).await.unwrap();
    assert_eq!(
        error_of(&next_frame(&mut carol).await).code,
        pb::error::Code::Forbidden as i32
    );
    let r = admin(
        &server,
        "POST",
        "/api/v1/messages",
        Some(
            &json!({"from": "carol", "to": "group:team", "client_msg_id": "x", "content": "x"})
                .to_string(),
        ),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "forbidden");

    // Bob is removed: later messages do not reach him, and he cannot read the group.
    alice
        .send(Op::Send, 1, &send_frame("group:team", "t1", "before"))
        .await
        .unwrap();
    collect(&mut alice, 1).await;
    assert_eq!(text(&collect(&mut bob, 1).await.pushed[0]), "before");
    let r = admin(
        &server,
        "DELETE",
        "/api/v1/groups/team/members",
        Some(&json!({"users": ["bob"]}).to_string()),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["members"].as_u64()),
        (200, Some(1)),
        "{}",
        r.body
    );
    alice
        .send(Op::Send, 2, &send_frame("group:team", "t2", "after"))
        .await
        .unwrap();
    collect(&mut alice, 1).await;
    nothing_more(&mut bob, "bob").await;
    bob.send(Op::Sync, 4, &sync).await.unwrap();
    assert_eq!(
        error_of(&next_frame(&mut bob).await).code,
        pb::error::Code::Forbidden as i32
    );
    let sync_inbox = pb::Sync::default();
    bob.send(Op::Sync, 5, &sync_inbox).await.unwrap();
    let inbox: pb::SyncReply = next_frame(&mut bob).await.decode_body().unwrap();
    assert_eq!(
        inbox.messages.iter().map(text).collect::<Vec<_>>(),
        ["before"]
    );
    let r = admin(&server, "GET", "/api/v1/groups/nope/members", None, None).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test]
async fn alices_token_cannot_act_for_bob() {
    let server = roam_tests::start(UNLIMITED);
    let mut alice = login(&server, "alice", "phone").await;
    let mut carol = login(&server, "carol", "phone").await;
    // Bob and carol talk; alice cannot read it: a conversation she names always has her in it.
    let body = json!({"from": "bob", "to": "carol", "client_msg_id": "b1", "content": "secret"});
    api(&server, "POST", "/api/v1/messages", body).await;
    collect(&mut carol, 1).await;
    for peer in ["carol", "bob"] {
        let sync = pb::Sync {
            conversation: peer.into(),
            ..Default::default()
        };
        alice.send(Op::Sync, 1, &sync).await.unwrap();
        let reply: pb::SyncReply = next_frame(&mut alice).await.decode_body().unwrap();
        assert!(reply.messages.is_empty(), "{peer}: {:?}", reply.messages);
    }
    alice.send(Op::Sync, 2, &pb::Sync::default()).await.unwrap();
    let inbox: pb::SyncReply = next_frame(&mut alice).await.decode_body().unwrap();
    assert!(inbox.messages.is_empty());
    // A SEND is always from the token's user.
    alice
        .send(Op::Send, 3, &send_frame("carol", "a1", "hi"))
        .await
        .unwrap();
    collect(&mut alice, 1).await;
    let got = collect(&mut carol, 1).await;
    assert_eq!(got.pushed[0].from, "alice");
    // A READ of bob's conversation is alice's own (alice↔carol): carol's receipt names alice.
    let read = pb::Read {
        peer: "carol".into(),
        seq: 1,
    };
    alice.send(Op::Read, 4, &read).await.unwrap();
    let reply: pb::ReadReply = next_frame(&mut alice).await.decode_body().unwrap();
    assert_eq!(reply.seq, 1);
    let receipt: pb::Notice = next_frame(&mut carol).await.decode_body().unwrap();
    assert_eq!(
        (receipt.kind, receipt.peer.as_str()),
        (pb::notice::Kind::Receipt as i32, "alice")
    );
    // The business API does not take a client token.
    let alice_token = token(&server, "alice");
    for (method, path, body) in [
        ("GET", "/api/v1/users/bob/timeline", None),
        ("GET", "/api/v1/users/bob/unread", None),
        (
            "POST",
            "/api/v1/messages",
            Some(
                json!({"from": "bob", "to": "carol", "client_msg_id": "f", "content": "forged"})
                    .to_string(),
            ),
        ),
    ] {
        let r = admin(&server, method, path, body.as_deref(), Some(&alice_token)).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
    }
}

#[tokio::test]
async fn bad_sends_get_clear_errors_and_store_nothing() {
    let server =
        roam_tests::start("[messaging]\nsend_rate = 1\nsend_burst = 3\nmax_content_bytes = 100\n");
    let mut alice = login(&server, "alice", "phone").await;
    let long_id = "x".repeat(129);
    let big = "x".repeat(101);
    let cases = [
        (
            send_frame("bob", "", "hi"),
            pb::error::Code::InvalidArgument,
            "client_msg_id",
        ),
        (
            send_frame("bob", &long_id, "hi"),
            pb::error::Code::InvalidArgument,
            "client_msg_id",
        ),
        (
            send_frame("bob", "c1", &big),
            pb::error::Code::InvalidArgument,
            "max_content_bytes",
        ),
        (
            send_frame("", "c2", "hi"),
            pb::error::Code::InvalidArgument,
            "user id",
        ),
        (
            send_frame("bo\u{7}b", "c3", "hi"),
            pb::error::Code::InvalidArgument,
            "user id",
        ),
        (
            send_frame("group:nope", "c4", "hi"),
            pb::error::Code::NotFound,
            "nope",
        ),
        (
            send_frame("group:a b", "c5", "hi"),
            pb::error::Code::InvalidArgument,
            "group id",
        ),
    ];
    for (i, (frame, code, says)) in cases.iter().enumerate() {
        alice.send(Op::Send, i as u32, frame).await.unwrap();
        let e = error_of(&next_frame(&mut alice).await);
        assert_eq!(e.code, *code as i32, "case {i}: {e:?}");
        assert!(e.message.contains(says), "case {i}: {e:?}");
    }
    alice
        .send_raw(&{
            let mut b = bytes::BytesMut::new();
            roam_proto::encode(Op::Send.code(), 40, b"\xff\xff", &mut b).unwrap();
            b.to_vec()
        })
        .await
        .unwrap();
    assert_eq!(
        error_of(&next_frame(&mut alice).await).code,
        pb::error::Code::BadBody as i32
    );
    // The send rate: a burst of 3, then refused.
    for i in 0..3 {
        alice
            .send(Op::Send, 50 + i, &send_frame("bob", &format!("r{i}"), "ok"))
            .await
            .unwrap();
        assert_eq!(next_frame(&mut alice).await.op_kind(), Some(Op::SendAck));
    }
    alice
        .send(Op::Send, 60, &send_frame("bob", "r9", "too fast"))
        .await
        .unwrap();
    assert_eq!(
        error_of(&next_frame(&mut alice).await).code,
        pb::error::Code::RateLimited as i32
    );
    // Only the three good ones were stored.
    let t = admin(&server, "GET", "/api/v1/users/bob/timeline", None, None)
        .await
        .json();
    assert_eq!(t["messages"].as_array().unwrap().len(), 3);
    // The API says the same in JSON.
    for (body, status, code) in [
        (
            json!({"from": "alice", "to": "bob", "client_msg_id": "", "content": "x"}),
            400,
            "invalid_argument",
        ),
        (
            json!({"from": "alice", "to": "bob", "client_msg_id": "z", "content": big}),
            413,
            "too_large",
        ),
        (
            json!({"from": "alice", "to": "group:nope", "client_msg_id": "z", "content": "x"}),
            404,
            "not_found",
        ),
        (
            json!({"from": "", "to": "bob", "client_msg_id": "z", "content": "x"}),
            400,
            "invalid_argument",
        ),
        (
            json!({"to": "bob", "client_msg_id": "z", "content": "x"}),
            400,
            "invalid_argument",
        ),
    ] {
        let r = admin(
            &server,
            "POST",
            "/api/v1/messages",
            Some(&body.to_string()),
            None,
        )
        .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{body}");
    }
    let r = admin(
        &server,
        "POST",
        "/api/v1/groups",
        Some(&json!({"id": "g", "members": ["a"]}).to_string()),
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    let r = admin(
        &server,
        "POST",
        "/api/v1/groups",
        Some(&json!({"id": "g"}).to_string()),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (409, Some("exists"))
    );
}

async fn next_ws(c: &mut roam_client::ws::WsConnection) -> Frame {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("no frame within 10 s")
        .unwrap()
        .expect("the server closed the connection")
}

#[tokio::test]
async fn websocket_and_raw_clients_chat_through_the_same_store() {
    let server = roam_tests::start(UNLIMITED);
    let mut bob = login(&server, "bob", "phone").await;
    let addr = server.addr("client_tcp").unwrap();
    let mut alice = roam_client::ws::WsConnection::connect(addr, &server.dev_cert())
        .await
        .unwrap();
    let auth = pb::Auth {
        token: token(&server, "alice"),
        device_id: "browser".into(),
        platform: "web".into(),
        rooms: vec![],
    };
    alice.send(Op::Auth, 1, &auth).await.unwrap();
    assert_eq!(next_ws(&mut alice).await.op_kind(), Some(Op::AuthReply));
    alice
        .send(Op::Send, 2, &send_frame("bob", "w1", "over ws"))
        .await
        .unwrap();
    let ack = next_ws(&mut alice).await;
    assert_eq!((ack.op_kind(), ack.seq), (Some(Op::SendAck), 2), "{ack:?}");
    let got = collect(&mut bob, 1).await;
    assert_eq!(
        (text(&got.pushed[0]), got.pushed[0].from.as_str()),
        ("over ws".into(), "alice")
    );
    bob.send(Op::Send, 3, &send_frame("alice", "r1", "over raw"))
        .await
        .unwrap();
    collect(&mut bob, 1).await;
    let f = next_ws(&mut alice).await;
    let Some(pb::push::Kind::Message(m)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!("{f:?}")
    };
    assert_eq!((text(&m).as_str(), m.seq), ("over raw", 2));
    alice.send(Op::Sync, 4, &pb::Sync::default()).await.unwrap();
    let reply: pb::SyncReply = next_ws(&mut alice).await.decode_body().unwrap();
    assert_eq!(
        reply.messages.iter().map(text).collect::<Vec<_>>(),
        ["over ws", "over raw"]
    );
}

/// PRESENCE answers for the caller and the users they share a conversation with (a 1:1
/// message either way, a common group) and leaves everyone else out: online or not, a
/// stranger cannot be probed.
#[tokio::test]
async fn presence_answers_only_for_users_sharing_a_conversation() {
    let server = roam_tests::start(UNLIMITED);
    let mut alice = login(&server, "alice", "a1").await;
    let mut bob = login(&server, "bob", "b1").await;
    let _carol = login(&server, "carol", "c1").await;
    let _mallory = login(&server, "mallory", "m1").await;
    api(
        &server,
        "POST",
        "/api/v1/groups",
        json!({"id": "team", "members": ["alice", "carol"]}),
    )
    .await;
    let ask = |users: &[&str]| pb::PresenceQuery {
        users: users.iter().map(|u| u.to_string()).collect(),
    };
    let everyone = ask(&["alice", "bob", "carol", "dave", "mallory"]);
    // Before any 1:1 message, bob is a stranger to alice; carol shares a group.
    alice.send(Op::Presence, 2, &everyone).await.unwrap();
    let f = next_frame(&mut alice).await;
    assert_eq!((f.op_kind(), f.seq), (Some(Op::PresenceReply), 2), "{f:?}");
    let reply: pb::PresenceReply = f.decode_body().unwrap();
    let seen = |r: &pb::PresenceReply| -> Vec<(String, bool)> {
        r.users.iter().map(|p| (p.user.clone(), p.online)).collect()
    };
    assert_eq!(
        seen(&reply),
        [("alice".to_string(), true), ("carol".to_string(), true)]
    );
    // bob writes to alice: now each may see the other, and bob still not carol nor mallory.
    bob.send(Op::Send, 2, &send_frame("alice", "p1", "hi"))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut bob).await.op_kind(), Some(Op::SendAck));
    assert_eq!(next_frame(&mut alice).await.op_kind(), Some(Op::Push));
    alice.send(Op::Presence, 3, &everyone).await.unwrap();
    let reply: pb::PresenceReply = next_frame(&mut alice).await.decode_body().unwrap();
    assert_eq!(
        seen(&reply),
        [
            ("alice".to_string(), true),
            ("bob".to_string(), true),
            ("carol".to_string(), true)
        ]
    );
    bob.send(Op::Presence, 3, &everyone).await.unwrap();
    let reply: pb::PresenceReply = next_frame(&mut bob).await.decode_body().unwrap();
    assert_eq!(
        seen(&reply),
        [("alice".to_string(), true), ("bob".to_string(), true)]
    );
    // bob goes offline: alice sees it, with when.
    drop(bob);
    roam_tests::poll(&server, "/api/v1/presence?users=bob", |v| {
        v["users"][0]["online"] == false
    })
    .await;
    alice.send(Op::Presence, 4, &ask(&["bob"])).await.unwrap();
    let reply: pb::PresenceReply = next_frame(&mut alice).await.decode_body().unwrap();
    assert_eq!(seen(&reply), [("bob".to_string(), false)]);
    assert!(reply.users[0].last_seen_ms > 0, "{reply:?}");
    // Too many, or none: refused.
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    alice
        .send(Op::Presence, 5, &pb::PresenceQuery { users: many })
        .await
        .unwrap();
    let e = error_of(&next_frame(&mut alice).await);
    assert_eq!(e.code, pb::error::Code::InvalidArgument as i32, "{e:?}");
}

/// Group commit of SENDs: 16 connections each send 60 SENDs without waiting (every frame
/// first), two of them bad (no `client_msg_id`, a malformed `to`). Every good SEND is
/// acknowledged once, in the order sent, with the sender's inbox seqs increasing; each bad
/// one gets its ERROR in its place while its batch-mates are stored; every partner gets
/// every good message once, in inbox seq order; and the server stored them in batches of
/// more than one SEND (`roam_core_send_batch_size`), each batch one store batch.
#[tokio::test]
async fn sends_from_many_connections_are_stored_in_batches_each_acked_once_in_order() {
    let server = roam_tests::start(UNLIMITED);
    const USERS: usize = 16;
    const N: u32 = 60;
    const BAD_ID: u32 = 20;
    const BAD_TO: u32 = 41;
    let mut conns = Vec::new();
    for i in 0..USERS {
        conns.push(login(&server, &format!("batch{i}"), "phone").await);
    }
    let runs = conns.iter_mut().enumerate().map(|(i, c)| async move {
        let partner = format!("batch{}", i ^ 1);
        for k in 0..N {
            let mut f = send_frame(&partner, &format!("b{i}-{k}"), &format!("b{i}-{k}"));
            if k == BAD_ID {
                f.client_msg_id.clear();
            }
            if k == BAD_TO {
                f.to = "group:".into();
            }
            c.send(Op::Send, 100 + k, &f).await.unwrap();
        }
        // Own answers (N, two of them ERRORs) and the partner's N - 2 good messages.
        let mut answers: Vec<Frame> = Vec::new();
        let mut pushed: Vec<pb::Message> = Vec::new();
        while answers.len() < N as usize || pushed.len() < N as usize - 2 {
            let f = next_frame(c).await;
            match f.op_kind() {
                Some(Op::Push) => match f.decode_body::<pb::Push>().unwrap().kind {
                    Some(pb::push::Kind::Message(m)) => pushed.push(m),
                    other => panic!("not a stored message: {other:?}"),
                },
                Some(Op::SendAck | Op::Error) => answers.push(f),
                _ => panic!("unexpected {f:?}"),
            }
        }
        (i, answers, pushed)
    });
    for (i, answers, pushed) in futures_util::future::join_all(runs).await {
        let partner = i ^ 1;
        let seqs: Vec<u32> = answers.iter().map(|f| f.seq).collect();
        assert_eq!(
            seqs,
            (100..100 + N).collect::<Vec<_>>(),
            "answers in SEND order"
        );
        let mut inbox_seqs = Vec::new();
        for (k, f) in answers.iter().enumerate() {
            let k = k as u32;
            if k == BAD_ID || k == BAD_TO {
                let e = error_of(f);
                assert_eq!(e.code, pb::error::Code::InvalidArgument as i32, "{e:?}");
                continue;
            }
            let ack: pb::SendAck = f.decode_body().unwrap();
            assert_eq!(ack.client_msg_id, format!("b{i}-{k}"));
            assert!(!ack.duplicate);
            inbox_seqs.push(ack.seq);
        }
        assert!(
            inbox_seqs.windows(2).all(|w| w[0] < w[1]),
            "batch{i}'s acks in inbox order: {inbox_seqs:?}"
        );
        let texts: Vec<String> = pushed.iter().map(text).collect();
        let expected: Vec<String> = (0..N)
            .filter(|k| *k != BAD_ID && *k != BAD_TO)
            .map(|k| format!("b{partner}-{k}"))
            .collect();
        assert_eq!(
            texts, expected,
            "batch{i} got its partner's messages once, in order"
        );
        let pushed_seqs: Vec<u64> = pushed.iter().map(|m| m.seq).collect();
        assert!(
            pushed_seqs.windows(2).all(|w| w[0] < w[1]),
            "{pushed_seqs:?}"
        );
        // Own sends and the partner's interleave in the inbox: every seq once.
        let mut all: Vec<u64> = inbox_seqs.iter().chain(&pushed_seqs).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=2 * (N as u64 - 2)).collect::<Vec<_>>());
    }
    let batches = roam_tests::metric(&server, "roam_core_send_batch_size_count").await;
    let sends = roam_tests::metric(&server, "roam_core_send_batch_size_sum").await;
    assert_eq!(
        sends,
        (USERS as u32 * N) as f64,
        "every SEND went through a batch"
    );
    assert!(
        batches < sends,
        "{sends} SENDs in {batches} batches: sends arriving together share a batch"
    );
}
