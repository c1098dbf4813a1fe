// The Roam browser client: picks a transport (WebTransport → WebSocket → HTTP streaming →
// long-poll, the next when one is blocked or fails), reconnects with backoff and jitter,
// resumes from its inbox cursor with SYNC, retries each SEND with the same client_msg_id until
// it is acknowledged, and hands every message to the app once (deduplicated by id).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import {
  AuthReplySchema,
  DisconnectSchema,
  Error_Code,
  ErrorSchema,
  HeartbeatSchema,
  type Message,
  NoticeSchema,
  type Notice,
  Notice_Kind,
  PushAckSchema,
  PresenceQuerySchema,
  PresenceReplySchema,
  PushSchema,
  ReadReplySchema,
  type ReadReply,
  ReadSchema,
  SendAckSchema,
  type SendAck,
  SendSchema,
  SyncReplySchema,
  type SyncReply,
  SyncSchema,
  type UserPresence,
} from "./gen/roam/client/v1/client_pb.js";
import { Backoff, type BackoffOptions } from "./backoff.js";
import { Deduper } from "./dedupe.js";
import { encodeFrame, type Frame, Op } from "./frame.js";
import {
  AuthError,
  type Connector,
  FALLBACK_ORDER,
  type Transport,
  type TransportName,
} from "./transport.js";
import { connectPoll } from "./transports/poll.js";
import { connectStream } from "./transports/stream.js";
import { connectWebSocket } from "./transports/websocket.js";
import { connectWebTransport } from "./transports/webtransport.js";

export const DEFAULT_CONNECTORS: Record<TransportName, Connector> = {
  webtransport: connectWebTransport,
  websocket: connectWebSocket,
  stream: connectStream,
  poll: connectPoll,
};

export type ClientState = "connecting" | "connected" | "disconnected" | "closed" | "auth_failed";

export interface ClientOptions {
  /** The edge, e.g. `https://127.0.0.1:8443`; in the app, the page's origin. */
  baseUrl: string;
  token: string;
  deviceId: string;
  platform?: string;
  /** Transports to try, in order (default: FALLBACK_ORDER). */
  transports?: readonly TransportName[];
  /** Replaces transports' connectors (tests; a proxy shim). */
  connectors?: Partial<Record<TransportName, Connector>>;
  /** How long one transport may take to open and authenticate (default 5 s). */
  openTimeoutMs?: number;
  /** How long a request waits for its answer before it is retried or failed (default 10 s). */
  requestTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** The inbox seq already seen (resume point); 0 reads the whole inbox. */
  cursor?: bigint;
}

/** A request failed with the server's ERROR frame. */
export class RoamError extends Error {
  constructor(
    readonly code: Error_Code,
    message: string,
  ) {
    super(message);
    this.name = "RoamError";
  }
}

/** SEND refusals that a retry with the same client_msg_id may get past. */
const RETRYABLE = new Set<Error_Code>([Error_Code.UNAVAILABLE, Error_Code.RATE_LIMITED, Error_Code.INTERNAL]);

interface Events {
  state: (state: ClientState, transport: TransportName | undefined, detail: string) => void;
  /** Each stored message once, in inbox order when it came by the inbox. */
  message: (message: Message) => void;
  notice: (notice: Notice) => void;
  /** Each failed transport attempt (for the app's status line and tests). */
  attempt: (transport: TransportName, error: string | undefined) => void;
}

interface PendingRequest {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface PendingSend {
  clientMsgId: string;
  to: string;
  content: Uint8Array;
  contentType: string;
  resolve: (ack: SendAck) => void;
  reject: (e: Error) => void;
  /** The connection it was last sent on (not re-sent on the same one unless it timed out). */
  sentOn: number;
}

/** The conversation a message belongs to, seen by `me`: the peer's id or `group:<id>`. */
export function conversationOf(message: Message, me: string): string {
  if (message.to.startsWith("group:")) return message.to;
  return message.from === me ? message.to : message.from;
}

export class RoamClient {
  private readonly opts: Required<Omit<ClientOptions, "connectors" | "backoff" | "cursor">>;
  private readonly connectors: Record<TransportName, Connector>;
  private readonly backoff: Backoff;
  private readonly dedupe = new Deduper();
  private readonly listeners: { [K in keyof Events]: Set<Events[K]> } = {
    state: new Set(),
    message: new Set(),
    notice: new Set(),
    attempt: new Set(),
  };

