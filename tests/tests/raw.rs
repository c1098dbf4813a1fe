//! The raw frame port end to end: real TLS clients, the real edge, core and store in one
//! `roam serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::Duration;

use roam_bench::child::ChildServer;
use roam_client::raw::RawConnection;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, Op};
use roam_tests::{admin, metric, next_frame};
use serde_json::json;

use roam_tests::token;

async fn dial(server: &ChildServer) -> RawConnection {
    RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap()
}

/// Reads until the server closes; returns what came before.
async fn until_closed(c: &mut RawConnection) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
            Ok(Ok(Some(f))) => frames.push(f),
            Ok(Ok(None)) | Ok(Err(_)) => return frames,
            Err(_) => panic!("the server did not close; got {frames:?}"),
        }
    }
}

async fn login(
    server: &ChildServer,
    user: &str,
    device: &str,
    rooms: &[&str],
) -> (RawConnection, pb::AuthReply) {
    let mut c = dial(server).await;
    let auth = pb::Auth {
        token: token(server, user),
        device_id: device.into(),
        platform: "test".into(),
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
    };
    c.send(Op::Auth, 1, &auth).await.unwrap();
    let f = next_frame(&mut c).await;
    assert_eq!(f.op_kind(), Some(Op::AuthReply), "{f:?}");
    (c, f.decode_body().unwrap())
}

fn error_of(f: &Frame) -> pb::Error {
    assert_eq!(f.op_kind(), Some(Op::Error), "{f:?}");
    f.decode_body().unwrap()
}

#[tokio::test]
async fn a_client_authenticates_heartbeats_joins_rooms_and_receives_pushes() {
    let server = roam_tests::start("");
    let (mut alice, reply) = login(&server, "alice", "alice-phone", &["lobby"]).await;
    assert_eq!(
        (reply.user_id.as_str(), reply.heartbeat_secs),
        ("alice", 60)
    );
    let (mut bob, _) = login(&server, "bob", "bob-phone", &[]).await;

    alice
        .send(Op::Heartbeat, 2, &pb::Heartbeat {})
        .await
        .unwrap();
    let f = next_frame(&mut alice).await;
    assert_eq!((f.op_kind(), f.seq), (Some(Op::HeartbeatReply), 2));
    assert_eq!(
        f.decode_body::<pb::HeartbeatReply>()
            .unwrap()
            .heartbeat_secs,
        90
    );

    alice
        .send(
            Op::RoomJoin,
            3,
            &pb::Room {
                room: "games".into(),
            },
        )
        .await
        .unwrap();
    let f = next_frame(&mut alice).await;
    assert_eq!((f.op_kind(), f.seq), (Some(Op::RoomJoinReply), 3));
    let mut rooms = f.decode_body::<pb::RoomReply>().unwrap().rooms;
    rooms.sort();
    assert_eq!(rooms, ["games", "lobby"], "several rooms per connection");

    // A push to alice reaches alice only.
    let r = roam_tests::push(
        &server,
        "users",
        json!({"users": ["alice"], "content": "hi alice"}),
    )
    .await;
    assert_eq!((r.status, r.json()["queued"].clone()), (202, json!(1)));
    let f = next_frame(&mut alice).await;
    assert_eq!(f.op_kind(), Some(Op::Push));
    let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!()
    };
    assert_eq!(&e.content[..], b"hi alice");

    // A room push reaches the room's members and no one else. Room membership travels to core on
    // the edge link, apart from the API: wait until core has seen it.
    roam_tests::wait_for_rooms(&server, 2).await;
    let r = roam_tests::push(
        &server,
        "rooms",
        json!({"rooms": ["games"], "content": "gg"}),
    )
    .await;
    assert_eq!((r.status, r.json()["queued"].clone()), (202, json!(1)));
    let Some(pb::push::Kind::Ephemeral(e)) = next_frame(&mut alice)
        .await
        .decode_body::<pb::Push>()
        .unwrap()
        .kind
    else {
        panic!()
    };
    assert_eq!((e.room.as_str(), &e.content[..]), ("games", &b"gg"[..]));

    // Everyone.
    roam_tests::push(&server, "all", serde_json::json!({"content": "all"})).await;
    assert_eq!(next_frame(&mut alice).await.op_kind(), Some(Op::Push));
    let f = next_frame(&mut bob).await;
    let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!()
    };
    assert_eq!(
        &e.content[..],
        b"all",
        "bob got the broadcast but not the room push"
    );

    let online = admin(
        &server,
        "GET",
        "/api/v1/presence?users=alice,bob",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(
        (
            online["users"][0]["online"].clone(),
            online["users"][1]["online"].clone()
        ),
        (json!(true), json!(true))
    );
    alice.close().await.unwrap();
    roam_tests::poll(&server, "/api/v1/presence?users=alice", |p| {
        p["users"][0]["online"] == false
    })
    .await;
}

