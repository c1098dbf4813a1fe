// A scripted in-memory server for the client's tests: a Connector per transport name whose
// connections answer AUTH_REPLY at once and hand every frame the client sends to `onRequest`.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { AuthReplySchema } from "../src/gen/roam/client/v1/client_pb.js";
import { encodeFrame, type Frame, FrameDecoder, Op } from "../src/frame.js";
import type { Connector, TransportHandlers } from "../src/transport.js";

export interface FakeConn {
  id: number;
  name: string;
  handlers: TransportHandlers;
  sent: Frame[];
  closed: boolean;
  /** Sends a frame down to the client. */
  down<T extends DescMessage>(op: number, seq: number, schema: T, init: MessageInitShape<T>): void;
  /** The server drops the connection. */
  drop(reason: string): void;
}

export class FakeServer {
  conns: FakeConn[] = [];
  attempts: string[] = [];
  /** Transport names whose attempts fail (blocked). */
  blocked = new Set<string>();
  onRequest: (conn: FakeConn, frame: Frame) => void = () => {};
  private waiters: Array<() => void> = [];

  connector(name: string): Connector {
    return async (_params, handlers) => {
      this.attempts.push(name);
      this.notify();
      if (this.blocked.has(name)) throw new Error(`${name}: blocked`);
      const decoder = new FrameDecoder();
      const conn: FakeConn = {
        id: this.conns.length,
        name,
        handlers,
        sent: [],
        closed: false,
        down(op, seq, schema, init) {
          if (!conn.closed) handlers.onFrame({ op, seq, body: toBinary(schema, create(schema, init)) });
        },
        drop(reason) {
          if (conn.closed) return;
          conn.closed = true;
          handlers.onClose(reason);
        },
      };
      this.conns.push(conn);
      conn.down(Op.AuthReply, 1, AuthReplySchema, { userId: "alice", deviceId: "d1", heartbeatSecs: 60 });
      this.notify();
      return {
        name: name as never,
        send: (bytes: Uint8Array) => {
          for (const f of decoder.push(bytes)) {
            conn.sent.push(f);
            queueMicrotask(() => {
              if (!conn.closed) this.onRequest(conn, f);
            });
          }
          this.notify();
        },
        close: () => {
          conn.closed = true;
        },
      };
    };
  }

  connectors(): Record<"webtransport" | "websocket" | "stream" | "poll", Connector> {
    return {
      webtransport: this.connector("webtransport"),
      websocket: this.connector("websocket"),
      stream: this.connector("stream"),
      poll: this.connector("poll"),
    };
  }

  /** Re-checks the `until` conditions (for changes the fake does not see as traffic). */
  notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
  }

  /** Resolves once `cond` holds (checked whenever the fake sees traffic). */
  async until(cond: () => boolean): Promise<void> {
    while (!cond()) await new Promise<void>((r) => this.waiters.push(r));
  }
}

export function decode<T extends DescMessage>(schema: T, f: Frame) {
  return fromBinary(schema, f.body);
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

export { encodeFrame };
