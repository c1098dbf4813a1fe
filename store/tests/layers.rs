//! The data-model layers (timelines, multi-timeline appends, idempotency, cursors,
//! retention) and their concurrency guarantees, on every backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use common::{Harness, msg};
use roam_store::{IdempotencyKey, MultiAppend, NewMessage, StoreError, TimelineId};
use std::collections::{BTreeMap, HashSet};

cases!(
    appends_get_gap_free_seqs,
    reads_page_through_a_timeline,
    multi_append_lands_everywhere_with_one_body,
    idempotent_send_returns_the_first_result,
    extra_writes_commit_with_the_message_and_not_for_a_duplicate,
    a_missing_required_key_writes_nothing,
    concurrent_duplicates_write_once,
    invalid_appends_are_rejected_up_front,
    cursors_move_forward_and_derive_unread,
    retention_by_count,
    retention_by_age,
    references_to_trimmed_bodies_read_as_expired,
    hot_timeline_64_tasks_x_1000,
    spread_64_timelines_x_1000,
    hot_inbox_from_many_senders,
    a_batch_is_one_transaction_and_its_failures_are_its_own,
);

async fn all_entries(h: &Harness, t: &TimelineId) -> Vec<roam_store::TimelineEntry> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = h.store.timelines().read(t, after, 1000).await.unwrap();
        let Some(last) = page.last() else { return out };
        after = last.seq;
        out.extend(page);
    }
}

async fn appends_get_gap_free_seqs(h: &Harness) {
    let tl = h.store.timelines();
    let (a, b) = (h.inbox("a"), h.inbox("b"));
    assert_eq!(tl.latest_seq(&a).await.unwrap(), 0);
    for i in 1..=3 {
        assert_eq!(tl.append(&a, msg(i, i)).await.unwrap(), i);
    }
    assert_eq!(
        tl.append(&b, msg(10, 10)).await.unwrap(),
        1,
        "seqs are per timeline"
    );
    assert_eq!(tl.latest_seq(&a).await.unwrap(), 3);
    let entries = tl.read(&a, 0, 100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| (e.seq, e.id)).collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 3)]
    );
    assert_eq!(entries[1].body.as_deref(), Some(&b"message 2"[..]));
    assert_eq!(entries[1].created_at_ms, 2);
    assert_eq!(entries[1].home, None);
}

