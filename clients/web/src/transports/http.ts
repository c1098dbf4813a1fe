// What HTTP streaming and long-poll share: the virtual connection's `roam-session`, and
// `POST /v1/send`, one request at a time so the server sees requests in the order they were
// made (the SENDs of one connection are answered in order), with whatever queued meanwhile
// going up together in the next body.
import { concatFrames, FrameDecoder } from "../frame.js";
import type { ConnectParams, TransportHandlers } from "../transport.js";
import { AuthError, edgeUrl } from "../transport.js";

export const FRAMES_TYPE = "application/vnd.roam.frames";

export function openUrl(params: ConnectParams, path: string): URL {
  const url = edgeUrl(params.baseUrl, path);
  url.searchParams.set("device", params.deviceId);
  url.searchParams.set("platform", params.platform);
  return url;
}

/** The error an HTTP refusal carries (`{"error":{"code","message"}}`), as one line. */
export async function httpError(what: string, res: Response): Promise<Error> {
  let detail = "";
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    detail = body.error ? `${body.error.code ?? ""}: ${body.error.message ?? ""}` : "";
  } catch {
    /* not JSON */
  }
  const text = `${what}: HTTP ${res.status}${detail ? ` (${detail})` : ""}`;
  if (res.status === 401 || res.status === 403) return new AuthError(text);
  return new Error(`${what}: HTTP ${res.status}${detail ? ` (${detail})` : ""}`);
}

export class SendQueue {
  private queued: Uint8Array[] = [];
  private inFlight = false;
  private stopped = false;
  private readonly abort = new AbortController();

  constructor(
    private readonly params: ConnectParams,
    private readonly session: string,
    private readonly handlers: TransportHandlers,
    private readonly fail: (reason: string) => void,
  ) {}

  push(frames: Uint8Array): void {
    if (this.stopped) return;
    this.queued.push(frames);
    if (!this.inFlight) void this.flush();
  }

  stop(): void {
    this.stopped = true;
    this.abort.abort();
  }

  private async flush(): Promise<void> {
    this.inFlight = true;
    while (!this.stopped && this.queued.length > 0) {
      const body = concatFrames(this.queued);
      this.queued = [];
      try {
        const res = await fetch(edgeUrl(this.params.baseUrl, "/v1/send"), {
          method: "POST",
          headers: {
            authorization: `Bearer ${this.params.token}`,
            "roam-session": this.session,
            "content-type": FRAMES_TYPE,
          },
          body,
          signal: this.abort.signal,
        });
        if (!res.ok) {
          this.fail((await httpError("send", res)).message);
          break;
        }
        const frames = new FrameDecoder().push(new Uint8Array(await res.arrayBuffer()));
        if (this.stopped) break;
        for (const f of frames) this.handlers.onFrame(f);
      } catch (e) {
        if (!this.stopped) this.fail(`send: ${(e as Error).message}`);
        break;
      }
    }
    this.inFlight = false;
  }
}
