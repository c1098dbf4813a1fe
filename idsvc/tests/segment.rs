//! The segment allocator against a real (embedded) store: uniqueness across allocators and
//! restarts, the dynamic step on an injected clock, store failures, bad input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use common::{T0, config, open, raw_get, raw_set, tag_key};
use roam_idsvc::{
    IdError, IdMetrics, IdsConfig, MAX_SEGMENT_ID, ManualClock, SegmentAllocator, SystemClock,
    TagHandle,
};
use std::{collections::HashSet, sync::Arc};

const MIN: u64 = 60_000;

fn allocator(
    store: &roam_store::Store,
    config: IdsConfig,
    clock: Arc<ManualClock>,
) -> SegmentAllocator {
    SegmentAllocator::new(store.clone(), config, clock, IdMetrics::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocators_hammering_one_tag_issue_only_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // Small segments and a low ceiling: many loads, switches and conflicting takes.
    let cfg = IdsConfig {
        max_step: 400,
        ..config()
    };
    let a = Arc::new(
        SegmentAllocator::new(
            store.clone(),
            cfg.clone(),
            Arc::new(SystemClock),
            IdMetrics::default(),
        )
        .unwrap(),
    );
    let b = Arc::new(
        SegmentAllocator::new(
            store.clone(),
            cfg,
            Arc::new(SystemClock),
            IdMetrics::default(),
        )
        .unwrap(),
    );
    a.create_tag("orders", 50, 1).await.unwrap();

    let mut tasks = Vec::new();
    for (i, alloc) in [a.clone(), a, b.clone(), b.clone(), b]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let handle = alloc.tag("orders").await.unwrap();
            let mut ids = Vec::new();
            for round in 0..600 {
                if (round + i) % 3 == 0 {
                    ids.extend(alloc.next_ids("orders", 7).await.unwrap());
                } else {
                    ids.push(handle.next_id().await.unwrap());
                }
            }
            ids
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let ids = t.await.unwrap();
        // Within one task, IDs increase.
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        for id in ids {
            assert!((1..MAX_SEGMENT_ID).contains(&id));
            assert!(seen.insert(id), "ID {id} issued twice");
        }
    }
    // Per task: 400 single IDs and 200 batches of 7.
    assert_eq!(seen.len(), 5 * (400 + 200 * 7));
}

#[tokio::test]
async fn a_restart_never_reissues_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut before = Vec::new();
    {
        let store = open(dir.path()).await;
        let a = allocator(&store, config(), clock.clone());
        a.create_tag("msg", 100, 1).await.unwrap();
        let h = a.tag("msg").await.unwrap();
        // 150 IDs: the first segment, a prefetched second one, part of it used.
        for _ in 0..150 {
            before.push(h.next_id().await.unwrap());
        }
        // A third, prefetched segment may be in flight: let it land, as a crash could.
        a.shutdown().await;
    } // every store handle dropped: the "process" is gone
    let store = open(dir.path()).await;
    let b = allocator(&store, config(), clock);
    let after = b.next_ids("msg", 500).await.unwrap();
    let max_before = *before.iter().max().unwrap();
    assert!(
        after.iter().all(|id| *id > max_before),
        "reissued after restart"
    );
    // The restarted allocator resumes after every segment taken before (gaps allowed).
    assert!(after[0] > 200);
}

/// Drains the current segment and takes one more ID, so the next segment (prefetched at
/// 10%, at the clock's current time) becomes current. Returns the new segment's length.
async fn drain_into_next(h: &TagHandle) -> u64 {
    let remaining = h.state().remaining;
    for _ in 0..=remaining {
        h.next_id().await.unwrap();
    }
    h.state().current.end - h.state().current.start
}

#[tokio::test]
async fn the_dynamic_step_moves_up_and_down_with_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let cfg = IdsConfig {
        max_step: 800,
        ..config()
    };
    let a = allocator(&store, cfg.clone(), clock.clone());
    a.create_tag("hot", 100, 1).await.unwrap();
    let h = a.tag("hot").await.unwrap();
    assert_eq!(h.state().step, 100);

    // Each segment lasts the given minutes (the clock moves before its prefetch point).
    let plan = [
        (1, 200), // < 15 min: double
        (1, 400),
        (1, 800),
        (1, 800),  // capped at max_step
        (20, 800), // between 15 and 30 min: unchanged
        (40, 400), // > 30 min: halve
        (40, 200),
        (40, 100),
        (40, 100), // never below the tag's own step
        (5, 200),  // and back up
    ];
    for (minutes, step) in plan {
        clock.advance_ms(minutes * MIN);
        let len = drain_into_next(&h).await;
        assert_eq!(
            (h.state().step, len),
            (step, step),
            "after a {minutes}-minute segment"
        );
    }

    // The step is persisted: a new allocator's first segment uses it.
    let b = allocator(&store, cfg, clock);
    let hb = b.tag("hot").await.unwrap();
    let s = hb.state();
    assert_eq!((s.step, s.current.end - s.current.start), (200, 200));
}