async fn reads_page_through_a_timeline(h: &Harness) {
    let tl = h.store.timelines();
    let t = h.outbox("pager");
    for i in 1..=25 {
        tl.append(&t, msg(i, 0)).await.unwrap();
    }
    let page = tl.read(&t, 10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert_eq!(tl.read(&t, 20, 100).await.unwrap().len(), 5);
    assert!(tl.read(&t, 25, 100).await.unwrap().is_empty());
    assert!(tl.read(&t, u64::MAX, 100).await.unwrap().is_empty());
    assert!(tl.read(&t, 0, 0).await.unwrap().is_empty());
    assert!(tl.read(&h.inbox("nobody"), 0, 10).await.unwrap().is_empty());
    assert_eq!(all_entries(h, &t).await.len(), 25);
}

async fn multi_append_lands_everywhere_with_one_body(h: &Harness) {
    let tl = h.store.timelines();
    let (outbox, bob, carol) = (h.outbox("alice"), h.inbox("bob"), h.inbox("carol"));
    tl.append(&bob, msg(1, 0)).await.unwrap(); // bob's inbox is one ahead
    let appended = tl
        .append_multi(MultiAppend {
            home: outbox.clone(),
            fanout: vec![bob.clone(), carol.clone()],
            message: msg(77, 5),
            idempotency: None,
            extra: Vec::new(),
            require: Vec::new(),
        })
        .await
        .unwrap();
    assert!(!appended.duplicate);
    assert_eq!(appended.id, 77);
    assert_eq!(
        appended.seqs,
        vec![(outbox.clone(), 1), (bob.clone(), 2), (carol.clone(), 1)]
    );
    assert_eq!((appended.home_seq(), appended.seq_in(&bob)), (1, Some(2)));
    let in_bob = tl.read(&bob, 1, 10).await.unwrap();
    assert_eq!(in_bob.len(), 1);
    assert_eq!(in_bob[0].id, 77);
    assert_eq!(in_bob[0].body.as_deref(), Some(&b"message 77"[..]));
    assert_eq!(in_bob[0].home, Some((outbox.clone(), 1)));
    let home = tl.read(&outbox, 0, 10).await.unwrap();
    assert_eq!((home[0].id, home[0].home.clone()), (77, None));
}

fn send(h: &Harness, from: &str, to: &str, id: u64, client_msg_id: &str) -> MultiAppend {
    MultiAppend {
        home: h.outbox(from),
        fanout: vec![h.inbox(to)],
        message: msg(id, id),
        idempotency: Some(IdempotencyKey::new(h.name(from), client_msg_id)),
        extra: Vec::new(),
        require: Vec::new(),
    }
}

async fn idempotent_send_returns_the_first_result(h: &Harness) {
    let tl = h.store.timelines();
    let first = tl.append_multi(send(h, "a", "b", 1, "c-1")).await.unwrap();
    // The retry carries a fresh id from the ID service; the first one wins.
    let again = tl.append_multi(send(h, "a", "b", 2, "c-1")).await.unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(
        (again.id, again.seqs.clone(), again.created_at_ms),
        (1, first.seqs.clone(), 1)
    );
    assert_eq!(
        tl.latest_seq(&h.inbox("b")).await.unwrap(),
        1,
        "nothing written twice"
    );
    assert_eq!(tl.latest_seq(&h.outbox("a")).await.unwrap(), 1);
    let other = tl.append_multi(send(h, "a", "b", 3, "c-2")).await.unwrap();
    assert_eq!(other.home_seq(), 2);
    let key = IdempotencyKey::new(h.name("a"), "c-1");
    assert_eq!(tl.find_sent(&key).await.unwrap().map(|a| a.id), Some(1));
    let unknown = IdempotencyKey::new(h.name("a"), "nope");
    assert_eq!(tl.find_sent(&unknown).await.unwrap(), None);
}

async fn extra_writes_commit_with_the_message_and_not_for_a_duplicate(h: &Harness) {
    let tl = h.store.timelines();
    let key = format!("x-extra-{}", h.name("k")).into_bytes();
    let mut first = send(h, "a", "b", 1, "e-1");
    first.extra = vec![(key.clone(), b"first".to_vec())];
    tl.append_multi(first).await.unwrap();
    let k = key.clone();
    let got = h.store.transact(move |tx| tx.get(&k)).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"first"[..]));
    let mut retry = send(h, "a", "b", 2, "e-1");
    retry.extra = vec![(key.clone(), b"retry".to_vec())];
    assert!(tl.append_multi(retry).await.unwrap().duplicate);
    let k = key.clone();
    let got = h.store.transact(move |tx| tx.get(&k)).await.unwrap();
    assert_eq!(
        got.as_deref(),
        Some(&b"first"[..]),
        "a duplicate writes nothing"
    );
    let mut huge = send(h, "a", "b", 3, "e-2");
    huge.extra = vec![(vec![b'x'; roam_store::MAX_KEY_SIZE + 1], Vec::new())];
    assert!(matches!(
        tl.append_multi(huge).await,
        Err(StoreError::InvalidRequest(_))
    ));
}

async fn a_missing_required_key_writes_nothing(h: &Harness) {
    let tl = h.store.timelines();
    let key = format!("x-member-{}", h.name("k")).into_bytes();
    let mut first = send(h, "a", "b", 1, "r-1");
    first.require = vec![key.clone()];
    let err = tl.append_multi(first.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Precondition(_)), "{err}");
    assert_eq!(tl.latest_seq(&h.outbox("a")).await.unwrap(), 0);
    assert_eq!(tl.latest_seq(&h.inbox("b")).await.unwrap(), 0);
    assert!(
        tl.find_sent(first.idempotency.as_ref().unwrap())
            .await
            .unwrap()
            .is_none(),
        "no idempotency record either"
    );
    let k = key.clone();
    h.store.transact(move |tx| tx.set(&k, b"1")).await.unwrap();
    let stored = tl.append_multi(first.clone()).await.unwrap();
    assert!(!stored.duplicate);
    assert_eq!(stored.seq_in(&h.inbox("b")), Some(1));
    let k = key.clone();
    h.store.transact(move |tx| tx.clear(&k)).await.unwrap();
    assert!(
        tl.append_multi(first).await.unwrap().duplicate,
        "a duplicate is answered before the requirement is checked"
    );
}

