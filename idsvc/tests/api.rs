//! The front ends: HTTP routes (through the router, no socket), gRPC over loopback TCP
//! (directly and through `IdSource`), and the Prometheus metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use common::{T0, config, open, service};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use roam_idsvc::{Generator, IdError, IdMetrics, IdService, IdSource, MAX_SEGMENT_ID, ManualClock};
use roam_proto::idsvc::v1::{
    CreateTagRequest, DecodeRequest, NextIdsRequest, SnowflakeRequest,
    id_service_client::IdServiceClient,
};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, retry)
}

fn error_code(v: &Value) -> &str {
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn http_routes_answer_the_spec_shapes_and_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let svc = service(&store, &clock, config()).await;
    let r = roam_idsvc::http::router(roam_idsvc::IdSource::local(svc.clone()));

    let (s, v, _) = call(
        &r,
        "POST",
        "/api/v1/ids/tags",
        Some(json!({"tag": "orders", "step": 100})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v, json!({"tag": "orders", "step": 100, "start": 1}));
    let (s, v, _) = call(
        &r,
        "POST",
        "/api/v1/ids/tags",
        Some(json!({"tag": "orders", "step": 100})),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "already_exists")
    );
    for bad in [
        json!({"tag": "x"}),
        json!({"tag": "x", "step": -1}),
        json!({"tag": "x", "step": 1, "extra": 1}),
        json!({"tag": "x y", "step": 1}),
    ] {
        let (s, v, _) = call(&r, "POST", "/api/v1/ids/tags", Some(bad.clone())).await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{bad}"
        );
    }

    // Segment IDs: numbers, default count 1.
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/orders?count=3", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"ids": [1, 2, 3]}));
    let (_, v, _) = call(&r, "GET", "/api/v1/ids/orders", None).await;
    assert_eq!(v, json!({"ids": [4]}));
    let (_, v, _) = call(&r, "GET", "/api/v1/ids/orders?count=10000", None).await;
    assert_eq!(v["ids"].as_array().unwrap().len(), 10_000);
    assert!(
        v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|id| id.as_u64().is_some_and(|n| n < MAX_SEGMENT_ID))
    );

    for q in [
        "count=0",
        "count=10001",
        "count=abc",
        "count=-1",
        "count=1&count=2",
    ] {
        let (s, v, _) = call(&r, "GET", &format!("/api/v1/ids/orders?{q}"), None).await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{q}: {v}"
        );
    }
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/missing", None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/bad%20tag", None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // Snowflake and Sonyflake: strings of digits (past 2^53), decodable.
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/snowflake?count=2", None).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids[0] < ids[1]);
    let (_, d, _) = call(
        &r,
        "GET",
        &format!("/api/v1/ids/snowflake/{}", ids[1]),
        None,
    )
    .await;
    assert_eq!(d["timestamp_ms"], T0);
    assert_eq!(d["sequence"], 1);
    assert_eq!(d["worker"], svc.state().snowflake.worker);
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/sonyflake?count=3", None).await;
    assert_eq!((s, v["ids"].as_array().unwrap().len()), (StatusCode::OK, 3));
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/sonyflake/abc", None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // The monitoring page (Leaf's cache page).
    let (s, v, _) = call(&r, "GET", "/api/v1/ids/_state", None).await;
    assert_eq!(s, StatusCode::OK);
    let tag = &v["tags"][0];
    assert_eq!(tag["tag"], "orders");
    for field in [
        "step",
        "base_step",
        "current",
        "cursor",
        "remaining",
        "next_ready",
        "loading",
        "issued",
    ] {
        assert!(!tag[field].is_null(), "{field} missing: {tag}");
    }
    assert_eq!(v["snowflake"]["status"], "ok");
    assert!(v["sonyflake"]["reserved_until_ms"].as_u64().unwrap() > T0);

    // A clock far behind: 503 with a retry-after, and a code naming the cause.
    clock.set_ms(T0 - 60_000);
    let (s, v, retry) = call(&r, "GET", "/api/v1/ids/snowflake", None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "clock_moved_backwards")
    );
    assert_eq!(retry.as_deref(), Some("1"));
}

#[tokio::test]
async fn grpc_over_loopback_maps_errors_to_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let svc = service(&store, &clock, config()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(roam_idsvc::grpc::serve(listener, svc.clone(), stop.clone()));

    let uri = format!("http://{addr}");
    let source = IdSource::connect(&uri, Duration::from_secs(5))
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = IdServiceClient::new(channel);

    raw.create_tag(CreateTagRequest {
        tag: "msg".into(),
        step: 50,
        start: 1000,
    })
    .await
    .unwrap();
    let status = raw
        .create_tag(CreateTagRequest {
            tag: "msg".into(),
            step: 50,
            start: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let ids = raw
        .next_ids(NextIdsRequest {
            tag: "msg".into(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .ids;
    assert_eq!(ids, vec![1000, 1001, 1002]);
    assert_eq!(source.next_id("msg").await.unwrap(), 1003);
    assert_eq!(source.next_ids("msg", 60).await.unwrap().len(), 60);

    let status = raw
        .next_ids(NextIdsRequest {
            tag: "nope".into(),
            count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(source.next_id("nope").await.unwrap_err().is_unknown_tag());
    for count in [0, 10_001] {
        let status = raw
            .next_ids(NextIdsRequest {
                tag: "msg".into(),
                count,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "count {count}");
        let status = raw.snowflake(SnowflakeRequest { count }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "count {count}");
    }
    let err = source.next_ids("msg", 0).await.unwrap_err();
    assert!(matches!(err, IdError::InvalidArgument(_)), "{err}");

    let flakes = raw
        .snowflake(SnowflakeRequest { count: 5 })
        .await
        .unwrap()
        .into_inner()
        .ids;
    assert_eq!(flakes.len(), 5);
    let d = raw
        .decode(DecodeRequest {
            id: flakes[4],
            generator: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.timestamp_ms, d.sequence), (T0, 4));
    let status = raw
        .decode(DecodeRequest {
            id: 1,
            generator: "uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        source
            .flake_ids(Generator::Sonyflake, 2)
            .await
            .unwrap()
            .len(),
        2
    );

    clock.set_ms(T0 - 60_000);
    let status = raw
        .snowflake(SnowflakeRequest { count: 1 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        source
            .flake_ids(Generator::Snowflake, 1)
            .await
            .unwrap_err()
            .is_unavailable()
    );

    // The in-process source answers the same way.
    let local = IdSource::local(svc.clone());
    assert!(local.next_id("nope").await.unwrap_err().is_unknown_tag());
    assert!(local.next_id("msg").await.unwrap() > 1003);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    svc.shutdown().await;
}

#[tokio::test]
async fn metrics_show_loads_buffers_and_clock_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let mut registry = Registry::default();
    let metrics = IdMetrics::register(&mut registry);
    let svc = IdService::start_with_clock(store, config(), metrics, clock.clone())
        .await
        .unwrap();
    svc.create_tag("orders", 100, 1).await.unwrap();
    svc.next_ids("orders", 30).await.unwrap();
    svc.next_snowflake().await.unwrap();
    clock.set_ms(T0 - 2);
    svc.next_snowflake().await.unwrap();

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "roam_ids_segment_loads_total{tag=\"orders\"}",
        "roam_ids_segment_issued_total{tag=\"orders\"} 30",
        "roam_ids_segment_buffer_remaining{tag=\"orders\"}",
        "roam_ids_flake_issued_total{generator=\"snowflake\"} 2",
        "roam_ids_clock_rollback_waits_total{generator=\"snowflake\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}
