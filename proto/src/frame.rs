//! The 16-byte frame of docs/contract.md §3, as a sans-IO codec.
//!
//! ```text
//!  0               4       6       8               12              16
//!  +---------------+-------+-------+---------------+---------------+--------------
//!  | packet_len    | hdr   | ver   | op            | seq           | body (protobuf)
//!  | u32 BE        | u16=16| u16=1 | u32 BE        | u32 BE        | packet_len - 16 bytes
//!  +---------------+-------+-------+---------------+---------------+--------------
//! ```
//!
//! [`FrameDecoder::decode`] takes whatever bytes have arrived (a partial frame, one frame, many
//! frames back to back), returns complete frames one at a time and leaves the rest in the
//! buffer. Bodies are zero-copy [`Bytes`] views of the receive buffer. A header is checked as
//! soon as its bytes are in (a 4-byte oversize length is refused before the body is awaited),
//! and every fault is one precise [`FrameError`]. After an error the stream is unusable: the
//! caller sends an ERROR frame naming the fault and closes the connection. At end of stream,
//! [`FrameDecoder::finish`] reports a frame cut short.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::Op;
use crate::client::v1::error::Code;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// The only protocol version.
pub const VERSION: u16 = 1;
/// Default maximum `packet_len` (header + body): 64 KiB.
pub const DEFAULT_MAX_PACKET: usize = 64 * 1024;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Operation code; [`Op::from_code`] maps it to the table ([`Frame::op_kind`]).
    pub op: u32,
    /// Request sequence; replies carry the seq of their request.
    pub seq: u32,
    /// The protobuf body, sharing the receive buffer.
    pub body: Bytes,
}

impl Frame {
    /// A frame from its parts.
    pub fn new(op: Op, seq: u32, body: impl Into<Bytes>) -> Self {
        Frame {
            op: op.code(),
            seq,
            body: body.into(),
        }
    }

    /// The op, if the table knows its code.
    pub fn op_kind(&self) -> Option<Op> {
        Op::from_code(self.op)
    }

    /// Header + body length on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode(self.op, self.seq, &self.body, dst)
    }

    /// The encoded frame as one buffer (e.g. to share between many recipients).
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    /// Decodes the body as the protobuf message `M`.
    pub fn decode_body<M: prost::Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.body.clone())
    }
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// `packet_len` is above the decoder's maximum (or a body is too large to encode).
    #[error("frame too large: packet_len {len} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced or requested packet length.
        len: u64,
        /// The maximum in force.
        max: usize,
    },
    /// `packet_len` is smaller than the header itself.
    #[error("bad frame: packet_len {0} is shorter than the 16-byte header")]
    ShortPacket(u32),
    /// `header_len` is not 16.
    #[error("bad frame: header_len {0}, expected 16")]
    BadHeaderLen(u16),
    /// `version` is not 1.
    #[error("unsupported protocol version {0}, expected 1")]
    UnsupportedVersion(u16),
    /// The stream ended inside a frame.
    #[error("stream closed inside a frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes of the unfinished frame that arrived.
        have: usize,
        /// Bytes the frame needed (the header length while the header is incomplete).
        need: usize,
    },
}

impl FrameError {
    /// The ERROR frame code that names this fault to the peer.
    pub fn code(&self) -> Code {
        match self {
            FrameError::TooLarge { .. } => Code::FrameTooLarge,
            FrameError::UnsupportedVersion(_) => Code::UnsupportedVersion,
            FrameError::ShortPacket(_)
            | FrameError::BadHeaderLen(_)
            | FrameError::Truncated { .. } => Code::BadFrame,
        }
    }
}

