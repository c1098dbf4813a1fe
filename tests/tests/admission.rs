//! Admission over real sockets against the real binary: a connection that sends nothing is
//! closed on every port (HTTP/2 and HTTP/1.1 by ALPN on the client port, the admin port),
//! and a slot of `edge.max_connections` is one per TCP connection, however many streams an
//! HTTP/2 connection opens.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use roam_client::raw::RawConnection;
use roam_proto::client::v1 as pb;
use roam_tests::metric;
use roam_tests::tls;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Reads until the server closes (end of stream or an error such as a reset); panics if it
/// is still open after `within`.
async fn closed_by_server(mut io: impl AsyncRead + Unpin, within: Duration) {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end)
        .await
        .expect("the server kept a silent connection open");
}

/// A first-request deadline of 1 s; the checks allow 10 s (the default deadline, which the
/// server would also meet, is 10 s: only the configured one passes within the bound).
const SILENT: &str = "[limits]\nfirst_request_secs = 1\nhttp_header_timeout_secs = 1\n";
const WITHIN: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_silent_http2_connection_is_closed_and_a_busy_one_is_not() {
    let server = roam_tests::start(SILENT);
    let silent = tls(&server, b"h2").await;
    // Another HTTP/2 connection that made a request stays up past the deadline.
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tls(&server, b"h2").await),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let healthz = || {
        http::Request::get("https://localhost/healthz")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(healthz()).await.unwrap().status(), 200);
    closed_by_server(silent, WITHIN).await;
    assert_eq!(send.send_request(healthz()).await.unwrap().status(), 200);
    assert!(!driver.is_finished());
    assert!(metric(&server, "roam_edge_closes_total{reason=\"no_request\"}").await >= 1.0);
}

#[tokio::test]
async fn a_silent_http11_connection_is_closed() {
    let server = roam_tests::start(SILENT);
    closed_by_server(tls(&server, b"http/1.1").await, WITHIN).await;
}

#[tokio::test]
async fn a_silent_admin_connection_is_closed() {
    let server = roam_tests::start(SILENT);
    let tcp = TcpStream::connect(server.addr("admin").unwrap())
        .await
        .unwrap();
    closed_by_server(tcp, WITHIN).await;
}

#[tokio::test]
async fn admin_connections_beyond_the_cap_get_503() {
    let server = roam_tests::start("[limits]\nadmin_max_connections = 1\n");
    let _held = TcpStream::connect(server.addr("admin").unwrap())
        .await
        .unwrap();
    let mut refused = TcpStream::connect(server.addr("admin").unwrap())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), refused.read_to_string(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(_held);
    // The slot is free again once the held connection is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let admin = server.addr("admin").unwrap();
    let metrics = loop {
        // Until the server has seen the held connection go, a new one is still refused
        // (503, or closed before the request was read).
        let r = roam_client::admin::request(
            admin,
            roam_client::admin::Method::GET,
            "/metrics",
            "",
            None,
        )
        .await;
        match r {
            Ok(r) if r.status == 200 => break String::from_utf8_lossy(&r.body).into_owned(),
            r => assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                r.map(|r| r.status)
            ),
        }
        tokio::task::yield_now().await;
    };
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roam_refused_connections_total{reason=\"admin\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
}

