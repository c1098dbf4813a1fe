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
