//! The layer against the embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use bytes::Bytes;
use roam_idsvc::{IdMetrics, IdService, IdSource, IdsConfig};
use roam_store::{Store, TimelineId};

use super::*;

struct Env {
    m: Messaging,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn env(options: MessagingOptions) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("embedded:{}", dir.path().display()))
        .await
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let ids = IdService::start(
        store.clone(),
        IdsConfig::default(),
        IdMetrics::register(&mut registry),
    )
    .await
    .unwrap();
    Env {
        m: Messaging::new(store.clone(), IdSource::local(ids), options),
        store,
        _dir: dir,
    }
}

fn req(from: &str, to: &str, id: &str, content: &str) -> SendRequest {
    SendRequest {
        from: from.into(),
        to: to.into(),
        client_msg_id: id.into(),
        content: Bytes::copy_from_slice(content.as_bytes()),
        content_type: String::new(),
    }
}

const T: Duration = Duration::from_secs(1);

fn contents(page: &Page) -> Vec<String> {
    page.messages
        .iter()
        .map(|m| String::from_utf8(m.content.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_send_writes_history_and_both_inboxes_once() {
    let e = env(MessagingOptions::default()).await;
    let sent =
        e.m.send(req("alice", "bob", "c1", "hi"), 5, T)
            .await
            .unwrap();
    assert!(!sent.duplicate);
    assert_eq!(sent.seq, 1);
    assert_eq!(sent.message.to, "bob");
    assert_eq!(
        sent.delivery,
        Delivery::Push(vec![("alice".into(), 1), ("bob".into(), 1)])
    );
    let again =
        e.m.send(req("alice", "bob", "c1", "hi"), 6, T)
            .await
            .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.id, again.seq), (sent.id, sent.seq));
    assert_eq!(again.delivery, Delivery::Push(vec![]));
    let t = e.store.timelines();
    let pair = Conversation::direct("alice", "bob").unwrap().timeline();
    assert_eq!(t.latest_seq(&pair).await.unwrap(), 1);
    assert_eq!(t.latest_seq(&TimelineId::inbox("bob")).await.unwrap(), 1);
    assert_eq!(t.latest_seq(&TimelineId::inbox("alice")).await.unwrap(), 1);
    let bob = e.m.sync("bob", 0, 0).await.unwrap();
    assert_eq!(contents(&bob), ["hi"]);
    let m = &bob.messages[0];
    assert_eq!(
        (
            m.id,
            m.seq,
            m.conversation_seq,
            m.from.as_str(),
            m.to.as_str()
        ),
        (sent.id, 1, 1, "alice", "bob")
    );
    // Both see one conversation, from their own side.
    let h = e.m.history("bob", "alice", 0, 0, 0).await.unwrap();
    assert_eq!(contents(&h), ["hi"]);
}

#[tokio::test]
async fn bad_sends_store_nothing() {
    let e = env(MessagingOptions {
        max_content_bytes: 4,
        ..Default::default()
    })
    .await;
    let long_id = "x".repeat(MAX_CLIENT_MSG_ID + 1);
    for (r, what) in [
        (req("alice", "bob", "", "hi"), "no client_msg_id"),
        (req("alice", "bob", &long_id, "hi"), "long client_msg_id"),
        (req("alice", "bob", "c", "too long"), "large content"),
        (req("alice", "", "c", "hi"), "empty to"),
        (req("alice", "group:nope", "c", "hi"), "unknown group"),
        (req("alice", "a\u{1}b", "c", "hi"), "malformed to"),
    ] {
        assert!(e.m.send(r, 1, T).await.is_err(), "{what}");
    }
    assert!(matches!(
        e.m.send(req("alice", "group:nope", "c", "hi"), 1, T).await,
        Err(MessagingError::NotFound(_))
    ));
    assert_eq!(
        e.store
            .timelines()
            .latest_seq(&TimelineId::inbox("alice"))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn inbox_pages_and_history_pages() {
    let e = env(MessagingOptions::default()).await;
    for i in 1..=25 {
        let from = if i % 2 == 0 { "alice" } else { "bob" };
        let to = if from == "alice" { "bob" } else { "alice" };
        e.m.send(req(from, to, &format!("c{i}"), &i.to_string()), i, T)
            .await
            .unwrap();
    }
    let p1 = e.m.sync("bob", 0, 10).await.unwrap();
    assert_eq!(
        (p1.messages.len(), p1.next_after, p1.has_more),
        (10, 10, true)
    );
    let p3 = e.m.sync("bob", 20, 10).await.unwrap();
    assert_eq!(
        (p3.messages.len(), p3.next_after, p3.has_more),
        (5, 25, false)
    );
    let back = e.m.history("alice", "bob", 0, 21, 10).await.unwrap();
    let seqs: Vec<u64> = back.messages.iter().map(|m| m.conversation_seq).collect();
    assert_eq!(seqs, (11..=20).collect::<Vec<_>>());
    assert_eq!((back.next_after, back.has_more), (11, true));
    let oldest = e.m.history("alice", "bob", 0, 5, 10).await.unwrap();
    assert_eq!(contents(&oldest), ["1", "2", "3", "4"]);
    assert!(!oldest.has_more);
}

#[tokio::test]
async fn read_moves_forward_and_counts_others_messages() {
    let e = env(MessagingOptions::default()).await;
    for i in 1..=3 {
        e.m.send(req("alice", "bob", &format!("a{i}"), "x"), i, T)
            .await
            .unwrap();
    }
    e.m.send(req("bob", "alice", "b1", "y"), 4, T)
        .await
        .unwrap();
    let r = e.m.read("bob", "alice", 1).await.unwrap();
    assert_eq!(
        (r.seq, r.unread),
        (1, 2),
        "two of alice's after seq 1; bob's own is not unread"
    );
    let back = e.m.read("bob", "alice", 0).await.unwrap();
    assert_eq!(back.seq, 1, "never moves back");
    let past = e.m.read("bob", "alice", 99).await.unwrap();
    assert_eq!((past.seq, past.unread), (4, 0), "clamped to the newest");
    let u = e.m.unread("alice").await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].conversation.as_str(), u[0].unread, u[0].latest_seq),
        ("bob", 1, 4)
    );
}

