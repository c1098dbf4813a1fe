import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type Message,
  type MessageSchema,
  NoticeSchema,
  Notice_Kind,
  PresenceQuerySchema,
  PresenceReplySchema,
  PushSchema,
  SendAckSchema,
  SendSchema,
  SyncReplySchema,
  SyncSchema,
} from "../src/gen/roam/client/v1/client_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { RoamClient } from "../src/client.js";
import { Op } from "../src/frame.js";
import { decode, FakeServer } from "./fake.js";

type Msg = MessageInitShape<typeof MessageSchema>;

function client(server: FakeServer, extra: Partial<ConstructorParameters<typeof RoamClient>[0]> = {}) {
  return new RoamClient({
    baseUrl: "https://edge.test",
    token: "t",
    deviceId: "d1",
    connectors: server.connectors(),
    backoff: { baseMs: 2, maxMs: 4 },
    requestTimeoutMs: 60_000,
    ...extra,
  });
}

/** A store of alice's inbox, answering SYNC and SEND like core does. */
function inbox(server: FakeServer, messages: Msg[]) {
  server.onRequest = (conn, f) => {
    if (f.op === Op.Sync) {
      const s = decode(SyncSchema, f);
      const page = messages.filter((m) => (m.seq ?? 0n) > s.after);
      const last = page.at(-1)?.seq ?? s.after;
      conn.down(Op.SyncReply, f.seq, SyncReplySchema, { messages: page, nextAfter: last, hasMore: false });
    }
  };
}

test("transports are tried in fallback order; the first that opens is used", async () => {
  const server = new FakeServer();
  inbox(server, []);
  server.blocked = new Set(["webtransport", "websocket"]);
  const c = client(server);
  const failed: string[] = [];
  c.on("attempt", (name, err) => {
    if (err) failed.push(name);
  });
  c.connect();
  await server.until(() => c.state === "connected");
  assert.deepEqual(server.attempts, ["webtransport", "websocket", "stream"]);
  assert.deepEqual(failed, ["webtransport", "websocket"]);
  assert.equal(c.transportName, "stream");
  c.close();
});

test("with every transport blocked it backs off and tries the whole order again", async () => {
  const server = new FakeServer();
  inbox(server, []);
  server.blocked = new Set(["webtransport", "websocket", "stream", "poll"]);
  const c = client(server);
  const states: string[] = [];
  c.on("state", (s) => states.push(s));
  c.connect();
  await server.until(() => server.attempts.length >= 8);
  assert.deepEqual(server.attempts.slice(0, 8), [
    "webtransport", "websocket", "stream", "poll",
    "webtransport", "websocket", "stream", "poll",
  ]);
  assert.ok(states.includes("disconnected"));
  server.blocked.clear();
  await server.until(() => c.state === "connected");
  assert.equal(c.transportName, "webtransport");
  c.close();
});

test("a SEND unanswered when the connection drops is re-sent with the same client_msg_id", async () => {
  const server = new FakeServer();
  const stored: Msg[] = [];
  server.onRequest = (conn, f) => {
    if (f.op === Op.Sync) {
      const s = decode(SyncSchema, f);
      const page = stored.filter((m) => (m.seq ?? 0n) > s.after);
      conn.down(Op.SyncReply, f.seq, SyncReplySchema, { messages: page, nextAfter: page.at(-1)?.seq ?? s.after });
    }
    if (f.op === Op.Send) {
      if (conn.id === 0) {
        conn.drop("network gone"); // the first attempt never gets its ack
        return;
      }
      const send = decode(SendSchema, f);
      stored.push({ id: 7n, seq: 1n, from: "alice", to: send.to, content: send.content, conversationSeq: 1n });
      conn.down(Op.SendAck, f.seq, SendAckSchema, { clientMsgId: send.clientMsgId, id: 7n, seq: 1n });
    }
  };
  server.blocked = new Set(["webtransport"]);
  const c = client(server);
  const got: Message[] = [];
  c.on("message", (m) => got.push(m));
  c.connect();
  await server.until(() => c.state === "connected");
  const ack = await c.send("bob", "hello");
  const sends = server.conns.flatMap((conn) => conn.sent.filter((f) => f.op === Op.Send).map((f) => decode(SendSchema, f)));
  assert.equal(sends.length, 2);
  assert.equal(sends[0]!.clientMsgId, sends[1]!.clientMsgId);
  assert.equal(ack.clientMsgId, sends[0]!.clientMsgId);
  assert.equal(ack.id, 7n);
  // The sender's own message comes back by SYNC (no PUSH of one's own message).
  await server.until(() => got.length >= 1);
  assert.equal(got[0]!.id, 7n);
  c.close();
});

