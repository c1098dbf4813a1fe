//! Feeds arbitrary bytes to the frame decoder, split where the input's first byte says, with
//! a maximum packet size from its second byte: the decoder must never panic, every frame it
//! yields must re-encode to the bytes it came from, and the split must not change the result.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roam_proto::{Frame, FrameDecoder, FrameError};

fn run(input: &[u8], chunk: usize, max: usize) -> (Vec<Frame>, Result<(), FrameError>) {
    let decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for part in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    let verdict = decoder.finish(&buf);
    (frames, verdict)
}

fuzz_target!(|data: &[u8]| {
    let [chunk, max, input @ ..] = data else { return };
    let max = 16 + *max as usize * 64;
    let (frames, verdict) = run(input, *chunk as usize, max);
    let (whole, whole_verdict) = run(input, input.len(), max);
    assert_eq!(frames, whole);
    assert_eq!(verdict, whole_verdict);
    let mut wire = BytesMut::new();
    for frame in &frames {
        frame.encode(&mut wire).expect("a decoded frame re-encodes");
    }
    assert_eq!(&wire[..], &input[..wire.len()]);
});