async fn concurrent_duplicates_write_once(h: &Harness) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (tl, append) = (h.store.timelines(), send(h, "a", "b", 100 + i, "same"));
        tasks.push(tokio::spawn(async move {
            tl.append_multi(append).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    let ids: HashSet<u64> = results.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 1, "every retry got the first result");
    assert_eq!(
        h.store.timelines().latest_seq(&h.inbox("b")).await.unwrap(),
        1
    );
}

async fn invalid_appends_are_rejected_up_front(h: &Harness) {
    let tl = h.store.timelines();
    let twice = MultiAppend {
        home: h.outbox("a"),
        fanout: vec![h.inbox("b"), h.inbox("b")],
        message: msg(1, 0),
        idempotency: None,
        extra: Vec::new(),
        require: Vec::new(),
    };
    let err = tl.append_multi(twice).await.unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidRequest(ref m) if m.contains("twice")),
        "{err}"
    );
    let home_in_fanout = MultiAppend {
        home: h.outbox("a"),
        fanout: vec![h.outbox("a")],
        message: msg(1, 0),
        idempotency: None,
        extra: Vec::new(),
        require: Vec::new(),
    };
    assert!(tl.append_multi(home_in_fanout).await.is_err());
    let big = NewMessage {
        id: 1,
        created_at_ms: 0,
        body: vec![0u8; roam_store::MAX_VALUE_SIZE].into(),
    };
    let err = tl.append(&h.outbox("a"), big).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
    assert_eq!(tl.latest_seq(&h.outbox("a")).await.unwrap(), 0);
}

async fn cursors_move_forward_and_derive_unread(h: &Harness) {
    let (tl, cursors) = (h.store.timelines(), h.store.cursors());
    let bob = h.name("bob");
    let inbox = TimelineId::inbox(bob.clone());
    for i in 1..=5 {
        tl.append(&inbox, msg(i, 0)).await.unwrap();
    }
    assert_eq!(cursors.unread(&bob, "phone", &inbox).await.unwrap(), 5);
    let c = cursors
        .mark_delivered(&bob, "phone", &inbox, 3)
        .await
        .unwrap();
    assert_eq!((c.delivered, c.read), (3, 0));
    assert_eq!(
        cursors.unread(&bob, "phone", &inbox).await.unwrap(),
        5,
        "delivered is not read"
    );
    let c = cursors.mark_read(&bob, "phone", &inbox, 2).await.unwrap();
    assert_eq!((c.delivered, c.read), (3, 2));
    let c = cursors.mark_read(&bob, "phone", &inbox, 1).await.unwrap();
    assert_eq!((c.delivered, c.read), (3, 2), "never moves back");
    assert_eq!(cursors.unread(&bob, "phone", &inbox).await.unwrap(), 3);
    let c = cursors.mark_read(&bob, "laptop", &inbox, 99).await.unwrap();
    assert_eq!(
        (c.delivered, c.read),
        (5, 5),
        "clamped to the newest seq; read implies delivered"
    );
    assert_eq!(cursors.unread(&bob, "laptop", &inbox).await.unwrap(), 0);
    assert_eq!(cursors.unread_for_user(&bob, &inbox).await.unwrap(), 0);
    tl.append(&inbox, msg(6, 0)).await.unwrap();
    assert_eq!(cursors.unread(&bob, "phone", &inbox).await.unwrap(), 4);
    assert_eq!(cursors.unread_for_user(&bob, &inbox).await.unwrap(), 1);
    let c = cursors.get(&bob, "phone", &inbox).await.unwrap();
    assert_eq!((c.delivered, c.read), (3, 2));
    let nobody = cursors.get(&bob, "tablet", &inbox).await.unwrap();
    assert_eq!((nobody.delivered, nobody.read), (0, 0));
    assert_eq!(
        cursors
            .unread_for_user(&h.name("nobody"), &inbox)
            .await
            .unwrap(),
        6
    );
}

