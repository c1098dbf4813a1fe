//! The endpoint against quinn's client (an independent driver of the same protocol state
//! machine): handshakes, streams both ways, closes, migration.

// Test code: a failure panics with the value it got (clippy.toml allows it in tests only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{configs, configs_with};
use roam_quic::{Connection, Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An echo server: every bidirectional stream gets back what it sent, then its end.
fn echo_server(config: quinn_proto::ServerConfig) -> Endpoint {
    common::serve_each(config, |conn| async move {
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
    })
}

fn client(config: quinn::ClientConfig, local: &str) -> quinn::Endpoint {
    let mut e = quinn::Endpoint::client(local.parse().unwrap()).unwrap();
    e.set_default_client_config(config);
    e
}

/// An endpoint with `server`, and one client connection to it from `client_config`,
/// accepted: (endpoint, client endpoint, the server's side, the client's side).
async fn connected(
    server: quinn_proto::ServerConfig,
    client_config: quinn::ClientConfig,
) -> (Endpoint, quinn::Endpoint, Connection, quinn::Connection) {
    let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let clients = client(client_config, "127.0.0.1:0");
    let connecting = clients.connect(endpoint.local_addr(), "localhost").unwrap();
    let conn = endpoint.accept().await.unwrap().accept().unwrap();
    let client_conn = connecting.await.unwrap();
    (endpoint, clients, conn, client_conn)
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
    let moves = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = moves.clone();
    endpoint.on_migration(move |id, from, to| seen.lock().push((id, from, to)));
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
    assert_eq!(
        *moves.lock(),
        [(conn.stable_id(), first, conn.remote_address())],
        "the endpoint told of the move, once"
    );

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

#[tokio::test]
async fn a_retried_client_proves_its_address_and_is_served() {
    let (server, client_config) = configs();
    let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let clients = client(client_config, "127.0.0.1:0");
    let connecting = clients.connect(endpoint.local_addr(), "localhost").unwrap();
    let first = endpoint.accept().await.unwrap();
    assert!(!first.remote_address_validated() && first.may_retry());
    first.retry();
    let second = endpoint.accept().await.unwrap();
    assert!(
        second.remote_address_validated(),
        "the Retry token came back"
    );
    let conn = second.accept().unwrap();
    let client_conn = connecting.await.unwrap();
    assert!(conn.established().await);
    let (mut send, _recv) = client_conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    let (_s, mut recv) = conn.accept_bi().await.unwrap();
    let mut x = [0u8; 1];
    recv.read_exact(&mut x).await.unwrap();
    assert_eq!(&x, b"x");
}

#[tokio::test]
async fn a_write_beyond_the_clients_window_waits_until_it_reads() {
    let (server, mut client_config) = configs();
    common::small_stream_window(&mut client_config);
    let (_endpoint, _clients, conn, client_conn) = connected(server, client_config).await;
    let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
    send.write_all(b"go").await.unwrap();
    let (mut server_send, mut server_recv) = conn.accept_bi().await.unwrap();
    let mut go = [0u8; 2];
    server_recv.read_exact(&mut go).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        server_send.write_all(&data).await.unwrap();
        server_send.shutdown().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "the write waits for the client's credit"
    );
    let got = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(got, expected);
    writer.await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_times_out() {
    let (server, client_config) = configs_with(|t| {
        t.max_idle_timeout(Some(Duration::from_millis(300).try_into().unwrap()));
    });
    let (endpoint, _clients, conn, _client_conn) = connected(server, client_config).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed by the idle timeout");
    assert!(
        matches!(reason, roam_quic::ConnectionError::TimedOut),
        "{reason:?}"
    );
    eventually("the connection forgotten", || {
        endpoint.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn closing_the_endpoint_tells_every_client_and_ends_its_task() {
    let (server, client_config) = configs();
    let endpoint = echo_server(server);
    let clients = client(client_config, "127.0.0.1:0");
    let conn = clients
        .connect(endpoint.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(echo(&conn, b"hi").await, b"hi");
    endpoint.close(9u32.into(), b"shutting down");
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 9u32.into()),
        "{reason:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle())
        .await
        .expect("the endpoint's task ended");
    assert!(endpoint.accept().await.is_none());
}

#[tokio::test]
async fn a_returning_client_opens_its_stream_in_0rtt() {
    let (server, client_config) = configs();
    let endpoint = echo_server(server);
    let target = endpoint.local_addr();
    let clients = client(client_config, "127.0.0.1:0");
    // The first connection leaves a ticket.
    let first = clients.connect(target, "localhost").unwrap().await.unwrap();
    assert_eq!(echo(&first, b"one").await, b"one");
    first.close(0u32.into(), b"");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (early, accepted) = clients
        .connect(target, "localhost")
        .unwrap()
        .into_0rtt()
        .unwrap_or_else(|_| panic!("no 0-RTT ticket"));
    assert_eq!(echo(&early, b"early").await, b"early");
    assert!(accepted.await, "the server took the early data");
}

#[tokio::test]
async fn a_stream_in_0rtt_data_says_so() {
    let (server, client_config) = configs();
    let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let target = endpoint.local_addr();
    let clients = client(client_config, "127.0.0.1:0");
    let accepting = endpoint.clone();
    let server_side = tokio::spawn(async move {
        let mut early = Vec::new();
        for _ in 0..2 {
            let conn = accepting.accept().await.unwrap().accept().unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            early.push(recv.is_0rtt());
            let mut b = [0u8; 1];
            recv.read_exact(&mut b).await.unwrap();
            conn.closed().await;
        }
        early
    });
    let first = clients.connect(target, "localhost").unwrap().await.unwrap();
    let (mut send, _r) = first.open_bi().await.unwrap();
    send.write_all(b"1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.close(0u32.into(), b"");
    let (early, _accepted) = clients
        .connect(target, "localhost")
        .unwrap()
        .into_0rtt()
        .unwrap_or_else(|_| panic!("no 0-RTT ticket"));
    let (mut send, _r) = early.open_bi().await.unwrap();
    send.write_all(b"2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    early.close(0u32.into(), b"");
    assert_eq!(server_side.await.unwrap(), [false, true]);
}

#[tokio::test]
async fn streams_open_both_ways_in_both_directions_and_end_with_codes() {
    let (server, client_config) = configs_with(|t| {
        t.max_concurrent_uni_streams(4u32.into());
    });
    let (_endpoint, _clients, conn, client_conn) = connected(server, client_config).await;
    assert!(conn.established().await);

    // The client's unidirectional stream reaches the server.
    let mut up = client_conn.open_uni().await.unwrap();
    up.write_all(b"control").await.unwrap();
    up.finish().unwrap();
    let mut recv = std::future::poll_fn(|cx| conn.poll_accept_uni(cx))
        .await
        .unwrap();
    let mut got = Vec::new();
    recv.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"control");

    // The server opens a unidirectional and a bidirectional stream to the client.
    let mut down = std::future::poll_fn(|cx| conn.poll_open_uni(cx))
        .await
        .unwrap();
    down.write_all(b"settings").await.unwrap();
    down.shutdown().await.unwrap();
    let mut client_recv = client_conn.accept_uni().await.unwrap();
    assert_eq!(client_recv.read_to_end(64).await.unwrap(), b"settings");
    let (mut send, mut recv) = std::future::poll_fn(|cx| conn.poll_open_bi(cx))
        .await
        .unwrap();
    send.write_all(b"ping").await.unwrap();
    let (mut client_send, mut client_recv) = client_conn.accept_bi().await.unwrap();
    let mut ping = [0u8; 4];
    client_recv.read_exact(&mut ping).await.unwrap();
    assert_eq!(&ping, b"ping");
    client_send.write_all(b"pong").await.unwrap();
    let mut pong = [0u8; 4];
    recv.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");

    // A reset and a stop reach the client with their codes.
    send.reset(0x10cu32.into());
    let e = client_recv.read_to_end(64).await.unwrap_err();
    assert!(
        matches!(e, quinn::ReadToEndError::Read(quinn::ReadError::Reset(c)) if c == 0x10cu32.into()),
        "{e:?}"
    );
    recv.stop(0x100u32.into());
    let stopped = tokio::time::timeout(Duration::from_secs(5), client_send.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Some(0x100u32.into()));
}

#[tokio::test]
async fn datagrams_go_both_ways() {
    let (server, client_config) = configs();
    let (_endpoint, _clients, conn, client_conn) = connected(server, client_config).await;
    assert!(conn.established().await);
    client_conn
        .send_datagram(bytes::Bytes::from_static(b"up"))
        .unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| conn.poll_recv_datagram(cx)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&got[..], b"up");
    conn.send_datagram(bytes::Bytes::from_static(b"down"))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), client_conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"down");
}

/// Wakes counted.
struct Wakes(std::sync::atomic::AtomicUsize);

impl futures_util::task::ArcWake for Wakes {
    fn wake_by_ref(me: &Arc<Self>) {
        me.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Wakes {
    /// A waker whose wakes are counted, and the count.
    fn waker() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        (wakes.clone(), futures_util::task::waker(wakes))
    }

    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (5 s at most) until the waker was woken; `what` names the wait in the failure.
    async fn woken(&self, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while self.count() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }
}

/// A task that waits for its connection to close polls `closed()` again every time it
/// wakes for something else (a stream's pushes): it stays one waiter, woken once at the
/// close, not one per poll (which grew with every push for the connection's life).
#[tokio::test]
async fn a_close_wakes_a_task_that_polled_closed_many_times_once() {
    let (server, client_config) = configs();
    let (_endpoint, _clients, conn, client_conn) = connected(server, client_config).await;
    let (wakes, waker) = Wakes::waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut closed = std::pin::pin!(conn.closed());
    for _ in 0..100 {
        assert!(closed.as_mut().poll(&mut cx).is_pending());
    }
    client_conn.close(7u32.into(), b"done");
    wakes.woken("woken at the close").await;
    assert!(closed.as_mut().poll(&mut cx).is_ready());
    assert_eq!(wakes.count(), 1);
}

/// A wait that ends before the connection does takes its waker back: a finished request's
/// task (what the waker keeps allocated) is not held for the rest of a long connection's
/// life — nor are the wakers of streams dropped while they waited to read or to write.
#[tokio::test]
async fn waits_dropped_before_the_close_leave_no_waker_behind() {
    let (server, mut client_config) = configs();
    common::small_stream_window(&mut client_config);
    let (_endpoint, _clients, conn, client_conn) = connected(server, client_config).await;
    let (wakes, waker) = Wakes::waker();
    let mut cx = std::task::Context::from_waker(&waker);

    // The close.
    {
        let mut closed = std::pin::pin!(conn.closed());
        assert!(closed.as_mut().poll(&mut cx).is_pending());
        assert!(closed.as_mut().poll(&mut cx).is_pending());
    }
    // A read that waited.
    let (mut send, _recv) = client_conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    let (mut server_send, mut server_recv) = conn.accept_bi().await.unwrap();
    let mut one = [0u8; 1];
    server_recv.read_exact(&mut one).await.unwrap();
    let mut buf = [0u8; 16];
    let mut read_buf = tokio::io::ReadBuf::new(&mut buf);
    assert!(
        tokio::io::AsyncRead::poll_read(
            std::pin::Pin::new(&mut server_recv),
            &mut cx,
            &mut read_buf
        )
        .is_pending()
    );
    drop(server_recv);
    // A write that waited for the client's credit.
    let big = vec![7u8; 100_000];
    let mut left: &[u8] = &big;
    loop {
        match tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut server_send), &mut cx, left)
        {
            std::task::Poll::Ready(Ok(n)) => left = &left[n..],
            std::task::Poll::Pending => break,
            std::task::Poll::Ready(Err(e)) => panic!("{e}"),
        }
        assert!(
            !left.is_empty(),
            "the write waits for credit before its end"
        );
    }
    drop(server_send);

    drop(waker);
    assert_eq!(
        Arc::strong_count(&wakes),
        1,
        "no waker of the dropped waits is kept"
    );
    client_conn.close(7u32.into(), b"done");
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert_eq!(wakes.count(), 0);
}

/// Two waits for the close in one task share its waker: one of them ending early leaves
/// the other's wake-up in place.
#[tokio::test]
async fn one_of_two_waits_for_the_close_in_a_task_ending_leaves_the_other_woken() {
    let (server, client_config) = configs();
    let (_endpoint, _clients, conn, client_conn) = connected(server, client_config).await;
    let (wakes, waker) = Wakes::waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut kept = std::pin::pin!(conn.closed());
    assert!(kept.as_mut().poll(&mut cx).is_pending());
    {
        let mut left = std::pin::pin!(conn.closed());
        assert!(left.as_mut().poll(&mut cx).is_pending());
    }
    assert!(kept.as_mut().poll(&mut cx).is_pending());
    client_conn.close(7u32.into(), b"done");
    wakes.woken("the remaining wait woken at the close").await;
    assert!(kept.as_mut().poll(&mut cx).is_ready());
}