#[tokio::test]
async fn a_failing_store_is_served_around_until_the_buffers_run_dry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let metrics = IdMetrics::default();
    let a = SegmentAllocator::new(store.clone(), config(), clock.clone(), metrics.clone()).unwrap();
    a.create_tag("pay", 100, 1).await.unwrap();
    let h = a.tag("pay").await.unwrap();

    // Break the tag's record: every load now fails.
    let key = tag_key("pay");
    let good = raw_get(&store, key.clone()).await.unwrap();
    raw_set(&store, key.clone(), b"\x09broken".to_vec()).await;

    // The current segment keeps serving (its prefetch at 10% fails in the background).
    let mut issued = HashSet::new();
    for _ in 0..100 {
        assert!(issued.insert(h.next_id().await.unwrap()));
    }
    // Both buffers empty, the store failing: a clear error, no made-up ID.
    let err = h.next_id().await.unwrap_err();
    assert!(matches!(err, IdError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("schema version 9"), "{err}");
    let label = roam_idsvc::TagLabel { tag: "pay".into() };
    assert!(metrics.segment_load_failures.get_or_create(&label).get() >= 1);
    assert!(h.state().last_error.is_some());
    // Within the back-off, callers fail fast without a new load.
    let failures = metrics.segment_load_failures.get_or_create(&label).get();
    assert!(h.next_ids(5).await.unwrap_err().is_unavailable());
    assert_eq!(
        metrics.segment_load_failures.get_or_create(&label).get(),
        failures
    );

    // The store recovers; after the back-off, loads resume, and nothing repeats.
    raw_set(&store, key, good).await;
    clock.advance_ms(10_000);
    for id in h.next_ids(300).await.unwrap() {
        assert!(issued.insert(id), "ID {id} issued twice");
    }
    assert_eq!(h.state().last_error, None);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let a = allocator(&store, config(), Arc::new(ManualClock::new(T0)));

    let err = a.next_ids("nope", 1).await.unwrap_err();
    assert!(err.is_unknown_tag(), "{err}");
    assert_eq!(err.grpc_code(), tonic::Code::NotFound);

    a.create_tag("t", 10, 0).await.unwrap();
    assert!(matches!(
        a.create_tag("t", 10, 0).await.unwrap_err(),
        IdError::TagExists { .. }
    ));
    assert_eq!(
        a.next_ids("t", 1).await.unwrap(),
        vec![1],
        "start 0 counts as 1"
    );

    for count in [0, 10_001] {
        let err = a.next_ids("t", count).await.unwrap_err();
        assert_eq!(
            err.grpc_code(),
            tonic::Code::InvalidArgument,
            "count {count}"
        );
    }
    for tag in ["", "has space", "snowflake", "_state", &"x".repeat(65)] {
        let err = a.create_tag(tag, 10, 1).await.unwrap_err();
        assert_eq!(err.http_status().as_u16(), 400, "{tag:?}: {err}");
    }
    for (step, start) in [(0, 1), (20_000_000, 1), (10, MAX_SEGMENT_ID - 5)] {
        let err = a.create_tag("u", step, start).await.unwrap_err();
        assert_eq!(
            err.http_status().as_u16(),
            400,
            "step {step} start {start}: {err}"
        );
    }
}

#[tokio::test]
async fn ids_stop_below_2_pow_53() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let a = allocator(&store, config(), Arc::new(ManualClock::new(T0)));
    a.create_tag("edge", 10, MAX_SEGMENT_ID - 25).await.unwrap();
    let ids = a.next_ids("edge", 25).await.unwrap();
    assert_eq!(*ids.last().unwrap(), MAX_SEGMENT_ID - 1);
    let err = a.next_ids("edge", 1).await.unwrap_err();
    assert!(
        matches!(err, IdError::Exhausted(_) | IdError::Unavailable(_)),
        "{err}"
    );
}
