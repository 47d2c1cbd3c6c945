export { WSEClient, connect, VERSION, PROTOCOL_VERSION, AUTH_CLOSE, type Handler, type ClientStats } from "./client.js";
export type { ClientOptions, TokenSource, OverflowPolicy, WebSocketCtor, WebSocketLike } from "./options.js";
export {
  WSEEvent,
  GAP,
  OVERFLOW,
  type Envelope,
  type SubscribeResult,
  type TopicRecovery,
  type Gap,
  type PresenceMember,
  type ConnectionState,
} from "./events.js";
export { WSEError, AuthError, ConnectionLost, EncryptionError, RequestError, TimeoutError, QueueFull, FrameError } from "./errors.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export { tokenExpiry } from "./token.js";
export type { QueuePolicy } from "./sendqueue.js";
export * as codec from "./codec.js";
export * as e2e from "./crypto.js";