#[tokio::test]
async fn groups_fan_out_by_size_and_check_membership() {
    let e = env(MessagingOptions {
        fanout_threshold: 2,
        max_group_members: 3,
        ..Default::default()
    })
    .await;
    let small =
        e.m.create_group("small", &["a".into(), "b".into()], 1)
            .await
            .unwrap();
    assert_eq!(small.members, 2);
    assert!(matches!(
        e.m.create_group("small", &[], 1).await,
        Err(MessagingError::Exists(_))
    ));
    e.m.create_group("big", &["a".into(), "b".into(), "c".into()], 1)
        .await
        .unwrap();
    assert!(matches!(
        e.m.add_members("big", &["d".into()], 2).await,
        Err(MessagingError::Limit(_))
    ));
    let s =
        e.m.send(req("a", "group:small", "1", "w"), 3, T)
            .await
            .unwrap();
    assert_eq!(
        s.delivery,
        Delivery::Push(vec![("a".into(), 1), ("b".into(), 1)])
    );
    let b =
        e.m.send(req("a", "group:big", "2", "r"), 4, T)
            .await
            .unwrap();
    assert_eq!(
        b.delivery,
        Delivery::Notify {
            members: vec!["a".into(), "b".into(), "c".into()],
            seq: 1
        }
    );
    assert_eq!(
        contents(&e.m.history("c", "group:big", 0, 0, 0).await.unwrap()),
        ["r"]
    );
    // Non-members neither send nor read.
    assert!(matches!(
        e.m.send(req("z", "group:small", "3", "x"), 5, T).await,
        Err(MessagingError::Forbidden(_))
    ));
    assert!(matches!(
        e.m.history("z", "group:big", 0, 0, 0).await,
        Err(MessagingError::Forbidden(_))
    ));
    // A removed member gets nothing after removal and cannot read.
    e.m.remove_members("small", &["b".into()]).await.unwrap();
    let after =
        e.m.send(req("a", "group:small", "4", "w2"), 6, T)
            .await
            .unwrap();
    assert_eq!(after.delivery, Delivery::Push(vec![("a".into(), 2)]));
    assert!(e.m.history("b", "group:small", 0, 0, 0).await.is_err());
    assert_eq!(e.m.members("small").await.unwrap(), ["a"]);
    assert_eq!(e.m.groups_of("a").await.unwrap(), ["big", "small"]);
    assert_eq!(e.m.groups_of("b").await.unwrap(), ["big"]);
}