#[tokio::test]
async fn one_http2_connection_holds_one_slot_however_many_streams() {
    let server = roam_tests::start("[edge]\nmax_connections = 2\n");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tls(&server, b"h2").await),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Unauthenticated WebSockets over one HTTP/2 connection: none takes a slot of its own.
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let resp = send
            .send_request(roam_tests::websocket_over_h2())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "stream {} was refused", sockets.len());
        sockets.push(resp);
    }
    // The second slot is left for another connection ...
    let mut raw = RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap();
    let auth = pb::Auth {
        token: roam_tests::token(&server, "alice"),
        device_id: "a".into(),
        ..Default::default()
    };
    raw.send(roam_proto::Op::Auth, 1, &auth).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), raw.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.op_kind(), Some(roam_proto::Op::AuthReply), "{f:?}");
    // ... and a third connection is refused, told why, and counted.
    let mut third = RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), third.next())
        .await
        .unwrap()
        .unwrap()
        .expect("a DISCONNECT");
    let d: pb::Disconnect = f.decode_body().unwrap();
    assert_eq!(d.reason, pb::disconnect::Reason::Limit as i32, "{d:?}");
    assert_eq!(
        metric(
            &server,
            "roam_refused_connections_total{reason=\"max_connections\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn connections_per_source_address_are_capped() {
    let server = roam_tests::start("[limits]\nmax_conns_per_ip = 2\n");
    let _a = tls(&server, b"h2").await;
    let _b = RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap();
    // The third from 127.0.0.1 is closed before its handshake; another address is not.
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).unwrap();
    let config = roam_tls::client_config(roots, &[b"h2"]);
    let tcp = TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    let refused = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(
        refused.is_err(),
        "the handshake of a third connection failed"
    );
    let port = server.addr("client_tcp").unwrap().port();
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = other
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).unwrap();
    TlsConnector::from(roam_tls::client_config(roots, &[b"h2"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("another source address is admitted");
    assert_eq!(
        metric(&server, "roam_refused_connections_total{reason=\"per_ip\"}").await,
        1.0
    );
}

#[tokio::test]
async fn handshakes_in_flight_per_source_address_are_capped() {
    let server = roam_tests::start("[limits]\nmax_conns_per_ip = 0\nmax_handshakes_per_ip = 2\n");
    let addr = server.addr("client_tcp").unwrap();
    let handshake_from = |source: [u8; 4]| {
        let dev_cert = server.dev_cert();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(std::net::SocketAddr::from((source, 0)))
                .unwrap();
            let tcp = socket.connect(addr).await.unwrap();
            let roots = roam_tls::roots_from_pem(&dev_cert).unwrap();
            TlsConnector::from(roam_tls::client_config(roots, &[b"h2"]))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
        }
    };
    // Two sockets from 127.0.0.1 that never send a ClientHello hold its share...
    let silent = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handshake_from([127, 0, 0, 1]).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a third handshake from 127.0.0.1 was never refused"
        );
    }
    // ...not anyone else's.
    handshake_from([127, 0, 0, 2])
        .await
        .expect("another source completes its handshake");
    assert!(
        metric(
            &server,
            "roam_refused_connections_total{reason=\"handshakes_per_ip\"}"
        )
        .await
            >= 1.0
    );
    // Once they go, the share is free again.
    drop(silent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = handshake_from([127, 0, 0, 1]).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
    }
}

/// An HTTP/2 connection to the client port: the sender and its driver's task.
async fn h2(
    server: &roam_bench::child::ChildServer,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let (send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tls(server, b"h2").await),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

/// `GET /v1/stream` for `user`'s `device`: a virtual connection whose response streams.
fn stream_request(
    server: &roam_bench::child::ChildServer,
    user: &str,
    device: &str,
) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("https://localhost/v1/stream?device={device}"))
        .header(
            "authorization",
            format!("Bearer {}", roam_tests::token(server, user)),
        )
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_http2_connection_without_open_streams_is_closed_and_one_with_a_stream_is_not() {
    let server = roam_tests::start("[limits]\nhttp2_idle_secs = 1\n");
    // One with a streamed response open for all the test.
    let (mut busy, busy_driver) = h2(&server).await;
    let stream = busy
        .send_request(stream_request(&server, "alice", "a"))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Two that made a request and went quiet: each gets GOAWAY and is closed.
    for _ in 0..2 {
        let (mut quiet, driver) = h2(&server).await;
        let healthz = http::Request::get("https://localhost/healthz")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(quiet.send_request(healthz).await.unwrap().status(), 200);
        tokio::time::timeout(WITHIN, driver)
            .await
            .expect("an idle HTTP/2 connection was left open")
            .unwrap()
            .unwrap();
    }
    assert!(
        !busy_driver.is_finished(),
        "a connection with a stream open was closed"
    );
    let healthz = http::Request::get("https://localhost/healthz")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(busy.send_request(healthz).await.unwrap().status(), 200);
    assert_eq!(
        metric(&server, "roam_edge_closes_total{reason=\"http2_idle\"}").await,
        2.0
    );
    drop(stream);
}

