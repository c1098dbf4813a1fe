//! WebSockets on the client port: over HTTP/1.1 Upgrade, over HTTP/2 extended CONNECT (two
//! on one TCP connection), and from another stack (Python's `websockets`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use roam_bench::child::ChildServer;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, FrameDecoder, Op, encode_msg};
use roam_tests::admin;
use roam_tests::tls;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use roam_tests::token;

fn frame<M: prost::Message>(op: Op, seq: u32, msg: &M) -> Message {
    let mut b = BytesMut::new();
    encode_msg(op, seq, msg, &mut b).unwrap();
    Message::Binary(b.freeze())
}

/// The next frames of the next binary message.
async fn frames<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Vec<Frame> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no message within 5 s")
            .expect("the WebSocket ended")
            .unwrap();
        if let Message::Binary(mut bytes) = msg {
            let mut out = Vec::new();
            while let Some(f) = FrameDecoder::default().decode_bytes(&mut bytes).unwrap() {
                out.push(f);
            }
            return out;
        }
    }
}

async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    server: &ChildServer,
    user: &str,
    device: &str,
) {
    let a = pb::Auth {
        token: token(server, user),
        device_id: device.into(),
        ..Default::default()
    };
    ws.send(frame(Op::Auth, 1, &a)).await.unwrap();
    let f = &frames(ws).await[0];
    assert_eq!(f.op_kind(), Some(Op::AuthReply), "{f:?}");
}

/// A WebSocket over HTTP/1.1, authenticated as `user` on `device`.
async fn login_http11(
    server: &ChildServer,
    user: &str,
    device: &str,
) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = tls(server, b"http/1.1").await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/v1/ws", stream)
        .await
        .unwrap();
    auth(&mut ws, server, user, device).await;
    ws
}

async fn expect_push<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    content: &str,
) {
    let f = &frames(ws).await[0];
    let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!("expected a push, got {f:?}");
    };
    assert_eq!(&e.content[..], content.as_bytes());
}

#[tokio::test]
async fn websocket_over_http11_authenticates_heartbeats_and_receives_pushes() {
    let server = roam_tests::start("");
    let mut ws = login_http11(&server, "alice", "alice-web").await;
    ws.send(frame(Op::Heartbeat, 2, &pb::Heartbeat {}))
        .await
        .unwrap();
    assert_eq!(frames(&mut ws).await[0].op_kind(), Some(Op::HeartbeatReply));
    // Two frames in one message are both handled.
    let mut two = BytesMut::new();
    encode_msg(Op::RoomJoin, 3, &pb::Room { room: "a".into() }, &mut two).unwrap();
    encode_msg(Op::RoomJoin, 4, &pb::Room { room: "b".into() }, &mut two).unwrap();
    ws.send(Message::Binary(two.freeze())).await.unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        seqs.extend(frames(&mut ws).await.iter().map(|f| f.seq));
    }
    assert_eq!(seqs, [3, 4]);
    // Room membership travels to core on the edge link, apart from the API: wait for it.
    roam_tests::wait_for_rooms(&server, 2).await;
    let r = roam_tests::push(&server, "rooms", json!({"rooms": ["b"], "content": "to b"})).await;
    assert_eq!(r.json()["queued"], 1);
    expect_push(&mut ws, "to b").await;
    // Text messages are not frames: the connection is closed.
    ws.send(Message::Text("hello".into())).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok());
}

#[tokio::test]
async fn two_websockets_share_one_http2_connection() {
    let server = roam_tests::start("");
    let stream = tls(&server, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let resp = send
            .send_request(roam_tests::websocket_over_h2())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "extended CONNECT accepted");
        let upgraded = hyper::upgrade::on(resp).await.unwrap();
        sockets.push(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await,
        );
    }
    let (mut a, mut b) = (sockets.remove(0), sockets.remove(0));
    auth(&mut a, &server, "alice", "a-tab").await;
    auth(&mut b, &server, "bob", "b-tab").await;
    roam_tests::push(
        &server,
        "users",
        serde_json::json!({"users": ["bob"], "content": "for bob"}),
    )
    .await;
    roam_tests::push(
        &server,
        "users",
        serde_json::json!({"users": ["alice"], "content": "for alice"}),
    )
    .await;
    expect_push(&mut b, "for bob").await;
    expect_push(&mut a, "for alice").await;
    let total = admin(&server, "GET", "/api/v1/online/total", None, None)
        .await
        .json();
    assert!(total["edges"] == 1);
    assert_eq!(
        roam_tests::metric(
            &server,
            "roam_edge_sessions{transport=\"ws\",http_version=\"2\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_python_websockets_client_works_too() {
    let server = roam_tests::start("");
    let script = r#"
import asyncio, ssl, struct, sys
import websockets

def frame(op, seq, body):
    return struct.pack(">IHHII", 16 + len(body), 16, 1, op, seq) + body

def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])

def pb_str(field, s):
    b = s.encode()
    return bytes([field << 3 | 2]) + varint(len(b)) + b

async def main(url, cafile, token):
    ctx = ssl.create_default_context(cafile=cafile)
    async with websockets.connect(url, ssl=ctx, server_hostname="localhost") as ws:
        await ws.send(frame(1, 1, pb_str(1, token) + pb_str(2, "py-device")))
        reply = await asyncio.wait_for(ws.recv(), 5)
        length, hlen, ver, op, seq = struct.unpack(">IHHII", reply[:16])
        assert op == 2 and seq == 1, (op, seq)
        await ws.send(frame(3, 2, b""))
        reply = await asyncio.wait_for(ws.recv(), 5)
        assert struct.unpack(">IHHII", reply[:16])[3] == 4
        print("ok")

asyncio.run(main(*sys.argv[1:]))
"#;
    let url = format!(
        "wss://localhost:{}/v1/ws",
        server.addr("client_tcp").unwrap().port()
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(url)
        .arg(server.dev_cert())
        .arg(token(&server, "py"))
        .output()
        .await
        .expect("python3 runs (scripts/setup installs the websockets package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "python client failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn shutdown_sends_websocket_clients_disconnect_drain() {
    let server = roam_tests::start("");
    let mut ws = login_http11(&server, "alice", "alice-web").await;
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    let f = &frames(&mut ws).await[0];
    let d: pb::Disconnect = f.decode_body().unwrap();
    assert_eq!(
        (f.op_kind(), d.reason),
        (Some(Op::Disconnect), pb::disconnect::Reason::Drain as i32)
    );
    assert_eq!(stopping.await.unwrap().unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_bad_websocket_handshake_gets_a_json_error() {
    let server = roam_tests::start("");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls(&server, b"http/1.1").await))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (headers, status, code) in [
        (&[][..], 400, "bad_handshake"),
        (
            &[("sec-websocket-version", "13")][..],
            426,
            "upgrade_required",
        ),
        (
            &[
                ("sec-websocket-version", "13"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
            ][..],
            400,
            "bad_handshake",
        ),
    ] {
        let mut req = http::Request::builder().uri("https://localhost/v1/ws");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let r = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{headers:?}");
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{headers:?}");
    }
}
