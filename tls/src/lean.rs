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
//! queues) for the connection's life; rustls's unbuffered API still keeps ≈ 2.2 KB on the
//! heap (a 640-byte handshake deframer, two 560-byte ring key schedules, two queues) and
//! 1.1 KB inline. So this stream uses rustls for the handshake only: it runs it over the
//! *unbuffered* API ([`UnbufferedServerConnection`]), then hands the connection to rustls's
//! kernel-connection API (meant for kTLS: rustls keeps only what a key update needs) and
//! protects records itself (`records`: TLS 1.3 framing, padding, alerts, `KeyUpdate`, with
//! ring's AEAD and a key schedule built per record). Its buffers exist only while bytes are
//! in flight:
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
//! So an established, idle stream holds no buffer of its own ([`LeanTlsStream::buffered_capacity`]
//! is 0); its cost is its size plus rustls's key-update state (≈ 0.2 KB on the heap).
//! Measured on x86-64 (rustls 0.23 with ring, after a handshake with two session tickets and
//! a 100-byte request and response; the ignored test
//! `idle_heap_per_connection_compared_with_tokio_rustls` in `tls/tests/lean.rs`, with a
//! counting allocator): see the table in docs/edge.md.
//!
//! ## How it connects
//!
//! The edge's `tcp.rs` (the client port; `raw.rs`, the raw frame port, likewise) accepts a
//! `TcpStream`, boxes and times [`LeanTlsAcceptor::accept`] (so the handshake's state is
//! freed once it completes) and hands the stream to hyper-util's auto builder. `accept` resolves when rustls is done with
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
//!   never a panic — after which the stream is failed. The alert owed (rustls's during the
//!   handshake, `records`'s after it) goes to the peer: during the handshake `accept` waits
//!   for it to be written (the caller's timeout bounds that), afterwards it gets one attempt.
//! - The handshake reads while its own flight is still being written: a peer may write
//!   before it reads (a TLS 1.3 client sends its compatibility change_cipher_spec as soon as
//!   it has our ServerHello). A handshake message may span records and reads (a ClientHello
//!   of tens of KB): rustls is offered whole records, and the stream remembers across reads
//!   how far (rustls joins the fragments in place, so the bytes cannot be re-framed).
//! - A ClientHello whose signature algorithms the certificate's key cannot sign with gets a
//!   plaintext `handshake_failure` alert and no ServerHello (RFC 8446 §4.2.3; rustls alone
//!   finds this out only after queuing its ServerHello).
//! - `poll_write` accepts at most 16 KiB (one record) per call and returns `Pending` only
//!   while earlier ciphertext is still waiting for the socket; the caller's flush or next
//!   write pushes it out. `poll_shutdown` sends `close_notify`, then shuts the socket down.
//! - Key updates: a peer's `KeyUpdate` is processed on read, also when split over records
//!   (nothing else may come between the pieces, and it must end its record); an unknown
//!   `request_update` is `illegal_parameter`. The answering `KeyUpdate` goes out ahead of our
//!   next record (RFC 8446 §4.6.3), one for all the requests that came before it, as rustls
//!   does: a peer that rekeys while we are silent gets one answer, whatever it asked. Our own key is refreshed before the suite's
//!   confidentiality limit. Replaced and dropped traffic keys and IVs are zeroized.
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
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod records;

use records::{Content, KEY_UPDATE_RECORD, OVERHEAD, RecordError, Records};

