//! Virtual connections over plain HTTP requests on the client port: `GET /v1/stream` +
//! `POST /v1/send` over HTTP/2, `GET /v1/poll` long-polls over HTTP/1.1, `curl --http2` as a
//! client from another stack, and the JSON errors of each endpoint.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::process::Stdio;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use roam_bench::child::ChildServer;
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, FrameDecoder, Op, encode_msg};
use roam_tests::{metric, token};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

type Tls = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn tls(server: &ChildServer, alpn: &[u8]) -> Tls {
    TokioIo::new(roam_tests::tls(server, alpn).await)
}

/// An HTTP/2 connection (many requests at once).
async fn h2(server: &ChildServer) -> H2 {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), tls(server, b"h2").await)
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// An HTTP/1.1 keep-alive connection (one request at a time).
async fn h1(server: &ChildServer) -> H1 {
    let (send, conn) = hyper::client::conn::http1::handshake(tls(server, b"http/1.1").await)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A client connection that sends one request and returns its answer's head.
trait Call {
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming>;

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        session: Option<&str>,
        body: Bytes,
    ) -> Response<Incoming> {
        self.send(request(method, path, token, session, body)).await
    }

    /// `GET path` with a bearer token, opening a stream or a poll: answered 200.
    async fn open(&mut self, path: &str, token: &str) -> Response<Incoming> {
        let r = self
            .call(Method::GET, path, Some(token), None, Bytes::new())
            .await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r
    }

    /// `POST /v1/send` of `frames` to connection `session`.
    async fn send_frames(
        &mut self,
        token: &str,
        session: &str,
        frames: Bytes,
    ) -> Response<Incoming> {
        self.call(Method::POST, "/v1/send", Some(token), Some(session), frames)
            .await
    }
}

impl Call for H1 {
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        self.send_request(request).await.unwrap()
    }
}

impl Call for H2 {
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        self.send_request(request).await.unwrap()
    }
}

fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
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
    assert!(bytes.is_empty(), "a partial frame is left: {bytes:?}");
    out
}

async fn body(r: Response<Incoming>) -> Bytes {
    r.into_body().collect().await.unwrap().to_bytes()
}

