// Long-poll: `GET /v1/poll?device=…` opens the virtual connection (AUTH_REPLY, `roam-session`,
// `roam-cursor`), then `GET /v1/poll?cursor=N&wait=S` returns the frames after N (204 when none
// came in S seconds); requests go up with `POST /v1/send`.
import { FrameDecoder } from "../frame.js";
import type { Connector, Transport } from "../transport.js";
import { edgeUrl } from "../transport.js";
import { httpError, openUrl, SendQueue } from "./http.js";

/** Seconds a poll waits on the server (its default is 25, at most 60). */
export const POLL_WAIT_SECS = 25;

export const connectPoll: Connector = async (params, handlers) => {
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  params.signal?.addEventListener("abort", onAbort, { once: true });
  const timer = setTimeout(() => abort.abort(), params.openTimeoutMs);
  const auth = { authorization: `Bearer ${params.token}` };
  let res: Response;
  let body: Uint8Array;
  try {
    res = await fetch(openUrl(params, "/v1/poll"), { headers: auth, signal: abort.signal, cache: "no-store" });
    body = res.ok ? new Uint8Array(await res.arrayBuffer()) : new Uint8Array(0);
  } catch (e) {
    throw new Error(`poll: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
  const session = res.headers.get("roam-session");
  let cursor = res.headers.get("roam-cursor");
  if (!res.ok || !session || cursor === null) {
    throw res.ok ? new Error("poll: no roam-session or roam-cursor") : await httpError("poll", res);
  }
  let closed = false;
  const fail = (reason: string) => {
    if (closed) return;
    transport.close();
    handlers.onClose(reason);
  };
  const queue = new SendQueue(params, session, handlers, fail);
  const transport: Transport = {
    name: "poll",
    send: (frames) => queue.push(frames),
    close() {
      closed = true;
      params.signal?.removeEventListener("abort", onAbort);
      queue.stop();
      abort.abort();
    },
  };
  let frames;
  try {
    frames = new FrameDecoder().push(body);
  } catch (e) {
    throw new Error(`poll: ${(e as Error).message}`);
  }
  if (frames.length === 0) throw new Error("poll: no AUTH_REPLY in the opening answer");
  for (const f of frames) handlers.onFrame(f);

  void (async () => {
    while (!closed) {
      try {
        const url = edgeUrl(params.baseUrl, "/v1/poll");
        url.searchParams.set("cursor", cursor ?? "0");
        url.searchParams.set("wait", String(POLL_WAIT_SECS));
        const r = await fetch(url, {
          headers: { ...auth, "roam-session": session },
          signal: abort.signal,
          cache: "no-store",
        });
        if (closed) return;
        if (r.status === 204) continue;
        if (!r.ok) {
          fail((await httpError("poll", r)).message);
          return;
        }
        const got = new FrameDecoder().push(new Uint8Array(await r.arrayBuffer()));
        cursor = r.headers.get("roam-cursor") ?? cursor;
        for (const f of got) handlers.onFrame(f);
      } catch (e) {
        fail(`poll: ${(e as Error).message}`);
        return;
      }
    }
  })();
  return transport;
};