/// Bytes read from the socket per read: one maximal TLS 1.3 record (16,384 + 256 + 5 bytes)
/// fits. Lives on the stack of `poll_read` only.
const READ_CHUNK: usize = 17 * 1024;
/// Plaintext taken per `poll_write`: one full record.
const MAX_WRITE: usize = records::MAX_PLAINTEXT;
/// Plaintext up to which the small stack tier is used (no 16 KiB array to zero per write).
const SMALL_WRITE: usize = 1024;
/// Plaintext up to which the middle tier is used (a batch of a few dozen small frames).
const MID_WRITE: usize = 4 * 1024;
/// Room for the record around the plaintext, and a `KeyUpdate` record ahead of it.
const SLACK: usize = OVERHEAD + KEY_UPDATE_RECORD;
const SMALL_CIPHER: usize = SMALL_WRITE + SLACK;
const MID_CIPHER: usize = MID_WRITE + SLACK;
const BIG_CIPHER: usize = MAX_WRITE + SLACK;
/// A plaintext fatal `handshake_failure` alert record.
const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 40];
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
    /// Its copy of the configuration lets rustls hand the traffic keys over after the
    /// handshake (`enable_secret_extraction`), which `records` needs.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        let mut config = (*config).clone();
        config.enable_secret_extraction = true;
        LeanTlsAcceptor {
            config: Arc::new(config),
        }
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
            let mut handshake = Handshake {
                io,
                conn,
                b: Buffers::default(),
                framed: 0,
            };
            std::future::poll_fn(|cx| handshake.poll_handshake(cx)).await?;
            handshake.into_stream()
        }
    }
}

/// A server-side TLS 1.3 stream over `IO` (a `TcpStream` in production) that keeps no read
/// or write buffer while idle. See the [module documentation](self).
pub struct LeanTlsStream<IO> {
    io: IO,
    records: Records,
    alpn: Option<Box<[u8]>>,
    b: Buffers,
}

/// The stream's buffers and state flags, apart from the socket and the keys so that they can
/// be borrowed apart.
#[derive(Default)]
struct Buffers {
    /// Received TLS bytes not processed yet: an incomplete record (during the handshake also
    /// the fragments of a handshake message split over records). Capacity 0 otherwise.
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
            .field("read_closed", &self.b.read_closed)
            .field("write_closed", &self.b.write_closed)
            .field("failed", &self.b.failed)
            .finish_non_exhaustive()
    }
}

impl<IO> LeanTlsStream<IO> {
    /// The ALPN protocol the handshake agreed on (`h2`, `http/1.1`, `roam/1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The negotiated cipher suite.
    pub fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        Some(self.records.cipher_suite())
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
    /// For tests and measurements; rustls's key-update state is not included.
    #[doc(hidden)]
    pub fn buffered_capacity(&self) -> usize {
        self.b.incoming.capacity() + self.b.outgoing.capacity() + self.b.plaintext.capacity()
    }
}

/// The handshake in progress: rustls's unbuffered connection over the socket.
struct Handshake<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    b: Buffers,
    /// How far into `b.incoming` rustls has been offered whole records. Kept across reads:
    /// rustls joins the fragments of a handshake message that spans records in place, so
    /// the records it has seen cannot be told apart from the bytes any more.
    framed: usize,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Handshake<IO> {
    /// Drives the handshake until rustls is done with it.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.b.failed {
                // Deliver rustls's alert (after whatever it queued before it) so the peer
                // learns why, then give up. The caller's handshake timeout bounds the wait.
                let _ = ready!(poll_drain(&mut self.io, &mut self.b, cx));
                self.b.outgoing = Vec::new();
                return Poll::Ready(Err(self.b.error.take().unwrap_or_else(failed_error)));
            }
            if !self.conn.is_handshaking() {
                // Done. What is still queued (the session tickets, if the peer is not reading
                // yet) goes out with the next write or flush, or from a read: as with
                // tokio-rustls, a client that does not read cannot hold the handshake up.
                if let Poll::Ready(Err(e)) = poll_drain(&mut self.io, &mut self.b, cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(()));
            }
            // Write what is queued without waiting for the peer to take it all: the peer may
            // write before it reads (a TLS 1.3 client sends its middlebox-compatibility
            // change_cipher_spec as soon as it has our ServerHello), so reading goes on
            // meanwhile. Both wake-ups are registered when both sides are pending.
            if let Poll::Ready(Err(e)) = poll_drain(&mut self.io, &mut self.b, cx) {
                return Poll::Ready(Err(e));
            }
            if self.b.read_closed {
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
            let (conn, framed) = (&mut self.conn, &mut self.framed);
            if let Err(e) = receive(&mut self.b, data, |b, data| process(conn, b, data, framed)) {
                self.b.failed = true;
                self.b.error = Some(e);
            }
        }
    }

    /// The established stream: rustls's connection becomes [`Records`]; what was buffered
    /// (tickets not yet written, data after the client's Finished, a partial record) stays.
    fn into_stream(self) -> io::Result<LeanTlsStream<IO>> {
        let alpn = self.conn.alpn_protocol().map(Box::from);
        let records = Records::new(self.conn).map_err(io::Error::other)?;
        Ok(LeanTlsStream {
            io: self.io,
            records,
            alpn,
            b: self.b,
        })
    }
}

