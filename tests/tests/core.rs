//! Core through its real interfaces: the edge link (gRPC, driven by the edge's own link
//! client) and the business API (HTTP), against a real `roam serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roam_bench::child::ChildServer;
use roam_core::auth::Secret;
use roam_edge::link::{CoreLink, EdgeIdentity};
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::{self as link, EdgeUp, deliver, edge_down, edge_up};
use roam_proto::{FrameDecoder, Op};
use roam_tests::{admin, poll, push};
use serde_json::{Value, json};

/// A core-only server: the test drives the edge link itself, with no edge of the server's own.
fn start(extra: &str) -> ChildServer {
    roam_tests::start(&format!("role = \"core\"\n{extra}"))
}

/// Fast edge liveness so expiry is observable within a test.
const FAST: &str = "[core]\nedge_heartbeat_ms = 100\nedge_timeout_ms = 600\n";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

use roam_tests::token;

async fn edge(server: &ChildServer, id: &str, lat: f64, lon: f64, weight: u32) -> CoreLink {
    let addr = format!("http://{}", server.addr("internal").unwrap());
    let identity = EdgeIdentity {
        key: Some(roam_tests::internal_key(server)),
        edge_id: id.into(),
        addresses: HashMap::from([("client_tcp".into(), format!("{id}.example:8443"))]),
        region: id.into(),
        lat,
        lon,
        weight,
        ..EdgeIdentity::default()
    };
    CoreLink::connect(&addr, identity).await.unwrap()
}

async fn send(link: &CoreLink, msg: edge_up::Msg) {
    link.sender().send(EdgeUp { msg: Some(msg) }).await.unwrap();
}

/// The next message from core within 5 s.
async fn next(link: &mut CoreLink) -> edge_down::Msg {
    tokio::time::timeout(Duration::from_secs(5), link.next())
        .await
        .expect("core sent nothing within 5 s")
        .unwrap()
        .expect("core ended the link")
}

/// Nothing arrives within `ms`.
async fn quiet(link: &mut CoreLink, ms: u64) {
    if let Ok(msg) = tokio::time::timeout(Duration::from_millis(ms), link.next()).await {
        panic!("expected nothing, got {msg:?}");
    }
}

/// Authenticates `device` of the token's user as connection `conn`; returns the result.
async fn connect(link: &mut CoreLink, conn: u64, token: &str, device: &str) -> link::ConnectResult {
    send(
        link,
        edge_up::Msg::Connect(link::Connect {
            conn_id: conn,
            token: token.into(),
            device_id: device.into(),
            platform: "test".into(),
            transport: "ws".into(),
            rooms: vec![],
        }),
    )
    .await;
    match next(link).await {
        edge_down::Msg::ConnectResult(r) => {
            assert_eq!(r.conn_id, conn);
            r
        }
        other => panic!("expected ConnectResult, got {other:?}"),
    }
}

async fn heartbeat(link: &CoreLink, ws: u64, rooms: &[(&str, u64)]) {
    send(
        link,
        edge_up::Msg::Heartbeat(link::EdgeHeartbeat {
            connections: HashMap::from([("ws".to_string(), ws)]),
            rooms: rooms.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        }),
    )
    .await;
}

