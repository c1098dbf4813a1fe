//! Stored messaging over the transports `messaging.rs` does not use: HTTP streaming
//! (`GET /v1/stream` + `POST /v1/send`), long-poll (`GET /v1/poll` + `POST /v1/send`) and
//! gRPC (`Gateway/Connect`), each chatting with a raw client through a real `roam serve`
//! with the same guarantees (acks in send order, every inbox seq once and in order, SYNC
//! holding everything, a resent `client_msg_id` answered with the first ack); and a
//! WebSocket client sending AUTH + SYNC + SEND in one flight.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use roam_bench::child::ChildServer;
use roam_client::raw::RawConnection;
use roam_proto::client::v1 as pb;
use roam_proto::client::v1::gateway_client::GatewayClient;
use roam_proto::{Frame, FrameDecoder, Op, encode_msg};
use roam_tests::{auth, next_frame, raw_login, token};
use tokio::sync::mpsc;

/// No per-user send rate nor per-connection request rate: the tests send bursts.
const UNLIMITED: &str =
    "[messaging]\nsend_rate = 0\n[edge]\nrate_burst = 100000\nrate_per_sec = 100000\n";
/// Messages each side sends.
const N: usize = 30;

fn send_frame(to: &str, client_msg_id: &str) -> pb::Send {
    pb::Send {
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        content: client_msg_id.as_bytes().to_vec().into(),
        content_type: String::new(),
    }
}

fn text(m: &pb::Message) -> String {
    String::from_utf8(m.content.to_vec()).unwrap()
}

fn pushed(f: &Frame) -> pb::Message {
    assert_eq!(f.op_kind(), Some(Op::Push), "{f:?}");
    let Some(pb::push::Kind::Message(m)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!("not a stored message: {f:?}")
    };
    m
}

/// `alice`'s SENDs a0..a{N-1} as frames with client seqs 100.., back to back.
fn alices_sends() -> Bytes {
    let mut b = BytesMut::new();
    for i in 0..N {
        encode_msg(
            Op::Send,
            100 + i as u32,
            &send_frame("bob", &format!("a{i}")),
            &mut b,
        )
        .unwrap();
    }
    b.freeze()
}

/// The SEND_ACKs of alice's N sends, in order: client seqs 100.. and inbox seqs 1..=N.
fn check_acks(frames: &[Frame]) -> Vec<pb::SendAck> {
    assert_eq!(frames.len(), N, "{frames:?}");
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            assert_eq!((f.op_kind(), f.seq), (Some(Op::SendAck), 100 + i as u32));
            let ack: pb::SendAck = f.decode_body().unwrap();
            assert_eq!((ack.seq, ack.duplicate), (i as u64 + 1, false), "{ack:?}");
            ack
        })
        .collect()
}

/// Bob (raw) gets alice's N messages pushed once and in order, then sends N back
/// (b0..b{N-1}), pipelined; returns once they are acknowledged.
async fn bob_reads_and_answers(bob: &mut RawConnection) {
    for i in 0..N {
        let m = pushed(&next_frame(bob).await);
        assert_eq!((text(&m), m.seq), (format!("a{i}"), i as u64 + 1));
    }
    for i in 0..N {
        bob.send(
            Op::Send,
            500 + i as u32,
            &send_frame("alice", &format!("b{i}")),
        )
        .await
        .unwrap();
    }
    for i in 0..N {
        let f = next_frame(bob).await;
        assert_eq!((f.op_kind(), f.seq), (Some(Op::SendAck), 500 + i as u32));
    }
}

/// Alice's pushes of bob's answers: seqs N+1..=2N, once, in order.
fn check_answers(frames: &[Frame]) {
    let got: Vec<(String, u64)> = frames
        .iter()
        .map(pushed)
        .map(|m| (text(&m), m.seq))
        .collect();
    let want: Vec<(String, u64)> = (0..N)
        .map(|i| (format!("b{i}"), (N + i) as u64 + 1))
        .collect();
    assert_eq!(got, want);
}

/// A SYNC from the start holds both sides' messages, in inbox order.
fn check_sync(f: &Frame) {
    assert_eq!((f.op_kind(), f.seq), (Some(Op::SyncReply), 7), "{f:?}");
    let reply: pb::SyncReply = f.decode_body().unwrap();
    let want: Vec<String> = (0..N)
        .map(|i| format!("a{i}"))
        .chain((0..N).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(reply.messages.iter().map(text).collect::<Vec<_>>(), want);
    let seqs: Vec<u64> = reply.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=2 * N as u64).collect::<Vec<_>>());
}

/// SYNC (client seq 7) and a resend of a3 (client seq 8).
fn sync_and_resend() -> Bytes {
    let mut b = BytesMut::new();
    encode_msg(
        Op::Sync,
        7,
        &pb::Sync {
            limit: 1000,
            ..Default::default()
        },
        &mut b,
    )
    .unwrap();
    encode_msg(Op::Send, 8, &send_frame("bob", "a3"), &mut b).unwrap();
    b.freeze()
}