/// Where the TLS record at `from` ends, if all of it is in `data`.
fn whole_record_end(data: &[u8], from: usize) -> Option<usize> {
    let h = data.get(from..)?.get(..5)?;
    let end = from + 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
    (end <= data.len()).then_some(end)
}

/// Runs rustls over `data` until it needs more input, the handshake is done, or the peer
/// closed. Returns how many bytes from the front of `data` rustls is done with. `framed`
/// (kept across calls) is how far rustls has been offered whole records, from the front of
/// `data`.
///
/// rustls is offered one record more at a time and nothing once the handshake is complete:
/// the records after the client's Finished belong to [`Records`]. (Given them, rustls would
/// process them itself — and a `KeyUpdate` among them would leave its answer queued inside
/// rustls, which the conversion drops.)
fn process(
    conn: &mut UnbufferedServerConnection,
    b: &mut Buffers,
    data: &mut [u8],
    framed: &mut usize,
) -> io::Result<usize> {
    let consumed = process_records(conn, b, data, framed)?;
    *framed = framed.saturating_sub(consumed);
    Ok(consumed)
}

fn process_records(
    conn: &mut UnbufferedServerConnection,
    b: &mut Buffers,
    data: &mut [u8],
    framed: &mut usize,
) -> io::Result<usize> {
    let mut consumed = 0;
    let len = data.len();
    for _ in 0..MAX_STEPS {
        let mut offer_more = false;
        // What rustls is offered: the whole records up to `framed`; with none new, the
        // incomplete record that follows (rustls then checks its header early).
        let offered = if !conn.is_handshaking() {
            *framed = consumed;
            consumed
        } else {
            if *framed <= consumed {
                *framed = whole_record_end(data, consumed).unwrap_or(consumed);
            }
            if *framed == consumed { len } else { *framed }
        };
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut data[consumed..offered]);
        let mut error = None;
        let done = match state {
            Err(e) => return Err(fail_handshake(conn, b, e)),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                // Data the client sent right behind its Finished.
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            deliver(&mut b.plaintext, None, record.payload);
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
                if let Err(e) = encode_into(&mut b.outgoing, &mut encode) {
                    b.failed = true;
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
                b.read_closed = true;
                false
            }
            Ok(ConnectionState::Closed) => {
                b.read_closed = true;
                true
            }
            Ok(ConnectionState::BlockedHandshake) if offered < len => {
                // A handshake message continues in the next record: offer one more.
                offer_more = true;
                false
            }
            Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => true,
            Ok(ConnectionState::ReadEarlyData(_)) => {
                b.failed = true;
                return Err(invalid_data("TLS 0-RTT data is not accepted"));
            }
            Ok(_) => {
                b.failed = true;
                return Err(io::Error::other("unexpected TLS connection state"));
            }
        };
        consumed += discard;
        if let Some(e) = error {
            return Err(fail_handshake(conn, b, e));
        }
        if done {
            return Ok(consumed);
        }
        if offer_more {
            match whole_record_end(data, (*framed).max(consumed)) {
                Some(end) => *framed = end,
                // The rest is an incomplete record: wait for it.
                None => return Ok(consumed),
            }
        }
    }
    b.failed = true;
    Err(io::Error::other("TLS state machine made no progress"))
}

