/**
 * One WebSocket connection: choosing the WebSocket implementation, placing the token, opening
 * the socket, the hello handshake (and key exchange), and the keepalive.
 */
import { Session } from "./crypto.js";
import { AuthError, ConnectionLost, EncryptionError, TimeoutError, WSEError } from "./errors.js";
import type { Envelope } from "./events.js";
import type { Resolved, WebSocketCtor, WebSocketLike } from "./options.js";
import { deferred, isNode, withQuery, withTimeout, type Pending } from "./util.js";

export const VERSION = "0.1.0";
export const PROTOCOL_VERSION = 2;
export const AUTH_CLOSE = 4401;

/** One WebSocket connection and what belongs to it alone. */
export class Link {
  session: Session | null = null;
  /** Frames waiting behind one being decoded (wire.ts). */
  inbox: (string | Uint8Array)[] = [];
  pumping = false;
  dead = false;
  tx: Promise<void> = Promise.resolve();
  txBusy = 0;
  lastRx = Date.now();
  /** Settles when the server_hello (and the key exchange) is done, or the socket closes. */
  hello: (Pending<void> & { promise: Promise<void> }) | null = null;
  closeCode: number | null = null;
  closeReason = "";
  constructor(readonly ws: WebSocketLike) {}
}

/** The socket's events, as the client handles them. */
export interface LinkHooks {
  frame(link: Link, data: unknown): void;
  closed(link: Link): void;
}

/** The WebSocket implementation: the option, the browser's, `ws` in Node, Node's global one. */
export async function webSocketCtor(o: Resolved): Promise<WebSocketCtor> {
  if (o.WebSocket) return o.WebSocket;
  const G = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  if (!isNode && G) return G;
  // Node: `ws` can send headers (a token in Authorization or Cookie); Node >= 22's global
  // WebSocket cannot, so it serves only `tokenIn: "query"` without `headers`.
  try {
    const name = "ws";
    const mod = (await import(/* @vite-ignore */ name)) as { default?: WebSocketCtor; WebSocket?: WebSocketCtor };
    const W = mod.default ?? mod.WebSocket;
    if (W) return W;
  } catch {
    /* not installed */
  }
  if (G) return G;
  throw new WSEError("no WebSocket implementation: install the 'ws' package (npm install ws) or use Node >= 22");
}

/**
 * Opens a socket to `url` with `token` where the options put it. Synchronous from the socket's
 * creation to its handlers being set, so that none of its events is missed. `opened` settles
 * when the socket opens or closes.
 */
export function dial(
  url: string,
  token: string | undefined,
  o: Resolved,
  Ctor: WebSocketCtor,
  session: Session | null,
  hooks: LinkHooks,
): { link: Link; opened: Promise<void> } {
  const headers: Record<string, string> = { ...o.headers };
  let where = o.tokenIn;
  if (where === "auto") where = isNode ? "header" : "query";
  if (token) {
    if (where === "query") url = withQuery(url, "token", token);
    else if (where === "header") headers["Authorization"] = `Bearer ${token}`;
    else if (isNode || typeof document === "undefined") headers["Cookie"] = `${o.cookieName}=${token}`;
    else document.cookie = `${o.cookieName}=${token}; path=/; SameSite=Strict`;
  }
  const ws = Object.keys(headers).length ? new Ctor(url, [], { headers }) : new Ctor(url);
  ws.binaryType = "arraybuffer";
  const link = new Link(ws);
  link.session = session;
  const opened = deferred<void>();
  const hello = deferred<void>();
  link.hello = hello;
  ws.onopen = () => opened.resolve();
  ws.onerror = () => undefined; // onclose follows with the code
  ws.onclose = (ev) => {
    link.closeCode = ev.code;
    link.closeReason = ev.reason;
    const err = ev.code === AUTH_CLOSE ? new AuthError(`authentication failed (close 4401 ${ev.reason})`, "AUTH_FAILED", ev.reason) : new ConnectionLost(`connection closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`);
    opened.reject(err);
    hello.reject(err);
    hooks.closed(link);
  };
  ws.onmessage = (ev) => hooks.frame(link, ev.data);
  return { link, opened: opened.promise };
}

/** Waits for the socket to open, says hello and waits for the server's (and the key exchange). */
export async function handshake(link: Link, opened: Promise<void>, o: Resolved, send: (env: Envelope) => void): Promise<void> {
  await withTimeout(opened, o.openTimeout, "WebSocket open");
  send(clientHello(link, o));
  try {
    await withTimeout(link.hello?.promise ?? Promise.resolve(), o.helloTimeout, "server_hello");
  } catch (e) {
    if (!(e instanceof TimeoutError)) throw e;
    if (o.encryption) throw new EncryptionError("no server_hello: the server did not answer the key exchange");
  }
  if (o.encryption && !link.session?.ready) {
    throw new EncryptionError("the server did not offer encryption (no encryption_public_key in server_hello)");
  }
}

function clientHello(link: Link, o: Resolved): Envelope {
  const p: Record<string, unknown> = {
    client_version: `wse-client-ts/${VERSION}`,
    protocol_version: PROTOCOL_VERSION,
    features: {
      compression: o.compression,
      encryption: o.encryption,
      msgpack: o.msgpack,
      recovery: true,
      key_rotation: o.encryption && o.keyRotation,
      batch_keys: o.encryption,
      token_refresh: !!o.getToken,
    },
  };
  if (link.session) p["encryption_public_key"] = link.session.publicKeyB64;
  return { c: "WSE", t: "client_hello", p };
}

/**
 * Pings every `pingInterval` and calls `dead(link)` when nothing arrived for `deadTimeout`.
 * Returns the timer (clearInterval stops it).
 */
export function keepalive(link: Link, o: Resolved, send: (env: Envelope) => void, dead: (link: Link) => void): ReturnType<typeof setInterval> {
  const tick = Math.max(50, Math.min(o.pingInterval, o.deadTimeout) / 4);
  let lastPing = Date.now();
  link.lastRx = Date.now();
  return setInterval(() => {
    const now = Date.now();
    if (now - link.lastRx > o.deadTimeout) {
      dead(link);
      return;
    }
    if (now - lastPing >= o.pingInterval) {
      lastPing = now;
      send({ c: "WSE", t: "ping", p: { timestamp: now } });
    }
  }, tick);
}
