//! # Lean server-side TLS: a TLS 1.3 stream that holds no buffers while idle
//!
//! Owns the server side of TLS on the edge's TCP listeners: [`LeanTlsAcceptor`] runs the
//! handshake over rustls's *unbuffered* API ([`UnbufferedServerConnection`]) and yields a
//! [`LeanTlsStream`], a tokio [`AsyncRead`] + [`AsyncWrite`] on which hyper (through
//! `hyper_util::rt::TokioIo`), the WebSocket codec and the raw frame protocol sit exactly as
//! they would on `tokio_rustls::server::TlsStream`. It does not own the TLS policy (TLS 1.3
//! only, ALPN sets, certificates: `roam_tls::server_config`) nor what runs over the stream.
//!
//! ## Why it exists: memory per idle connection
//!
//! The edge must hold ≤ 5,120 B per idle raw TLS connection and ≤ 6,144 B per idle TLS
//! WebSocket (issue 6). A spike measured tokio-rustls at ≈ 8,350 B per idle connection
//! because a buffered rustls connection keeps its 4 KiB+ incoming buffer (and its plaintext
//! queues) for the connection's life; the unbuffered API with buffers that exist only while
//! bytes are in flight came to ≈ 4,360 B. This stream is that design:
//!
//! - **reads** go into a stack array (`READ_CHUNK`, 17 KiB: one maximal record) and are
//!   decrypted there; only a record that is still incomplete when the read ends is copied to
//!   the heap (`incoming`), and that copy is freed (capacity 0) as soon as the record
//!   completes;
//! - decrypted bytes go straight into the caller's `ReadBuf`; only what does not fit is kept
//!   (`plaintext`) until read, then freed;
//! - **writes** are encrypted into a stack array and written to the socket at once; only what
//!   the socket does not take (back-pressure) is copied to the heap (`outgoing`), freed when
//!   it drains. Vectored writes are gathered into one record (one AEAD call, one header).
//!
//! So an established, idle stream holds no heap of its own ([`LeanTlsStream::buffered_capacity`]
//! is 0). Its cost is its size plus rustls's connection state on the heap. Measured on x86-64
//! (rustls 0.23 with ring, after a handshake with two session tickets and a 100-byte request
//! and response; the ignored test `idle_heap_per_connection_compared_with_tokio_rustls` in
//! `edge/tests/lean_tls.rs`, with a counting allocator):
//!
//! | per idle connection                   | `LeanTlsStream` | `tokio_rustls::server::TlsStream` |
//! |---------------------------------------|----------------:|----------------------------------:|
//! | `size_of` (over a `TcpStream`)        |         1,224 B |                           1,224 B |
//! | ↳ of which rustls's connection        |         1,088 B |                           1,168 B |
//! | ↳ of which this module's own fields   |            96 B |                                 — |
//! | heap: rustls's state (keys, state…)   |       ≈ 2,190 B |                         ≈ 2,190 B |
//! | heap: buffers                         |             0 B |          4,096 B (incoming, kept) |
//! | total                                 |       ≈ 3,410 B |                         ≈ 7,510 B |
//!
//! The socket, the tokio task and what runs over the stream come on top of either figure.
//!
//! ## How it connects
//!
//! `tcp.rs` (the client port) accepts a `TcpStream`, boxes and times
//! [`LeanTlsAcceptor::accept`] (so the handshake's state is freed once it completes) and
//! hands the stream to hyper-util's auto builder. `accept` resolves when rustls is done with
//! the handshake (the client's Finished is in), so [`LeanTlsStream::alpn_protocol`] is final
//! by then. The session tickets rustls then sends are written as far as the socket takes
//! them; any rest goes out with the first write or flush (or from a read), so a client that
//! does not read cannot hold the handshake up.
//!
//! ## Behaviour
//!
//! - Peer `close_notify`: reads return `Ok(0)` from then on (data after it is ignored, as
//!   RFC 8446 says). EOF without `close_notify`: reads fail with `UnexpectedEof`.
//! - Any malformed, undecryptable or unexpected record is an `io::Error` (`InvalidData`) —
//!   never a panic — after which the stream is failed. The alert rustls queues goes to the
//!   peer: during the handshake `accept` waits for it to be written (the caller's timeout
//!   bounds that), afterwards it gets one attempt.
//! - The handshake reads while its own flight is still being written: a peer may write
//!   before it reads (a TLS 1.3 client sends its compatibility change_cipher_spec as soon as
//!   it has our ServerHello).
//! - `poll_write` accepts at most 16 KiB (one record) per call and returns `Pending` only
//!   while earlier ciphertext is still waiting for the socket; the caller's flush or next
//!   write pushes it out. `poll_shutdown` sends `close_notify`, then shuts the socket down.
//! - Key updates: a peer's `KeyUpdate` is processed on read; the answering `KeyUpdate` rustls
//!   queues goes out ahead of our next record (as RFC 8446 §4.6.3 allows).
//! - 0-RTT data is refused (the configuration never enables it).
//! - A reader and a writer may be split into two tasks (`tokio::io::split`): the read path
//!   writes to the socket only when no writer is parked on it, so it never steals a
//!   writer's wake-up.
//!
//! No `unsafe`: the read array is `MaybeUninit` filled through tokio's `ReadBuf`.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per read: one maximal TLS 1.3 record (16,384 + 256 + 5 bytes)
/// fits. Lives on the stack of `poll_read` only.
const READ_CHUNK: usize = 17 * 1024;
/// Plaintext taken per `poll_write`: one full record.
const MAX_WRITE: usize = 16 * 1024;
/// Plaintext up to which the small stack tier is used (no 16 KiB array to zero per write).
const SMALL_WRITE: usize = 1024;
/// TLS 1.3 record overhead: header, inner content type, AEAD tag.
const RECORD_OVERHEAD: usize = 5 + 1 + 16;
/// Room for a queued `KeyUpdate` record ahead of the data.
const SLACK: usize = 128;
const SMALL_CIPHER: usize = SMALL_WRITE + RECORD_OVERHEAD + SLACK;
const BIG_CIPHER: usize = MAX_WRITE + RECORD_OVERHEAD + SLACK;
/// Bound on state transitions per call: rustls always progresses, this only turns a bug into
/// an error instead of a spin.
const MAX_STEPS: usize = 4096;