#[tokio::test]
async fn groups_per_user_are_capped() {
    let e = env(MessagingOptions {
        max_groups_per_user: 1,
        ..Default::default()
    })
    .await;
    e.m.create_group("g1", &["a".into()], 1).await.unwrap();
    assert!(matches!(
        e.m.create_group("g2", &["a".into()], 1).await,
        Err(MessagingError::Limit(_))
    ));
    assert!(
        matches!(e.m.members("g2").await, Err(MessagingError::NotFound(_))),
        "the refused create left nothing"
    );
}

#[tokio::test]
async fn the_send_rate_is_per_user() {
    let e = env(MessagingOptions {
        send_rate: 1,
        send_burst: 2,
        ..Default::default()
    })
    .await;
    e.m.send(req("a", "b", "1", "x"), 1, T).await.unwrap();
    e.m.send(req("a", "b", "2", "x"), 1, T).await.unwrap();
    assert!(matches!(
        e.m.send(req("a", "b", "3", "x"), 1, T).await,
        Err(MessagingError::RateLimited { .. })
    ));
    e.m.send(req("b", "a", "1", "x"), 1, T).await.unwrap();
    e.m.send(req("a", "b", "3", "x"), 1, T + Duration::from_secs(1))
        .await
        .unwrap();
}

/// A removal committed between a send's plan and its commit: the message does not reach
/// the removed member, who cannot read the group either.
#[tokio::test]
async fn a_member_removed_before_the_commit_gets_nothing() {
    let e = env(MessagingOptions::default()).await;
    let abc = ["a".into(), "b".into(), "c".into()];
    e.m.create_group("g", &abc, 1).await.unwrap();
    let planned =
        e.m.plan_send(req("a", "group:g", "1", "after c left"), 2, T)
            .await
            .unwrap();
    assert_eq!(planned.inboxes(), ["a", "b", "c"]);
    e.m.remove_members("g", &["c".into()]).await.unwrap();
    let sent = e.m.store(planned).await.unwrap();
    assert_eq!(
        sent.delivery,
        Delivery::Push(vec![("a".into(), 1), ("b".into(), 1)])
    );
    assert_eq!(e.m.inbox_head("c").await.unwrap(), 0);
    assert!(e.m.sync("c", 0, 0).await.unwrap().messages.is_empty());
    assert!(matches!(
        e.m.history("c", "group:g", 0, 0, 0).await,
        Err(MessagingError::Forbidden(_))
    ));
    assert_eq!(
        contents(&e.m.history("b", "group:g", 0, 0, 0).await.unwrap()),
        ["after c left"]
    );
}

