//! `roam serve`: listeners, TLS policy, HTTP versions, metrics, shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use roam_bench::child::ChildServer;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn tls_client(server: &ChildServer, alpn: &[&[u8]]) -> TlsConnector {
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).unwrap();
    TlsConnector::from(roam_tls::client_config(roots, alpn))
}

async fn connect(
    server: &ChildServer,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    tls_client(server, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// GET `path` over a fresh TLS connection with the given ALPN; returns (HTTP version,
/// status, body).
async fn get(
    server: &ChildServer,
    alpn: &'static [u8],
    path: &str,
) -> (http::Version, u16, String) {
    let tls = connect(server, &[alpn]).await;
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(negotiated.as_deref(), Some(alpn));
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if alpn == b"h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

async fn admin_get(server: &ChildServer, path: &str) -> (u16, String) {
    let r = roam_tests::admin(server, "GET", path, None, Some("")).await;
    (r.status, r.body)
}

#[tokio::test]
async fn serves_healthz_over_http2_and_http11_and_reports_addresses() {
    let server = roam_tests::start("");
    let (version, status, body) = get(&server, b"h2", "/healthz").await;
    assert_eq!((version, status), (http::Version::HTTP_2, 200));
    assert_eq!(body, r#"{"status":"ok"}"#);
    let (version, status, _) = get(&server, b"http/1.1", "/healthz").await;
    assert_eq!((version, status), (http::Version::HTTP_11, 200));
    let (_, status, _) = get(&server, b"h2", "/nope").await;
    assert_eq!(status, 404);

    let (status, body) = admin_get(&server, "/healthz").await;
    assert_eq!((status, body.contains("ok")), (200, true));

    let banner = server.stdout();
    for name in ["client_tcp", "admin"] {
        let addr = server.addr(name).unwrap().to_string();
        assert!(
            banner.contains(&addr),
            "banner lacks {name} {addr}:\n{banner}"
        );
    }
    assert!(
        banner.contains(&server.dev_cert().display().to_string()),
        "{banner}"
    );
    assert_eq!(server.stop().unwrap().code(), Some(0));
}

#[tokio::test]
async fn metrics_count_connections_and_handshake_failures() {
    let server = roam_tests::start("");
    get(&server, b"h2", "/healthz").await;
    // Garbage before TLS: refused, counted, and harmless to the next client.
    let mut tcp = TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    get(&server, b"http/1.1", "/healthz").await;

    let (status, text) = admin_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "roam_edge_accepted_connections_total{transport=\"tcp\"} 2",
        "roam_edge_handshake_failures_total{reason=\"tls\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    assert_eq!(server.stop().unwrap().code(), Some(0));
}

#[tokio::test]
async fn tls12_is_refused_and_unknown_alpn_too() {
    let server = roam_tests::start("");
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    let err = TlsConnector::from(Arc::new(tls12))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("version"), "{err}");

    let tcp = TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    let err = tls_client(&server, &[b"roam/1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("protocol"), "{err}");
    assert_eq!(server.stop().unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_never_finished_handshake_is_dropped_without_hurting_others() {
    let server = roam_tests::start("[limits]\nhandshake_timeout_secs = 1\n");
    let mut silent = TcpStream::connect(server.addr("client_tcp").unwrap())
        .await
        .unwrap();
    // Others are served while the silent client holds its socket.
    get(&server, b"h2", "/healthz").await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection after the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)));
    let (_, text) = admin_get(&server, "/metrics").await;
    assert!(
        text.contains("roam_edge_handshake_failures_total{reason=\"timeout\"} 1"),
        "{text}"
    );
    assert_eq!(server.stop().unwrap().code(), Some(0));
}

#[test]
fn sigint_stops_cleanly_too() {
    let server = roam_tests::start("");
    let status = server.stop_with(rustix::process::Signal::INT).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_without_hurting_others() {
    let server = roam_tests::start("[limits]\nhttp_header_timeout_secs = 1\n");
    let mut slow = connect(&server, &[b"http/1.1"]).await;
    // Headers that never end.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    let (_, status, _) = get(&server, b"h2", "/healthz").await;
    assert_eq!(status, 200, "others are served meanwhile");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the server must close a connection whose headers never finish"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "no response to unfinished headers"
    );
    assert_eq!(server.stop().unwrap().code(), Some(0));
}