/// The resend of a3 is answered with the first ack, marked duplicate.
fn check_resend(f: &Frame, first: &pb::SendAck) {
    assert_eq!((f.op_kind(), f.seq), (Some(Op::SendAck), 8), "{f:?}");
    let ack: pb::SendAck = f.decode_body().unwrap();
    assert_eq!(
        (ack.id, ack.seq, ack.duplicate),
        (first.id, first.seq, true)
    );
}

// ---- HTTP ----

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2(server: &ChildServer) -> H2 {
    let tls = TokioIo::new(roam_tests::tls(server, b"h2").await);
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), tls)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h1(server: &ChildServer) -> H1 {
    let tls = TokioIo::new(roam_tests::tls(server, b"http/1.1").await);
    let (send, conn) = hyper::client::conn::http1::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

fn request(
    method: Method,
    path: &str,
    token: &str,
    session: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {token}"));
    if let Some(s) = session {
        r = r.header("roam-session", s);
    }
    r.body(Full::new(body)).unwrap()
}

fn header(r: &Response<Incoming>, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn frames_of(mut bytes: Bytes) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = FrameDecoder::default().decode_bytes(&mut bytes).unwrap() {
        out.push(f);
    }
    assert!(bytes.is_empty(), "a partial frame is left");
    out
}

async fn body(r: Response<Incoming>) -> Bytes {
    r.into_body().collect().await.unwrap().to_bytes()
}

/// `POST /v1/send` of `frames`; the response body holds their replies.
async fn post_send(c: &mut H2, token: &str, session: &str, frames: Bytes) -> Vec<Frame> {
    let r = c
        .send_request(request(
            Method::POST,
            "/v1/send",
            token,
            Some(session),
            frames,
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    frames_of(body(r).await)
}

/// Reads `n` frames from a streamed body (10 s at most).
async fn read_stream(body: &mut Incoming, buf: &mut BytesMut, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let decoder = FrameDecoder::default();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while out.len() < n
                && let Some(f) = decoder.decode(buf).unwrap()
            {
                out.push(f);
            }
            if out.len() >= n {
                break;
            }
            let chunk = body.frame().await.expect("the stream ended").unwrap();
            if let Ok(data) = chunk.into_data() {
                buf.extend_from_slice(&data);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} frames came: {out:?}", out.len()));
    out
}

#[tokio::test]
async fn http_stream_and_send_chat_with_a_raw_client() {
    let server = roam_tests::start(UNLIMITED);
    let mut bob = raw_login(&server, &auth(&server, "bob", "raw")).await.0;
    let alice = token(&server, "alice");
    let mut c = h2(&server).await;
    let r = c
        .send_request(request(
            Method::GET,
            "/v1/stream?device=web",
            &alice,
            None,
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = header(&r, "roam-session");
    let (mut stream, mut buf) = (r.into_body(), BytesMut::new());
    let first = &read_stream(&mut stream, &mut buf, 1).await[0];
    assert_eq!(first.op_kind(), Some(Op::AuthReply));

    let acks = check_acks(&post_send(&mut c, &alice, &session, alices_sends()).await);
    bob_reads_and_answers(&mut bob).await;
    check_answers(&read_stream(&mut stream, &mut buf, N).await);
    let replies = post_send(&mut c, &alice, &session, sync_and_resend()).await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    check_sync(&replies[0]);
    check_resend(&replies[1], &acks[3]);
}

#[tokio::test]
async fn long_polls_and_send_chat_with_a_raw_client() {
    let server = roam_tests::start(UNLIMITED);
    let mut bob = raw_login(&server, &auth(&server, "bob", "raw")).await.0;
    let alice = token(&server, "alice");
    let mut poller = h1(&server).await;
    let r = poller
        .send_request(request(
            Method::GET,
            "/v1/poll?device=web",
            &alice,
            None,
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = header(&r, "roam-session");
    let mut cursor: u64 = header(&r, "roam-cursor").parse().unwrap();
    assert_eq!(frames_of(body(r).await)[0].op_kind(), Some(Op::AuthReply));

    let mut up = h2(&server).await;
    let acks = check_acks(&post_send(&mut up, &alice, &session, alices_sends()).await);
    bob_reads_and_answers(&mut bob).await;
    // Polls until bob's N messages came, each poll resuming at the last cursor.
    let mut got = Vec::new();
    for _ in 0..100 {
        if got.len() >= N {
            break;
        }
        let path = format!("/v1/poll?cursor={cursor}&wait=10");
        let r = poller
            .send_request(request(
                Method::GET,
                &path,
                &alice,
                Some(&session),
                Bytes::new(),
            ))
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status == StatusCode::OK || status == StatusCode::NO_CONTENT,
            "{status}"
        );
        cursor = header(&r, "roam-cursor").parse().unwrap();
        got.extend(frames_of(body(r).await));
    }
    check_answers(&got);
    let replies = post_send(&mut up, &alice, &session, sync_and_resend()).await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    check_sync(&replies[0]);
    check_resend(&replies[1], &acks[3]);
}

// ---- gRPC ----

async fn grpc_client(server: &ChildServer) -> GatewayClient<tonic::transport::Channel> {
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).unwrap();
    let config = roam_tls::client_config(roots, &[b"h2"]);
    let addr = server.addr("client_tcp").unwrap();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    GatewayClient::new(channel)
}

async fn next_grpc(stream: &mut tonic::Streaming<pb::Frame>) -> Frame {
    let f = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no frame within 10 s")
        .unwrap()
        .expect("the stream ended");
    Frame {
        op: f.op,
        seq: f.seq,
        body: f.body,
    }
}

/// Frames encoded back to back, as gRPC messages.
fn grpc_frames(mut bytes: Bytes) -> Vec<pb::Frame> {
    frames_of(std::mem::take(&mut bytes))
        .into_iter()
        .map(|f| pb::Frame {
            op: f.op,
            seq: f.seq,
            body: f.body,
        })
        .collect()
}

#[tokio::test]
async fn grpc_connect_chats_with_a_raw_client() {
    let server = roam_tests::start(UNLIMITED);
    let mut bob = raw_login(&server, &auth(&server, "bob", "raw")).await.0;
    let (tx, rx) = mpsc::channel(4 * N);
    let mut down = grpc_client(&server)
        .await
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let auth = pb::Auth {
        token: token(&server, "alice"),
        device_id: "svc".into(),
        ..Default::default()
    };
    tx.send(pb::Frame {
        op: Op::Auth.code(),
        seq: 1,
        body: auth.encode_to_vec().into(),
    })
    .await
    .unwrap();
    assert_eq!(next_grpc(&mut down).await.op_kind(), Some(Op::AuthReply));
    for f in grpc_frames(alices_sends()) {
        tx.send(f).await.unwrap();
    }
    let mut acks = Vec::new();
    for _ in 0..N {
        acks.push(next_grpc(&mut down).await);
    }
    let acks = check_acks(&acks);
    bob_reads_and_answers(&mut bob).await;
    let mut answers = Vec::new();
    for _ in 0..N {
        answers.push(next_grpc(&mut down).await);
    }
    check_answers(&answers);
    for f in grpc_frames(sync_and_resend()) {
        tx.send(f).await.unwrap();
    }
    let mut replies = [next_grpc(&mut down).await, next_grpc(&mut down).await];
    replies.sort_by_key(|f| f.seq);
    check_sync(&replies[0]);
    check_resend(&replies[1], &acks[3]);
}

// ---- WebSocket, one flight ----

async fn next_ws(c: &mut roam_client::ws::WsConnection) -> Frame {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("no frame within 10 s")
        .unwrap()
        .expect("the server closed the connection")
}

/// A reconnecting client sends AUTH, SYNC and a SEND without waiting: AUTH_REPLY comes
/// first, the SYNC holds what arrived while it was away, the SEND is stored and reaches
/// the peer.
#[tokio::test]
async fn a_websocket_client_sends_auth_sync_and_send_in_one_flight() {
    let server = roam_tests::start(UNLIMITED);
    let mut bob = raw_login(&server, &auth(&server, "bob", "raw")).await.0;
    for i in 0..3u32 {
        bob.send(Op::Send, 10 + i, &send_frame("alice", &format!("b{i}")))
            .await
            .unwrap();
        assert_eq!(next_frame(&mut bob).await.op_kind(), Some(Op::SendAck));
    }
    let addr = server.addr("client_tcp").unwrap();
    let mut alice = roam_client::ws::WsConnection::connect(addr, &server.dev_cert())
        .await
        .unwrap();
    let auth = pb::Auth {
        token: token(&server, "alice"),
        device_id: "phone".into(),
        ..Default::default()
    };
    alice.send(Op::Auth, 1, &auth).await.unwrap();
    alice.send(Op::Sync, 2, &pb::Sync::default()).await.unwrap();
    alice
        .send(Op::Send, 3, &send_frame("bob", "a0"))
        .await
        .unwrap();
    assert_eq!(next_ws(&mut alice).await.op_kind(), Some(Op::AuthReply));
    let mut replies = [next_ws(&mut alice).await, next_ws(&mut alice).await];
    replies.sort_by_key(|f| f.seq);
    assert_eq!(replies[0].op_kind(), Some(Op::SyncReply), "{replies:?}");
    let sync: pb::SyncReply = replies[0].decode_body().unwrap();
    assert_eq!(
        sync.messages.iter().map(text).collect::<Vec<_>>(),
        ["b0", "b1", "b2"]
    );
    assert_eq!(replies[1].op_kind(), Some(Op::SendAck), "{replies:?}");
    let ack: pb::SendAck = replies[1].decode_body().unwrap();
    assert_eq!((ack.seq, ack.duplicate), (4, false));
    let m = pushed(&next_frame(&mut bob).await);
    assert_eq!((text(&m), m.seq), ("a0".into(), 4));
}
