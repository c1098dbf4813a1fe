//! h3's QUIC traits over this endpoint (what h3-quinn is for quinn): [`H3Connection`] and
//! its streams, so that `h3::server` runs on a [`Connection`]. Reads hand out quinn-proto's
//! chunks without copying; no future is boxed per stream. The server's only
//! unidirectional stream is its control stream: no QPACK streams ([`H3Connection::new`]).
//!
//! QUIC datagrams (HTTP/3 datagrams, which WebTransport sessions use) through h3-datagram's
//! traits.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, WriteBuf};
use h3_datagram::datagram::EncodedDatagram;
use h3_datagram::quic_traits::{
    DatagramConnectionExt, RecvDatagram, SendDatagram, SendDatagramErrorIncoming,
};
use quinn_proto::VarInt;

use crate::conn::{Connection, ConnectionError, RecvStream, SendStream, StreamError};

/// A [`Connection`] as h3 sees it.
pub struct H3Connection {
    conn: Connection,
    /// How many more unidirectional streams h3 may open through the connection (`None`:
    /// no limit).
    uni_left: Option<u8>,
}

impl H3Connection {
    /// h3 on `conn`, opening its control stream and no other unidirectional stream: h3
    /// opens its QPACK encoder and decoder streams right after the control stream and goes
    /// on without them when they cannot be opened. RFC 9204 (§4.2) lets an endpoint omit
    /// both when it uses no dynamic table, as h3 does (it announces a table capacity of 0
    /// and encodes without one); each would cost an idle connection ≈ 500 B of stream state
    /// for the one byte it ever carries. Streams h3 opens through its opener ([`H3Opener`]:
    /// WebTransport's) are not limited.
    pub fn new(conn: Connection) -> Self {
        H3Connection {
            conn,
            uni_left: Some(1),
        }
    }
}

/// Opens streams on an [`H3Connection`] (h3 keeps one beside the connection).
#[derive(Clone)]
pub struct H3Opener {
    conn: Connection,
    /// Always `None` (no limit); the field lets both share `open_streams!`.
    uni_left: Option<u8>,
}

/// Why an [`H3Connection`] opened no stream.
#[derive(Debug, thiserror::Error)]
#[error("this HTTP/3 connection opens no unidirectional stream besides its control stream")]
struct NoMoreUniStreams;

fn connection_error(e: ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(close) => ConnectionErrorIncoming::ApplicationClose {
            error_code: close.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_error(e: StreamError) -> StreamErrorIncoming {
    match e {
        StreamError::Reset(code) | StreamError::Stopped(code) => {
            StreamErrorIncoming::StreamTerminated {
                error_code: code.into_inner(),
            }
        }
        StreamError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        StreamError::Closed => StreamErrorIncoming::Unknown(Box::new(StreamError::Closed)),
    }
}

fn lost(e: ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

fn h3_id(id: crate::StreamId) -> quic::StreamId {
    // quinn-proto's ids are QUIC stream ids, below 2^62 (a VarInt), which h3 takes as they
    // are; the mask only says so to the compiler.
    match quic::StreamId::try_from(u64::from(id) & ((1 << 62) - 1)) {
        Ok(id) => id,
        Err(_) => unreachable!("a 62-bit value is a valid stream id"),
    }
}

impl<B: Buf> quic::Connection<B> for H3Connection {
    type RecvStream = H3Recv;
    type OpenStreams = H3Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3Recv, ConnectionErrorIncoming>> {
        let recv = ready!(self.conn.poll_accept_uni(cx)).map_err(connection_error)?;
        Poll::Ready(Ok(H3Recv { recv }))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3Bidi<B>, ConnectionErrorIncoming>> {
        let (send, recv) = ready!(self.conn.poll_accept_bi(cx)).map_err(connection_error)?;
        Poll::Ready(Ok(H3Bidi {
            send: H3Send::new(send),
            recv: H3Recv { recv },
        }))
    }

    fn opener(&self) -> H3Opener {
        H3Opener {
            conn: self.conn.clone(),
            uni_left: None,
        }
    }
}

/// Opening and closing are the same for the connection and its opener.
macro_rules! open_streams {
    ($t:ty) => {
        impl<B: Buf> quic::OpenStreams<B> for $t {
            type BidiStream = H3Bidi<B>;
            type SendStream = H3Send<B>;

            fn poll_open_bidi(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<H3Bidi<B>, StreamErrorIncoming>> {
                let (send, recv) = ready!(self.conn.poll_open_bi(cx)).map_err(lost)?;
                Poll::Ready(Ok(H3Bidi {
                    send: H3Send::new(send),
                    recv: H3Recv { recv },
                }))
            }

            fn poll_open_send(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<H3Send<B>, StreamErrorIncoming>> {
                if self.uni_left == Some(0) {
                    return Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(
                        NoMoreUniStreams,
                    ))));
                }
                let send = ready!(self.conn.poll_open_uni(cx)).map_err(lost)?;
                if let Some(left) = &mut self.uni_left {
                    *left -= 1;
                }
                Poll::Ready(Ok(H3Send::new(send)))
            }

            fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
                self.conn.close(varint(code.value()), reason);
            }
        }
    };
}

open_streams!(H3Connection);
open_streams!(H3Opener);

/// A sending stream: h3 hands it one buffer at a time (a frame's header and its payload),
/// written at once as one `Bytes` (one allocation and one lock, however many slices).
pub struct H3Send<B: Buf> {
    send: SendStream,
    /// What flow control held back of the last buffer, written by `poll_ready`. Boxed: h3
    /// keeps several sending streams in its connection (control, GREASE's) and one in each
    /// request's, nearly always with nothing held back.
    rest: Option<Box<Bytes>>,
    _buf: std::marker::PhantomData<fn(B)>,
}

impl<B: Buf> H3Send<B> {
    fn new(send: SendStream) -> Self {
        H3Send {
            send,
            rest: None,
            _buf: std::marker::PhantomData,
        }
    }
}

impl<B: Buf> quic::SendStream<B> for H3Send<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(rest) = &mut self.rest {
            self.send
                .write_bytes(rest, Some(cx.waker()))
                .map_err(stream_error)?;
            if !rest.is_empty() {
                return Poll::Pending;
            }
            self.rest = None;
        }
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.rest.is_some() {
            // h3 waits for poll_ready before it sends again: a second buffer is its bug.
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data before the last buffer was written".into(),
                ),
            });
        }
        let mut data = data.into();
        let mut bytes = data.copy_to_bytes(data.remaining());
        self.send
            .write_bytes(&mut bytes, None)
            .map_err(stream_error)?;
        if !bytes.is_empty() {
            self.rest = Some(Box::new(bytes));
        }
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        // What a cancelled write held back goes first: a frame is never cut by the end.
        ready!(quic::SendStream::poll_ready(self, cx))?;
        self.send.finish();
        Poll::Ready(Ok(()))
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(varint(reset_code));
    }

    fn send_id(&self) -> quic::StreamId {
        h3_id(self.send.id())
    }
}