/// Marks the handshake failed and encodes what rustls queued for the peer (its alert, and
/// anything queued before it in the same step) into `outgoing`, for a best-effort write.
///
/// rustls is only asked for queued records here, never given input again: after a
/// record-layer error its state is not poisoned, and deframing the same bytes twice would
/// queue a second fatal alert (a debug assertion in rustls).
fn fail_handshake(
    conn: &mut UnbufferedServerConnection,
    b: &mut Buffers,
    error: rustls::Error,
) -> io::Error {
    if error
        == rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoSignatureSchemesInCommon)
    {
        // rustls finds that it cannot sign with any scheme the client offers only when it
        // writes CertificateVerify, after queuing its ServerHello. RFC 8446 §4.2.3 wants the
        // handshake aborted with `handshake_failure`: the client gets that alert in the
        // clear, as for any other ClientHello we refuse, and no ServerHello.
        b.outgoing.extend_from_slice(&HANDSHAKE_FAILURE_ALERT);
        b.failed = true;
        b.incoming = Vec::new();
        return invalid_data(error);
    }
    for _ in 0..MAX_STEPS {
        if !conn.wants_write() {
            break;
        }
        // With records queued, rustls hands out the next one before looking at input.
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                if encode_into(&mut b.outgoing, &mut encode).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    b.failed = true;
    b.incoming = Vec::new();
    invalid_data(error)
}

/// Feeds freshly received TLS bytes to `process` behind any incomplete record kept from
/// before; keeps (on the heap) only what `process` could not finish with.
fn receive(
    b: &mut Buffers,
    data: &mut [u8],
    mut process: impl FnMut(&mut Buffers, &mut [u8]) -> io::Result<usize>,
) -> io::Result<()> {
    if b.incoming.is_empty() {
        let consumed = process(b, data)?;
        if !b.read_closed && consumed < data.len() {
            b.incoming = data[consumed..].to_vec();
        }
    } else {
        let mut incoming = mem::take(&mut b.incoming);
        incoming.extend_from_slice(data);
        let consumed = process(b, &mut incoming)?;
        if !b.read_closed && consumed < incoming.len() {
            incoming.drain(..consumed);
            b.incoming = incoming;
        }
    }
    Ok(())
}