/// Splits a byte stream into frames. Holds only its limit: the bytes stay in the caller's
/// buffer, so an idle connection's decoder costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_packet: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PACKET)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames whose `packet_len` exceeds `max_packet` (at least the header).
    pub fn new(max_packet: usize) -> Self {
        FrameDecoder {
            max_packet: max_packet.max(HEADER_LEN),
        }
    }

    /// The maximum `packet_len` accepted.
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Takes the next complete frame off the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing was consumed). `Err`: the stream is invalid
    /// (nothing was consumed; do not call again on the same stream).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((packet_len, op, seq)) = self.check_header(buf)? else {
            return Ok(None);
        };
        buf.advance(HEADER_LEN);
        let body = buf.split_to(packet_len - HEADER_LEN).freeze();
        Ok(Some(Frame { op, seq, body }))
    }

    /// Like [`decode`](Self::decode), over an immutable buffer (e.g. one WebSocket message
    /// holding one or more frames): bodies are slices of it.
    pub fn decode_bytes(&self, buf: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        let Some((packet_len, op, seq)) = self.check_header(buf)? else {
            return Ok(None);
        };
        buf.advance(HEADER_LEN);
        let body = buf.split_to(packet_len - HEADER_LEN);
        Ok(Some(Frame { op, seq, body }))
    }

    /// At end of stream: `Ok` if `rest` (what is left in the buffer) is empty, otherwise the
    /// precise fault (an invalid header, or a frame cut short).
    pub fn finish(&self, rest: &[u8]) -> Result<(), FrameError> {
        if rest.is_empty() {
            return Ok(());
        }
        let need = match self.check_header(rest)? {
            Some(_) => return Ok(()), // a whole frame is still buffered: not truncated
            None if rest.len() >= 4 => packet_len(rest) as usize,
            None => HEADER_LEN,
        };
        Err(FrameError::Truncated {
            have: rest.len(),
            need,
        })
    }

    /// Validates as much of the header as has arrived; returns `(packet_len, op, seq)` once
    /// the whole frame is in `buf`.
    fn check_header(&self, buf: &[u8]) -> Result<Option<(usize, u32, u32)>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = packet_len(buf);
        if (len as u64) > self.max_packet as u64 {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_packet,
            });
        }
        if (len as usize) < HEADER_LEN {
            return Err(FrameError::ShortPacket(len));
        }
        if buf.len() < 6 {
            return Ok(None);
        }
        let header_len = u16::from_be_bytes([buf[4], buf[5]]);
        if header_len as usize != HEADER_LEN {
            return Err(FrameError::BadHeaderLen(header_len));
        }
        if buf.len() < 8 {
            return Ok(None);
        }
        let version = u16::from_be_bytes([buf[6], buf[7]]);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if buf.len() < len as usize {
            return Ok(None);
        }
        let op = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
        Ok(Some((len as usize, op, seq)))
    }
}

fn packet_len(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])
}

fn put_header(dst: &mut BytesMut, op: u32, seq: u32, body_len: usize) -> Result<(), FrameError> {
    let total = HEADER_LEN as u64 + body_len as u64;
    let packet_len = u32::try_from(total).map_err(|_| FrameError::TooLarge {
        len: total,
        max: u32::MAX as usize,
    })?;
    dst.reserve(total as usize);
    dst.put_u32(packet_len);
    dst.put_u16(HEADER_LEN as u16);
    dst.put_u16(VERSION);
    dst.put_u32(op);
    dst.put_u32(seq);
    Ok(())
}

/// Appends one frame with a raw body to `dst`.
pub fn encode(op: u32, seq: u32, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    put_header(dst, op, seq, body.len())?;
    dst.put_slice(body);
    Ok(())
}

/// Appends one frame whose body is `msg`, encoded straight into `dst` (no intermediate buffer).
pub fn encode_msg<M: prost::Message>(
    op: Op,
    seq: u32,
    msg: &M,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    put_header(dst, op.code(), seq, msg.encoded_len())?;
    msg.encode_raw(dst);
    Ok(())
}

/// One frame in its own buffer, its body encoded from `msg` (e.g. a reply, or a delivery
/// shared by many recipients).
pub fn frame_of<M: prost::Message>(op: Op, seq: u32, msg: &M) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + msg.encoded_len());
    encode_msg(op, seq, msg, &mut buf)?;
    Ok(buf.freeze())
}