  private transport: Transport | undefined;
  /** Counts connections; frames of an older one are ignored. */
  private connId = 0;
  private nextSeq = 2;
  private readonly requests = new Map<number, PendingRequest>();
  private readonly sends = new Map<string, PendingSend>();
  private cursor: bigint;
  private syncing = false;
  private syncAgain = false;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private abort = new AbortController();
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  private closedSignal: (() => void) | undefined;
  private msgCounter = 0;
  /** The last conversation_seq seen per group (for large groups' KIND_SYNC pulls). */
  private readonly groupSeq = new Map<string, bigint>();
  /**
   * Groups announced by KIND_SYNC (read fan-out: their messages are not in the inbox), pulled
   * again after every reconnect for what was sent meanwhile.
   */
  private readonly largeGroups = new Set<string>();

  userId = "";
  state: ClientState = "disconnected";
  transportName: TransportName | undefined;

  constructor(options: ClientOptions) {
    this.opts = {
      baseUrl: options.baseUrl,
      token: options.token,
      deviceId: options.deviceId,
      platform: options.platform ?? "web",
      transports: options.transports ?? FALLBACK_ORDER,
      openTimeoutMs: options.openTimeoutMs ?? 5000,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
    };
    this.connectors = { ...DEFAULT_CONNECTORS, ...options.connectors };
    this.backoff = new Backoff(options.backoff);
    this.cursor = options.cursor ?? 0n;
  }

  on<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    this.listeners[event].add(fn);
    return () => this.listeners[event].delete(fn);
  }

  /** The inbox seq up to which every message was handed over (save it to resume). */
  get inboxCursor(): bigint {
    return this.cursor;
  }

  /** Starts connecting and keeps the connection up until close(). */
  connect(): void {
    if (this.stopped) throw new Error("this client was closed");
    void this.run();
  }

  close(): void {
    this.stopped = true;
    this.abort.abort();
    this.dropConnection("closed by the app");
    clearTimeout(this.retryTimer);
    for (const s of this.sends.values()) s.reject(new Error("the client was closed"));
    this.sends.clear();
    this.wakeUp?.();
    this.setState("closed", "closed by the app");
  }

