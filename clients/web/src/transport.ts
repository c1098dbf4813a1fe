// What every transport gives the client: whole frames up, whole frames down, one close.
import type { Frame } from "./frame.js";

export type TransportName = "webtransport" | "websocket" | "stream" | "poll";

/** The order the client tries transports in: the fastest first, the most compatible last. */
export const FALLBACK_ORDER: readonly TransportName[] = ["webtransport", "websocket", "stream", "poll"];

export interface ConnectParams {
  /** The edge's base URL, e.g. `https://127.0.0.1:8443` (the page's origin in the app). */
  baseUrl: string;
  token: string;
  deviceId: string;
  platform: string;
  /** Give up opening after this long (milliseconds). */
  openTimeoutMs: number;
  /** Aborts the attempt (the client closed meanwhile). */
  signal?: AbortSignal;
}

export interface TransportHandlers {
  /** Every frame from the server, in order, AUTH_REPLY first. */
  onFrame(frame: Frame): void;
  /** The connection is gone (called once; not after close()). */
  onClose(reason: string): void;
}

/** An open, authenticated connection. */
export interface Transport {
  readonly name: TransportName;
  /** Sends whole frames (one or more back to back). */
  send(frames: Uint8Array): void;
  /** Closes it; onClose is not called. */
  close(): void;
}

/**
 * Opens a transport: resolves once the connection is open and its first frame from the server
 * (AUTH_REPLY, or the ERROR refusing the token) has been passed to `handlers.onFrame`; rejects
 * when the transport is unavailable, blocked or fails before that.
 */
export type Connector = (params: ConnectParams, handlers: TransportHandlers) => Promise<Transport>;

/** The URL of `path` on the edge, for WebSocket (`wss:`) or HTTP. */
export function edgeUrl(baseUrl: string, path: string, ws = false): URL {
  const url = new URL(path, baseUrl);
  if (ws) url.protocol = url.protocol === "http:" ? "ws:" : "wss:";
  return url;
}

/** The server refused the token: trying again (or another transport) cannot help. */
export class AuthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AuthError";
  }
}

/** Rejects after `ms` unless `p` settles first. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
