//! Unit tests of the buffer helpers; the stream itself is tested against real clients in
//! `tls/tests/lean.rs`.

use super::*;

#[test]
fn gather_copies_slices_back_to_back_and_stops_when_full() {
    let a = [1u8, 2, 3];
    let b: [u8; 0] = [];
    let c = [4u8, 5, 6, 7];
    let bufs = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
    let mut dst = [0u8; 16];
    assert_eq!(gather(&bufs, &mut dst), 7);
    assert_eq!(&dst[..7], &[1, 2, 3, 4, 5, 6, 7]);
    let mut small = [0u8; 5];
    assert_eq!(gather(&bufs, &mut small), 5);
    assert_eq!(small, [1, 2, 3, 4, 5]);
}

#[test]
fn deliver_fills_the_reader_first_and_keeps_the_rest_in_order() {
    let mut stash = Vec::new();
    let mut space = [MaybeUninit::<u8>::uninit(); 4];
    let mut buf = ReadBuf::uninit(&mut space);
    deliver(&mut stash, Some(&mut buf), b"abcdef");
    assert_eq!(buf.filled(), b"abcd");
    assert_eq!(stash, b"ef");
    // Once something is stashed, later records queue behind it even if the reader has room.
    let mut space = [MaybeUninit::<u8>::uninit(); 8];
    let mut buf = ReadBuf::uninit(&mut space);
    deliver(&mut stash, Some(&mut buf), b"gh");
    assert!(buf.filled().is_empty());
    assert_eq!(stash, b"efgh");
}

#[test]
fn the_stream_adds_little_to_rustls_and_the_socket() {
    let total = mem::size_of::<LeanTlsStream<tokio::net::TcpStream>>();
    let records = mem::size_of::<Records>();
    let socket = mem::size_of::<tokio::net::TcpStream>();
    let own = total - records - socket;
    println!(
        "LeanTlsStream<TcpStream> = {total} B: records {records} + TcpStream {socket} + own {own} \
         (rustls's unbuffered connection is {} B, a buffered one {} B)",
        mem::size_of::<UnbufferedServerConnection>(),
        mem::size_of::<rustls::ServerConnection>()
    );
    // Three empty `Vec`s, a position, an optional error, four flags and the ALPN; a
    // regression here is paid by every idle connection.
    assert!(own <= 128, "LeanTlsStream adds {own} bytes of its own");
    assert!(
        total < mem::size_of::<UnbufferedServerConnection>(),
        "the established stream is smaller than rustls's connection alone"
    );
}

#[test]
fn a_client_follows_our_key_refresh_at_the_confidentiality_limit() {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (cert_key, roots) = crate::self_signed(&["localhost"]).expect("certificate");
    let server_config = crate::server_config(&cert_key, crate::ALPN_RAW).expect("config");
    let connector = tokio_rustls::TlsConnector::from(crate::client_config(roots, crate::ALPN_RAW));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (c, s) = tokio::io::duplex(256 * 1024);
        let name = ServerName::try_from("localhost").expect("name");
        let (server, client) = tokio::join!(
            LeanTlsAcceptor::new(server_config).accept(s),
            connector.connect(name, c)
        );
        let (mut server, mut client) = (server.expect("server"), client.expect("client"));
        server.records.set_tx_limit(4);
        let mut sent = Vec::new();
        for i in 0..40u8 {
            let msg = vec![i; 100 + usize::from(i) * 37];
            server.write_all(&msg).await.expect("write");
            server.flush().await.expect("flush");
            sent.extend_from_slice(&msg);
            assert!(server.records.tx_seq() < 4);
        }
        let mut got = vec![0u8; sent.len()];
        client.read_exact(&mut got).await.expect("client read");
        assert!(
            got == sent,
            "the client decrypted every record across ten key updates"
        );
        // And the other direction still works.
        client.write_all(b"ack").await.expect("client write");
        client.flush().await.expect("client flush");
        let mut ack = [0u8; 3];
        server.read_exact(&mut ack).await.expect("server read");
        assert_eq!(&ack, b"ack");
    });
}