#[tokio::test]
async fn an_http2_connection_carries_at_most_its_sessions_and_few_unauthenticated() {
    let server =
        roam_tests::start("[edge]\nmax_sessions_per_conn = 3\nmax_unauthenticated_per_conn = 2\n");
    // Authenticated sessions (streams) fill a connection's share ...
    let (mut send, _driver) = h2(&server).await;
    let mut held = Vec::new();
    for device in ["a", "b", "c"] {
        let r = send
            .send_request(stream_request(&server, "alice", device))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "stream {device}");
        held.push(r);
    }
    let refused = send
        .send_request(stream_request(&server, "alice", "d"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let refused = send
        .send_request(roam_tests::websocket_over_h2())
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    // ... and unauthenticated ones (WebSockets that have not sent AUTH) a smaller one.
    let (mut other, _driver) = h2(&server).await;
    for _ in 0..2 {
        let r = other
            .send_request(roam_tests::websocket_over_h2())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let refused = other
        .send_request(roam_tests::websocket_over_h2())
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let refusals = |reason: &'static str| {
        let server = &server;
        async move {
            metric(
                server,
                &format!("roam_refused_connections_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    assert_eq!(refusals("sessions_per_conn").await, 2.0);
    assert_eq!(refusals("unauthenticated_per_conn").await, 1.0);
}

#[tokio::test]
async fn a_virtual_connection_takes_a_share_of_its_source_address() {
    let server = roam_tests::start("[limits]\nmax_conns_per_ip = 2\n");
    // The HTTP/2 connection holds one share, its first stream the second.
    let (mut send, _driver) = h2(&server).await;
    let first = send
        .send_request(stream_request(&server, "alice", "a"))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = send
        .send_request(stream_request(&server, "alice", "b"))
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(
        metric(&server, "roam_refused_connections_total{reason=\"per_ip\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_virtual_connection_refused_for_capacity_leaves_the_device_connected() {
    let server = roam_tests::start("[edge]\nmax_connections = 2\n");
    let (mut send, _driver) = h2(&server).await;
    let mut raw = RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap();
    let auth = pb::Auth {
        token: roam_tests::token(&server, "alice"),
        device_id: "phone".into(),
        ..Default::default()
    };
    raw.send(roam_proto::Op::Auth, 1, &auth).await.unwrap();
    let f = next_frame(&mut raw).await;
    assert_eq!(f.op_kind(), Some(roam_proto::Op::AuthReply), "{f:?}");
    // Both slots are taken: the same device over a virtual connection is refused before its
    // AUTH reaches core ...
    let refused = send
        .send_request(stream_request(&server, "alice", "phone"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    // ... so its live session was not replaced: the raw connection is still served.
    raw.send(roam_proto::Op::Heartbeat, 9, &pb::Heartbeat {})
        .await
        .unwrap();
    let f = next_frame(&mut raw).await;
    assert_eq!(
        (f.op_kind(), f.seq),
        (Some(roam_proto::Op::HeartbeatReply), 9),
        "{f:?}"
    );
}

async fn next_frame(raw: &mut RawConnection) -> roam_proto::Frame {
    tokio::time::timeout(Duration::from_secs(5), raw.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// One HTTP/1.1 `GET path` to the admin port from `source`; the answer, empty if the
/// connection was closed unanswered.
async fn admin_from(
    server: &roam_bench::child::ChildServer,
    source: [u8; 4],
    path: &str,
) -> String {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let mut tcp = socket.connect(server.addr("admin").unwrap()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    // The server may have closed it already (refused at accept): then the write may fail.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("answered or closed");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn admin_connections_per_source_address_are_capped() {
    let server = roam_tests::start("[limits]\nadmin_max_conns_per_ip = 1\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let held = socket.connect(server.addr("admin").unwrap()).await.unwrap();
    // The holder's address gets nothing more; another address is served.
    let refused = admin_from(&server, [127, 0, 0, 1], "/healthz").await;
    assert!(refused.is_empty(), "{refused}");
    let metrics = admin_from(&server, [127, 0, 0, 2], "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("roam_refused_connections_total{reason=\"admin_per_ip\"} 1"),
        "{metrics}"
    );
    drop(held);
}

#[tokio::test]
async fn the_internal_port_closes_silent_connections_and_caps_a_source() {
    let server =
        roam_tests::start("[limits]\nfirst_request_secs = 1\ninternal_max_conns_per_ip = 2\n");
    let internal = server.addr("internal").unwrap();
    // The edge's own link holds one of 127.0.0.1's two; a silent caller the other ...
    let silent = TcpStream::connect(internal).await.unwrap();
    // ... so a third from there is refused at accept, counted.
    let refused = TcpStream::connect(internal).await.unwrap();
    closed_by_server(refused, WITHIN).await;
    assert_eq!(
        metric(
            &server,
            "roam_refused_connections_total{reason=\"internal_per_ip\"}"
        )
        .await,
        1.0
    );
    // The silent one is closed after the first-request deadline.
    closed_by_server(silent, WITHIN).await;
    // The edge's link, which called with the key, is untouched: a push reaches a client.
    let mut raw = RawConnection::connect(server.addr("raw").unwrap(), &server.dev_cert())
        .await
        .unwrap();
    let auth = pb::Auth {
        token: roam_tests::token(&server, "alice"),
        device_id: "a".into(),
        ..Default::default()
    };
    raw.send(roam_proto::Op::Auth, 1, &auth).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), raw.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.op_kind(), Some(roam_proto::Op::AuthReply), "{f:?}");
}
