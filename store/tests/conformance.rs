//! The conformance suite: FoundationDB's transaction semantics, checked the same way on every
//! backend (embedded always; FoundationDB with `--features fdb` and `FDB_CLUSTER_FILE`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use bytes::Bytes;
use common::{Backend, Harness, commit_elsewhere};
use roam_store::{
    KeySelector, RangeOption, RetryPolicy, RetryReason, StoreError, StoreOptions, TxError,
    tuple::Subspace,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

cases!(
    get_set_clear,
    reads_see_own_writes,
    range_reads_forward_reverse_limits_and_selectors,
    range_reads_merge_own_writes,
    clear_range_removes_exactly_the_range,
    clear_range_applies_at_commit_time,
    atomic_add_is_fdb_add,
    atomic_adds_never_conflict,
    plain_read_conflicts_and_the_retry_sees_new_data,
    snapshot_read_does_not_conflict,
    range_read_conflicts_only_on_the_range_it_covered,
    blind_writes_do_not_conflict,
    reads_are_repeatable_within_an_attempt,
    abort_writes_nothing,
    limits_are_enforced_before_anything_is_written,
    many_keys_in_both_directions,
);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn set(h: &Harness, pairs: &[(&str, &str)]) {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .map(|(k, v)| (h.k(k), v.as_bytes().to_vec()))
        .collect();
    h.store
        .transact(move |tx| {
            for (k, v) in &pairs {
                tx.set(k, v)?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

async fn get(h: &Harness, key: &str) -> Option<Bytes> {
    let k = h.k(key);
    h.store.transact(move |tx| tx.get(&k)).await.unwrap()
}

/// The test-relative names of the keys in `pairs`.
fn names(h: &Harness, pairs: &[roam_store::KeyValue]) -> Vec<String> {
    let prefix = h.k("");
    pairs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect()
}

async fn range(h: &Harness, opt: RangeOption) -> Vec<String> {
    let pairs = h
        .store
        .transact(move |tx| tx.get_range(&opt))
        .await
        .unwrap();
    names(h, &pairs)
}

async fn get_set_clear(h: &Harness) {
    assert_eq!(get(h, "a").await, None);
    set(h, &[("a", "1")]).await;
    assert_eq!(get(h, "a").await, Some(b("1")));
    set(h, &[("a", "2")]).await;
    assert_eq!(get(h, "a").await, Some(b("2")));
    let k = h.k("a");
    h.store.transact(move |tx| tx.clear(&k)).await.unwrap();
    assert_eq!(get(h, "a").await, None);
    // Empty values are values.
    set(h, &[("e", "")]).await;
    assert_eq!(get(h, "e").await, Some(Bytes::new()));
}

async fn reads_see_own_writes(h: &Harness) {
    set(h, &[("x", "old")]).await;
    let (x, y) = (h.k("x"), h.k("y"));
    let seen = h
        .store
        .transact(move |tx| {
            let before = tx.get(&x)?;
            tx.set(&x, b"new")?;
            tx.set(&y, b"y")?;
            let after = tx.get(&x)?;
            let snap = tx.snapshot_get(&y)?;
            tx.clear(&y)?;
            let cleared = tx.get(&y)?;
            Ok((before, after, snap, cleared))
        })
        .await
        .unwrap();
    assert_eq!(seen, (Some(b("old")), Some(b("new")), Some(b("y")), None));
    assert_eq!(get(h, "x").await, Some(b("new")));
    assert_eq!(get(h, "y").await, None);
}

async fn range_reads_forward_reverse_limits_and_selectors(h: &Harness) {
    let letters = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let pairs: Vec<(&str, &str)> = letters.iter().map(|l| (*l, *l)).collect();
    set(h, &pairs).await;
    let all = || RangeOption::between(h.k("a"), h.k("z"));
    assert_eq!(range(h, all()).await, letters);
    assert_eq!(range(h, all().limit(3)).await, ["a", "b", "c"]);
    assert_eq!(
        range(h, all().reverse()).await,
        letters.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(range(h, all().reverse().limit(3)).await, ["j", "i", "h"]);
    assert_eq!(range(h, all().limit(100)).await.len(), 10);
    assert!(range(h, all().limit(0)).await.is_empty());
    // [c, f): end exclusive; first_greater_than makes either end skip its key.
    assert_eq!(
        range(h, RangeOption::between(h.k("c"), h.k("f"))).await,
        ["c", "d", "e"]
    );
    let open_begin = RangeOption::new(
        KeySelector::first_greater_than(h.k("c")),
        KeySelector::first_greater_than(h.k("f")),
    );
    assert_eq!(range(h, open_begin.clone()).await, ["d", "e", "f"]);
    assert_eq!(range(h, open_begin.reverse().limit(2)).await, ["f", "e"]);
    // Empty and inverted ranges read nothing.
    assert!(
        range(h, RangeOption::between(h.k("c"), h.k("c")))
            .await
            .is_empty()
    );
    assert!(
        range(h, RangeOption::between(h.k("f"), h.k("c")))
            .await
            .is_empty()
    );
    // Between keys: nothing there.
    assert!(
        range(h, RangeOption::between(h.k("c1"), h.k("c9")))
            .await
            .is_empty()
    );
    // Prefix: "ab" takes "ab" and "abc", not "a" nor "ac".
    set(h, &[("ab", "1"), ("abc", "1"), ("ac", "1")]).await;
    let prefix = RangeOption::prefix(&h.k("ab"));
    assert_eq!(range(h, prefix).await, ["ab", "abc"]);
    // Tuple subspaces.
    let space = Subspace::from_bytes(h.k("sub"));
    let (k1, k2, outside) = (space.pack(&(1u64,)), space.pack(&(2u64, "x")), h.k("sub"));
    let space2 = space.clone();
    h.store
        .transact(move |tx| {
            tx.set(&k2, b"2")?;
            tx.set(&k1, b"1")?;
            tx.set(&outside, b"prefix itself is not inside")
        })
        .await
        .unwrap();
    let inside = h
        .store
        .transact(move |tx| tx.get_range(&RangeOption::subspace(&space2)))
        .await
        .unwrap();
    let decoded: Vec<u64> = inside
        .iter()
        .map(|kv| space.unpack::<(u64,)>(&kv.key).map_or(2, |(n,)| n))
        .collect();
    assert_eq!(decoded, [1, 2]);
}

async fn range_reads_merge_own_writes(h: &Harness) {
    set(h, &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]).await;
    let (begin, end) = (h.k("a"), h.k("z"));
    let (b_key, c_key, bb, e) = (h.k("b"), h.k("c"), h.k("bb"), h.k("e"));
    let seen = h
        .store
        .transact(move |tx| {
            tx.clear(&b_key)?;
            tx.set(&bb, b"2")?;
            tx.set(&c_key, b"2")?;
            tx.set(&e, b"2")?;
            let fwd = tx.get_range(&RangeOption::between(begin.clone(), end.clone()))?;
            let rev = tx.get_range(
                &RangeOption::between(begin.clone(), end.clone())
                    .reverse()
                    .limit(2),
            )?;
            Ok((fwd, rev))
        })
        .await
        .unwrap();
    assert_eq!(names(h, &seen.0), ["a", "bb", "c", "d", "e"]);
    assert_eq!(seen.0[2].value, b("2"));
    assert_eq!(names(h, &seen.1), ["e", "d"]);
}

async fn clear_range_removes_exactly_the_range(h: &Harness) {
    set(
        h,
        &[("a", "1"), ("c", "1"), ("d", "1"), ("e", "1"), ("f", "1")],
    )
    .await;
    let (c, f, d, x) = (h.k("c"), h.k("f"), h.k("d"), h.k("x"));
    let inside = h
        .store
        .transact(move |tx| {
            tx.set(&x, b"set before the clear")?;
            tx.clear_range(&c, &f)?;
            tx.set(&d, b"set after the clear")?;
            tx.get_range(&RangeOption::between(c.clone(), f.clone()))
        })
        .await
        .unwrap();
    assert_eq!(names(h, &inside), ["d"]);
    assert_eq!(
        range(h, RangeOption::between(h.k(""), h.k("~"))).await,
        ["a", "d", "f", "x"]
    );
    assert_eq!(get(h, "d").await, Some(b("set after the clear")));
    // begin > end is a caller bug, reported; begin == end clears nothing.
    let (hi, lo) = (h.k("z"), h.k("a"));
    let err = h
        .store
        .transact(move |tx| tx.clear_range(&hi, &lo))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
}

async fn clear_range_applies_at_commit_time(h: &Harness) {
    // FoundationDB semantics: a range clear removes what is in the range when it commits,
    // including a key another transaction committed after this one started.
    let (a, z, m) = (h.k("a"), h.k("z"), h.k("m"));
    let store = h.store.clone();
    let first = Arc::new(AtomicU32::new(0));
    let attempts = first.clone();
    h.store
        .transact(move |tx| {
            tx.clear_range(&a, &z)?;
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                let m = m.clone();
                commit_elsewhere(&store, move |tx| tx.set(&m, b"late"));
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        first.load(Ordering::SeqCst),
        1,
        "a blind clear does not conflict"
    );
    assert_eq!(get(h, "m").await, None);
}

async fn atomic_add_is_fdb_add(h: &Harness) {
    let (n, short, long) = (h.k("n"), h.k("short"), h.k("long"));
    h.store
        .transact(move |tx| {
            tx.set(&short, &[1])?;
            tx.set(&long, &[1, 0, 0, 0, 0, 0, 0, 0, 7, 7])
        })
        .await
        .unwrap();
    let (n2, short2, long2) = (n.clone(), h.k("short"), h.k("long"));
    let inside = h
        .store
        .transact(move |tx| {
            tx.atomic_add(&n2, 5)?;
            tx.atomic_add(&n2, -7)?;
            tx.atomic_add(&short2, 1)?;
            tx.atomic_add(&long2, 1)?;
            tx.get(&n2)
        })
        .await
        .unwrap();
    assert_eq!(
        inside.as_deref(),
        Some(&(-2i64).to_le_bytes()[..]),
        "reads see pending adds"
    );
    assert_eq!(
        get(h, "n").await.as_deref(),
        Some(&(-2i64).to_le_bytes()[..])
    );
    assert_eq!(
        get(h, "short").await.as_deref(),
        Some(&2i64.to_le_bytes()[..])
    );
    assert_eq!(
        get(h, "long").await.as_deref(),
        Some(&2i64.to_le_bytes()[..])
    );
    let n3 = n.clone();
    h.store
        .transact(move |tx| {
            tx.set(&n3, &i64::MAX.to_le_bytes())?;
            tx.atomic_add(&n3, 1)
        })
        .await
        .unwrap();
    assert_eq!(
        get(h, "n").await.as_deref(),
        Some(&i64::MIN.to_le_bytes()[..]),
        "wraps"
    );
}

async fn atomic_adds_never_conflict(h: &Harness) {
    let n = h.k("counter");
    let store = h.store.clone();
    let count = Arc::new(AtomicU32::new(0));
    let attempts = count.clone();
    h.store
        .transact(move |tx| {
            tx.atomic_add(&n, 5)?;
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                let n = n.clone();
                commit_elsewhere(&store, move |tx| tx.atomic_add(&n, 10));
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(
        get(h, "counter").await.as_deref(),
        Some(&15i64.to_le_bytes()[..])
    );
    // Many concurrent adders land every increment.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, n) = (h.store.clone(), h.k("counter"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let n = n.clone();
                store
                    .transact(move |tx| tx.atomic_add(&n, 1))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        get(h, "counter").await.as_deref(),
        Some(&175i64.to_le_bytes()[..])
    );
}

/// Runs a transaction that reads with `read`, lets another client write `other` in the
/// middle of its first attempt, then writes `out`. Returns how many attempts it took.
async fn interleave(
    h: &Harness,
    read: impl Fn(&mut roam_store::Tx<'_>) -> Result<(), TxError> + Send + 'static,
    other: Vec<u8>,
) -> u32 {
    let store = h.store.clone();
    let out = h.k("out");
    let count = Arc::new(AtomicU32::new(0));
    let attempts = count.clone();
    h.store
        .transact(move |tx| {
            read(tx)?;
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                let other = other.clone();
                commit_elsewhere(&store, move |tx| tx.set(&other, b"other"));
            }
            tx.set(&out, b"done")
        })
        .await
        .unwrap();
    count.load(Ordering::SeqCst)
}

async fn plain_read_conflicts_and_the_retry_sees_new_data(h: &Harness) {
    set(h, &[("k", "v1")]).await;
    let k = h.k("k");
    let store = h.store.clone();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    let k2 = k.clone();
    h.store
        .transact(move |tx| {
            let v = tx.get(&k)?;
            let first = {
                let mut log = log.lock();
                log.push(v);
                log.len() == 1
            };
            if first {
                let k = k.clone();
                commit_elsewhere(&store, move |tx| tx.set(&k, b"v2"));
            }
            tx.set(&k2, b"v3")
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock(), [Some(b("v1")), Some(b("v2"))]);
    assert_eq!(get(h, "k").await, Some(b("v3")));
}

async fn snapshot_read_does_not_conflict(h: &Harness) {
    let k = h.k("k");
    let k2 = k.clone();
    let attempts = interleave(h, move |tx| tx.snapshot_get(&k2).map(drop), k).await;
    assert_eq!(attempts, 1);
    let (begin, end) = (h.k("a"), h.k("z"));
    let attempts = interleave(
        h,
        move |tx| {
            tx.snapshot_get_range(&RangeOption::between(begin.clone(), end.clone()))
                .map(drop)
        },
        h.k("m"),
    )
    .await;
    assert_eq!(attempts, 1);
}

async fn range_read_conflicts_only_on_the_range_it_covered(h: &Harness) {
    set(h, &[("r/a", "1"), ("r/b", "1"), ("r/c", "1")]).await;
    let span = |h: &Harness| RangeOption::between(h.k("r/"), h.k("r0"));
    let opt = span(h);
    let inside = interleave(h, move |tx| tx.get_range(&opt).map(drop), h.k("r/bb")).await;
    assert_eq!(inside, 2, "a write inside a read range conflicts");
    let opt = span(h);
    let outside = interleave(h, move |tx| tx.get_range(&opt).map(drop), h.k("s")).await;
    assert_eq!(outside, 1, "a write outside does not");
    // Limited to 2 pairs (r/a, r/b): only [r/a, r/b] was read.
    let opt = span(h).limit(2);
    let beyond = interleave(h, move |tx| tx.get_range(&opt).map(drop), h.k("r/bz")).await;
    assert_eq!(
        beyond, 1,
        "a write past the last key a limited read returned does not"
    );
    let opt = span(h).limit(2);
    let within = interleave(h, move |tx| tx.get_range(&opt).map(drop), h.k("r/a1")).await;
    assert_eq!(within, 2);
    // Reverse with limit 1 read only the last key.
    let opt = span(h).reverse().limit(1);
    let before = interleave(h, move |tx| tx.get_range(&opt).map(drop), h.k("r/0")).await;
    assert_eq!(before, 1);
}

async fn blind_writes_do_not_conflict(h: &Harness) {
    let k = h.k("k");
    let store = h.store.clone();
    let count = Arc::new(AtomicU32::new(0));
    let attempts = count.clone();
    h.store
        .transact(move |tx| {
            tx.set(&k, b"mine")?;
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                let k = k.clone();
                commit_elsewhere(&store, move |tx| tx.set(&k, b"theirs"));
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(get(h, "k").await, Some(b("mine")), "the later commit wins");
}

async fn reads_are_repeatable_within_an_attempt(h: &Harness) {
    set(h, &[("k", "v1")]).await;
    let k = h.k("k");
    let store = h.store.clone();
    let (first, second) = h
        .store
        .transact(move |tx| {
            let first = tx.get(&k)?;
            let k2 = k.clone();
            commit_elsewhere(&store, move |tx| tx.set(&k2, b"v2"));
            let second = tx.get(&k)?;
            Ok((first, second))
        })
        .await
        .unwrap();
    assert_eq!(
        (first, second),
        (Some(b("v1")), Some(b("v1"))),
        "read-only: no retry, one snapshot"
    );
    assert_eq!(get(h, "k").await, Some(b("v2")));
}

async fn abort_writes_nothing(h: &Harness) {
    let k = h.k("k");
    let err = h
        .store
        .transact(move |tx| {
            tx.set(&k, b"v")?;
            Err::<(), _>(TxError::abort("changed my mind"))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Aborted(m) if m == "changed my mind"),
        "{err}"
    );
    assert_eq!(get(h, "k").await, None);
}

async fn limits_are_enforced_before_anything_is_written(h: &Harness) {
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![b'k'; roam_store::MAX_KEY_SIZE + 1], b"v".to_vec()),
        (h.k("big"), vec![0; roam_store::MAX_VALUE_SIZE + 1]),
        (b"\xff/system".to_vec(), b"v".to_vec()),
    ];
    for (key, value) in cases {
        let ok = h.k("ok");
        let err = h
            .store
            .transact(move |tx| {
                tx.set(&ok, b"v")?;
                tx.set(&key, &value)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooLarge { .. } | StoreError::KeyOutsideLegalRange(_)
            ),
            "{err}"
        );
        assert_eq!(get(h, "ok").await, None);
    }
    // The largest legal value fits.
    let k = h.k("max");
    h.store
        .transact(move |tx| tx.set(&k, &vec![7; roam_store::MAX_VALUE_SIZE]))
        .await
        .unwrap();
    assert_eq!(
        get(h, "max").await.map(|v| v.len()),
        Some(roam_store::MAX_VALUE_SIZE)
    );
}

async fn many_keys_in_both_directions(h: &Harness) {
    let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| h.k(&format!("m/{i:04}"))).collect();
    let all = keys.clone();
    h.store
        .transact(move |tx| {
            for (i, k) in all.iter().enumerate() {
                tx.set(k, &(i as u64).to_le_bytes())?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let opt = RangeOption::between(h.k("m/"), h.k("m0"));
    let (fwd, rev, some) = {
        let (a, b, c) = (
            opt.clone(),
            opt.clone().reverse(),
            opt.clone().reverse().limit(250),
        );
        h.store
            .transact(move |tx| Ok((tx.get_range(&a)?, tx.get_range(&b)?, tx.get_range(&c)?)))
            .await
            .unwrap()
    };
    assert_eq!(
        fwd.iter().map(|kv| kv.key.to_vec()).collect::<Vec<_>>(),
        keys
    );
    assert!(
        rev.iter()
            .rev()
            .map(|kv| &kv.key)
            .eq(fwd.iter().map(|kv| &kv.key))
    );
    assert_eq!(some.len(), 250);
    assert_eq!(some[0].key.as_ref(), keys[999].as_slice());
    assert_eq!(some[249].key.as_ref(), keys[750].as_slice());
}

// ---- Cases that need their own options ----------------------------------------------------

fn tight_retries() -> StoreOptions {
    let mut options = StoreOptions::default();
    options.retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_micros(100),
        max_backoff: Duration::from_millis(1),
    };
    options
}

async fn retry_bound(backend: Backend) {
    let Some(h) = common::open(backend, tight_retries()).await else {
        return;
    };
    // A closure that always asks for a retry.
    let count = Arc::new(AtomicU32::new(0));
    let attempts = count.clone();
    let err = h
        .store
        .transact(move |_| {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(TxError::Retry(RetryReason::Conflict))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooManyRetries {
                attempts: 4,
                last: RetryReason::Conflict
            }
        ),
        "{err}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 4);
    // A transaction that really conflicts on every attempt.
    let k = h.k("k");
    let store = h.store.clone();
    let err = h
        .store
        .transact(move |tx| {
            tx.get(&k)?;
            let k2 = k.clone();
            commit_elsewhere(&store, move |tx| tx.atomic_add(&k2, 1));
            tx.set(&k, b"never")
        })
        .await
        .unwrap_err();
    assert!(err.is_too_many_retries(), "{err}");
    let k = h.k("k");
    let v = h.store.transact(move |tx| tx.get(&k)).await.unwrap();
    assert_eq!(
        v.as_deref(),
        Some(&4i64.to_le_bytes()[..]),
        "only the other client's adds landed"
    );
    assert_eq!(
        h.store.stats().retries,
        6,
        "3 retries of each transaction, counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retry_bound() {
    retry_bound(Backend::Embedded).await;
}

/// Group commit: concurrent commits share fsyncs, and each is durable when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_concurrent_commits_share_fsyncs() {
    let h = common::open(Backend::Embedded, StoreOptions::default())
        .await
        .expect("embedded store");
    let before = h.store.stats();
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            let (store, k) = (h.store.clone(), h.k(&format!("group-{i}")));
            tokio::spawn(async move {
                for j in 0..8u8 {
                    let k = k.clone();
                    store.transact(move |tx| tx.set(&k, &[j])).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = h.store.stats();
    let (commits, syncs) = (after.commits - before.commits, after.syncs - before.syncs);
    assert_eq!(commits, 256 * 8);
    assert!(
        syncs * 4 <= commits,
        "{commits} concurrent commits took {syncs} fsyncs: a group shares one"
    );
    // A lone commit still gets its fsync before it returns.
    let k = h.k("alone");
    h.store.transact(move |tx| tx.set(&k, b"x")).await.unwrap();
    assert_eq!(h.store.stats().syncs, after.syncs + 1);
    assert_eq!(h.store.stats().retries, 0, "distinct keys never conflict");
}

#[cfg(feature = "fdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(fdb_cluster),
    ignore = "needs a FoundationDB cluster: build and run with FDB_CLUSTER_FILE set"
)]
async fn fdb_retry_bound() {
    retry_bound(Backend::Fdb).await;
}