/// An ERROR frame answering request `seq` (0: the connection itself). The message is cut to
/// 512 bytes, so the frame always encodes.
pub fn error_frame(seq: u32, code: Code, message: &str) -> Bytes {
    let mut end = message.len().min(512);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = crate::client::v1::Error {
        code: code as i32,
        message: message[..end].to_owned(),
    };
    // A bounded body: far below the u32 length limit.
    frame_of(Op::Error, seq, &msg).unwrap_or_default()
}

/// A DISCONNECT frame: why the server closes the connection, and whether to reconnect.
pub fn disconnect_frame(
    reason: crate::client::v1::disconnect::Reason,
    message: &str,
    reconnect_after_ms: Option<u32>,
) -> Bytes {
    let msg = crate::client::v1::Disconnect {
        reason: reason as i32,
        message: message.chars().take(512).collect(),
        reconnect: reconnect_after_ms.is_some(),
        reconnect_after_ms: reconnect_after_ms.unwrap_or(0),
        reconnect_to: String::new(),
    };
    frame_of(Op::Disconnect, 0, &msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::v1 as pb;
    use proptest::prelude::*;

    fn header(packet_len: u32, header_len: u16, version: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&packet_len.to_be_bytes());
        v.extend_from_slice(&header_len.to_be_bytes());
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 9]);
        v
    }

    #[test]
    fn decodes_one_frame_with_its_fields() {
        let mut buf = BytesMut::new();
        encode(Op::Send.code(), 42, b"hello", &mut buf).unwrap();
        assert_eq!(buf.len(), 21);
        assert_eq!(
            &buf[..16],
            &[0, 0, 0, 21, 0, 16, 0, 1, 0, 0, 0, 5, 0, 0, 0, 42]
        );
        let f = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(f, Frame::new(Op::Send, 42, &b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn waits_for_more_bytes_without_consuming() {
        let mut full = BytesMut::new();
        encode(7, 1, &[1, 2, 3], &mut full).unwrap();
        let d = FrameDecoder::default();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut part), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn refuses_oversize_as_soon_as_the_length_arrives() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&1025u32.to_be_bytes()[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(d.decode(&mut buf).unwrap_err().code(), Code::FrameTooLarge);
    }

    #[test]
    fn names_each_header_fault() {
        let d = FrameDecoder::default();
        let cases = [
            (header(15, 16, 1), FrameError::ShortPacket(15)),
            (header(16, 12, 1), FrameError::BadHeaderLen(12)),
            (header(16, 16, 2), FrameError::UnsupportedVersion(2)),
        ];
        for (bytes, want) in cases {
            assert_eq!(d.decode(&mut BytesMut::from(&bytes[..])), Err(want));
        }
        assert_eq!(
            FrameError::UnsupportedVersion(2).code(),
            Code::UnsupportedVersion
        );
    }

    #[test]
    fn finish_reports_truncation() {
        let d = FrameDecoder::default();
        assert_eq!(d.finish(&[]), Ok(()));
        assert_eq!(
            d.finish(&[0, 0]),
            Err(FrameError::Truncated { have: 2, need: 16 })
        );
        let mut buf = header(20, 16, 1);
        buf.extend_from_slice(&[1, 2]);
        assert_eq!(
            d.finish(&buf),
            Err(FrameError::Truncated { have: 18, need: 20 })
        );
        assert_eq!(d.finish(&header(3, 16, 1)), Err(FrameError::ShortPacket(3)));
    }

    #[test]
    fn encodes_messages_in_place() {
        let msg = pb::SendAck {
            client_msg_id: "c1".into(),
            id: 7,
            seq: 1,
            duplicate: false,
        };
        let mut buf = BytesMut::new();
        encode_msg(Op::SendAck, 5, &msg, &mut buf).unwrap();
        let f = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.op_kind(), Some(Op::SendAck));
        assert_eq!(f.decode_body::<pb::SendAck>().unwrap(), msg);
    }

    #[test]
    fn error_and_disconnect_frames_decode() {
        let long = "é".repeat(1000);
        let mut bytes = error_frame(3, Code::BadBody, &long);
        let f = FrameDecoder::default()
            .decode_bytes(&mut bytes)
            .unwrap()
            .unwrap();
        let e: pb::Error = f.decode_body().unwrap();
        assert_eq!(
            (f.op_kind(), f.seq, e.code),
            (Some(Op::Error), 3, Code::BadBody as i32)
        );
        assert!(e.message.len() <= 512);
        let mut bytes = disconnect_frame(pb::disconnect::Reason::Drain, "bye", Some(500));
        let f = FrameDecoder::default()
            .decode_bytes(&mut bytes)
            .unwrap()
            .unwrap();
        let d: pb::Disconnect = f.decode_body().unwrap();
        assert_eq!((d.reconnect, d.reconnect_after_ms), (true, 500));
    }

    #[test]
    fn decode_bytes_slices_a_message_of_many_frames() {
        let mut buf = BytesMut::new();
        for i in 0..3u32 {
            encode(Op::Push.code(), i, &[i as u8; 4], &mut buf).unwrap();
        }
        let mut bytes = buf.freeze();
        let d = FrameDecoder::default();
        for i in 0..3u32 {
            let f = d.decode_bytes(&mut bytes).unwrap().unwrap();
            assert_eq!((f.seq, &f.body[..]), (i, &[i as u8; 4][..]));
        }
        assert_eq!(d.decode_bytes(&mut bytes), Ok(None));
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(op, seq, body)| Frame {
                op,
                seq,
                body: body.into(),
            })
    }

    /// Feeds `input` to a decoder in chunks cut at `cuts`; returns the frames and the final
    /// verdict (the decode error, or `finish` on what is left).
    fn feed(input: &[u8], cuts: &[usize], max: usize) -> (Vec<Frame>, Result<(), FrameError>) {
        let d = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&input[at..p]);
            at = p;
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return (frames, Err(e)),
                }
            }
        }
        (frames, d.finish(&buf))
    }

    proptest! {
        #[test]
        fn any_frames_round_trip_in_any_split(
            frames in proptest::collection::vec(arb_frame(), 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire).unwrap();
            }
            let (got, verdict) = feed(&wire, &cuts, DEFAULT_MAX_PACKET);
            prop_assert_eq!(verdict, Ok(()));
            prop_assert_eq!(&got, &frames);
            // The immutable-buffer path agrees.
            let mut bytes = wire.freeze();
            let d = FrameDecoder::default();
            let again: Vec<Frame> = std::iter::from_fn(|| d.decode_bytes(&mut bytes).unwrap()).collect();
            prop_assert_eq!(again, frames);
        }

        #[test]
        fn any_bytes_in_any_split_give_frames_or_one_precise_error(
            input in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
            max in 16usize..200,
        ) {
            let (frames, verdict) = feed(&input, &cuts, max);
            // The split never changes the outcome.
            let (whole, whole_verdict) = feed(&input, &[], max);
            prop_assert_eq!(&frames, &whole);
            prop_assert_eq!(&verdict, &whole_verdict);
            // Whatever was decoded re-encodes to a prefix of the input.
            let mut wire = BytesMut::new();
            for f in &frames {
                prop_assert!(f.encoded_len() <= max);
                f.encode(&mut wire).unwrap();
            }
            prop_assert_eq!(&wire[..], &input[..wire.len()]);
            if let Err(e) = verdict {
                let rest = &input[wire.len()..];
                match e {
                    FrameError::TooLarge { len, max: m } => {
                        prop_assert_eq!(m, max);
                        prop_assert!(len > max as u64);
                    }
                    FrameError::ShortPacket(len) => prop_assert!((len as usize) < HEADER_LEN),
                    FrameError::BadHeaderLen(h) => prop_assert_ne!(h as usize, HEADER_LEN),
                    FrameError::UnsupportedVersion(v) => prop_assert_ne!(v, VERSION),
                    FrameError::Truncated { have, need } => {
                        prop_assert_eq!(have, rest.len());
                        prop_assert!(have < need);
                    }
                }
            }
        }
    }
}