  /**
   * Sends a message; resolves with its SEND_ACK once it is stored. Retried with the same
   * client_msg_id across reconnects until acknowledged; rejects only on a refusal that a retry
   * cannot change (RoamError) or close().
   */
  send(to: string, content: string | Uint8Array, contentType = ""): Promise<SendAck> {
    const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
    const clientMsgId = `${this.opts.deviceId}-${Date.now().toString(36)}-${(this.msgCounter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    return new Promise<SendAck>((resolve, reject) => {
      const p: PendingSend = { clientMsgId, to, content: bytes, contentType, resolve, reject, sentOn: -1 };
      this.sends.set(clientMsgId, p);
      if (this.state === "connected") this.dispatchSend(p);
    });
  }

  /** Marks `peer`'s conversation read up to `seq` (a conversation_seq). */
  async read(peer: string, seq: bigint): Promise<ReadReply> {
    return this.call(Op.Read, ReadSchema, { peer, seq }, ReadReplySchema);
  }

  /**
   * Who of `users` (1 to 100) is online. The server answers only for this user and for users
   * who share a conversation with them (a 1:1 message either way, or a group); the others are
   * left out of the result.
   */
  async presence(users: readonly string[]): Promise<UserPresence[]> {
    const reply = await this.call(Op.Presence, PresenceQuerySchema, { users: [...users] }, PresenceReplySchema);
    return reply.users;
  }

  /** A page of a conversation's history: the newest `limit` before `before` (0: the newest). */
  async history(conversation: string, before: bigint, limit = 30): Promise<SyncReply> {
    if (before === 0n) before = 0xffff_ffff_ffff_ffffn;
    return this.call(Op.Sync, SyncSchema, { conversation, before, limit }, SyncReplySchema);
  }

  private emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    for (const fn of this.listeners[event]) {
      try {
        (fn as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (e) {
        console.warn(`roam: a ${event} listener threw`, e);
      }
    }
  }

  private setState(state: ClientState, detail: string): void {
    this.state = state;
    this.emit("state", state, this.transportName, detail);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.retryTimer = setTimeout(resolve, ms);
      this.wakeUp = () => {
        clearTimeout(this.retryTimer);
        resolve();
      };
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      this.setState("connecting", "");
      const outcome = await this.openOne();
      if (this.stopped) return;
      if (outcome === "auth") {
        this.setState("auth_failed", "the token was refused");
        return;
      }
      if (outcome === "open") {
        this.backoff.reset();
        await new Promise<void>((resolve) => {
          this.closedSignal = resolve;
        });
        if (this.stopped) return;
      }
      const delay = this.backoff.next();
      this.setState("disconnected", `retrying in ${delay} ms`);
      await this.sleep(delay);
    }
  }

  /** Tries each transport in order; the first that opens is kept. */
  private async openOne(): Promise<"open" | "failed" | "auth"> {
    for (const name of this.opts.transports) {
      if (this.stopped) return "failed";
      const id = ++this.connId;
      const early: Frame[] = [];
      let live = false;
      let authRefused = false;
      const handlers = {
        onFrame: (f: Frame) => {
          if (id !== this.connId) return;
          if (!live) {
            if (f.op === Op.Error && f.seq <= 1) authRefused = true;
            early.push(f);
          } else this.onFrame(f);
        },
        onClose: (reason: string) => {
          if (id === this.connId && live) this.lost(reason);
        },
      };
      try {
        const t = await this.connectors[name](
          {
            baseUrl: this.opts.baseUrl,
            token: this.opts.token,
            deviceId: this.opts.deviceId,
            platform: this.opts.platform,
            openTimeoutMs: this.opts.openTimeoutMs,
            signal: this.abort.signal,
          },
          handlers,
        );
        if (this.stopped || authRefused) {
          t.close();
          if (authRefused) return "auth";
          return "failed";
        }
        this.transport = t;
        this.transportName = name;
        live = true;
        this.nextSeq = 2;
        this.emit("attempt", name, undefined);
        for (const f of early) this.onFrame(f);
        if (this.transport !== t) return "open"; // lost while handling the early frames
        this.connected();
        return "open";
      } catch (e) {
        this.emit("attempt", name, (e as Error).message);
        if (e instanceof AuthError) return "auth";
      }
    }
    return "failed";
  }

  private connected(): void {
    this.setState("connected", this.transportName ?? "");
    const conn = this.connId;
    for (const p of this.sends.values()) this.dispatchSend(p);
    this.requestSync();
    for (const group of this.largeGroups) this.requestGroupPull(group);
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      if (conn !== this.connId) return;
      this.request(Op.Heartbeat, toBinary(HeartbeatSchema, create(HeartbeatSchema, {}))).catch((e: Error) => {
        if (conn === this.connId) this.lost(`heartbeat: ${e.message}`);
      });
    }, this.heartbeatMs);
  }

  private heartbeatMs = 30_000;

  /** The connection broke: fail its requests, reconnect. */
  private lost(reason: string): void {
    this.dropConnection(reason);
    this.closedSignal?.();
  }

  private dropConnection(reason: string): void {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    const t = this.transport;
    this.transport = undefined;
    this.connId++;
    t?.close();
    for (const r of this.requests.values()) {
      clearTimeout(r.timer);
      r.reject(new Error(`disconnected: ${reason}`));
    }
    this.requests.clear();
    this.syncing = false;
    this.syncAgain = false;
    this.pulling.clear();
  }

  private request(op: number, body: Uint8Array): Promise<Frame> {
    const t = this.transport;
    if (!t || this.state !== "connected") return Promise.reject(new Error("not connected"));
    const seq = this.nextSeq++;
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(seq);
        reject(new Error(`no answer to op ${op} within ${this.opts.requestTimeoutMs} ms`));
      }, this.opts.requestTimeoutMs);
      this.requests.set(seq, { resolve, reject, timer });
      t.send(encodeFrame(op, seq, body));
    });
  }

  private async call<I extends DescMessage, O extends DescMessage>(
    op: number,
    schema: I,
    init: MessageInitShape<I>,
    replySchema: O,
  ): Promise<MessageShape<O>> {
    const f = await this.request(op, toBinary(schema, create(schema, init)));
    if (f.op === Op.Error) {
      const err = fromBinary(ErrorSchema, f.body);
      throw new RoamError(err.code, err.message);
    }
    return fromBinary(replySchema, f.body);
  }

  private dispatchSend(p: PendingSend): void {
    const conn = this.connId;
    if (p.sentOn === conn) return;
    p.sentOn = conn;
    this.call(
      Op.Send,
      SendSchema,
      { to: p.to, clientMsgId: p.clientMsgId, content: p.content, contentType: p.contentType },
      SendAckSchema,
    ).then(
      (ack) => {
        if (!this.sends.delete(p.clientMsgId)) return;
        p.resolve(ack);
        // The sender gets no PUSH of its own message: the SYNC brings it with its seqs — or,
        // in a large group (read fan-out: not in the inbox), a pull of the group after it.
        if (p.to.startsWith("group:")) this.ownGroupAcks.push({ id: ack.id, group: p.to, seq: ack.seq });
        this.requestSync();
      },
      (e: Error) => {
        if (!this.sends.has(p.clientMsgId)) return;
        if (e instanceof RoamError && !RETRYABLE.has(e.code)) {
          this.sends.delete(p.clientMsgId);
          p.reject(e);
          return;
        }
        // Timed out or refused for now: the same client_msg_id again, after a pause, on
        // whatever connection is up then (a reconnect re-sends it anyway).
        p.sentOn = -1;
        const delay = 500 + Math.random() * 1000;
        setTimeout(() => {
          if (this.sends.has(p.clientMsgId) && this.state === "connected") this.dispatchSend(p);
        }, delay);
      },
    );
  }

  /** Catches the inbox up from the cursor (coalesced: one SYNC loop at a time). */
  private requestSync(): void {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    const conn = this.connId;
    void (async () => {
      try {
        do {
          this.syncAgain = false;
          let more = true;
          while (more && conn === this.connId) {
            const reply = await this.call(Op.Sync, SyncSchema, { after: this.cursor, limit: 200 }, SyncReplySchema);
            if (conn !== this.connId) return;
            for (const m of reply.messages) this.takeInbox(m, true);
            if (reply.nextAfter > this.cursor) this.cursor = reply.nextAfter;
            more = reply.hasMore && reply.messages.length > 0;
          }
        } while (this.syncAgain && conn === this.connId);
        this.scheduleAck();
        if (conn === this.connId) this.pullOwnGroupMessages();
      } catch (e) {
        if (conn === this.connId) this.lost(`sync: ${(e as Error).message}`);
      } finally {
        if (conn === this.connId) this.syncing = false;
      }
    })();
  }

  /** A message of the inbox: handed over once, the cursor moved when it is the next one. */
  private takeInbox(m: Message, fromSync: boolean): void {
    if (m.seq === this.cursor + 1n || (fromSync && m.seq > this.cursor)) this.cursor = m.seq;
    else if (m.seq > this.cursor + 1n) {
      // A gap: something was dropped or is still coming; the SYNC fetches it in order.
      this.requestSync();
      return;
    }
    this.deliver(m);
  }

  private deliver(m: Message): void {
    if (m.to.startsWith("group:")) {
      const last = this.groupSeq.get(m.to) ?? 0n;
      if (m.conversationSeq > last) this.groupSeq.set(m.to, m.conversationSeq);
    }
    if (this.dedupe.admit(m.id)) this.emit("message", m);
  }

  private scheduleAck(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      const t = this.transport;
      if (!t || this.cursor === 0n) return;
      t.send(encodeFrame(Op.PushAck, this.nextSeq++, toBinary(PushAckSchema, create(PushAckSchema, { seq: this.cursor }))));
    }, 200);
  }

  /** Pulls `group` (coalesced per group: one pull at a time, another after it if asked). */
  private requestGroupPull(group: string): void {
    if (this.pulling.has(group)) {
      this.pulling.set(group, true);
      return;
    }
    this.pulling.set(group, false);
    const conn = this.connId;
    void (async () => {
      try {
        do {
          this.pulling.set(group, false);
          await this.pullGroup(group);
        } while (this.pulling.get(group) && conn === this.connId);
      } catch (e) {
        if (conn === this.connId) this.lost(`sync ${group}: ${(e as Error).message}`);
      } finally {
        if (conn === this.connId) this.pulling.delete(group);
      }
    })();
  }

  /**
   * Own messages to groups, acknowledged but not yet handed over: once the inbox SYNC after
   * the ack is done, one still missing was sent to a large group (its ack's seq is then the
   * conversation_seq), which is pulled from it.
   */
  private ownGroupAcks: Array<{ id: bigint; group: string; seq: bigint }> = [];

  private pullOwnGroupMessages(): void {
    const acks = this.ownGroupAcks;
    this.ownGroupAcks = [];
    for (const a of acks) {
      if (this.dedupe.has(a.id)) continue;
      this.largeGroups.add(a.group);
      const last = this.groupSeq.get(a.group);
      if (last === undefined || last >= a.seq) this.groupSeq.set(a.group, a.seq - 1n);
      this.requestGroupPull(a.group);
    }
  }

  /** Groups being pulled; true when another pull was asked for meanwhile. */
  private readonly pulling = new Map<string, boolean>();

  /** Pulls a large group's history after the last conversation_seq seen (KIND_SYNC). */
  private async pullGroup(group: string): Promise<void> {
    let after = this.groupSeq.get(group) ?? 0n;
    for (;;) {
      const reply = await this.call(Op.Sync, SyncSchema, { conversation: group, after, limit: 200 }, SyncReplySchema);
      for (const m of reply.messages) this.deliver(m);
      if (!reply.hasMore || reply.messages.length === 0) return;
      after = reply.nextAfter;
    }
  }

  private onFrame(f: Frame): void {
    try {
      this.handleFrame(f);
    } catch (e) {
      // An undecodable body from the server: drop the connection, resume from the cursor.
      this.lost(`bad frame (op ${f.op}): ${(e as Error).message}`);
    }
  }

  private handleFrame(f: Frame): void {
    if (f.seq !== 0) {
      const r = this.requests.get(f.seq);
      if (r) {
        this.requests.delete(f.seq);
        clearTimeout(r.timer);
        r.resolve(f);
        return;
      }
    }
    switch (f.op) {
      case Op.AuthReply: {
        const reply = fromBinary(AuthReplySchema, f.body);
        this.userId = reply.userId;
        if (reply.heartbeatSecs > 0) this.heartbeatMs = Math.max(5, reply.heartbeatSecs / 2) * 1000;
        return;
      }
      case Op.Push: {
        const push = fromBinary(PushSchema, f.body);
        if (push.kind.case === "message") {
          this.takeInbox(push.kind.value, false);
          this.scheduleAck();
        }
        return;
      }
      case Op.Notice: {
        const notice = fromBinary(NoticeSchema, f.body);
        if (notice.kind === Notice_Kind.SYNC && notice.peer.startsWith("group:")) {
          this.largeGroups.add(notice.peer);
          // A group new to this client: from the announced message on (older pages are
          // history, loaded when the conversation is scrolled).
          if (!this.groupSeq.has(notice.peer) && notice.seq > 0n) this.groupSeq.set(notice.peer, notice.seq - 1n);
          if (notice.seq > (this.groupSeq.get(notice.peer) ?? 0n)) this.requestGroupPull(notice.peer);
        }
        this.emit("notice", notice);
        return;
      }
      case Op.Disconnect: {
        const d = fromBinary(DisconnectSchema, f.body);
        if (d.reason === 3 /* REASON_AUTH */) {
          this.dropConnection("token expired or revoked");
          this.stopped = true;
          this.setState("auth_failed", d.message);
          this.closedSignal?.();
          return;
        }
        this.lost(`server disconnect: ${d.message}`);
        return;
      }
      case Op.Error: {
        const err = fromBinary(ErrorSchema, f.body);
        if (err.code === Error_Code.AUTH_FAILED || err.code === Error_Code.AUTH_EXPIRED) {
          this.dropConnection(err.message);
          this.stopped = true;
          this.setState("auth_failed", err.message);
          this.closedSignal?.();
        }
        return;
      }
      default:
        return;
    }
  }
}
