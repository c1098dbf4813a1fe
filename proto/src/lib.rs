//! # roam-proto — the wire: protobuf schemas and the 16-byte frame codec
//!
//! Owns everything two Roam processes (or a client and Roam) must agree on byte for byte:
//!
//! - [`frame`]: the client frame of docs/contract.md §3 — a 16-byte big-endian header (`packet_len`,
//!   `header_len`, `version`, `op`, `seq`) and a protobuf body. [`FrameDecoder`] is sans-IO:
//!   bytes go in (any split, many frames per buffer), [`Frame`]s come out with zero-copy
//!   [`bytes::Bytes`] bodies, or one precise [`FrameError`]. [`encode`] and friends write frames.
//! - [`http_error`]: the JSON error envelope of every HTTP endpoint.
//! - [`Op`]: the operation table — which op number carries which message, in which direction.
//! - [`client`], [`internal`], [`idsvc`]: prost types and tonic services generated from
//!   `proto/roam/**/*.proto` at build time (with protox, so no system `protoc` is needed):
//!   the client ops and the `roam.client.v1.Gateway` gRPC service; the edge↔core link
//!   `roam.internal.v1.EdgeLink`; the ID service `roam.idsvc.v1.IdService`.
//!
//! No I/O lives here: transports (edge, clients) feed bytes in and write bytes out. The
//! generated services need tonic's codegen feature only (no transport, server or client stack:
//! no hyper, h2 or axum), like quinn-proto beside quinn.
//!
//! ```
//! use bytes::BytesMut;
//! use roam_proto::{FrameDecoder, Op, encode};
//!
//! let mut wire = BytesMut::new();
//! encode(Op::Heartbeat.code(), 7, b"", &mut wire);
//! let mut decoder = FrameDecoder::new(64 * 1024);
//! let frame = decoder.decode(&mut wire).unwrap().unwrap();
//! assert_eq!((frame.op, frame.seq), (Op::Heartbeat.code(), 7));
//! ```

#![forbid(unsafe_code)]

pub mod frame;
pub mod http_error;
pub mod internal_auth;
pub mod op;

pub use frame::{
    DEFAULT_MAX_PACKET, Frame, FrameDecoder, FrameError, HEADER_LEN, VERSION, disconnect_frame,
    encode, encode_msg, error_frame, frame_of,
};
pub use op::{Direction, Op};

/// `roam.client.v1`: client ops (one message per frame op) and the `Gateway` gRPC service.
pub mod client {
    /// Version 1 of the client protocol.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("roam.client.v1");
    }
}

/// `roam.internal.v1`: the edge↔core link (`EdgeLink`).
pub mod internal {
    /// Version 1 of the internal link.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("roam.internal.v1");
    }
}

/// `roam.idsvc.v1`: the ID service (`IdService`).
pub mod idsvc {
    /// Version 1 of the ID service.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("roam.idsvc.v1");
    }
}

#[cfg(test)]
mod examples;