/// Accepts TLS connections on the server side, yielding [`LeanTlsStream`]s.
#[derive(Clone)]
pub struct LeanTlsAcceptor {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for LeanTlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanTlsAcceptor").finish_non_exhaustive()
    }
}

impl LeanTlsAcceptor {
    /// An acceptor for `config` (`roam_tls::server_config`: TLS 1.3 only, with its ALPN set).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        LeanTlsAcceptor { config }
    }

    /// Runs the server handshake over `io`. Resolves once rustls is done with the handshake
    /// (the session tickets it sends then need not be written yet: they go out with the
    /// stream's first write, flush or read); fails with `InvalidData` on any TLS error, after
    /// sending rustls's alert, and with `UnexpectedEof` if the peer leaves.
    ///
    /// Has no timeout of its own: callers bound it (and should box it, so that its state is
    /// not kept for the connection's life).
    pub fn accept<IO>(
        &self,
        io: IO,
    ) -> impl Future<Output = io::Result<LeanTlsStream<IO>>> + use<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.config.clone();
        async move {
            let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
            let mut stream = LeanTlsStream::new(io, conn);
            std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
            Ok(stream)
        }
    }
}

/// A server-side TLS 1.3 stream over `IO` (a `TcpStream` in production) that keeps no read
/// or write buffer while idle. See the [module documentation](self).
pub struct LeanTlsStream<IO> {
    io: IO,
    tls: Tls,
}

