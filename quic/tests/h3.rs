//! HTTP/3 (the h3 crate) served over the endpoint, against h3's client over quinn.

// Test code: a failure panics with the value it got (clippy.toml allows it in tests only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use roam_quic::Endpoint;
use roam_quic::h3::H3Connection;

/// Answers `GET /n` with n numbered lines, each its own DATA frame; `POST` with its body.
fn server(config: quinn_proto::ServerConfig) -> Endpoint {
    common::serve_each(config, |conn| async move {
        let mut h3 = h3::server::builder()
            .build::<_, Bytes>(H3Connection::new(conn))
            .await
            .unwrap();
        while let Ok(Some(resolver)) = h3.accept().await {
            tokio::spawn(async move {
                let (request, mut stream) = resolver.resolve_request().await.unwrap();
                let mut body = BytesMut::new();
                while let Some(mut chunk) = stream.recv_data().await.unwrap() {
                    body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                }
                stream.send_response(http::Response::new(())).await.unwrap();
                if request.method() == http::Method::POST {
                    stream.send_data(body.freeze()).await.unwrap();
                } else {
                    let n: usize = request.uri().path()[1..].parse().unwrap();
                    for i in 0..n {
                        stream
                            .send_data(Bytes::from(format!("line {i}\n")))
                            .await
                            .unwrap();
                    }
                }
                stream.finish().await.unwrap();
            });
        }
    })
}

#[tokio::test]
async fn an_h3_client_over_quinn_is_served() {
    // One certificate for both sides.
    let (config, mut client_config) = common::configs_with_alpn(b"h3", |t| {
        t.max_concurrent_uni_streams(8u32.into());
    });
    // A small window: the echo below is written as the client reads it (what flow control
    // holds back of a DATA frame waits in `H3Send`).
    common::small_stream_window(&mut client_config);
    let endpoint = server(config);
    let (_client, conn) = common::client_connection(&endpoint, client_config).await;
    let (mut driver, mut requests) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });

    let get = |n: usize| {
        http::Request::get(format!("https://localhost/{n}"))
            .body(())
            .unwrap()
    };
    // Many requests at once on one connection, each a stream of DATA frames.
    let mut tasks = Vec::new();
    for n in [1usize, 10, 500] {
        let mut requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = requests.send_request(get(n)).await.unwrap();
            stream.finish().await.unwrap();
            let response = stream.recv_response().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = Vec::new();
            while let Some(mut chunk) = stream.recv_data().await.unwrap() {
                body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            let expected: String = (0..n).map(|i| format!("line {i}\n")).collect();
            assert_eq!(String::from_utf8(body).unwrap(), expected);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A request body, larger than a stream's window both ways, comes back whole.
    let big: Vec<u8> = (0..400_000u32).map(|i| (i % 249) as u8).collect();
    let mut stream = requests
        .send_request(
            http::Request::post("https://localhost/echo")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    let sending = {
        let big = Bytes::from(big.clone());
        async move {
            stream.send_data(big).await.unwrap();
            stream.finish().await.unwrap();
            stream
        }
    };
    let mut stream = tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .unwrap();
    stream.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(body, big);
    drop(requests);
    driving.abort();
}

/// The server's unidirectional streams: its control stream, and no QPACK encoder or decoder
/// stream (h3 uses no dynamic table). A stream the test's server opens once h3 is set up
/// comes right after the control stream.
#[tokio::test]
async fn the_server_opens_no_qpack_streams() {
    const MARKER: u8 = 0xff;
    let (config, client_config) = common::configs_with_alpn(b"h3", |_| {});
    let endpoint = common::serve_each(config, |conn| async move {
        let h3 = h3::server::builder()
            .build::<_, Bytes>(H3Connection::new(conn.clone()))
            .await
            .unwrap();
        let mut marker = std::future::poll_fn(|cx| conn.poll_open_uni(cx))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut marker, &[MARKER])
            .await
            .unwrap();
        // h3 is held until the client closes.
        conn.closed().await;
        drop(h3);
    });
    let (_client, conn) = common::client_connection(&endpoint, client_config).await;
    let mut first_bytes = Vec::new();
    for _ in 0..2 {
        let mut uni = tokio::time::timeout(Duration::from_secs(5), conn.accept_uni())
            .await
            .unwrap()
            .unwrap();
        let mut byte = [0u8; 1];
        uni.read_exact(&mut byte).await.unwrap();
        first_bytes.push(byte[0]);
    }
    // 0x00: the control stream's type; QPACK's would be 0x02 and 0x03.
    assert_eq!(first_bytes, [0x00, MARKER]);
    conn.close(0u32.into(), b"done");
}
