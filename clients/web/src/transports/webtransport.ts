// WebTransport on `CONNECT /v1/wt` (HTTP/3): frames on the session's first bidirectional
// stream, AUTH first, as on WebSocket. With the development certificate the browser is told
// its hash, read from `GET /v1/wt-cert-hash` (`{"algorithm": "sha-256", "value": "<hex>"}`).
import { create, toBinary } from "@bufbuild/protobuf";
import { AuthSchema } from "../gen/roam/client/v1/client_pb.js";
import { encodeFrame, FrameDecoder, Op } from "../frame.js";
import type { Connector, Transport } from "../transport.js";
import { edgeUrl, withTimeout } from "../transport.js";

interface WtStream {
  readable: ReadableStream<Uint8Array>;
  writable: WritableStream<Uint8Array>;
}
interface Wt {
  ready: Promise<void>;
  closed: Promise<unknown>;
  createBidirectionalStream(): Promise<WtStream>;
  close(): void;
}
type WtCtor = new (url: string, opts?: unknown) => Wt;

/** The certificate hash to pin, and the HTTP/3 port from `alt-svc` (when it differs). */
async function discover(baseUrl: string): Promise<{ hashes?: unknown[]; port?: string }> {
  try {
    const res = await fetch(edgeUrl(baseUrl, "/v1/wt-cert-hash"), { cache: "no-store" });
    const port = /h3=":(\d+)"/.exec(res.headers.get("alt-svc") ?? "")?.[1];
    if (!res.ok) return { port };
    const body = (await res.json()) as { algorithm?: string; value?: string };
    const hex = body.algorithm === "sha-256" ? (body.value ?? "") : "";
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) return { port };
    const value = new Uint8Array(32);
    for (let i = 0; i < 32; i++) value[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    return { hashes: [{ algorithm: "sha-256", value }], port };
  } catch {
    return {};
  }
}

export const connectWebTransport: Connector = async (params, handlers) => {
  const Ctor = (globalThis as { WebTransport?: WtCtor }).WebTransport;
  if (!Ctor) throw new Error("webtransport: not available here");
  const { hashes, port } = await discover(params.baseUrl);
  const url = edgeUrl(params.baseUrl, "/v1/wt");
  if (port) url.port = port;
  const wt = new Ctor(url.toString(), hashes ? { serverCertificateHashes: hashes } : {});
  wt.closed.catch(() => undefined);
  let stream: WtStream;
  try {
    await withTimeout(wt.ready, params.openTimeoutMs, "webtransport");
    stream = await wt.createBidirectionalStream();
  } catch (e) {
    try {
      wt.close();
    } catch {
      /* never opened */
    }
    throw new Error(`webtransport: ${(e as Error).message}`);
  }
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const decoder = new FrameDecoder();
  let closed = false;
  const transport: Transport = {
    name: "webtransport",
    send(frames) {
      writer.write(frames).catch(() => fail("webtransport: write failed"));
    },
    close() {
      closed = true;
      try {
        wt.close();
      } catch {
        /* closed */
      }
    },
  };
  const fail = (reason: string) => {
    if (closed) return;
    transport.close();
    handlers.onClose(reason);
  };
  const auth = create(AuthSchema, { token: params.token, deviceId: params.deviceId, platform: params.platform });
  transport.send(encodeFrame(Op.Auth, 1, toBinary(AuthSchema, auth)));
  let opened = false;
  const readSome = async () => {
    const { done, value } = await reader.read();
    if (done) throw new Error("webtransport: the stream ended");
    for (const f of decoder.push(value)) {
      handlers.onFrame(f);
      opened = true;
    }
  };
  try {
    await withTimeout(
      (async () => {
        while (!opened) await readSome();
      })(),
      params.openTimeoutMs,
      "webtransport",
    );
  } catch (e) {
    transport.close();
    throw e instanceof Error ? e : new Error(String(e));
  }
  void (async () => {
    try {
      while (!closed) await readSome();
    } catch (e) {
      fail((e as Error).message);
    }
  })();
  return transport;
};