/// Everything but the socket, so that the socket and the TLS state can be borrowed apart.
struct Tls {
    conn: UnbufferedServerConnection,
    /// Received TLS bytes rustls cannot finish with yet: an incomplete record, or the
    /// fragments of a handshake message split over records. Capacity 0 otherwise.
    incoming: Vec<u8>,
    /// Encoded TLS records the socket has not taken yet. Capacity 0 when drained.
    outgoing: Vec<u8>,
    /// Decrypted bytes the reader has not taken yet, from `plaintext_pos`. Capacity 0 when
    /// drained.
    plaintext: Vec<u8>,
    plaintext_pos: usize,
    /// An error found while data was also delivered: reported by the next read.
    error: Option<io::Error>,
    /// The peer's `close_notify` arrived: reads end with `Ok(0)`.
    read_closed: bool,
    /// Our `close_notify` is queued: writes fail.
    write_closed: bool,
    /// A fatal TLS error happened: reads and writes fail.
    failed: bool,
    /// A write, flush or shutdown is waiting for the socket to take `outgoing`.
    write_parked: bool,
}

impl<IO> fmt::Debug for LeanTlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanTlsStream")
            .field("alpn", &self.alpn_protocol().map(String::from_utf8_lossy))
            .field("buffered", &self.buffered_capacity())
            .field("read_closed", &self.tls.read_closed)
            .field("write_closed", &self.tls.write_closed)
            .field("failed", &self.tls.failed)
            .finish_non_exhaustive()
    }
}

impl<IO> LeanTlsStream<IO> {
    fn new(io: IO, conn: UnbufferedServerConnection) -> Self {
        LeanTlsStream {
            io,
            tls: Tls {
                conn,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                plaintext: Vec::new(),
                plaintext_pos: 0,
                error: None,
                read_closed: false,
                write_closed: false,
                failed: false,
                write_parked: false,
            },
        }
    }

