//! Device ids are per user, end to end: two users' clients on the raw port with the same
//! `device_id`, pushes to devices through the business API, all against a real `roam serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use roam_bench::child::ChildServer;
use roam_client::raw::RawConnection;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, Op};
use roam_tests::{admin, auth, next_frame, push, raw_login};
use serde_json::{Value, json};

/// The connection is still served: a HEARTBEAT's reply is the next frame (so no DISCONNECT,
/// and no push, was queued for it before).
async fn still_served(c: &mut RawConnection, who: &str) {
    c.send(Op::Heartbeat, 9, &pb::Heartbeat {}).await.unwrap();
    let f = next_frame(c).await;
    assert_eq!(
        (f.op_kind(), f.seq),
        (Some(Op::HeartbeatReply), 9),
        "{who} got {f:?}{}",
        disconnect_of(&f)
    );
}

fn disconnect_of(f: &Frame) -> String {
    if f.op_kind() == Some(Op::Disconnect) {
        format!(" = {:?}", f.decode_body::<pb::Disconnect>().unwrap())
    } else {
        String::new()
    }
}

/// The content of the ephemeral push `f`.
fn pushed(f: &Frame) -> String {
    assert_eq!(f.op_kind(), Some(Op::Push), "{f:?}{}", disconnect_of(f));
    let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!("not an ephemeral push: {f:?}")
    };
    String::from_utf8(e.content.to_vec()).unwrap()
}

async fn push_to(server: &ChildServer, devices: Value, content: &str) -> u64 {
    let r = push(
        server,
        "devices",
        json!({"devices": devices, "content": content}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["queued"].as_u64().unwrap()
}

#[tokio::test]
async fn a_device_id_never_reaches_across_users() {
    let server = roam_tests::start("");
    let mut bob = login(&server, "bob", "phone").await;
    // Alice's client picks the same device id: it is her own phone, not bob's.
    let mut alice = login(&server, "alice", "phone").await;
    still_served(&mut bob, "bob").await;

    let p = admin(
        &server,
        "GET",
        "/api/v1/presence?users=alice,bob",
        None,
        None,
    )
    .await
    .json();
    for (i, user) in ["alice", "bob"].iter().enumerate() {
        let u = &p["users"][i];
        assert_eq!(
            (u["user"].as_str(), u["online"].as_bool()),
            (Some(*user), Some(true)),
            "{p}"
        );
        assert_eq!(u["devices"][0]["device"], "phone", "{p}");
    }

    // A push to bob's phone reaches bob only; one to alice's, alice only. (Both travel the
    // same edge link in order, so each client's next frame shows what it was sent.)
    assert_eq!(
        push_to(
            &server,
            json!([{"user": "bob", "device": "phone"}]),
            "to-bob"
        )
        .await,
        1
    );
    assert_eq!(
        push_to(
            &server,
            json!([{"user": "alice", "device": "phone"}]),
            "to-alice"
        )
        .await,
        1
    );
    assert_eq!(pushed(&next_frame(&mut alice).await), "to-alice");
    assert_eq!(pushed(&next_frame(&mut bob).await), "to-bob");
    still_served(&mut bob, "bob").await;
    // A device of a user who never connected it reaches no one.
    assert_eq!(
        push_to(&server, json!([{"user": "carol", "device": "phone"}]), "x").await,
        0
    );

    // Bob's phone connecting again still replaces bob's first connection, and only it.
    let mut bob2 = login(&server, "bob", "phone").await;
    let f = next_frame(&mut bob).await;
    assert_eq!(f.op_kind(), Some(Op::Disconnect), "{f:?}");
    let d: pb::Disconnect = f.decode_body().unwrap();
    assert_eq!(d.reason, pb::disconnect::Reason::Replaced as i32, "{d:?}");
    still_served(&mut alice, "alice").await;
    assert_eq!(
        push_to(
            &server,
            json!([{"user": "bob", "device": "phone"}]),
            "bob-2"
        )
        .await,
        1
    );
    assert_eq!(pushed(&next_frame(&mut bob2).await), "bob-2");
    still_served(&mut alice, "alice").await;
}

#[tokio::test]
async fn a_push_to_devices_names_each_devices_user() {
    let server = roam_tests::start("");
    for (body, needle) in [
        (
            json!({"devices": ["phone"], "content": "x"}),
            "devices[0]: each device is an object",
        ),
        (
            json!({"devices": [{"device": "phone"}], "content": "x"}),
            "missing field `user`",
        ),
        (
            json!({"devices": [{"user": "bob", "device": ""}], "content": "x"}),
            "must not be empty",
        ),
        (json!({"devices": [], "content": "x"}), "at least one"),
    ] {
        let r = push(&server, "devices", body.clone()).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (400, Some("invalid_argument")),
            "{body}: {}",
            r.body
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{body}: {message}");
    }
}

async fn login(server: &ChildServer, user: &str, device: &str) -> RawConnection {
    let (c, reply) = raw_login(server, &auth(server, user, device)).await;
    assert_eq!(
        (reply.user_id.as_str(), reply.device_id.as_str()),
        (user, device)
    );
    c
}
