// The Roam browser SDK.
export { RoamClient, RoamError, conversationOf, DEFAULT_CONNECTORS } from "./client.js";
export type { ClientOptions, ClientState } from "./client.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { Deduper } from "./dedupe.js";
export { encodeFrame, concatFrames, FrameDecoder, FrameError, Op, HEADER_LEN } from "./frame.js";
export type { Frame } from "./frame.js";
export { AuthError, FALLBACK_ORDER } from "./transport.js";
export type { Connector, ConnectParams, Transport, TransportHandlers, TransportName } from "./transport.js";
export * from "./gen/roam/client/v1/client_pb.js";