/// A sender removed between plan and commit is refused and nothing is stored, with write
/// and with read fan-out.
#[tokio::test]
async fn a_sender_removed_before_the_commit_is_refused() {
    for threshold in [100, 1] {
        let e = env(MessagingOptions {
            fanout_threshold: threshold,
            ..Default::default()
        })
        .await;
        e.m.create_group("g", &["a".into(), "c".into()], 1)
            .await
            .unwrap();
        let planned =
            e.m.plan_send(req("c", "group:g", "1", "too late"), 2, T)
                .await
                .unwrap();
        e.m.remove_members("g", &["c".into()]).await.unwrap();
        assert!(
            matches!(e.m.store(planned).await, Err(MessagingError::Forbidden(_))),
            "threshold {threshold}"
        );
        let history = TimelineId::group("g");
        assert_eq!(
            e.store.timelines().latest_seq(&history).await.unwrap(),
            0,
            "threshold {threshold}"
        );
        assert_eq!(e.m.inbox_head("a").await.unwrap(), 0);
        assert_eq!(e.m.inbox_head("c").await.unwrap(), 0);
    }
}

#[tokio::test]
async fn presence_peers_are_the_users_one_shares_a_conversation_with() {
    let e = env(MessagingOptions::default()).await;
    let asked: Vec<String> = ["alice", "bob", "carol", "dave", "erin", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Nothing shared yet: only oneself.
    assert_eq!(
        e.m.shares_conversation("alice", &asked).await.unwrap(),
        [true, false, false, false, false, false]
    );
    // A 1:1 message (either way) and a common group make peers; a group alice is not in
    // does not.
    e.m.send(req("bob", "alice", "1", "hi"), 1, T)
        .await
        .unwrap();
    e.m.create_group("team", &["alice".into(), "carol".into()], 1)
        .await
        .unwrap();
    e.m.create_group("other", &["dave".into(), "erin".into()], 1)
        .await
        .unwrap();
    assert_eq!(
        e.m.shares_conversation("alice", &asked).await.unwrap(),
        [true, true, true, false, false, false]
    );
    assert_eq!(
        e.m.shares_conversation("dave", &asked).await.unwrap(),
        [false, false, false, true, true, false]
    );
}

#[tokio::test]
async fn the_conversation_index_is_written_once_per_pair() {
    let e = env(MessagingOptions::default()).await;
    let first =
        e.m.plan_send(req("alice", "bob", "1", "hi"), 1, T)
            .await
            .unwrap();
    assert_eq!(first.append.extra.len(), 2, "alice→bob and bob→alice");
    e.m.store(first).await.unwrap();
    // Known durable now, in either direction: later sends of the pair skip the writes.
    for (from, to, id) in [("alice", "bob", "2"), ("bob", "alice", "3")] {
        let later =
            e.m.plan_send(req(from, to, id, "again"), 2, T)
                .await
                .unwrap();
        assert!(later.append.extra.is_empty(), "{from}→{to} writes no index");
        e.m.store(later).await.unwrap();
    }
    // A client reusing a client_msg_id for another peer gets the first send's answer; that
    // stored nothing for this pair, so the pair is not taken as indexed.
    let reused =
        e.m.send(req("alice", "carol", "1", "reused id"), 3, T)
            .await;
    assert!(reused.unwrap().duplicate);
    let other =
        e.m.plan_send(req("alice", "carol", "4", "new pair"), 3, T)
            .await
            .unwrap();
    assert_eq!(other.append.extra.len(), 2, "a new pair is indexed");
    // A process that starts afresh writes them again (blind writes of the same value),
    // and the index still has every pair.
    let fresh = Messaging::new(
        e.store.clone(),
        e.m.ids.clone(),
        MessagingOptions::default(),
    );
    let again = fresh
        .plan_send(req("bob", "alice", "5", "after a restart"), 4, T)
        .await
        .unwrap();
    assert_eq!(again.append.extra.len(), 2);
    fresh.store(again).await.unwrap();
    let asked = vec!["bob".to_string(), "carol".to_string()];
    assert_eq!(
        fresh.shares_conversation("alice", &asked).await.unwrap(),
        [true, false],
        "carol's send was planned, never stored"
    );
}