test("a message that comes by PUSH and again by SYNC after a reconnect is handed over once", async () => {
  const server = new FakeServer();
  const m1: Msg = { id: 101n, seq: 1n, from: "bob", to: "alice", content: new TextEncoder().encode("one"), conversationSeq: 1n };
  const m2: Msg = { id: 102n, seq: 2n, from: "bob", to: "alice", content: new TextEncoder().encode("two"), conversationSeq: 2n };
  const stored: Msg[] = [m1];
  server.onRequest = (conn, f) => {
    if (f.op === Op.Sync) {
      // An edge that lost its cursor answers from the start: the client must not show m1 twice.
      conn.down(Op.SyncReply, f.seq, SyncReplySchema, { messages: stored, nextAfter: stored.at(-1)!.seq!, hasMore: false });
    }
  };
  const c = client(server, { transports: ["websocket"] });
  const got: bigint[] = [];
  c.on("message", (m) => got.push(m.id));
  c.connect();
  await server.until(() => got.length >= 1);
  server.conns[0]!.down(Op.Push, 0, PushSchema, { kind: { case: "message", value: m1 } });
  stored.push(m2);
  server.conns[0]!.drop("server restarted");
  await server.until(() => got.length >= 2);
  assert.deepEqual(got, [101n, 102n]);
  assert.equal(c.inboxCursor, 2n);
  c.close();
});

test("a PUSH after a gap makes the client SYNC from its cursor and hand over in order", async () => {
  const server = new FakeServer();
  const mk = (n: bigint): Msg => ({ id: 200n + n, seq: n, from: "bob", to: "alice", conversationSeq: n });
  const stored: Msg[] = [];
  inbox(server, stored);
  const c = client(server, { transports: ["websocket"] });
  const got: bigint[] = [];
  c.on("message", (m) => got.push(m.seq));
  c.connect();
  await server.until(() => c.state === "connected" && server.conns[0]!.sent.some((f) => f.op === Op.Sync));
  stored.push(mk(1n), mk(2n), mk(3n));
  server.conns[0]!.down(Op.Push, 0, PushSchema, { kind: { case: "message", value: mk(3n) } }); // 1 and 2 were dropped
  await server.until(() => got.length >= 3);
  assert.deepEqual(got, [1n, 2n, 3n]);
  c.close();
});

