//! Snowflake and Sonyflake through the service, on a manual clock and a real store: clock
//! rollback, worker leases between "processes" (services on one store), restarts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use common::{T0, config, open, service};
use roam_idsvc::{
    Clock, Generator, GeneratorLabel, IdError, IdMetrics, IdService, IdsConfig, ManualClock,
};
use std::sync::Arc;

fn one_worker() -> IdsConfig {
    IdsConfig {
        max_workers: 1,
        ..config()
    }
}

#[tokio::test]
async fn a_clock_3ms_back_waits_and_10s_back_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let metrics = IdMetrics::default();
    let svc = IdService::start_with_clock(store, config(), metrics.clone(), clock.clone())
        .await
        .unwrap();
    let label = GeneratorLabel {
        generator: "snowflake",
    };

    let first = svc.next_snowflake().await.unwrap();
    clock.set_ms(T0 - 3);
    let waits = clock.waits();
    let second = svc.next_snowflake().await.unwrap();
    assert!(second > first);
    assert_eq!(clock.waits(), waits + 1, "waited once");
    assert_eq!(clock.now_ms(), T0, "until the last issued ms");
    assert_eq!(metrics.clock_rollback_waits.get_or_create(&label).get(), 1);

    clock.set_ms(T0 - 10_000);
    let err = svc.next_snowflake().await.unwrap_err();
    assert!(
        matches!(
            err,
            IdError::ClockMovedBackwards {
                behind_ms: 10_000,
                tolerance_ms: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_unavailable());
    assert_eq!(metrics.clock_rollback_errors.get_or_create(&label).get(), 1);
    assert_eq!(clock.now_ms(), T0 - 10_000, "no sleep on a large step back");

    // Sonyflake follows the same rules (10 ms ticks).
    clock.set_ms(T0 + 100);
    let s1 = svc.next_sonyflake().await.unwrap();
    clock.set_ms(T0 + 96);
    assert!(svc.next_sonyflake().await.unwrap() > s1);
    clock.set_ms(T0);
    assert!(matches!(
        svc.flake_ids(Generator::Sonyflake, 1).await.unwrap_err(),
        IdError::ClockMovedBackwards { .. }
    ));
}

#[tokio::test]
async fn batches_span_ticks_and_decode_to_this_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let svc = service(&store, &clock, config()).await;

    // 10,000 Snowflake IDs need three ms (4,096 per ms): the clock is waited forward.
    let ids = svc.flake_ids(Generator::Snowflake, 10_000).await.unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(clock.now_ms(), T0 + 2);
    let worker = svc.state().snowflake.worker;
    let d = svc.decode(Generator::Snowflake, ids[4096]).unwrap();
    assert_eq!((d.timestamp_ms, d.worker, d.sequence), (T0 + 1, worker, 0));

    let ids = svc.flake_ids(Generator::Sonyflake, 600).await.unwrap();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 600);
    let d = svc.decode(Generator::Sonyflake, ids[599]).unwrap();
    assert_eq!(d.worker, svc.state().sonyflake.worker);
    assert_eq!(d.sequence, 599 - 512);
}

#[tokio::test]
async fn a_second_process_cannot_take_a_live_worker_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = service(&store, &clock, one_worker()).await;
    a.next_snowflake().await.unwrap();

    let b = IdService::start_with_clock(
        store.clone(),
        one_worker(),
        IdMetrics::default(),
        clock.clone(),
    )
    .await;
    let err = b.unwrap_err();
    assert!(
        matches!(err, IdError::NoFreeWorker { limit: 1, .. }),
        "{err}"
    );

    // With room for two, the second process gets the other id.
    let c = service(
        &store,
        &clock,
        IdsConfig {
            max_workers: 2,
            ..config()
        },
    )
    .await;
    assert_ne!(c.state().snowflake.worker, a.state().snowflake.worker);
    assert_ne!(c.state().sonyflake.worker, a.state().sonyflake.worker);
}

#[tokio::test]
async fn an_expired_lease_is_reused_and_issues_after_the_last_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = service(&store, &clock, one_worker()).await;
    let before = a.flake_ids(Generator::Snowflake, 100).await.unwrap();
    let reserved = a.state().snowflake.reserved_until_ms;
    assert!(reserved >= T0 + 3_000 - 1);
    drop(a); // a crash: no release, the lease stays until it expires

    clock.advance_ms(9_000);
    assert!(
        IdService::start_with_clock(
            store.clone(),
            one_worker(),
            IdMetrics::default(),
            clock.clone()
        )
        .await
        .is_err(),
        "still live"
    );

    clock.advance_ms(1_001); // past the 10 s ttl
    let b = service(&store, &clock, one_worker()).await;
    let s = b.state().snowflake;
    assert_eq!(s.worker, 0, "the same worker id, reused");
    assert_eq!(
        s.last_issued_ms, reserved,
        "the predecessor's reservation is the floor"
    );
    let after = b.next_snowflake().await.unwrap();
    assert!(before.iter().all(|id| *id < after));
}

#[tokio::test]
async fn a_graceful_release_hands_the_worker_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = service(&store, &clock, one_worker()).await;
    let before = a.next_snowflake().await.unwrap();
    a.shutdown().await;
    assert!(
        a.next_snowflake().await.unwrap_err().is_unavailable(),
        "nothing after shutdown"
    );
    assert_eq!(a.state().snowflake.status, "shutting down");

    clock.advance_ms(1);
    let b = service(&store, &clock, one_worker()).await;
    assert_eq!(
        b.state().snowflake.last_issued_ms,
        T0,
        "the floor is the last issued ms"
    );
    assert!(b.next_snowflake().await.unwrap() > before);
}

#[tokio::test]
async fn a_restart_behind_the_persisted_time_refuses_to_issue() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = service(&store, &clock, one_worker()).await;
    let before = a.next_snowflake().await.unwrap();
    a.shutdown().await;

    // The successor's clock is 10 s behind (another machine, or the clock was reset).
    let behind = Arc::new(ManualClock::new(T0 - 10_000));
    let b = service(&store, &behind, one_worker()).await;
    let err = b.next_snowflake().await.unwrap_err();
    assert!(
        matches!(
            err,
            IdError::ClockMovedBackwards {
                behind_ms: 10_000,
                ..
            }
        ),
        "{err}"
    );
    b.shutdown().await;

    // 3 ms behind: it waits for the floor's next ms, then issues after it.
    let near = Arc::new(ManualClock::new(T0 - 3));
    let c = service(&store, &near, one_worker()).await;
    let id = c.next_snowflake().await.unwrap();
    assert!(id > before);
    assert_eq!(near.now_ms(), T0 + 1);
}

#[tokio::test]
async fn a_process_whose_lease_was_taken_over_stops_issuing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = service(&store, &clock, one_worker()).await;
    a.next_snowflake().await.unwrap();

    // A's heartbeat stalls (the clock jumps past the ttl between beats); B takes the id.
    clock.advance_ms(10_001);
    let b = service(&store, &clock, one_worker()).await;
    let from_b = b.next_snowflake().await.unwrap();

    // A's reservation has run out; renewing it finds the lease gone: A refuses.
    let err = a.next_snowflake().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("lost"), "{err}");
    assert_eq!(a.state().snowflake.status, "lease lost");
    assert!(b.next_snowflake().await.unwrap() > from_b);
}