    /// The ALPN protocol the handshake agreed on (`h2`, `http/1.1`, `roam/1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.conn.alpn_protocol()
    }

    /// The negotiated cipher suite.
    pub fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.tls.conn.negotiated_cipher_suite()
    }

    /// The underlying transport (e.g. for `peer_addr`).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The underlying transport, mutably. Reading or writing it directly breaks the TLS
    /// session.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Sum of the capacities of the stream's own buffers: 0 whenever no bytes are in flight.
    /// For tests and measurements; rustls's internal state is not included.
    #[doc(hidden)]
    pub fn buffered_capacity(&self) -> usize {
        self.tls.incoming.capacity() + self.tls.outgoing.capacity() + self.tls.plaintext.capacity()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO> {
    /// Drives the handshake until rustls is done with it.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.tls.failed {
                // Deliver rustls's alert (after whatever it queued before it) so the peer
                // learns why, then give up. The caller's handshake timeout bounds the wait.
                let _ = ready!(self.poll_drain(cx));
                self.tls.outgoing = Vec::new();
                return Poll::Ready(Err(self.tls.error.take().unwrap_or_else(failed_error)));
            }
            if !self.tls.conn.is_handshaking() {
                // Done. What is still queued (the session tickets, if the peer is not reading
                // yet) goes out with the next write or flush, or from a read: as with
                // tokio-rustls, a client that does not read cannot hold the handshake up.
                if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(()));
            }
            // Write what is queued without waiting for the peer to take it all: the peer may
            // write before it reads (a TLS 1.3 client sends its middlebox-compatibility
            // change_cipher_spec as soon as it has our ServerHello), so reading goes on
            // meanwhile. Both wake-ups are registered when both sides are pending.
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if self.tls.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer sent close_notify during the TLS handshake",
                )));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut received = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut received))?;
            let data = received.filled_mut();
            if data.is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
            if let Err(e) = self.tls.receive(data, None) {
                self.tls.failed = true;
                self.tls.error = Some(e);
            }
        }
    }

    /// Sends records queued outside a write (session tickets, an alert) from the read side,
    /// unless a writer is parked on the socket: that writer owns the socket's write wake-up,
    /// and registering the reader's waker would take it away. Errors are left for the next
    /// write to report.
    fn flush_from_reader(&mut self, cx: &mut Context<'_>) {
        if !self.tls.write_parked && !self.tls.outgoing.is_empty() {
            let _ = self.poll_drain(cx);
        }
    }

    /// `poll_drain` for the writing side: notes whether a writer is now parked on the socket.
    fn poll_drain_writer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.poll_drain(cx);
        self.tls.write_parked = result.is_pending();
        result
    }

    /// Writes `outgoing` until it is empty (then frees it) or the socket pushes back.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tls.outgoing.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.tls.outgoing)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if n >= self.tls.outgoing.len() => self.tls.outgoing = Vec::new(),
                Ok(n) => {
                    self.tls.outgoing.drain(..n);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes freshly encrypted `bytes` behind anything still queued; what the socket does not
    /// take now is kept in `outgoing` for the next write or flush.
    fn send(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<()> {
        if !self.tls.outgoing.is_empty() {
            self.tls.outgoing.extend_from_slice(bytes);
            return match self.poll_drain(cx) {
                Poll::Ready(Err(e)) => Err(e),
                _ => Ok(()),
            };
        }
        let mut written = 0;
        while written < bytes.len() {
            match Pin::new(&mut self.io).poll_write(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if written < bytes.len() {
            self.tls.outgoing = bytes[written..].to_vec();
        }
        Ok(())
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.tls.failed {
            return Poll::Ready(Err(failed_error()));
        }
        if self.tls.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS stream was shut down",
            )));
        }
        // Back-pressure: new data is taken only once earlier ciphertext is on its way.
        ready!(self.poll_drain_writer(cx))?;
        let total = bufs
            .iter()
            .map(|b| b.len())
            .fold(0usize, usize::saturating_add)
            .min(MAX_WRITE);
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let result = if first.len() >= total {
            self.encrypt_and_send(cx, &first[..total])
        } else if total <= SMALL_WRITE {
            let mut plain = [0u8; SMALL_WRITE];
            let n = gather(bufs, &mut plain);
            self.encrypt_and_send(cx, &plain[..n])
        } else {
            let mut plain = [0u8; MAX_WRITE];
            let n = gather(bufs, &mut plain);
            self.encrypt_and_send(cx, &plain[..n])
        };
        Poll::Ready(result.map(|()| total))
    }

    fn encrypt_and_send(&mut self, cx: &mut Context<'_>, plain: &[u8]) -> io::Result<()> {
        if plain.len() <= SMALL_WRITE {
            self.encrypt_with::<SMALL_CIPHER>(cx, plain)
        } else {
            self.encrypt_with::<BIG_CIPHER>(cx, plain)
        }
    }

    /// Encrypts `plain` into a stack array of `N` bytes and sends it; falls back to the heap
    /// when something (handshake bytes, a large queued message) must precede it.
    fn encrypt_with<const N: usize>(
        &mut self,
        cx: &mut Context<'_>,
        plain: &[u8],
    ) -> io::Result<()> {
        let mut cipher = [0u8; N];
        let on_stack = self.tls.with_write_traffic(|traffic, outgoing| {
            if outgoing.is_empty() {
                match traffic.encrypt(plain, &mut cipher) {
                    Ok(n) => return Ok(Some(n)),
                    Err(EncryptError::InsufficientSize(_)) => {}
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
            write_into(outgoing, plain.len() + RECORD_OVERHEAD + SLACK, |out| {
                traffic.encrypt(plain, out)
            })?;
            Ok(None)
        })?;
        match on_stack {
            Some(n) => self.send(cx, &cipher[..n]),
            None => match self.poll_drain(cx) {
                Poll::Ready(Err(e)) => Err(e),
                _ => Ok(()),
            },
        }
    }
}

impl Tls {
    /// Feeds freshly received TLS bytes to rustls, delivering plaintext to `sink` first and
    /// to `plaintext` for the rest; keeps only what rustls could not finish with.
    fn receive(&mut self, data: &mut [u8], sink: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        if self.incoming.is_empty() {
            let consumed = self.process(data, sink)?;
            if !self.read_closed && consumed < data.len() {
                self.incoming = data[consumed..].to_vec();
            }
        } else {
            let mut incoming = mem::take(&mut self.incoming);
            incoming.extend_from_slice(data);
            let consumed = self.process(&mut incoming, sink)?;
            if !self.read_closed && consumed < incoming.len() {
                incoming.drain(..consumed);
                self.incoming = incoming;
            }
        }
        Ok(())
    }

    /// Runs rustls over `data` until it needs more input (or the peer closed). Returns how
    /// many bytes from the front of `data` rustls is done with.
    fn process(
        &mut self,
        data: &mut [u8],
        mut sink: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<usize> {
        let mut consumed = 0;
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut data[consumed..]);
            let mut error = None;
            let done = match state {
                Err(e) => return Err(self.fail(e)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                deliver(&mut self.plaintext, sink.as_deref_mut(), record.payload);
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    false
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if let Err(e) = encode_into(&mut self.outgoing, &mut encode) {
                        self.failed = true;
                        return Err(e);
                    }
                    false
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The bytes are in `outgoing`, which owns their transmission from here.
                    transmit.done();
                    false
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    false
                }
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    true
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => true,
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    self.failed = true;
                    return Err(invalid_data("TLS 0-RTT data is not accepted"));
                }
                Ok(_) => {
                    self.failed = true;
                    return Err(io::Error::other("unexpected TLS connection state"));
                }
            };
            consumed += discard;
            if let Some(e) = error {
                return Err(self.fail(e));
            }
            if done {
                return Ok(consumed);
            }
        }
        self.failed = true;
        Err(io::Error::other("TLS state machine made no progress"))
    }

    /// Marks the stream failed and encodes what rustls queued for the peer (its alert, and
    /// anything queued before it in the same step) into `outgoing`, for a best-effort write.
    ///
    /// rustls is only asked for queued records here, never given input again: after a
    /// record-layer error its state is not poisoned, and deframing the same bytes twice would
    /// queue a second fatal alert (a debug assertion in rustls).
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        for _ in 0..MAX_STEPS {
            if !self.conn.wants_write() {
                break;
            }
            // With records queued, rustls hands out the next one before looking at input.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut self.outgoing, &mut encode).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.failed = true;
        self.incoming = Vec::new();
        invalid_data(error)
    }

    /// Brings rustls to its `WriteTraffic` state (encoding whatever it wants sent first into
    /// `outgoing`) and runs `f` there.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut incoming = mem::take(&mut self.incoming);
        let mut consumed = 0;
        let mut steps = 0;
        let result = loop {
            steps += 1;
            if steps > MAX_STEPS {
                self.failed = true;
                break Err(io::Error::other("TLS state machine made no progress"));
            }
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut incoming[consumed..]);
            let mut error = None;
            match state {
                Err(e) => break Err(self.fail(e)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let r = f(&mut traffic, &mut self.outgoing);
                    consumed += discard;
                    break r;
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    // Not reached in practice (reads leave no complete record behind), but
                    // if it were, the data is kept for the reader.
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                deliver(&mut self.plaintext, None, record.payload);
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if let Err(e) = encode_into(&mut self.outgoing, &mut encode) {
                        self.failed = true;
                        break Err(e);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::PeerClosed) => self.read_closed = true,
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    break Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed",
                    ));
                }
                Ok(ConnectionState::BlockedHandshake) => {
                    break Err(io::Error::other("the TLS handshake is not complete"));
                }
                Ok(_) => {
                    self.failed = true;
                    break Err(io::Error::other("unexpected TLS connection state"));
                }
            }
            consumed += discard;
            if let Some(e) = error {
                break Err(self.fail(e));
            }
        };
        if !self.failed && !self.read_closed && consumed < incoming.len() {
            incoming.drain(..consumed);
            self.incoming = incoming;
        }
        result
    }

    /// Copies buffered plaintext into `buf`; false if there is none.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some(available) = self.plaintext.get(self.plaintext_pos..) else {
            return false;
        };
        if available.is_empty() {
            return false;
        }
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.plaintext_pos += n;
        if self.plaintext_pos >= self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_pos = 0;
        }
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for LeanTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.flush_from_reader(cx);
        if this.tls.take_plaintext(buf) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.tls.error.take() {
            return Poll::Ready(Err(e));
        }
        if this.tls.failed {
            return Poll::Ready(Err(failed_error()));
        }
        if this.tls.read_closed || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut received = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut received))?;
            let data = received.filled_mut();
            if data.is_empty() {
                this.tls.incoming = Vec::new();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection without sending TLS close_notify",
                )));
            }
            let before = buf.filled().len();
            let result = this.tls.receive(data, Some(&mut *buf));
            this.flush_from_reader(cx);
            if let Err(e) = result {
                if !this.tls.write_parked {
                    // The alert had its chance; nothing else will be sent.
                    this.tls.outgoing = Vec::new();
                }
                if buf.filled().len() > before {
                    this.tls.error = Some(e);
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || this.tls.read_closed {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LeanTlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_writer(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.write_closed && !this.tls.failed {
            this.tls.write_closed = true;
            // If it cannot be queued (the connection is already closed or failed), the
            // socket is shut down all the same.
            let _ = this.tls.with_write_traffic(|traffic, outgoing| {
                write_into(outgoing, SLACK, |out| traffic.queue_close_notify(out))
            });
        }
        ready!(this.poll_drain_writer(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Hands a decrypted record to the reader's buffer, keeping what does not fit (in order).
fn deliver(stash: &mut Vec<u8>, sink: Option<&mut ReadBuf<'_>>, mut payload: &[u8]) {
    if stash.is_empty()
        && let Some(buf) = sink
    {
        let n = payload.len().min(buf.remaining());
        buf.put_slice(&payload[..n]);
        payload = &payload[n..];
    }
    if !payload.is_empty() {
        stash.extend_from_slice(payload);
    }
}

/// Copies the slices into `dst` back to back, as far as it goes; returns the bytes copied.
fn gather(bufs: &[IoSlice<'_>], dst: &mut [u8]) -> usize {
    let mut n = 0;
    for b in bufs {
        let take = b.len().min(dst.len() - n);
        dst[n..n + take].copy_from_slice(&b[..take]);
        n += take;
        if n == dst.len() {
            break;
        }
    }
    n
}

/// Appends a handshake record rustls wants sent to `outgoing`, sized exactly.
fn encode_into(
    outgoing: &mut Vec<u8>,
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
) -> io::Result<()> {
    let required = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Err(io::Error::other(e)),
    };
    let start = outgoing.len();
    outgoing.resize(start + required, 0);
    match encode.encode(&mut outgoing[start..]) {
        Ok(n) => {
            outgoing.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            outgoing.truncate(start);
            Err(io::Error::other(e))
        }
    }
}

/// Appends what `write` encrypts to `outgoing`, growing it to the size rustls asks for.
fn write_into(
    outgoing: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let start = outgoing.len();
    outgoing.resize(start + guess, 0);
    let result = match write(&mut outgoing[start..]) {
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            outgoing.resize(start + required_size, 0);
            write(&mut outgoing[start..])
        }
        other => other,
    };
    match result {
        Ok(n) => {
            outgoing.truncate(start + n);
            if outgoing.is_empty() {
                *outgoing = Vec::new();
            }
            Ok(())
        }
        Err(e) => {
            outgoing.truncate(start);
            if outgoing.is_empty() {
                *outgoing = Vec::new();
            }
            Err(io::Error::other(e))
        }
    }
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn failed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the TLS connection failed earlier",
    )
}

#[cfg(test)]
mod tests;