async fn retention_by_count(h: &Harness) {
    let tl = h.store.timelines();
    let t = h.inbox("r");
    for i in 1..=10 {
        tl.append(&t, msg(i, 0)).await.unwrap();
    }
    assert_eq!(tl.trim_to_count(&t, 3).await.unwrap(), 7);
    assert_eq!(tl.first_seq(&t).await.unwrap(), 8);
    let left: Vec<u64> = all_entries(h, &t).await.iter().map(|e| e.seq).collect();
    assert_eq!(left, [8, 9, 10]);
    assert_eq!(
        tl.append(&t, msg(11, 0)).await.unwrap(),
        11,
        "seqs are never reused"
    );
    assert_eq!(tl.trim_to_count(&t, 3).await.unwrap(), 1);
    assert_eq!(tl.trim_to_count(&t, 100).await.unwrap(), 0);
    assert_eq!(tl.trim_to_count(&t, 0).await.unwrap(), 3);
    assert!(all_entries(h, &t).await.is_empty());
    assert_eq!(tl.latest_seq(&t).await.unwrap(), 11);
    assert_eq!(tl.first_seq(&t).await.unwrap(), 12);
}

async fn retention_by_age(h: &Harness) {
    let tl = h.store.timelines();
    let t = h.inbox("aged");
    for i in 0..10 {
        tl.append(&t, msg(i + 1, 100 + i)).await.unwrap();
    }
    assert_eq!(tl.trim_older_than(&t, 105).await.unwrap(), 5);
    let left: Vec<u64> = all_entries(h, &t)
        .await
        .iter()
        .map(|e| e.created_at_ms)
        .collect();
    assert_eq!(left, [105, 106, 107, 108, 109]);
    assert_eq!(tl.trim_older_than(&t, 105).await.unwrap(), 0);
    // A backlog longer than one trimming transaction scans.
    let long = h.inbox("backlog");
    let appends: Vec<_> = (0..1200u64)
        .map(|i| {
            let tl = tl.clone();
            let long = long.clone();
            tokio::spawn(async move { tl.append(&long, msg(i + 1, 10)).await.unwrap() })
        })
        .collect();
    for a in appends {
        a.await.unwrap();
    }
    tl.append(&long, msg(5000, 1000)).await.unwrap();
    assert_eq!(tl.trim_older_than(&long, 500).await.unwrap(), 1200);
    assert_eq!(tl.first_seq(&long).await.unwrap(), 1201);
    assert_eq!(
        tl.trim_older_than(&long, 5000).await.unwrap(),
        1,
        "everything older goes"
    );
    assert!(all_entries(h, &long).await.is_empty());
}

async fn references_to_trimmed_bodies_read_as_expired(h: &Harness) {
    let tl = h.store.timelines();
    let (home, inbox) = (h.outbox("x"), h.inbox("y"));
    tl.append_multi(MultiAppend {
        home: home.clone(),
        fanout: vec![inbox.clone()],
        message: msg(9, 0),
        idempotency: None,
        extra: Vec::new(),
        require: Vec::new(),
    })
    .await
    .unwrap();
    tl.trim_to_count(&home, 0).await.unwrap();
    let read = tl.read(&inbox, 0, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        (read[0].id, read[0].body.clone(), read[0].home.clone()),
        (9, None, Some((home, 1)))
    );
}

/// Concurrent appends: every task's seqs, the read-back, and gap-freeness must agree.
async fn hot_timeline_64_tasks_x_1000(h: &Harness) {
    let t = h.inbox("hot");
    let before = h.store.stats();
    let mut tasks = Vec::new();
    for task in 0..64u64 {
        let (tl, t) = (h.store.timelines(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(1000);
            for i in 0..1000 {
                let id = task * 1000 + i;
                seqs.push((tl.append(&t, msg(id, 0)).await.unwrap(), id));
            }
            seqs
        }));
    }
    let mut by_seq = BTreeMap::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0].0 < w[1].0),
            "one writer's seqs increase"
        );
        for (seq, id) in seqs {
            assert!(
                by_seq.insert(seq, id).is_none(),
                "seq {seq} handed out twice"
            );
        }
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=64_000).collect::<Vec<_>>()
    );
    assert_eq!(
        h.store.stats().retries,
        before.retries,
        "the sequencer batches a hot timeline's appends: none retried on a conflict"
    );
    let stored = all_entries(h, &t).await;
    assert_eq!(stored.len(), 64_000);
    for e in &stored {
        assert_eq!(
            by_seq.get(&e.seq),
            Some(&e.id),
            "seq {} holds the acknowledged message",
            e.seq
        );
    }
}

