import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { PushSchema, SendSchema } from "../src/gen/roam/client/v1/client_pb.js";
import { concatFrames, encodeFrame, FrameDecoder, FrameError, Op } from "../src/frame.js";
import { hex } from "./fake.js";

// docs/protocol.md's SEND example, byte for byte.
const SEND_HEADER = "00 00 00 1e 00 10 00 01 00 00 00 05 00 00 00 03";
const SEND_BODY = "0a 03 62 6f 62 12 03 63 2d 31 1a 02 68 69";
// docs/protocol.md's PUSH example body.
const PUSH_BODY =
  "0a 1e 08 e9 07 10 01 1a 05 61 6c 69 63 65 22 03 62 6f 62 2a 02 68 69 38 80 d8 c1 a2 8c 34 40 01";

function bytes(h: string): Uint8Array {
  return Uint8Array.from(h.split(" "), (b) => parseInt(b, 16));
}

test("SEND encodes as docs/protocol.md's example", () => {
  const body = toBinary(SendSchema, create(SendSchema, { to: "bob", clientMsgId: "c-1", content: new TextEncoder().encode("hi") }));
  assert.equal(hex(body), SEND_BODY);
  assert.equal(hex(encodeFrame(Op.Send, 3, body)), `${SEND_HEADER} ${SEND_BODY}`);
});

test("PUSH from docs/protocol.md decodes through the generated code", () => {
  const push = fromBinary(PushSchema, bytes(PUSH_BODY));
  assert.equal(push.kind.case, "message");
  const m = push.kind.value!;
  assert.equal(m.id, 1001n);
  assert.equal(m.seq, 1n);
  assert.equal(m.from, "alice");
  assert.equal(new TextDecoder().decode(m.content), "hi");
  assert.equal(m.createdAt, 1790000000000n);
  assert.equal(m.conversationSeq, 1n);
});

test("the decoder takes frames split anywhere and several in one chunk", () => {
  const a = encodeFrame(Op.Send, 3, bytes(SEND_BODY));
  const b = encodeFrame(Op.Heartbeat, 4);
  const all = concatFrames([a, b, a]);
  for (let cut = 0; cut <= all.length; cut++) {
    const d = new FrameDecoder();
    const got = [...d.push(all.slice(0, cut)), ...d.push(all.slice(cut))];
    assert.deepEqual(
      got.map((f) => [f.op, f.seq, hex(f.body)]),
      [
        [Op.Send, 3, SEND_BODY],
        [Op.Heartbeat, 4, ""],
        [Op.Send, 3, SEND_BODY],
      ],
      `cut at ${cut}`,
    );
    assert.equal(d.pending, 0);
  }
  // One byte at a time.
  const d = new FrameDecoder();
  let n = 0;
  for (const byte of all) n += d.push(Uint8Array.of(byte)).length;
  assert.equal(n, 3);
});

test("the decoder names each fault as soon as the header shows it", () => {
  const fault = (h: string) => {
    try {
      new FrameDecoder(64 * 1024).push(bytes(h));
    } catch (e) {
      assert.ok(e instanceof FrameError);
      return e.fault;
    }
    return "none";
  };
  assert.equal(fault("00 01 11 70"), "too_large"); // 70000 > 65536, after 4 bytes
  assert.equal(fault("00 00 00 0f"), "short_packet");
  assert.equal(fault("00 00 00 10 00 11"), "bad_header_len");
  assert.equal(fault("00 00 00 10 00 10 00 02"), "unsupported_version");
  assert.equal(fault("00 00 00 20 00 10 00 01 00 00"), "none"); // incomplete, not wrong
});
