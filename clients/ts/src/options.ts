/** The client's options and their defaults. */
import type { QueuePolicy } from "./sendqueue.js";

/** A WebSocket constructor: the browser's, Node's global one (Node >= 22), or `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | ArrayBufferLike | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketCtor = new (url: string, protocols?: string | string[], options?: unknown) => WebSocketLike;

/** A token, or where to get a fresh one (before every connection and ahead of expiry). */
export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

/** What to do with received events when the iteration queue is full. */
export type OverflowPolicy = "drop_oldest" | "drop_newest" | "error";

export interface ClientOptions {
  /** A JWT. With `getToken` too, this one is used first. */
  token?: string | undefined;
  /** Called for a fresh token before each connection, ahead of expiry, and after a 4401. */
  getToken?: TokenSource | undefined;
  /**
   * Where the token goes: `query` (`?token=`; the server needs `JWTConfig.query_param`),
   * `header` (`Authorization: Bearer`, Node only), `cookie` (the `access_token` cookie: set on
   * `document.cookie` in browsers, a `Cookie` header in Node). `auto` (default): `header` in
   * Node, `query` in browsers.
   */
  tokenIn?: "auto" | "query" | "header" | "cookie";
  /** The cookie's name for `tokenIn: "cookie"` (`access_token`). */
  cookieName?: string;
  /** More handshake headers (Node with `ws` only: browsers cannot set them). */
  headers?: Record<string, string>;
  /** E2E encryption (ECDH P-256 + HKDF-SHA256 + AES-256-GCM through WebCrypto). */
  encryption?: boolean;
  /** Follow the server's key rotations (true). */
  keyRotation?: boolean;
  /** Ask the server for msgpack (`?format=msgpack`); `M:` frames are always decoded. */
  msgpack?: boolean;
  /** How the client sends: JSON text (default) or `M:` msgpack frames. */
  sendFormat?: "json" | "msgpack";
  /** Accept `C:` zlib frames from the server (true). */
  compression?: boolean;
  /** Send JSON envelopes of at least this many bytes as `C:` frames (0: never, the default). */
  compressThreshold?: number;
  /** Reconnect after a loss (true). */
  reconnect?: boolean;
  /** First reconnect delay, ms (250); growth per attempt (2); cap, ms (30,000). */
  backoffInitial?: number;
  backoffFactor?: number;
  backoffMax?: number;
  /** Give up after this many failed attempts in a row (unlimited). */
  maxReconnectAttempts?: number | null;
  /** Client ping period, ms (20,000); a connection silent this long is dead, ms (45,000). */
  pingInterval?: number;
  deadTimeout?: number;
  /** WebSocket open, ms (10,000); waiting for `server_hello`, ms (5,000). */
  openTimeout?: number;
  helloTimeout?: number;
  /** Default timeout of `request`, `subscribe`, `unsubscribe`, `refreshToken`, ms (10,000). */
  requestTimeout?: number;
  /** Refresh the token this long before it expires, ms (30,000). */
  refreshAhead?: number;
  /** Events waiting for `for await` (10,000); what happens when full (`drop_oldest`). */
  maxQueue?: number;
  overflow?: OverflowPolicy;
  /** Messages `send` holds while disconnected. */
  sendQueue?: { max?: number; policy?: QueuePolicy; persist?: string };
  /** Largest inflated `C:` frame, bytes (16 MiB). */
  maxMessageBytes?: number;
  /** The WebSocket implementation (default: the global one, else the `ws` package). */
  WebSocket?: WebSocketCtor;
  /** Random source for the backoff jitter (tests). */
  random?: () => number;
}

export type Resolved = Required<Omit<ClientOptions, "token" | "getToken" | "WebSocket" | "sendQueue" | "headers" | "maxReconnectAttempts">> & {
  token: string | undefined;
  getToken: TokenSource | undefined;
  WebSocket: WebSocketCtor | undefined;
  headers: Record<string, string>;
  maxReconnectAttempts: number | null;
  sendQueue: { max: number; policy: QueuePolicy; persist: string | undefined };
};

export function resolveOptions(o: ClientOptions): Resolved {
  return {
    token: o.token,
    getToken: o.getToken,
    tokenIn: o.tokenIn ?? "auto",
    cookieName: o.cookieName ?? "access_token",
    headers: o.headers ?? {},
    encryption: o.encryption ?? false,
    keyRotation: o.keyRotation ?? true,
    msgpack: o.msgpack ?? false,
    sendFormat: o.sendFormat ?? "json",
    compression: o.compression ?? true,
    compressThreshold: o.compressThreshold ?? 0,
    reconnect: o.reconnect ?? true,
    backoffInitial: o.backoffInitial ?? 250,
    backoffFactor: o.backoffFactor ?? 2,
    backoffMax: o.backoffMax ?? 30_000,
    maxReconnectAttempts: o.maxReconnectAttempts ?? null,
    pingInterval: o.pingInterval ?? 20_000,
    deadTimeout: o.deadTimeout ?? 45_000,
    openTimeout: o.openTimeout ?? 10_000,
    helloTimeout: o.helloTimeout ?? 5_000,
    requestTimeout: o.requestTimeout ?? 10_000,
    refreshAhead: o.refreshAhead ?? 30_000,
    maxQueue: o.maxQueue ?? 10_000,
    overflow: o.overflow ?? "drop_oldest",
    sendQueue: { max: o.sendQueue?.max ?? 1_000, policy: o.sendQueue?.policy ?? "drop_oldest", persist: o.sendQueue?.persist },
    maxMessageBytes: o.maxMessageBytes ?? 16 * 1024 * 1024,
    WebSocket: o.WebSocket,
    random: o.random ?? Math.random,
  };
}