async fn spread_64_timelines_x_1000(h: &Harness) {
    let mut tasks = Vec::new();
    for task in 0..64u64 {
        let (tl, t) = (h.store.timelines(), h.inbox(&format!("spread-{task}")));
        tasks.push(tokio::spawn(async move {
            for i in 1..=1000u64 {
                assert_eq!(tl.append(&t, msg(i, 0)).await.unwrap(), i);
            }
            t
        }));
    }
    for task in tasks {
        let t = task.await.unwrap();
        let stored = all_entries(h, &t).await;
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>(), "{t}");
        assert!(stored.iter().all(|e| e.id == e.seq));
    }
}

async fn hot_inbox_from_many_senders(h: &Harness) {
    let inbox = h.inbox("popular");
    let mut tasks = Vec::new();
    for sender in 0..32u64 {
        let (tl, inbox, outbox) = (
            h.store.timelines(),
            inbox.clone(),
            h.outbox(&format!("fan-{sender}")),
        );
        tasks.push(tokio::spawn(async move {
            for i in 1..=50u64 {
                let appended = tl
                    .append_multi(MultiAppend {
                        home: outbox.clone(),
                        fanout: vec![inbox.clone()],
                        message: msg(sender * 1000 + i, 0),
                        idempotency: None,
                        extra: Vec::new(),
                        require: Vec::new(),
                    })
                    .await
                    .unwrap();
                assert_eq!(appended.home_seq(), i);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = all_entries(h, &inbox).await;
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=1600).collect::<Vec<_>>()
    );
    for e in &stored {
        let (home, home_seq) = e.home.clone().expect("inbox entries are references");
        assert_eq!(
            e.id % 1000,
            home_seq,
            "reference points at the sender's entry"
        );
        assert_eq!(home.owner, h.name(&format!("fan-{}", e.id / 1000)));
        assert_eq!(
            e.body.as_deref(),
            Some(format!("message {}", e.id).as_bytes())
        );
    }
}

/// `append_batch`: a batch on free timelines commits as one transaction, in order (a
/// duplicate inside the batch sees the first), and an invalid append or a failed
/// precondition is answered alone while its batch-mates are stored.
async fn a_batch_is_one_transaction_and_its_failures_are_its_own(h: &Harness) {
    let tl = h.store.timelines();
    let missing = format!("x-member-{}", h.name("gone")).into_bytes();
    let mut batch = Vec::new();
    for i in 0..20u64 {
        batch.push(send(
            h,
            "a",
            &format!("to{}", i % 4),
            1 + i,
            &format!("b-{i}"),
        ));
    }
    // A retry of b-3 in the same batch: the first is stored, this one is its duplicate.
    batch.push(send(h, "a", "to3", 100, "b-3"));
    let mut unmet = send(h, "a", "to0", 101, "b-unmet");
    unmet.require = vec![missing];
    batch.push(unmet);
    let mut twice = send(h, "a", "to1", 102, "b-twice");
    twice.fanout.push(h.inbox("to1"));
    batch.push(twice);
    batch.push(send(h, "a", "to2", 103, "b-last"));
    let before = h.store.stats();
    let results = tl.append_batch(batch).await;
    let after = h.store.stats();
    assert_eq!(results.len(), 24);
    for (i, r) in results[..20].iter().enumerate() {
        let r = r.as_ref().unwrap();
        assert!(!r.duplicate);
        assert_eq!(r.home_seq(), i as u64 + 1, "stored in batch order");
    }
    let dup = results[20].as_ref().unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.id, 4, "the first send of b-3 in the batch");
    assert!(matches!(results[21], Err(StoreError::Precondition(_))));
    assert!(matches!(results[22], Err(StoreError::InvalidRequest(_))));
    assert_eq!(results[23].as_ref().unwrap().home_seq(), 21);
    if matches!(h.store.spec(), roam_store::StoreSpec::Embedded(_)) {
        assert_eq!(after.commits - before.commits, 1, "one transaction");
        assert_eq!(after.syncs - before.syncs, 1, "one fsync");
    }
    assert_eq!(tl.latest_seq(&h.outbox("a")).await.unwrap(), 21);
    assert_eq!(tl.latest_seq(&h.inbox("to0")).await.unwrap(), 5);
    assert_eq!(tl.latest_seq(&h.inbox("to2")).await.unwrap(), 6);
}
