//! The endpoint against quinn's client (an independent driver of the same protocol state
//! machine): handshakes, streams both ways, closes, migration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use roam_quic::{Connection, Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALPN: &[u8] = b"test";

fn configs() -> (quinn_proto::ServerConfig, quinn::ClientConfig) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = c.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = quinn_proto::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn_proto::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    (
        quinn_proto::ServerConfig::with_crypto(Arc::new(server)),
        quinn::ClientConfig::new(Arc::new(client)),
    )
}

/// An echo server: every bidirectional stream gets back what it sent, then its end.
fn echo_server(config: quinn_proto::ServerConfig) -> Endpoint {
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let Ok(conn) = incoming.accept() else {
                continue;
            };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        loop {
                            match recv.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if send.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = send.shutdown().await;
                    });
                }
            });
        }
    });
    endpoint
}

fn client(config: quinn::ClientConfig, local: &str) -> quinn::Endpoint {
    let mut e = quinn::Endpoint::client(local.parse().unwrap()).unwrap();
    e.set_default_client_config(config);
    e
}

async fn echo(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 20).await.unwrap()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streams_echo_both_ways_and_connections_end_with_their_clients() {
    let (server, client_config) = configs();
    let endpoint = echo_server(server);
    let target: SocketAddr = endpoint.local_addr();
    let clients = client(client_config, "127.0.0.1:0");
    let mut conns = Vec::new();
    for i in 0..20 {
        let conn = clients.connect(target, "localhost").unwrap().await.unwrap();
        let small = format!("hello {i}");
        assert_eq!(echo(&conn, small.as_bytes()).await, small.as_bytes());
        conns.push(conn);
    }
    // Larger than flow-control windows and datagrams: many packets, both ways, in order.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo(&conns[0], &big).await, big);
    assert_eq!(endpoint.open_connections(), 20);
    for conn in conns {
        conn.close(0u32.into(), b"bye");
    }
    eventually("every connection gone", || endpoint.open_connections() == 0).await;
}

#[tokio::test]
async fn the_application_sees_the_handshake_the_close_and_a_migration() {
    let (server, client_config) = configs();
    let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let clients = client(client_config, "127.0.0.1:0");
    let connecting = clients.connect(endpoint.local_addr(), "localhost").unwrap();
    let incoming = endpoint.accept().await.unwrap();
    assert_eq!(
        incoming.remote_address(),
        Some(clients.local_addr().unwrap())
    );
    let conn: Connection = incoming.accept().unwrap();
    let client_conn = connecting.await.unwrap();
    assert!(conn.established().await);
    let first = conn.remote_address();

    // The client moves to another address with a stream open: the stream carries on.
    let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
    send.write_all(b"before").await.unwrap();
    let (mut server_send, mut server_recv) = conn.accept_bi().await.unwrap();
    let mut got = [0u8; 6];
    server_recv.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"before");
    clients
        .rebind(std::net::UdpSocket::bind("127.0.0.2:0").unwrap())
        .unwrap();
    send.write_all(b"after").await.unwrap();
    let mut got = [0u8; 5];
    server_recv.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after");
    server_send.write_all(b"reply").await.unwrap();
    let mut got = [0u8; 5];
    recv.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"reply");
    assert_ne!(conn.remote_address(), first, "the new path");
    assert_eq!(conn.remote_address().ip().to_string(), "127.0.0.2");

    client_conn.close(7u32.into(), b"done");
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, roam_quic::ConnectionError::ApplicationClosed(ref c) if c.error_code == 7u32.into()),
        "{reason:?}"
    );
}

#[tokio::test]
async fn a_refused_attempt_is_told_and_keeps_nothing() {
    let (server, client_config) = configs();
    let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let clients = client(client_config, "127.0.0.1:0");
    let connecting = clients.connect(endpoint.local_addr(), "localhost").unwrap();
    endpoint.accept().await.unwrap().refuse();
    let e = connecting.await.unwrap_err();
    assert!(
        matches!(e, quinn::ConnectionError::ConnectionClosed(_)),
        "{e:?}"
    );
    assert_eq!(endpoint.open_connections(), 0);
}
