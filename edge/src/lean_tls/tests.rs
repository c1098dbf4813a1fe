//! Unit tests of the buffer helpers; the stream itself is tested against real clients in
//! `edge/tests/lean_tls.rs`.

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
fn write_into_grows_to_the_size_asked_for_and_frees_on_failure() {
    let mut out = Vec::new();
    write_into(&mut out, 2, |b| {
        if b.len() < 10 {
            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                required_size: 10,
            }))
        } else {
            b[..7].copy_from_slice(b"1234567");
            Ok(7)
        }
    })
    .unwrap();
    assert_eq!(out, b"1234567");

    let mut out = Vec::new();
    let err = write_into(&mut out, 64, |_| Err(EncryptError::EncryptExhausted)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert_eq!(out.capacity(), 0);
}

#[test]
fn the_stream_adds_little_to_rustls_and_the_socket() {
    let total = mem::size_of::<LeanTlsStream<tokio::net::TcpStream>>();
    let rustls = mem::size_of::<UnbufferedServerConnection>();
    let socket = mem::size_of::<tokio::net::TcpStream>();
    let own = total - rustls - socket;
    println!(
        "LeanTlsStream<TcpStream> = {total} B: rustls {rustls} + TcpStream {socket} + own {own} \
         (a buffered rustls::ServerConnection is {} B)",
        mem::size_of::<rustls::ServerConnection>()
    );
    // Three empty `Vec`s, a position, an optional error and four flags; a regression here is
    // paid by every idle connection.
    assert!(own <= 112, "LeanTlsStream adds {own} bytes of its own");
}