test("a large group's NOTICE is pulled by SYNC on the group, and again after a reconnect", async () => {
  const server = new FakeServer();
  const group = "group:big";
  const mk = (n: bigint): Msg => ({ id: 300n + n, seq: 0n, from: "bob", to: group, conversationSeq: n, content: new TextEncoder().encode(`g${n}`) });
  const history: Msg[] = [];
  const pulls: Array<{ conversation: string; after: bigint }> = [];
  server.onRequest = (conn, f) => {
    if (f.op !== Op.Sync) return;
    const s = decode(SyncSchema, f);
    if (s.conversation === "") {
      // Read fan-out: the group's messages are not in the inbox.
      conn.down(Op.SyncReply, f.seq, SyncReplySchema, { messages: [], nextAfter: s.after });
      return;
    }
    pulls.push({ conversation: s.conversation, after: s.after });
    const page = history.filter((m) => m.conversationSeq! > s.after);
    conn.down(Op.SyncReply, f.seq, SyncReplySchema, { messages: page, nextAfter: page.at(-1)?.conversationSeq ?? s.after });
  };
  const c = client(server, { transports: ["websocket"] });
  const got: string[] = [];
  c.on("message", (m) => {
    got.push(new TextDecoder().decode(m.content));
    server.notify();
  });
  c.connect();
  await server.until(() => c.state === "connected");
  history.push(mk(1n), mk(2n));
  // The server tells online members about the newest message only; it is new to the client.
  server.conns[0]!.down(Op.Notice, 0, NoticeSchema, { kind: Notice_Kind.SYNC, peer: group, seq: 2n });
  await server.until(() => got.length >= 1);
  assert.deepEqual(pulls[0], { conversation: group, after: 1n });
  assert.deepEqual(got, ["g2"]);
  history.push(mk(3n));
  server.conns[0]!.down(Op.Notice, 0, NoticeSchema, { kind: Notice_Kind.SYNC, peer: group, seq: 3n });
  await server.until(() => got.length >= 2);
  // Sent while the client was away: no NOTICE reaches it, the reconnect pulls the group.
  server.conns[0]!.drop("server restarted");
  history.push(mk(4n));
  await server.until(() => got.length >= 3);
  assert.deepEqual(got, ["g2", "g3", "g4"]);
  assert.equal(server.conns.length, 2);
  assert.deepEqual(pulls.at(-1), { conversation: group, after: 3n });
  c.close();
});

test("presence asks the server with PRESENCE and returns its answer", async () => {
  const server = new FakeServer();
  inbox(server, []);
  const asked: string[][] = [];
  const base = server.onRequest;
  server.onRequest = (conn, f) => {
    if (f.op !== Op.Presence) return base(conn, f);
    const q = decode(PresenceQuerySchema, f);
    asked.push(q.users);
    // Strangers are left out by the server.
    conn.down(Op.PresenceReply, f.seq, PresenceReplySchema, { users: [{ user: "bob", online: true }] });
  };
  const c = client(server, { transports: ["websocket"] });
  c.connect();
  await server.until(() => c.state === "connected");
  const p = await c.presence(["bob", "mallory"]);
  assert.deepEqual(asked, [["bob", "mallory"]]);
  assert.deepEqual(p.map((u) => [u.user, u.online]), [["bob", true]]);
  c.close();
});

test("one's own message to a large group is pulled from the group after its SEND_ACK", async () => {
  const server = new FakeServer();
  const group = "group:big";
  const history: Msg[] = [];
  server.onRequest = (conn, f) => {
    if (f.op === Op.Send) {
      const send = decode(SendSchema, f);
      const n = BigInt(history.length + 1);
      history.push({ id: 400n + n, seq: 0n, from: "alice", to: group, conversationSeq: n, content: send.content });
      // Read fan-out: the ack's seq is the conversation_seq; nothing goes to the inbox.
      conn.down(Op.SendAck, f.seq, SendAckSchema, { clientMsgId: send.clientMsgId, id: 400n + n, seq: n });
    }
    if (f.op !== Op.Sync) return;
    const s = decode(SyncSchema, f);
    const page = s.conversation === "" ? [] : history.filter((m) => m.conversationSeq! > s.after);
    conn.down(Op.SyncReply, f.seq, SyncReplySchema, { messages: page, nextAfter: page.at(-1)?.conversationSeq ?? s.after });
  };
  history.push({ id: 401n, seq: 0n, from: "bob", to: group, conversationSeq: 1n, content: new TextEncoder().encode("older") });
  const c = client(server, { transports: ["websocket"] });
  const got: bigint[] = [];
  c.on("message", (m) => {
    got.push(m.id);
    server.notify();
  });
  c.connect();
  await server.until(() => c.state === "connected");
  await c.send(group, "mine");
  await server.until(() => got.length >= 1);
  // Only its own message: the older one is history, not pulled.
  assert.deepEqual(got, [402n]);
  c.close();
});