impl<B: Buf> quic::SendStreamUnframed<B> for H3Send<B> {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        // Behind what a cancelled framed write held back, never before it.
        ready!(quic::SendStream::poll_ready(self, cx))?;
        let n = ready!(self.send.poll_send(cx, buf.chunk())).map_err(stream_error)?;
        buf.advance(n);
        Poll::Ready(Ok(n))
    }
}

/// A receiving stream.
pub struct H3Recv {
    recv: RecvStream,
}

impl quic::RecvStream for H3Recv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_chunk(cx, usize::MAX).map_err(stream_error)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop(varint(error_code));
    }

    fn recv_id(&self) -> quic::StreamId {
        h3_id(self.recv.id())
    }
}

/// A bidirectional stream: both halves.
pub struct H3Bidi<B: Buf> {
    send: H3Send<B>,
    recv: H3Recv,
}

impl<B: Buf> quic::BidiStream<B> for H3Bidi<B> {
    type SendStream = H3Send<B>;
    type RecvStream = H3Recv;

    fn split(self) -> (H3Send<B>, H3Recv) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::SendStream<B> for H3Bidi<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_id(&self) -> quic::StreamId {
        self.send.send_id()
    }
}

impl<B: Buf> quic::SendStreamUnframed<B> for H3Bidi<B> {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        self.send.poll_send(cx, buf)
    }
}

impl<B: Buf> quic::RecvStream for H3Bidi<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }

    fn recv_id(&self) -> quic::StreamId {
        self.recv.recv_id()
    }
}

/// Sends the connection's QUIC datagrams for h3-datagram.
pub struct H3DatagramSender {
    conn: Connection,
}

/// Receives the connection's QUIC datagrams for h3-datagram.
pub struct H3DatagramReceiver {
    conn: Connection,
}

impl<B: Buf> SendDatagram<B> for H3DatagramSender {
    fn send_datagram<T: Into<EncodedDatagram<B>>>(
        &mut self,
        data: T,
    ) -> Result<(), SendDatagramErrorIncoming> {
        if let Some(e) = self.conn.close_reason() {
            return Err(SendDatagramErrorIncoming::ConnectionError(
                connection_error(e),
            ));
        }
        let mut data: EncodedDatagram<B> = data.into();
        self.conn
            .send_datagram(data.copy_to_bytes(data.remaining()))
            .map_err(|e| match e {
                quinn_proto::SendDatagramError::TooLarge => SendDatagramErrorIncoming::TooLarge,
                _ => SendDatagramErrorIncoming::NotAvailable,
            })
    }
}

impl RecvDatagram for H3DatagramReceiver {
    type Buffer = Bytes;

    fn poll_incoming_datagram(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, ConnectionErrorIncoming>> {
        self.conn.poll_recv_datagram(cx).map_err(connection_error)
    }
}

impl<B: Buf> DatagramConnectionExt<B> for H3Connection {
    type SendDatagramHandler = H3DatagramSender;
    type RecvDatagramHandler = H3DatagramReceiver;

    fn send_datagram_handler(&self) -> H3DatagramSender {
        H3DatagramSender {
            conn: self.conn.clone(),
        }
    }

    fn recv_datagram_handler(&self) -> H3DatagramReceiver {
        H3DatagramReceiver {
            conn: self.conn.clone(),
        }
    }
}