#[tokio::test]
async fn bad_auth_and_bad_frames_get_an_error_then_the_close() {
    let server = roam_tests::start("[limits]\nmax_packet = 1024\n");
    // Bad tokens, each named in the error frame, then DISCONNECT and the close.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret_hex =
        std::fs::read_to_string(server.data_dir().join(roam_core::auth::SECRET_FILE)).unwrap();
    let secret = hex::decode(secret_hex.trim()).unwrap();
    let signed = |aud: &str, exp: u64, did: Option<&str>, key: &[u8]| {
        let claims = roam_core::auth::Claims {
            sub: "mallory".into(),
            aud: aud.into(),
            iat: now,
            exp,
            nbf: None,
            did: did.map(Into::into),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    use pb::error::Code::{AuthExpired, AuthFailed};
    let bad_tokens = [
        ("nope".to_owned(), AuthFailed, "malformed"),
        (String::new(), AuthFailed, "missing"),
        (
            signed("roam", now - 5, None, &secret),
            AuthExpired,
            "expired",
        ),
        (
            signed("elsewhere", now + 60, None, &secret),
            AuthFailed,
            "audience",
        ),
        (
            signed("roam", now + 60, None, b"another server's secret"),
            AuthFailed,
            "signature",
        ),
        (
            signed("roam", now + 60, Some("tablet"), &secret),
            AuthFailed,
            "device",
        ),
    ];
    for (token, code, named) in &bad_tokens {
        let mut c = dial(&server).await;
        let auth = pb::Auth {
            token: token.clone(),
            device_id: "d".into(),
            ..Default::default()
        };
        c.send(Op::Auth, 1, &auth).await.unwrap();
        let frames = until_closed(&mut c).await;
        let e = error_of(&frames[0]);
        assert_eq!(e.code, *code as i32, "{named}: {e:?}");
        assert!(e.message.contains(named), "{named}: {e:?}");
        assert_eq!(frames[1].op_kind(), Some(Op::Disconnect));
    }

    // Anything before AUTH.
    let mut c = dial(&server).await;
    c.send(Op::Heartbeat, 4, &pb::Heartbeat {}).await.unwrap();
    let frames = until_closed(&mut c).await;
    assert_eq!(
        error_of(&frames[0]).code,
        pb::error::Code::AuthRequired as i32
    );

    // Malformed and oversize frames, each on its own connection, after a good AUTH.
    let bad_version = [0, 0, 0, 16, 0, 16, 0, 9, 0, 0, 0, 3, 0, 0, 0, 1];
    let oversize = [0, 0, 0x40, 0, 0, 16, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1];
    for (bytes, code) in [
        (&bad_version[..], pb::error::Code::UnsupportedVersion),
        (&oversize[..], pb::error::Code::FrameTooLarge),
        (&[0, 0, 0, 4][..], pb::error::Code::BadFrame),
    ] {
        let (mut c, _) = login(&server, "mallory", "m", &[]).await;
        c.send_raw(bytes).await.unwrap();
        let frames = until_closed(&mut c).await;
        assert_eq!(error_of(&frames[0]).code, code as i32, "{bytes:?}");
        assert_eq!(frames[1].op_kind(), Some(Op::Disconnect));
    }
    let metrics = admin(&server, "GET", "/metrics", None, Some("")).await.body;
    for needle in [
        "roam_edge_closes_total{reason=\"protocol\"} 10",
        "roam_edge_frames_in_total{transport=\"raw\"}",
        "roam_edge_writes_total{transport=\"raw\"}",
        "roam_edge_bytes_out_total{transport=\"raw\"}",
        "roam_edge_auth_failures_total{reason=\"auth_failed\"} 5",
        "roam_edge_auth_failures_total{reason=\"auth_expired\"} 1",
        "roam_edge_heartbeat_interval_seconds_count 3",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }
    // The server is unharmed.
    let (mut ok, _) = login(&server, "alice", "a", &[]).await;
    ok.send(Op::Heartbeat, 2, &pb::Heartbeat {}).await.unwrap();
    assert_eq!(
        next_frame(&mut ok).await.op_kind(),
        Some(Op::HeartbeatReply)
    );
}

#[tokio::test]
async fn a_client_that_never_authenticates_is_closed() {
    let server = roam_tests::start("[edge]\nauth_timeout_secs = 1\n");
    let mut c = dial(&server).await;
    let frames = until_closed(&mut c).await;
    assert_eq!(
        error_of(&frames[0]).code,
        pb::error::Code::AuthRequired as i32
    );
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_elsewhere() {
    let server = roam_tests::start("");
    let (mut c, _) = login(&server, "alice", "a", &[]).await;
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    let frames = until_closed(&mut c).await;
    let d: pb::Disconnect = frames.last().expect("a DISCONNECT").decode_body().unwrap();
    assert_eq!(d.reason, pb::disconnect::Reason::Drain as i32);
    assert!(d.reconnect);
    assert_eq!(stopping.await.unwrap().unwrap().code(), Some(0));
}

/// Pushes 60 KB messages to `user` until the edge reports a queue overflow (the client's
/// socket buffers full, then its outbox), at most 1,000 of them.
async fn flood_until_overflow(server: &ChildServer, user: &str) {
    let body = json!({"users": [user], "content": "x".repeat(60_000)}).to_string();
    for i in 0..1000 {
        let r = admin(server, "POST", "/api/v1/push/users", Some(&body), None).await;
        if r.status == 429 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.status, 202, "{r:?}");
        if i % 10 == 9 && metric(server, "roam_edge_queue_overflows_total").await >= 1.0 {
            return;
        }
    }
    panic!("no queue overflow after 1,000 pushes");
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_disconnect_slow_and_others_do_not_notice() {
    let server = roam_tests::start("[edge]\noutbox = 8\nwrite_timeout_secs = 60\n");
    let (mut alice, _) = login(&server, "alice", "a", &[]).await;
    let (mut bob, _) = login(&server, "bob", "b", &[]).await;
    // Alice stops reading; her pushes pile up until her queue overflows.
    flood_until_overflow(&server, "alice").await;
    let r = roam_tests::push(
        &server,
        "users",
        json!({"users": ["bob"], "content": "still served"}),
    )
    .await;
    assert_eq!(r.status, 202);
    let f = next_frame(&mut bob).await;
    let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!("{f:?}")
    };
    assert_eq!(&e.content[..], b"still served");
    // Alice reads again: what was written, then DISCONNECT(slow), then the close.
    let frames = until_closed(&mut alice).await;
    let last = frames.last().unwrap();
    assert_eq!(last.op_kind(), Some(Op::Disconnect), "{last:?}");
    let d: pb::Disconnect = last.decode_body().unwrap();
    assert_eq!(d.reason, pb::disconnect::Reason::Slow as i32, "{d:?}");
    assert!(frames.len() > 2, "pushes came before the DISCONNECT");
    assert_eq!(
        metric(&server, "roam_edge_closes_total{reason=\"slow\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_after_the_write_timeout() {
    let server = roam_tests::start("[edge]\noutbox = 8\nwrite_timeout_secs = 1\n");
    let (_alice, _) = login(&server, "alice", "a", &[]).await;
    flood_until_overflow(&server, "alice").await;
    // The blocked write times out: the edge closes the connection and core forgets it.
    roam_tests::poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == false
    })
    .await;
    assert_eq!(
        metric(&server, "roam_edge_closes_total{reason=\"slow\"}").await,
        1.0
    );
    let (mut bob, _) = login(&server, "bob", "b", &[]).await;
    bob.send(Op::Heartbeat, 2, &pb::Heartbeat {}).await.unwrap();
    assert_eq!(
        next_frame(&mut bob).await.op_kind(),
        Some(Op::HeartbeatReply)
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_the_others_keep_working() {
    let server = roam_tests::start("[edge]\nmax_connections = 2\n");
    let (mut a, _) = login(&server, "alice", "a", &[]).await;
    let (_b, _) = login(&server, "bob", "b", &[]).await;
    // A third raw connection is told to come back later.
    let mut c = dial(&server).await;
    let frames = until_closed(&mut c).await;
    let d: pb::Disconnect = frames.last().expect("a DISCONNECT").decode_body().unwrap();
    assert_eq!(d.reason, pb::disconnect::Reason::Limit as i32, "{d:?}");
    assert!(d.reconnect);
    // So is a WebSocket, with a 503 and a JSON error.
    let stream = tokio::net::TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(roam_tls::client_config(
        roam_tls::roots_from_pem(&server.dev_cert()).unwrap(),
        &[b"http/1.1"],
    ))
    .connect(
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        stream,
    )
    .await
    .unwrap();
    let refused = tokio_tungstenite::client_async("wss://localhost/v1/ws", tls).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(r)) = refused else {
        panic!("the WebSocket was not refused: {refused:?}");
    };
    assert_eq!(r.status(), 503);
    // The admitted ones are unaffected.
    a.send(Op::Heartbeat, 2, &pb::Heartbeat {}).await.unwrap();
    assert_eq!(next_frame(&mut a).await.op_kind(), Some(Op::HeartbeatReply));
}

#[tokio::test]
async fn rooms_per_connection_are_capped_for_auth_and_room_join() {
    let server = roam_tests::start("[edge]\nmax_rooms_per_conn = 2\n");
    // AUTH's list is cut to the cap.
    let (mut c, _) = login(&server, "alice", "a", &["r1", "r2", "r3"]).await;
    let join = |room: &str| pb::Room { room: room.into() };
    c.send(Op::RoomJoin, 2, &join("r4")).await.unwrap();
    let e = error_of(&next_frame(&mut c).await);
    assert_eq!(e.code, pb::error::Code::InvalidArgument as i32, "{e:?}");
    assert!(e.message.contains("at most 2 rooms"), "{e:?}");
    // Rejoining a room it is in is not a new one; leaving makes room for another.
    c.send(Op::RoomJoin, 3, &join("r1")).await.unwrap();
    let f = next_frame(&mut c).await;
    assert_eq!(f.op_kind(), Some(Op::RoomJoinReply), "{f:?}");
    let reply: pb::RoomReply = f.decode_body().unwrap();
    assert_eq!(reply.rooms, ["r1", "r2"]);
    c.send(Op::RoomLeave, 4, &join("r2")).await.unwrap();
    assert_eq!(next_frame(&mut c).await.op_kind(), Some(Op::RoomLeaveReply));
    c.send(Op::RoomJoin, 5, &join("r4")).await.unwrap();
    let reply: pb::RoomReply = next_frame(&mut c).await.decode_body().unwrap();
    assert_eq!(reply.rooms, ["r1", "r4"]);
}

/// AUTH, HEARTBEAT and ROOM_JOIN in one write: what follows AUTH is held until core answers
/// it, then handled in order (AUTH_REPLY first); after a refused AUTH each held frame gets
/// an ERROR before the DISCONNECT.
#[tokio::test]
async fn frames_sent_with_auth_in_one_flight_are_handled_after_auth_reply() {
    let server = roam_tests::start("");
    let flight = |token: String| {
        let auth = pb::Auth {
            token,
            device_id: "phone".into(),
            platform: "test".into(),
            rooms: Vec::new(),
        };
        let mut bytes = roam_proto::frame_of(Op::Auth, 1, &auth).unwrap().to_vec();
        bytes
            .extend_from_slice(&roam_proto::frame_of(Op::Heartbeat, 2, &pb::Heartbeat {}).unwrap());
        let room = pb::Room {
            room: "lobby".into(),
        };
        bytes.extend_from_slice(&roam_proto::frame_of(Op::RoomJoin, 3, &room).unwrap());
        bytes
    };
    let mut c = dial(&server).await;
    c.send_raw(&flight(token(&server, "alice"))).await.unwrap();
    let first = next_frame(&mut c).await;
    assert_eq!((first.op_kind(), first.seq), (Some(Op::AuthReply), 1));
    // HEARTBEAT goes to core and ROOM_JOIN is answered at the edge: either may come first.
    let mut answers = [next_frame(&mut c).await, next_frame(&mut c).await];
    answers.sort_by_key(|f| f.seq);
    assert_eq!(
        answers
            .iter()
            .map(|f| (f.op_kind(), f.seq))
            .collect::<Vec<_>>(),
        [(Some(Op::HeartbeatReply), 2), (Some(Op::RoomJoinReply), 3)]
    );
    let joined: pb::RoomReply = answers[1].decode_body().unwrap();
    assert_eq!(joined.rooms, ["lobby"]);

    let mut refused = dial(&server).await;
    refused.send_raw(&flight("nope".into())).await.unwrap();
    let frames = until_closed(&mut refused).await;
    let ops: Vec<_> = frames.iter().map(|f| (f.op_kind(), f.seq)).collect();
    assert_eq!(
        ops,
        [
            (Some(Op::Error), 1),
            (Some(Op::Error), 2),
            (Some(Op::Error), 3),
            (Some(Op::Disconnect), 0)
        ]
    );
    for held in &frames[1..3] {
        assert_eq!(error_of(held).code(), pb::error::Code::AuthFailed);
    }
}