/// A delivery's target and the content of its PUSH frame.
fn delivered(msg: edge_down::Msg) -> (deliver::Target, String) {
    let edge_down::Msg::Deliver(d) = msg else {
        panic!("expected Deliver, got {msg:?}");
    };
    let mut frames = d.frames;
    let frame = FrameDecoder::default()
        .decode_bytes(&mut frames)
        .unwrap()
        .unwrap();
    assert_eq!(frame.op_kind(), Some(Op::Push));
    let push: pb::Push = frame.decode_body().unwrap();
    let Some(pb::push::Kind::Ephemeral(e)) = push.kind else {
        panic!("expected an ephemeral push");
    };
    (
        d.target.unwrap(),
        String::from_utf8(e.content.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn auth_accepts_good_tokens_and_names_what_is_wrong_with_bad_ones() {
    let server = start("");
    let mut e = edge(&server, "e1", 0.0, 0.0, 1).await;
    let good = connect(&mut e, 1, &token(&server, "alice"), "phone").await;
    assert!(good.ok, "{good:?}");
    assert_eq!(
        (good.user_id.as_str(), good.device_id.as_str()),
        ("alice", "phone")
    );
    assert_eq!(
        good.heartbeat_secs, 60,
        "a new device starts at the minimum interval"
    );

    let secret = Secret::load_or_create(&server.data_dir()).unwrap();
    let expired = secret.mint("alice", None, 10, now() - 100).unwrap();
    let bound = secret.mint("alice", Some("tablet"), 600, now()).unwrap();
    let foreign = Secret::from_bytes(vec![7; 32])
        .mint("alice", None, 600, now())
        .unwrap();
    let other_audience = good_token_for_other_audience(&server);
    let alice = token(&server, "alice");
    let cases = [
        (
            expired.as_str(),
            "phone",
            pb::error::Code::AuthExpired,
            "expired",
        ),
        (
            foreign.as_str(),
            "phone",
            pb::error::Code::AuthFailed,
            "signature",
        ),
        ("garbage", "phone", pb::error::Code::AuthFailed, "malformed"),
        (
            bound.as_str(),
            "phone",
            pb::error::Code::AuthFailed,
            "another device",
        ),
        (
            other_audience.as_str(),
            "phone",
            pb::error::Code::AuthFailed,
            "audience",
        ),
        (alice.as_str(), "", pb::error::Code::AuthFailed, "device_id"),
    ];
    for (i, (tok, device, code, needle)) in cases.into_iter().enumerate() {
        let r = connect(&mut e, 10 + i as u64, tok, device).await;
        assert!(!r.ok, "case {needle}");
        assert_eq!(r.error_code, code as i32, "case {needle}: {r:?}");
        assert!(r.error_message.contains(needle), "case {needle}: {r:?}");
    }
    let metrics = admin(&server, "GET", "/metrics", None, Some("")).await.body;
    assert!(
        metrics.contains("roam_core_auth_failures_total{kind=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("roam_core_connects_total 1"), "{metrics}");
}

fn good_token_for_other_audience(server: &ChildServer) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        aud: &'a str,
        exp: u64,
    }
    let key = std::fs::read_to_string(server.data_dir().join("jwt-secret")).unwrap();
    let key = hex::decode(key.trim()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: "alice",
            aud: "someone-else",
            exp: now() + 600,
        },
        &jsonwebtoken::EncodingKey::from_secret(&key),
    )
    .unwrap()
}

#[tokio::test]
async fn pushes_reach_devices_users_rooms_and_everyone_and_no_one_else() {
    let server = start("");
    let mut a = edge(&server, "edge-a", 0.0, 0.0, 1).await;
    let mut b = edge(&server, "edge-b", 0.0, 0.0, 1).await;
    assert!(
        connect(&mut a, 1, &token(&server, "alice"), "alice-phone")
            .await
            .ok
    );
    assert!(
        connect(&mut b, 2, &token(&server, "alice"), "alice-laptop")
            .await
            .ok
    );
    assert!(
        connect(&mut b, 3, &token(&server, "bob"), "bob-phone")
            .await
            .ok
    );

    // By device: only that device's connection.
    let r = push(
        &server,
        "devices",
        json!({"devices": [{"user": "bob", "device": "bob-phone"}], "content": "d"}),
    )
    .await;
    assert_eq!((r.status, r.json()["queued"].clone()), (202, json!(1)));
    assert_eq!(
        delivered(next(&mut b).await),
        (
            deliver::Target::Conns(link::ConnIds { ids: vec![3] }),
            "d".into()
        )
    );
    quiet(&mut a, 200).await;

    // By user: every device of the user, on every edge.
    let r = push(
        &server,
        "users",
        json!({"users": ["alice"], "content": "u"}),
    )
    .await;
    assert_eq!(r.json()["queued"], 2);
    assert_eq!(
        delivered(next(&mut a).await),
        (
            deliver::Target::Conns(link::ConnIds { ids: vec![1] }),
            "u".into()
        )
    );
    assert_eq!(
        delivered(next(&mut b).await),
        (
            deliver::Target::Conns(link::ConnIds { ids: vec![2] }),
            "u".into()
        )
    );

    // By room: only edges that hold members, told which room; several rooms at once.
    send(
        &a,
        edge_up::Msg::RoomChange(link::RoomChange {
            room: "lobby".into(),
            members: 1,
        }),
    )
    .await;
    send(
        &b,
        edge_up::Msg::RoomChange(link::RoomChange {
            room: "games".into(),
            members: 2,
        }),
    )
    .await;
    heartbeat(&a, 1, &[("lobby", 1)]).await;
    // The link and the API are different paths: wait until core has seen the rooms.
    poll(&server, "/api/v1/online/rooms", |v| {
        v["rooms"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let r = push(
        &server,
        "rooms",
        json!({"rooms": ["lobby"], "content": "r"}),
    )
    .await;
    assert_eq!(r.json()["queued"], 1);
    assert_eq!(
        delivered(next(&mut a).await),
        (deliver::Target::Room("lobby".into()), "r".into())
    );
    quiet(&mut b, 200).await;
    let r = push(
        &server,
        "rooms",
        json!({"rooms": ["lobby", "games"], "content": "r2"}),
    )
    .await;
    assert_eq!(r.json()["queued"], 3);
    assert_eq!(
        delivered(next(&mut a).await).0,
        deliver::Target::Room("lobby".into())
    );
    assert_eq!(
        delivered(next(&mut b).await).0,
        deliver::Target::Room("games".into())
    );

    // Everyone: every live edge once.
    let r = push(&server, "all", json!({"content": "all"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        delivered(next(&mut a).await),
        (deliver::Target::All(true), "all".into())
    );
    assert_eq!(
        delivered(next(&mut b).await),
        (deliver::Target::All(true), "all".into())
    );

    // Nobody online: accepted, queued for no one.
    let r = push(
        &server,
        "users",
        json!({"users": ["carol"], "content": "x"}),
    )
    .await;
    assert_eq!((r.status, r.json()["queued"].clone()), (202, json!(0)));
}

#[tokio::test]
async fn presence_and_online_counts_follow_connects_and_disconnects() {
    let server = start("");
    let mut e = edge(&server, "e1", 0.0, 0.0, 1).await;
    assert!(
        connect(&mut e, 1, &token(&server, "alice"), "phone")
            .await
            .ok
    );
    assert!(
        connect(&mut e, 2, &token(&server, "alice"), "laptop")
            .await
            .ok
    );
    heartbeat(&e, 2, &[("lobby", 2), ("games", 1)]).await;

    let p = admin(
        &server,
        "GET",
        "/api/v1/presence?users=alice,bob",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(p["users"][0]["online"], true);
    assert_eq!(p["users"][0]["devices"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            p["users"][1]["online"].clone(),
            p["users"][1]["last_seen"].clone()
        ),
        (json!(false), Value::Null)
    );

    let total = poll(&server, "/api/v1/online/total", |v| v["total"] == 2).await;
    assert_eq!(total["by_transport"]["ws"], 2);
    let rooms = admin(&server, "GET", "/api/v1/online/rooms?top=1", None, None)
        .await
        .json();
    assert_eq!(rooms["rooms"], json!([{"room": "lobby", "online": 2}]));

    for conn in [1, 2] {
        send(
            &e,
            edge_up::Msg::Disconnect(link::Disconnect {
                conn_id: conn,
                reason: "closed".into(),
            }),
        )
        .await;
    }
    heartbeat(&e, 0, &[]).await;
    let p = poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == false
    })
    .await;
    assert!(p["users"][0]["last_seen"].as_u64().unwrap() > 0);
    poll(&server, "/api/v1/online/total", |v| v["total"] == 0).await;
}

#[tokio::test]
async fn a_silent_edge_leaves_the_node_list_and_its_sessions_go_offline() {
    let server = start(FAST);
    let mut e = edge(&server, "doomed", 0.0, 0.0, 1).await;
    assert_eq!(e.heartbeat_interval(), Duration::from_millis(100));
    assert!(
        connect(&mut e, 1, &token(&server, "alice"), "phone")
            .await
            .ok
    );
    let live = admin(&server, "GET", "/api/v1/edges", None, None)
        .await
        .json();
    assert_eq!(live["edges"][0]["id"], "doomed");
    // No heartbeat from now on: core drops the edge and ends its link.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = e.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "core did not end the silent edge's link");
    poll(&server, "/api/v1/edges", |v| {
        v["edges"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == false
    })
    .await;
}

#[tokio::test]
async fn an_edge_that_links_again_ends_the_sessions_of_its_lost_link() {
    // The default edge timeout (15 s) is longer than this test: only the new link can end
    // alice's session.
    let server = start("");
    let mut lost = edge(&server, "flaky", 0.0, 0.0, 1).await;
    assert!(
        connect(&mut lost, 1, &token(&server, "alice"), "phone")
            .await
            .ok
    );
    poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == true
    })
    .await;
    // The link drops without a Disconnect for alice (as when an edge loses its link and
    // closes its clients); the edge links again as soon as core lets the id go.
    drop(lost);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let _again = loop {
        let addr = format!("http://{}", server.addr("internal").unwrap());
        let identity = EdgeIdentity {
            key: Some(roam_tests::internal_key(&server)),
            edge_id: "flaky".into(),
            weight: 1,
            ..EdgeIdentity::default()
        };
        match CoreLink::connect(&addr, identity).await {
            Ok(link) => break link,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the id never came free: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == false
    })
    .await;
}

#[tokio::test]
async fn the_node_list_is_nearest_region_then_weight_then_fewest_connections() {
    let server = start("");
    let beijing = [
        ("bj-a", 39.9, 116.3, 100, 50),
        ("bj-b", 40.0, 116.5, 100, 10),
        ("bj-big", 39.8, 116.4, 200, 90),
    ];
    let mut links = Vec::new();
    for (id, lat, lon, weight, conns) in beijing {
        let l = edge(&server, id, lat, lon, weight).await;
        heartbeat(&l, conns, &[]).await;
        links.push(l);
    }
    let tokyo = edge(&server, "tokyo", 35.7, 139.7, 500).await;
    heartbeat(&tokyo, 0, &[]).await;
    let ids = |v: &Value| -> Vec<String> {
        v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let v = poll(&server, "/api/v1/edges?lat=39.9&lon=116.4", |v| {
        v["edges"].as_array().is_some_and(|a| a.len() == 4) && v["edges"][1]["connections"] == 10
    })
    .await;
    assert_eq!(ids(&v), ["bj-big", "bj-b", "bj-a", "tokyo"]);
    assert_eq!(
        v["edges"][0]["addresses"]["client_tcp"],
        "bj-big.example:8443"
    );
    let v = admin(
        &server,
        "GET",
        "/api/v1/edges?lat=35.6&lon=139.6",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(ids(&v)[0], "tokyo");
    let bad = admin(&server, "GET", "/api/v1/edges?lat=91&lon=0", None, None).await;
    assert_eq!(
        (bad.status, bad.json()["error"]["code"].clone()),
        (400, json!("invalid_argument"))
    );
    let bad = admin(&server, "GET", "/api/v1/edges?lat=1", None, None).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_full_edge_queue_answers_429_and_does_not_grow() {
    let server = start("[core]\nedge_queue = 4\n");
    let mut slow = edge(&server, "slow", 0.0, 0.0, 1).await;
    let mut fast = edge(&server, "fast", 0.0, 0.0, 1).await;
    assert!(
        connect(&mut slow, 1, &token(&server, "sloth"), "s")
            .await
            .ok
    );
    assert!(connect(&mut fast, 2, &token(&server, "hare"), "h").await.ok);
    // `slow` never reads: once the HTTP/2 windows are full, its queue fills.
    let big = "x".repeat(30_000);
    let mut refused = None;
    for _ in 0..200 {
        let r = push(
            &server,
            "users",
            json!({"users": ["sloth"], "content": big}),
        )
        .await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let refused = refused.expect("a never-reading edge must eventually get 429s");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], "busy");
    // Other edges are unaffected.
    let r = push(
        &server,
        "users",
        json!({"users": ["hare"], "content": "hi"}),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(delivered(next(&mut fast).await).1, "hi");
    // A push that would reach the busy edge is refused whole, even for its other targets.
    // (The slow edge's link may still take messages, freeing slots: its HTTP/2 window and
    // send buffer hold megabytes, and on a busy machine the first 429 can come while core
    // has not yet written into them. Such a push is accepted everywhere, and a later one
    // finds the queue full. The pushes are as big as the first ones, and as many may be
    // needed: small ones could fit in what is left by the thousand.)
    let mut refused_whole = false;
    for _ in 0..200 {
        let r = push(
            &server,
            "users",
            json!({"users": ["hare", "sloth"], "content": big}),
        )
        .await;
        if r.status == 429 {
            refused_whole = true;
            break;
        }
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(delivered(next(&mut fast).await).1, big);
    }
    assert!(refused_whole, "pushes reaching a full edge must be refused");
    quiet(&mut fast, 200).await;
    let metrics = admin(&server, "GET", "/metrics", None, Some("")).await.body;
    let depth = metrics
        .lines()
        .find(|l| l.starts_with("roam_core_edge_queue_depth{edge=\"slow\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("queue depth of the slow edge");
    assert!(depth <= 4, "{depth}");
    drop(slow);
}

#[tokio::test]
async fn a_reconnecting_device_replaces_and_kicks_its_old_connection() {
    let server = start("");
    let mut a = edge(&server, "a", 0.0, 0.0, 1).await;
    let mut b = edge(&server, "b", 0.0, 0.0, 1).await;
    assert!(
        connect(&mut a, 1, &token(&server, "alice"), "phone")
            .await
            .ok
    );
    assert!(
        connect(&mut b, 9, &token(&server, "alice"), "phone")
            .await
            .ok
    );
    match next(&mut a).await {
        edge_down::Msg::Kick(k) => {
            assert_eq!(k.conn_id, 1);
            assert_eq!(k.reason, pb::disconnect::Reason::Replaced as i32);
        }
        other => panic!("expected a Kick, got {other:?}"),
    }
    let r = push(
        &server,
        "devices",
        json!({"devices": [{"user": "alice", "device": "phone"}], "content": "to-new"}),
    )
    .await;
    assert_eq!(r.json()["queued"], 1);
    assert_eq!(
        delivered(next(&mut b).await).0,
        deliver::Target::Conns(link::ConnIds { ids: vec![9] })
    );
    quiet(&mut a, 200).await;
}

#[tokio::test]
async fn the_heartbeat_interval_adapts_and_is_remembered_across_reconnects() {
    let server = start("");
    let mut e = edge(&server, "e", 0.0, 0.0, 1).await;
    assert_eq!(
        connect(&mut e, 1, &token(&server, "alice"), "phone")
            .await
            .heartbeat_secs,
        60
    );
    let mut seen = Vec::new();
    for seq in 1..=3u32 {
        send(
            &e,
            edge_up::Msg::ClientOp(link::ClientOp {
                conn_id: 1,
                op: Op::Heartbeat.code(),
                seq,
                body: Default::default(),
            }),
        )
        .await;
        let edge_down::Msg::OpReply(r) = next(&mut e).await else {
            panic!("expected OpReply")
        };
        let mut frames = r.frames;
        let f = FrameDecoder::default()
            .decode_bytes(&mut frames)
            .unwrap()
            .unwrap();
        assert_eq!((f.op_kind(), f.seq), (Some(Op::HeartbeatReply), seq));
        seen.push(
            f.decode_body::<pb::HeartbeatReply>()
                .unwrap()
                .heartbeat_secs,
        );
    }
    assert_eq!(seen, [90, 120, 150]);
    // Lost to a heartbeat timeout: one step down, remembered for the next connection.
    send(
        &e,
        edge_up::Msg::Disconnect(link::Disconnect {
            conn_id: 1,
            reason: "idle".into(),
        }),
    )
    .await;
    poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == false
    })
    .await;
    let r = connect(&mut e, 2, &token(&server, "alice"), "phone").await;
    assert_eq!(r.heartbeat_secs, 120);
}

#[tokio::test]
async fn the_business_api_wants_its_key_and_names_bad_input() {
    let server = start("");
    let r = admin(&server, "GET", "/api/v1/online/total", None, Some("wrong")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (401, json!("unauthenticated"))
    );
    let r = admin(&server, "GET", "/healthz", None, Some("")).await;
    assert_eq!(r.status, 200, "healthz needs no key");
    for (kind, body, status, needle) in [
        ("users", "{not json", 400, "request body"),
        (
            "users",
            r#"{"users": [], "content": "x"}"#,
            400,
            "at least one",
        ),
        (
            "users",
            r#"{"users": ["a"], "content": "x", "extra": 1}"#,
            400,
            "extra",
        ),
        ("devices", r#"{"content": "x"}"#, 400, "devices"),
        ("rooms", r#"{"rooms": [""], "content": "x"}"#, 400, "empty"),
    ] {
        let r = admin(
            &server,
            "POST",
            &format!("/api/v1/push/{kind}"),
            Some(body),
            None,
        )
        .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {}",
            r.body
        );
    }
    let too_big = json!({"users": ["a"], "content": "x".repeat(70_000)}).to_string();
    let r = admin(&server, "POST", "/api/v1/push/users", Some(&too_big), None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (413, json!("too_large"))
    );
    let r = admin(&server, "GET", "/api/v1/online/rooms?top=0", None, None).await;
    assert_eq!(r.status, 400);
    let r = admin(&server, "GET", "/api/v1/presence", None, None).await;
    assert_eq!(r.status, 400);
}