async fn json_error(r: Response<Incoming>) -> (StatusCode, String) {
    let status = r.status();
    assert_eq!(header(&r, "content-type"), "application/json", "{status}");
    let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

fn encode<M: prost::Message>(frames: &[(Op, u32, &M)]) -> Bytes {
    let mut b = BytesMut::new();
    for (op, seq, msg) in frames {
        encode_msg(*op, *seq, *msg, &mut b).unwrap();
    }
    b.freeze()
}

/// Reads frames from a streamed body until `n` arrived (5 s at most).
async fn read_frames(body: &mut Incoming, buf: &mut BytesMut, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let decoder = FrameDecoder::default();
    tokio::time::timeout(Duration::from_secs(5), async {
        while out.len() < n {
            while let Some(f) = decoder.decode(buf).unwrap() {
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

fn push_content(f: &Frame) -> String {
    assert_eq!(f.op_kind(), Some(Op::Push), "{f:?}");
    let Some(pb::push::Kind::Ephemeral(e)) = f.decode_body::<pb::Push>().unwrap().kind else {
        panic!("not an ephemeral push: {f:?}")
    };
    String::from_utf8(e.content.to_vec()).unwrap()
}

async fn push_user(server: &ChildServer, user: &str, content: &str) {
    let r = roam_tests::push(
        server,
        "users",
        json!({"users": [user], "content": content}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["queued"].clone()),
        (202, json!(1)),
        "{r:?}"
    );
}

#[tokio::test]
async fn stream_and_send_share_one_http2_connection() {
    let server = roam_tests::start("");
    let alice = token(&server, "alice");
    let mut h2 = h2(&server).await;
    let r = h2.open("/v1/stream?device=phone&rooms=lobby", &alice).await;
    assert_eq!(header(&r, "content-type"), "application/vnd.roam.frames");
    assert!(
        header(&r, "alt-svc").starts_with("h3=\":"),
        "{:?}",
        r.headers()
    );
    let session = header(&r, "roam-session");
    assert_eq!(session.len(), 32);
    let mut stream = r.into_body();
    let mut buf = BytesMut::new();
    let first = &read_frames(&mut stream, &mut buf, 1).await[0];
    let reply = first.decode_body::<pb::AuthReply>().unwrap();
    assert_eq!(
        (reply.user_id.as_str(), reply.device_id.as_str()),
        ("alice", "phone")
    );

    // Requests up on the same connection; their replies come back in the POST's response.
    let up = encode(&[(Op::Heartbeat, 2, &pb::Heartbeat {})]);
    let mut up = BytesMut::from(&up[..]);
    encode_msg(
        Op::RoomJoin,
        3,
        &pb::Room {
            room: "games".into(),
        },
        &mut up,
    )
    .unwrap();
    encode_msg(Op::PushAck, 4, &pb::PushAck::default(), &mut up).unwrap();
    let r = h2.send_frames(&alice, &session, up.freeze()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let replies: Vec<_> = frames_of(body(r).await)
        .iter()
        .map(|f| (f.op_kind(), f.seq))
        .collect();
    assert_eq!(
        replies,
        [(Some(Op::HeartbeatReply), 2), (Some(Op::RoomJoinReply), 3)]
    );
    // The join through /v1/send reached core: the stream's room and this one.
    roam_tests::wait_for_rooms(&server, 2).await;

    // Pushes come down the stream.
    push_user(&server, "alice", "over the stream").await;
    let f = &read_frames(&mut stream, &mut buf, 1).await[0];
    assert_eq!(push_content(f), "over the stream");
    assert_eq!(
        metric(
            &server,
            "roam_edge_sessions{transport=\"stream\",http_version=\"2\"}"
        )
        .await,
        1.0
    );

    // The client leaves: the connection ends and its session is forgotten.
    drop(stream);
    roam_tests::poll(&server, "/api/v1/presence?users=alice", |v| {
        v["users"][0]["online"] == false
    })
    .await;
    let r = h2
        .send_frames(
            &alice,
            &session,
            encode(&[(Op::Heartbeat, 5, &pb::Heartbeat {})]),
        )
        .await;
    assert_eq!(
        json_error(r).await,
        (StatusCode::NOT_FOUND, "unknown_session".into())
    );
}

#[tokio::test]
async fn long_polls_over_http11_carry_pushes_with_cursors() {
    let server = roam_tests::start("");
    let bob = token(&server, "bob");
    let mut c = h1(&server).await;
    let r = c.open("/v1/poll?device=laptop", &bob).await;
    assert_eq!(header(&r, "roam-cursor"), "1");
    let session = header(&r, "roam-session");
    let frames = frames_of(body(r).await);
    assert_eq!(frames[0].op_kind(), Some(Op::AuthReply));

    // Nothing new: 204 at once with wait=0.
    let poll = |cursor: u64, wait: &str| {
        request(
            Method::GET,
            &format!("/v1/poll?cursor={cursor}&wait={wait}"),
            Some(&bob),
            Some(&session),
            Bytes::new(),
        )
    };
    let r = c.send_request(poll(1, "0")).await.unwrap();
    assert_eq!(
        (r.status(), header(&r, "roam-cursor")),
        (StatusCode::NO_CONTENT, "1".into())
    );
    body(r).await;

    // A parked poll is answered with a push made while it waits: the push goes once the
    // edge counts the poll as parked (`roam_edge_polls_waiting`).
    let waiting = c.send_request(poll(1, "10"));
    let push_when_parked = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metric(&server, "roam_edge_polls_waiting").await < 1.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the poll never parked"
            );
        }
        push_user(&server, "bob", "polled").await;
    };
    let (r, ()) = tokio::join!(waiting, push_when_parked);
    let r = r.unwrap();
    assert_eq!(
        (r.status(), header(&r, "roam-cursor")),
        (StatusCode::OK, "2".into())
    );
    let frames = frames_of(body(r).await);
    assert_eq!(push_content(&frames[0]), "polled");

    // Requests go up with /v1/send on another connection; replies in its response.
    let mut up = h1(&server).await;
    let r = up
        .send_frames(
            &bob,
            &session,
            encode(&[(Op::Heartbeat, 7, &pb::Heartbeat {})]),
        )
        .await;
    let frames = frames_of(body(r).await);
    assert_eq!(
        (frames[0].op_kind(), frames[0].seq),
        (Some(Op::HeartbeatReply), 7)
    );

    // Cursors: behind what was released, or ahead of the last frame, are conflicts.
    let r = c.send_request(poll(2, "0")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    body(r).await;
    for cursor in [0, 9] {
        let r = c.send_request(poll(cursor, "0")).await.unwrap();
        assert_eq!(
            json_error(r).await,
            (StatusCode::CONFLICT, "bad_cursor".into())
        );
    }
    let r = c.send_request(poll(2, "soon")).await.unwrap();
    assert_eq!(
        json_error(r).await,
        (StatusCode::BAD_REQUEST, "bad_query".into())
    );
    assert_eq!(
        metric(
            &server,
            "roam_edge_sessions{transport=\"poll\",http_version=\"1.1\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn curl_over_http2_reads_the_stream() {
    let server = roam_tests::start("");
    let addr = server.addr("client_tcp").unwrap();
    let headers = tempfile::NamedTempFile::new().unwrap();
    let mut curl = tokio::process::Command::new("curl")
        .args(["--http2", "-sS", "-N", "--max-time", "20", "--cacert"])
        .arg(server.dev_cert())
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .args([
            "-H",
            &format!("Authorization: Bearer {}", token(&server, "carol")),
        ])
        .arg("--dump-header")
        .arg(headers.path())
        .arg(format!(
            "https://localhost:{}/v1/stream?device=curl",
            addr.port()
        ))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed (scripts/setup)");
    let mut out = curl.stdout.take().unwrap();
    let mut buf = BytesMut::new();
    let decoder = FrameDecoder::default();
    let mut frames = Vec::new();
    let mut pushed = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        while frames.len() < 2 {
            if out.read_buf(&mut buf).await.unwrap() == 0 {
                panic!("curl ended after {frames:?}");
            }
            while let Some(f) = decoder.decode(&mut buf).unwrap() {
                frames.push(f);
            }
            if !frames.is_empty() && !pushed {
                push_user(&server, "carol", "to curl").await;
                pushed = true;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("curl got only {frames:?}"));
    assert_eq!(frames[0].op_kind(), Some(Op::AuthReply));
    assert_eq!(push_content(&frames[1]), "to curl");
    let head = std::fs::read_to_string(headers.path()).unwrap();
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("alt-svc: h3="), "{head}");
    curl.kill().await.unwrap();
}

async fn call(
    c: &mut H2,
    method: Method,
    path: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: Bytes,
) -> (StatusCode, String) {
    json_error(c.call(method, path, token, session, body).await).await
}

/// (method, path, token, roam-session, body) → (status, error code).
type BadRequest<'a> = (
    &'a Method,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a Bytes,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_http_requests_get_json_errors() {
    let server = roam_tests::start("[limits]\nmax_packet = 1024\n");
    let alice = token(&server, "alice");
    let mut c = h2(&server).await;
    let hb = encode(&[(Op::Heartbeat, 1, &pb::Heartbeat {})]);
    let (get, post) = (Method::GET, Method::POST);
    let empty = Bytes::new();
    #[rustfmt::skip]
    let cases: [BadRequest; 8] = [
        (&get, "/v1/stream", None, None, &empty, 401, "unauthenticated"),
        (&get, "/v1/poll", None, None, &empty, 401, "unauthenticated"),
        (&get, "/v1/stream?device=d", Some("not-a-jwt"), None, &empty, 401, "auth_failed"),
        (&post, "/v1/send", Some(&alice), None, &hb, 400, "no_session"),
        (&post, "/v1/send", Some(&alice), Some("0123"), &hb, 404, "unknown_session"),
        (&get, "/v1/poll?cursor=x", Some(&alice), Some("0123"), &empty, 404, "unknown_session"),
        (&get, "/", None, None, &empty, 404, "not_found"),
        (&get, "/v1/poll", Some(&alice), None, &empty, 400, "bad_query"),
    ];
    for (method, path, token, session, body, status, code) in cases {
        assert_eq!(
            call(&mut c, method.clone(), path, token, session, body.clone()).await,
            (StatusCode::from_u16(status).unwrap(), code.to_owned()),
            "{method} {path}"
        );
    }

    // A real poll connection, then requests that do not fit it.
    let r = c.open("/v1/poll?device=d", &alice).await;
    let session = header(&r, "roam-session");
    body(r).await;
    let s = Some(session.as_str());
    let bob = token(&server, "bob");
    assert_eq!(
        call(&mut c, Method::POST, "/v1/send", Some(&bob), s, hb.clone()).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let auth = encode(&[(Op::Auth, 9, &pb::Auth::default())]);
    let oversize = Bytes::from(vec![0, 0, 8, 0, 0, 16, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1]);
    for bad in [auth, hb.slice(..5), oversize, Bytes::new()] {
        assert_eq!(
            call(&mut c, Method::POST, "/v1/send", Some(&alice), s, bad).await,
            (StatusCode::BAD_REQUEST, "bad_frame".into())
        );
    }
    assert_eq!(
        call(
            &mut c,
            Method::POST,
            "/v1/send",
            Some(&alice),
            s,
            Bytes::from(vec![0; 17 * 1024])
        )
        .await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    assert_eq!(
        call(
            &mut c,
            Method::GET,
            "/v1/poll",
            Some(&alice),
            s,
            Bytes::new()
        )
        .await,
        (StatusCode::BAD_REQUEST, "bad_query".into())
    );
    // The connection is unharmed by all that.
    let r = c.call(Method::POST, "/v1/send", Some(&alice), s, hb).await;
    assert_eq!(
        frames_of(body(r).await)[0].op_kind(),
        Some(Op::HeartbeatReply)
    );
}

#[tokio::test]
async fn the_web_app_is_served_at_the_root_when_built() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<title>Roam</title>").unwrap();
    std::fs::write(web.path().join("app.js"), "console.log('roam')").unwrap();
    let server = roam_tests::start(&format!(
        "[edge]\nweb_dir = {:?}\n",
        web.path().display().to_string()
    ));
    let mut c = h1(&server).await;
    for (path, content) in [
        ("/", "<title>Roam</title>"),
        ("/app.js", "console.log('roam')"),
        // Client-side routes fall back to the app.
        ("/chat/alice", "<title>Roam</title>"),
    ] {
        let r = c.call(Method::GET, path, None, None, Bytes::new()).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(header(&r, "alt-svc").starts_with("h3="), "{path}");
        assert_eq!(&body(r).await[..], content.as_bytes(), "{path}");
    }
}

#[tokio::test]
async fn shutdown_ends_a_stream_with_disconnect_drain() {
    let server = roam_tests::start("");
    let alice = token(&server, "alice");
    let mut h2 = h2(&server).await;
    let r = h2.open("/v1/stream?device=phone", &alice).await;
    let mut stream = r.into_body();
    let mut buf = BytesMut::new();
    assert_eq!(
        read_frames(&mut stream, &mut buf, 1).await[0].op_kind(),
        Some(Op::AuthReply)
    );
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    let f = &read_frames(&mut stream, &mut buf, 1).await[0];
    let d: pb::Disconnect = f.decode_body().unwrap();
    assert_eq!(d.reason, pb::disconnect::Reason::Drain as i32);
    assert_eq!(stopping.await.unwrap().unwrap().code(), Some(0));
}

#[tokio::test]
async fn dev_login_mints_tokens_only_when_switched_on() {
    // The app is built in both servers: with the login off, its path must not fall back to it.
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<title>Roam</title>").unwrap();
    let web_dir = format!("{:?}", web.path().display().to_string());

    // A configured deployment (a config file) has it off unless it says otherwise: 404.
    let off = roam_tests::start(&format!("[edge]\nweb_dir = {web_dir}\n"));
    let mut c = h1(&off).await;
    let login = Bytes::from_static(br#"{"user": "carol"}"#);
    assert_eq!(
        json_error(
            c.call(Method::POST, "/v1/dev-login", None, None, login.clone())
                .await
        )
        .await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let on = roam_tests::start(&format!("[edge]\nweb_dir = {web_dir}\ndev_login = true\n"));
    let mut c = h1(&on).await;
    let r = c
        .call(Method::POST, "/v1/dev-login", None, None, login)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
    assert_eq!(v["user"], "carol");
    let minted = v["token"].as_str().unwrap().to_owned();
    // The token opens a connection as carol.
    let r = c.open("/v1/poll?device=web", &minted).await;
    assert_eq!(r.status(), StatusCode::OK);
    let reply = frames_of(body(r).await).remove(0);
    assert_eq!(reply.op_kind(), Some(Op::AuthReply));
    let reply: pb::AuthReply = prost::Message::decode(reply.body.clone()).unwrap();
    assert_eq!(reply.user_id, "carol");
    // Bad names are a 400 with the JSON error.
    let mut c = h1(&on).await;
    for bad in [&br#"{"user": ""}"#[..], br#"{"user": "group:x"}"#, b"carol"] {
        assert_eq!(
            json_error(
                c.call(
                    Method::POST,
                    "/v1/dev-login",
                    None,
                    None,
                    Bytes::from_static(bad)
                )
                .await
            )
            .await,
            (StatusCode::BAD_REQUEST, "invalid_argument".into())
        );
    }
}
