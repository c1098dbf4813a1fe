//! The offline-notification webhook through the real binary: a stored message for a user with
//! no online device reaches a receiver on loopback, signed, and survives its first failures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::Mac;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use roam_client::raw::RawConnection;
use roam_proto::Op;
use roam_proto::client::v1 as pb;
use roam_tests::{auth, next_frame, raw_login};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Seen = mpsc::UnboundedReceiver<(http::HeaderMap, Bytes)>;

/// A receiver on 127.0.0.1:0 that answers 503 to its first `fail` requests, then 200.
async fn receiver(fail: usize) -> (std::net::SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tx, count) = (tx.clone(), count.clone());
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (tx, count) = (tx.clone(), count.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send((parts.headers, body));
                    let status = if n < fail { 503 } else { 200 };
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, rx)
}

async fn next_request(seen: &mut Seen) -> (http::HeaderMap, Bytes) {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("no webhook request within 10 s")
        .unwrap()
}

/// Sends a message and returns its SEND_ACK.
async fn send(c: &mut RawConnection, seq: u32, to: &str, id: &str) -> pb::SendAck {
    let s = pb::Send {
        to: to.into(),
        client_msg_id: id.into(),
        content: Bytes::from_static(b"are you there?"),
        content_type: String::new(),
    };
    c.send(Op::Send, seq, &s).await.unwrap();
    loop {
        let f = next_frame(c).await;
        if f.op_kind() == Some(Op::SendAck) && f.seq == seq {
            return f.decode_body().unwrap();
        }
        assert_ne!(f.op_kind(), Some(Op::Error), "{f:?}");
    }
}

#[tokio::test]
async fn an_offline_recipient_is_notified_signed_and_retries_survive_a_failing_receiver() {
    let (addr, mut seen) = receiver(2).await;
    // One delivery at a time: notices reach the receiver in the order they were queued.
    let server = roam_tests::start(&format!(
        "[webhook]\nurl = \"http://{addr}/hook\"\nconcurrency = 1\nbackoff_base_ms = 1\nbackoff_max_ms = 5\n"
    ));
    let secret = std::fs::read_to_string(server.data_dir().join("webhook-secret")).unwrap();
    let secret = hex::decode(secret.trim()).unwrap();
    let mut alice = raw_login(&server, &auth(&server, "alice", "alice-phone"))
        .await
        .0;
    let ack = send(&mut alice, 2, "bob", "m1").await;

    for attempt in 1..=3 {
        let (headers, body) = next_request(&mut seen).await;
        let signature = headers["x-roam-signature"].to_str().unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(&body);
        mac.verify_slice(&hex::decode(signature.strip_prefix("sha256=").unwrap()).unwrap())
            .expect("signed with <data>/webhook-secret");
        let notice: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(notice["type"], "message.offline");
        assert_eq!(notice["user"], "bob");
        assert_eq!(notice["from"], "alice");
        assert_eq!(notice["conversation"], "alice", "as bob names it");
        assert_eq!(notice["message_id"], ack.id);
        assert_eq!(notice["seq"], 1, "the first entry of bob's inbox");
        assert_eq!(notice["attempt"], attempt, "two 503s, then delivered");
    }
    assert_eq!(
        roam_tests::metric(&server, "roam_core_webhook_retried_total").await,
        2.0
    );

    // Online recipients are not notified: bob's phone gets the PUSH, only carol a notice.
    let mut bob = raw_login(&server, &auth(&server, "bob", "bob-phone"))
        .await
        .0;
    send(&mut alice, 3, "bob", "m2").await;
    loop {
        let f = next_frame(&mut bob).await;
        if f.op_kind() == Some(Op::Push) {
            break;
        }
    }
    send(&mut alice, 4, "carol", "m3").await;
    let (_, body) = next_request(&mut seen).await;
    let notice: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (notice["user"].as_str(), notice["attempt"].as_u64()),
        (Some("carol"), Some(1))
    );
}