/// Writes `outgoing` until it is empty (then frees it) or the socket pushes back.
fn poll_drain<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    b: &mut Buffers,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !b.outgoing.is_empty() {
        match ready!(Pin::new(&mut *io).poll_write(cx, &b.outgoing)) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) if n >= b.outgoing.len() => b.outgoing = Vec::new(),
            Ok(n) => {
                b.outgoing.drain(..n);
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO> {
    /// Opens every whole record at the front of `data`, delivering application data to
    /// `sink` (the rest to `plaintext`). Returns the bytes done with.
    fn open_records(
        &mut self,
        data: &mut [u8],
        mut sink: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<()> {
        let records = &mut self.records;
        receive(&mut self.b, data, |b, data| {
            let mut consumed = 0;
            while !b.read_closed {
                let rest = &mut data[consumed..];
                let len = match Records::record_len(rest) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => return Err(fail(records, b, e)),
                };
                match records.open(&mut rest[..len]) {
                    Ok(Content::Data(plain)) => {
                        deliver(&mut b.plaintext, sink.as_deref_mut(), plain)
                    }
                    Ok(Content::Nothing) => {}
                    Ok(Content::CloseNotify) => b.read_closed = true,
                    Err(e) => return Err(fail(records, b, e)),
                }
                consumed += len;
            }
            Ok(consumed)
        })
    }

    /// Sends records queued outside a write (session tickets, an alert, a `KeyUpdate`) from
    /// the read side, unless a writer is parked on the socket: that writer owns the socket's
    /// write wake-up, and registering the reader's waker would take it away. Errors are left
    /// for the next write to report.
    fn flush_from_reader(&mut self, cx: &mut Context<'_>) {
        if !self.b.write_parked && !self.b.outgoing.is_empty() {
            let _ = poll_drain(&mut self.io, &mut self.b, cx);
        }
    }

    /// `poll_drain` for the writing side: notes whether a writer is now parked on the socket.
    fn poll_drain_writer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = poll_drain(&mut self.io, &mut self.b, cx);
        self.b.write_parked = result.is_pending();
        result
    }

    /// Writes freshly encrypted `bytes` behind anything still queued; what the socket does not
    /// take now is kept in `outgoing` for the next write or flush.
    fn send(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<()> {
        if !self.b.outgoing.is_empty() {
            self.b.outgoing.extend_from_slice(bytes);
            return match poll_drain(&mut self.io, &mut self.b, cx) {
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
            self.b.outgoing = bytes[written..].to_vec();
        }
        Ok(())
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.b.failed {
            return Poll::Ready(Err(failed_error()));
        }
        if self.b.write_closed {
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
        } else if total <= MID_WRITE {
            let mut plain = [0u8; MID_WRITE];
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
        } else if plain.len() <= MID_WRITE {
            self.encrypt_with::<MID_CIPHER>(cx, plain)
        } else {
            self.encrypt_with::<BIG_CIPHER>(cx, plain)
        }
    }

    /// Seals `plain` into a stack array of `N` bytes and sends it.
    fn encrypt_with<const N: usize>(
        &mut self,
        cx: &mut Context<'_>,
        plain: &[u8],
    ) -> io::Result<()> {
        let mut cipher = [0u8; N];
        match self.records.seal_data(plain, &mut cipher) {
            Ok(n) => self.send(cx, &cipher[..n]),
            Err(e) => Err(fail(&mut self.records, &mut self.b, e)),
        }
    }

    /// Copies buffered plaintext into `buf`; false if there is none.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let b = &mut self.b;
        let Some(available) = b.plaintext.get(b.plaintext_pos..) else {
            return false;
        };
        if available.is_empty() {
            return false;
        }
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        b.plaintext_pos += n;
        if b.plaintext_pos >= b.plaintext.len() {
            b.plaintext = Vec::new();
            b.plaintext_pos = 0;
        }
        true
    }
}

/// Marks the stream failed and queues the alert the fault calls for (none after our
/// `close_notify`: nothing may follow it).
fn fail(records: &mut Records, b: &mut Buffers, error: RecordError) -> io::Error {
    if !b.failed
        && !b.write_closed
        && let Some(alert) = error.alert()
    {
        records.seal_alert(alert, &mut b.outgoing);
    }
    b.failed = true;
    b.incoming = Vec::new();
    invalid_data(error)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for LeanTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.flush_from_reader(cx);
        if this.take_plaintext(buf) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.b.error.take() {
            return Poll::Ready(Err(e));
        }
        if this.b.failed {
            return Poll::Ready(Err(failed_error()));
        }
        if this.b.read_closed || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Whole records may wait from before (those that followed the handshake): they are
        // opened before the socket is read.
        let mut buffered = !matches!(Records::record_len(&this.b.incoming), Ok(None));
        loop {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut received = ReadBuf::uninit(&mut chunk);
            if buffered {
                buffered = false;
            } else {
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut received))?;
                if received.filled().is_empty() {
                    this.b.incoming = Vec::new();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection without sending TLS close_notify",
                    )));
                }
            }
            let data = received.filled_mut();
            let before = buf.filled().len();
            let result = this.open_records(data, Some(&mut *buf));
            this.flush_from_reader(cx);
            if let Err(e) = result {
                if !this.b.write_parked {
                    // The alert had its chance; nothing else will be sent.
                    this.b.outgoing = Vec::new();
                }
                if buf.filled().len() > before {
                    this.b.error = Some(e);
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || this.b.read_closed {
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
        if !this.b.write_closed && !this.b.failed {
            this.b.write_closed = true;
            this.records.close_notify(&mut this.b.outgoing);
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
    records::append(outgoing, required, |out| encode.encode(out)).map_err(io::Error::other)
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
