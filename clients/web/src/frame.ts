// The 16-byte frame of docs/protocol.md: packet_len u32, header_len u16 (16), version u16 (1),
// op u32, seq u32, big-endian, then the protobuf body. Sans-IO: bytes in, frames out.

export const HEADER_LEN = 16;
export const VERSION = 1;
/** The server's default `limits.max_packet`. */
export const DEFAULT_MAX_PACKET = 64 * 1024;

/** The op table (proto/src/op.rs); numbers never change meaning. */
export const Op = {
  Auth: 1,
  AuthReply: 2,
  Heartbeat: 3,
  HeartbeatReply: 4,
  Send: 5,
  SendAck: 6,
  Push: 7,
  PushAck: 8,
  Sync: 9,
  SyncReply: 10,
  Read: 11,
  ReadReply: 12,
  RoomJoin: 13,
  RoomJoinReply: 14,
  RoomLeave: 15,
  RoomLeaveReply: 16,
  Notice: 17,
  Disconnect: 18,
  Error: 19,
  Presence: 20,
  PresenceReply: 21,
} as const;
export type Op = (typeof Op)[keyof typeof Op];

export interface Frame {
  op: number;
  seq: number;
  body: Uint8Array;
}

/** A framing fault: the bytes from the peer cannot be frames. */
export class FrameError extends Error {
  constructor(
    readonly fault: "too_large" | "short_packet" | "bad_header_len" | "unsupported_version",
    message: string,
  ) {
    super(message);
    this.name = "FrameError";
  }
}

/** One frame's bytes: header then body. */
export function encodeFrame(op: number, seq: number, body: Uint8Array = new Uint8Array(0)): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(HEADER_LEN + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, out.length);
  view.setUint16(4, HEADER_LEN);
  view.setUint16(6, VERSION);
  view.setUint32(8, op >>> 0);
  view.setUint32(12, seq >>> 0);
  out.set(body, HEADER_LEN);
  return out;
}

/** Several frames back to back, as one WebSocket message or HTTP body. */
export function concatFrames(frames: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const len = frames.reduce((n, f) => n + f.length, 0);
  const out = new Uint8Array(len);
  let at = 0;
  for (const f of frames) {
    out.set(f, at);
    at += f.length;
  }
  return out;
}

/**
 * Incremental decoder: feed it whatever arrived (a frame may be split across reads, several may
 * come in one), take the whole frames out. Header fields are checked as soon as their bytes are
 * there, as the server does; a fault is thrown once and the decoder is then unusable.
 */
export class FrameDecoder {
  private buf = new Uint8Array(0);

  constructor(private readonly maxPacket: number = DEFAULT_MAX_PACKET) {}

  /** Bytes buffered inside an incomplete frame. */
  get pending(): number {
    return this.buf.length;
  }

  push(chunk: Uint8Array): Frame[] {
    if (chunk.length > 0) {
      const next = new Uint8Array(this.buf.length + chunk.length);
      next.set(this.buf, 0);
      next.set(chunk, this.buf.length);
      this.buf = next;
    }
    const frames: Frame[] = [];
    let at = 0;
    for (;;) {
      const rest = this.buf.length - at;
      const view = new DataView(this.buf.buffer, this.buf.byteOffset + at, rest);
      if (rest < 4) break;
      const packetLen = view.getUint32(0);
      if (packetLen > this.maxPacket) {
        throw new FrameError("too_large", `frame too large: packet_len ${packetLen} exceeds the maximum of ${this.maxPacket} bytes`);
      }
      if (packetLen < HEADER_LEN) {
        throw new FrameError("short_packet", `short packet: packet_len ${packetLen} is below the 16-byte header`);
      }
      if (rest < 6) break;
      const headerLen = view.getUint16(4);
      if (headerLen !== HEADER_LEN) {
        throw new FrameError("bad_header_len", `bad header length ${headerLen} (must be 16)`);
      }
      if (rest < 8) break;
      const version = view.getUint16(6);
      if (version !== VERSION) {
        throw new FrameError("unsupported_version", `unsupported version ${version} (must be 1)`);
      }
      if (rest < packetLen) break;
      frames.push({
        op: view.getUint32(8),
        seq: view.getUint32(12),
        body: this.buf.slice(at + HEADER_LEN, at + packetLen),
      });
      at += packetLen;
    }
    if (at > 0) this.buf = this.buf.slice(at);
    return frames;
  }
}
