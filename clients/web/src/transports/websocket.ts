// WebSocket on /v1/ws: binary messages carrying frames; the first frame up is AUTH.
import { create, toBinary } from "@bufbuild/protobuf";
import { AuthSchema } from "../gen/roam/client/v1/client_pb.js";
import { encodeFrame, FrameDecoder, Op } from "../frame.js";
import type { Connector, Transport } from "../transport.js";
import { edgeUrl } from "../transport.js";

export const connectWebSocket: Connector = (params, handlers) =>
  new Promise<Transport>((resolve, reject) => {
    if (typeof WebSocket === "undefined") {
      reject(new Error("websocket: not available here"));
      return;
    }
    let ws: WebSocket;
    try {
      ws = new WebSocket(edgeUrl(params.baseUrl, "/v1/ws", true));
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    ws.binaryType = "arraybuffer";
    const decoder = new FrameDecoder();
    let opened = false;
    let closed = false;
    const timer = setTimeout(() => fail("websocket: no AUTH_REPLY in time"), params.openTimeoutMs);
    const onAbort = () => fail("websocket: aborted");
    params.signal?.addEventListener("abort", onAbort, { once: true });

    const transport: Transport = {
      name: "websocket",
      send(frames) {
        if (ws.readyState === WebSocket.OPEN) ws.send(frames);
      },
      close() {
        closed = true;
        clearTimeout(timer);
        params.signal?.removeEventListener("abort", onAbort);
        try {
          ws.close(1000);
        } catch {
          /* already closing */
        }
      },
    };

    function fail(reason: string) {
      if (closed) return;
      transport.close();
      if (opened) handlers.onClose(reason);
      else reject(new Error(reason));
    }

    ws.onopen = () => {
      const auth = create(AuthSchema, { token: params.token, deviceId: params.deviceId, platform: params.platform });
      ws.send(encodeFrame(Op.Auth, 1, toBinary(AuthSchema, auth)));
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (closed) return;
      if (!(ev.data instanceof ArrayBuffer)) return;
      let frames;
      try {
        frames = decoder.push(new Uint8Array(ev.data));
      } catch (e) {
        fail(`websocket: ${(e as Error).message}`);
        return;
      }
      for (const f of frames) {
        handlers.onFrame(f);
        if (!opened) {
          opened = true;
          clearTimeout(timer);
          resolve(transport);
        }
      }
    };
    ws.onerror = () => fail("websocket: error");
    ws.onclose = (ev: CloseEvent) => fail(`websocket: closed (${ev.code})`);
  });
