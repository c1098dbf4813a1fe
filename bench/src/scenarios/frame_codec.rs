//! `roam bench frame-codec`: encode and decode 64-byte-body frames on one core.
//!
//! Figures: `encode_frames_per_sec`, `decode_frames_per_sec` (the streaming path sockets use,
//! `FrameDecoder::decode` over a `BytesMut`), `decode_message_frames_per_sec` (frames sliced
//! out of one immutable message, `decode_bytes`), `decode_mib_per_sec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use roam_proto::{FrameDecoder, Op, encode};

use anyhow::{Result, bail};

use crate::args::BenchArgs;
use crate::progress::Progress;
use crate::report::Report;

const BODY: usize = 64;
const BATCH: usize = 10_000;

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    let total = args.duration_or(3.0)?;
    let phase = total / 3;
    let body = [0xA5u8; BODY];
    let frame_len = roam_proto::HEADER_LEN + BODY;

    // Encode: BATCH frames into a reused buffer, repeatedly.
    let mut buf = BytesMut::with_capacity(BATCH * frame_len);
    let encoded = timed("encode", phase, || {
        buf.clear();
        for seq in 0..BATCH as u32 {
            // A 64-byte body cannot exceed the u32 length field.
            let _ = encode(Op::Push.code(), seq, black_box(&body), &mut buf);
        }
        black_box(&buf);
        BATCH as u64
    });
    let wire = buf.split().freeze();
    let decoder = FrameDecoder::default();

    // Decode, streaming path: each batch refills the receive buffer (one memcpy, as a socket
    // read would) and that copy counts against the decoder.
    let mut rx = BytesMut::with_capacity(wire.len());
    let decoded = timed("decode", phase, || {
        rx.clear();
        rx.extend_from_slice(&wire);
        let mut n = 0;
        while let Ok(Some(frame)) = decoder.decode(&mut rx) {
            black_box(&frame);
            n += 1;
        }
        n
    });
    let sliced = timed("decode msg", phase, || {
        let mut msg = wire.clone();
        let mut n = 0;
        while let Ok(Some(frame)) = decoder.decode_bytes(&mut msg) {
            black_box(&frame);
            n += 1;
        }
        n
    });
    if decoded.frames == 0 || sliced.frames == 0 {
        bail!("frame-codec: no operation succeeded: the decoder returned no frame");
    }

    let mut report = Report::new("frame-codec");
    report
        .figure("body_bytes", BODY as u64)
        .figure("encode_frames_per_sec", encoded.per_sec())
        .figure("decode_frames_per_sec", decoded.per_sec())
        .figure("decode_message_frames_per_sec", sliced.per_sec())
        .figure(
            "decode_mib_per_sec",
            (decoded.per_sec() as f64 * frame_len as f64 / 1_048_576.0).round() as u64,
        );
    Ok(report)
}

struct Timed {
    frames: u64,
    elapsed: Duration,
}

impl Timed {
    fn per_sec(&self) -> u64 {
        (self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)) as u64
    }
}

/// Runs `batch` (which returns the frames it handled) until `phase` has passed.
fn timed(name: &str, phase: Duration, mut batch: impl FnMut() -> u64) -> Timed {
    let progress = Progress::new(name, phase);
    let start = Instant::now();
    let mut frames = 0;
    while start.elapsed() < phase {
        frames += batch();
        progress.set(start.elapsed());
    }
    progress.finish();
    Timed {
        frames,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn reports_both_rates() {
        let cli = Cli::parse_from(["bench", "frame-codec", "--duration", "0.3"]);
        let report = run(&cli.args).unwrap();
        for name in ["encode_frames_per_sec", "decode_frames_per_sec"] {
            let v = report.get(name).and_then(|v| v.as_u64()).unwrap();
            assert!(v > 0, "{name} = {v}");
        }
        let json = report.to_json();
        assert_eq!(json["scenario"], "frame-codec");
        assert!(json["machine"].as_str().unwrap().ends_with("cores"));
    }
}
