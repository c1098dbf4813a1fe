// HTTP streaming: `GET /v1/stream` answers with a body that stays open (frames, AUTH_REPLY
// first), read through fetch's body stream; requests go up with `POST /v1/send`.
import { FrameDecoder } from "../frame.js";
import type { Connector, Transport } from "../transport.js";
import { httpError, openUrl, SendQueue } from "./http.js";

export const connectStream: Connector = async (params, handlers) => {
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  params.signal?.addEventListener("abort", onAbort, { once: true });
  const timer = setTimeout(() => abort.abort(), params.openTimeoutMs);
  let res: Response;
  try {
    res = await fetch(openUrl(params, "/v1/stream"), {
      headers: { authorization: `Bearer ${params.token}` },
      signal: abort.signal,
      cache: "no-store",
    });
  } catch (e) {
    clearTimeout(timer);
    throw new Error(`stream: ${(e as Error).message}`);
  }
  const session = res.headers.get("roam-session");
  if (!res.ok || !res.body || !session) {
    clearTimeout(timer);
    abort.abort();
    throw res.ok ? new Error("stream: no roam-session or body") : await httpError("stream", res);
  }
  const reader = res.body.getReader();
  const decoder = new FrameDecoder();
  let closed = false;
  let opened = false;

  const fail = (reason: string) => {
    if (closed) return;
    transport.close();
    handlers.onClose(reason);
  };
  const queue = new SendQueue(params, session, handlers, fail);
  const transport: Transport = {
    name: "stream",
    send: (frames) => queue.push(frames),
    close() {
      closed = true;
      clearTimeout(timer);
      params.signal?.removeEventListener("abort", onAbort);
      queue.stop();
      abort.abort();
    },
  };

  // Read until the first frame (AUTH_REPLY) is there, then keep reading in the background.
  const readSome = async (): Promise<boolean> => {
    const { done, value } = await reader.read();
    if (done) throw new Error("stream: the server ended the body");
    for (const f of decoder.push(value)) {
      handlers.onFrame(f);
      opened = true;
    }
    return opened;
  };
  try {
    while (!(await readSome())) {
      /* until AUTH_REPLY */
    }
  } catch (e) {
    transport.close();
    throw new Error(`stream: ${(e as Error).message}`);
  }
  clearTimeout(timer);
  void (async () => {
    try {
      for (;;) {
        if (closed) return;
        await readSome();
      }
    } catch (e) {
      fail((e as Error).message);
    }
  })();
  return transport;
};
