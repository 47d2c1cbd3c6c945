/**
 * The client: one logical session over successive WebSocket connections. It reconnects with
 * backoff, resubscribes with per-topic recovery, drops duplicates, reports gaps, keeps the
 * connection alive, refreshes its token and holds sends while disconnected.
 */
import { backoffDelay } from "./backoff.js";
import { decodeFrame, encodeMsgpack, kindOf, utf8, deflate, withPrefix } from "./codec.js";
import { Session } from "./crypto.js";
import { AuthError, ConnectionLost, EncryptionError, QueueFull, RequestError, TimeoutError, WSEError } from "./errors.js";
import {
  GAP,
  OVERFLOW,
  WSEEvent,
  type ConnectionState,
  type Envelope,
  type Gap,
  type PresenceMember,
  type SubscribeResult,
  type TopicRecovery,
} from "./events.js";
import { resolveOptions, type ClientOptions, type Resolved, type WebSocketCtor, type WebSocketLike } from "./options.js";
import { SendQueue } from "./sendqueue.js";
import { tokenExpiry } from "./token.js";

export const VERSION = "0.1.0";
export const PROTOCOL_VERSION = 2;
export const AUTH_CLOSE = 4401;

export type Handler<P = unknown> = (event: WSEEvent<P>) => void;

/** Counters of what the client received and did. */
export interface ClientStats {
  received: number;
  duplicates: number;
  dropped: number;
  gaps: number;
  reconnects: number;
  badFrames: number;
  framesText: number;
  framesBinary: number;
  framesEncrypted: number;
  framesZlib: number;
  framesMsgpack: number;
  tokenRefreshes: number;
  queuedSends: number;
  droppedSends: number;
}

const SYSTEM = new Set(["server_ready", "server_hello", "ping", "PONG", "pong", "key_rotation", "subscription_update", "auth_refresh"]);
const PRESENCE = new Set(["presence_state", "presence_join", "presence_leave", "presence_update"]);

interface Pending<T> {
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

interface SubWaiter extends Pending<SubscribeResult> {
  action: string;
  topics: Set<string>;
}

/** One WebSocket connection and what belongs to it alone. */
class Link {
  session: Session | null = null;
  inbox: (string | Uint8Array)[] = [];
  pumping = false;
  dead = false;
  tx: Promise<void> = Promise.resolve();
  txBusy = 0;
  lastRx = Date.now();
  hello: Pending<void> | null = null;
  closeCode: number | null = null;
  closeReason = "";
  constructor(readonly ws: WebSocketLike) {}
}

function deferred<T>(): Pending<T> & { promise: Promise<T> } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => {
    resolve = a;
    reject = b;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
const isNode = !!proc?.versions?.node && typeof (globalThis as { window?: unknown }).window === "undefined";

function asRecord(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

let cidCounter = 0;
function newCid(): string {
  const r = globalThis.crypto?.randomUUID?.();
  return r ? r.replace(/-/g, "") : `${Date.now().toString(16)}${(++cidCounter).toString(16)}${Math.random().toString(16).slice(2)}`;
}

export class WSEClient implements AsyncIterable<WSEEvent> {
  readonly url: string;
  readonly options: Resolved;
  /** `server_ready.p.details` of the current connection. */
  serverInfo: Record<string, unknown> = {};
  /** `server_hello.p` of the current connection. */
  serverHello: Record<string, unknown> = {};
  /** Round trip of the last client ping, ms. */
  latency: number | null = null;
  readonly stats: ClientStats = {
    received: 0, duplicates: 0, dropped: 0, gaps: 0, reconnects: 0, badFrames: 0,
    framesText: 0, framesBinary: 0, framesEncrypted: 0, framesZlib: 0, framesMsgpack: 0,
    tokenRefreshes: 0, queuedSends: 0, droppedSends: 0,
  };

  private _state: ConnectionState = "connecting";
  private link: Link | null = null;
  private closing = false;
  private lost: Error | null = null;
  private started: Promise<this> | null = null;
  private readyWaiters: Pending<Link>[] = [];
  private handlers = new Map<string, Set<Handler<any>>>();
  private queue: WSEEvent[] = [];
  private iterating = false;
  private overflowing = false;
  private waiter: Pending<void> | null = null;
  private pending = new Map<string, Pending<WSEEvent> & { timer: ReturnType<typeof setTimeout> }>();
  private subWaiters: SubWaiter[] = [];
  private refreshWaiters: Pending<Record<string, unknown>>[] = [];
  private topics = new Map<string, { presence: boolean }>();
  private positions = new Map<string, { epoch: string | null; offset: number | null }>();
  private soft = new Set<string>();
  private recovering = new Set<string>();
  private members = new Map<string, Map<string, PresenceMember>>();
  private sendq: SendQueue;
  private token: string | undefined;
  private keepalive: ReturnType<typeof setInterval> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private wakeReconnect: (() => void) | null = null;
  /** The token was refused or expired: ask getToken for a new one before the next connection. */
  private needFresh = false;

  constructor(url: string, options: ClientOptions = {}) {
    this.options = resolveOptions(options);
    const o = this.options;
    if (!["drop_oldest", "drop_newest", "error"].includes(o.overflow)) {
      throw new WSEError(`overflow must be drop_oldest, drop_newest or error, not ${String(o.overflow)}`);
    }
    if (o.tokenIn === "header" && !isNode && !o.WebSocket) {
      throw new WSEError("tokenIn: 'header' needs Node (browsers cannot set WebSocket headers): use 'query' or 'cookie'");
    }
    this.url = o.msgpack ? withQuery(url, "format", "msgpack") : url;
    this.token = o.token;
    this.sendq = new SendQueue(o.sendQueue);
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /** Opens the first connection; its errors are thrown here (not retried). */
  connect(): Promise<this> {
    if (!this.started) {
      this.started = (async () => {
        await this.sendq.restore();
        await this.open(false);
        return this;
      })();
      this.started.catch((e: unknown) => {
        if (!this.closing) this.giveUp(e instanceof Error ? e : new ConnectionLost(String(e)), false);
      });
    }
    return this.started;
  }

  /** Closes for good: iteration ends, waiting calls fail with ConnectionLost. */
  close(code = 1000, reason = ""): void {
    if (this.closing) return;
    this.closing = true;
    this.stopTimers();
    const link = this.link;
    if (link && !link.dead) {
      link.dead = true;
      try {
        link.ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
    this.failAll(new ConnectionLost("client closed"));
    this.setState("closed");
    this.wake();
  }

  get state(): ConnectionState {
    return this._state;
  }

  /** True while a connection is up and its handshake done. */
  get connected(): boolean {
    return this._state === "open";
  }

  /** True after `close()`, or when reconnecting gave up (`error` says why). */
  get closed(): boolean {
    return this._state === "closed";
  }

  /** Why the client gave up (null while it has not). */
  get error(): Error | null {
    return this.lost;
  }

  /** The server's features (server_ready and server_hello merged). */
  get features(): Record<string, unknown> {
    return { ...asRecord(this.serverInfo["features"]), ...asRecord(this.serverHello["features"]) };
  }

  get encrypted(): boolean {
    return !!this.link?.session?.ready;
  }

  /** The E2E key generation (0 after the exchange, N after the server's Nth rotation). */
  get keyGeneration(): number {
    return this.link?.session?.generation ?? 0;
  }

  /** Topics this client subscribed to (restored after every reconnect). */
  get subscriptions(): string[] {
    return [...this.topics.keys()];
  }

  /** The last (epoch, offset) seen per topic. */
  get recoveryPositions(): Record<string, { epoch: string | null; offset: number | null }> {
    return Object.fromEntries([...this.positions].map(([t, p]) => [t, { ...p }]));
  }

  /** Resolves once the offline queue's IndexedDB copy (`sendQueue.persist`) is written. */
  persisted(): Promise<void> {
    return this.sendq.settled();
  }

  /** Messages waiting in the offline send queue. */
  get queuedSends(): number {
    return this.sendq.length;
  }

  // ---- events --------------------------------------------------------------------------------

  /**
   * `handler(event)` for events of `type` (`"*"`: all). Besides server messages the client emits
   * `state` ({state}), `recovery_gap` (a Gap), `queue_overflow`, `token_refresh` ({success, ...}),
   * `presence` ({topic, members}) and `closed` ({error}). Returns a function that removes it.
   */
  on<P = unknown>(type: string, handler: Handler<P>): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => this.off(type, handler);
  }

  off<P = unknown>(type: string, handler: Handler<P>): void {
    this.handlers.get(type)?.delete(handler);
  }

  /** `for await (const event of client)`: every event, from the first `next()` on. */
  [Symbol.asyncIterator](): AsyncIterator<WSEEvent> {
    this.iterating = true;
    return {
      next: () => this.next(),
      return: async () => {
        this.iterating = false;
        this.queue = [];
        return { value: undefined, done: true };
      },
    };
  }

  /** The next event (used by `for await`); `timeout` ms: TimeoutError. */
  async recv(timeout?: number): Promise<WSEEvent> {
    this.iterating = true;
    const p = this.next().then((r) => {
      if (r.done) throw new ConnectionLost("client closed");
      return r.value;
    });
    return timeout === undefined ? p : withTimeout(p, timeout, "recv");
  }

  private async next(): Promise<IteratorResult<WSEEvent>> {
    for (;;) {
      const ev = this.queue.shift();
      if (ev) {
        if (this.overflowing && this.queue.length <= this.options.maxQueue / 2) this.overflowing = false;
        return { value: ev, done: false };
      }
      if (this.lost) throw this.lost;
      if (this.closing) return { value: undefined, done: true };
      const w = deferred<void>();
      this.waiter = w;
      await w.promise;
    }
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.resolve();
  }

  private emit(ev: WSEEvent): void {
    for (const set of [this.handlers.get(ev.type), this.handlers.get("*")]) {
      if (!set) continue;
      for (const h of [...set]) {
        try {
          h(ev);
        } catch (e) {
          console.error(`wse-client: a handler for ${ev.type} threw`, e);
        }
      }
    }
  }

  private local(type: string, payload: unknown): WSEEvent {
    return new WSEEvent({ c: "WSE", t: type, p: payload });
  }

  private deliver(ev: WSEEvent, always = false): void {
    this.stats.received++;
    this.emit(ev);
    if (!this.iterating) return;
    const q = this.queue;
    if (q.length >= this.options.maxQueue && !always) {
      this.stats.dropped++;
      const policy = this.options.overflow;
      if (policy === "error") {
        this.giveUp(new WSEError(`receive queue full (${this.options.maxQueue} events)`));
        return;
      }
      if (policy === "drop_newest") {
        this.overflowed();
        return;
      }
      q.shift();
      this.overflowed();
    }
    q.push(ev);
    this.wake();
  }

  private overflowed(): void {
    if (this.overflowing) return;
    this.overflowing = true;
    this.emit(this.local(OVERFLOW, { policy: this.options.overflow, dropped: this.stats.dropped }));
  }

  private setState(s: ConnectionState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit(this.local("state", { state: s }));
  }

  // ---- sending -------------------------------------------------------------------------------

  /**
   * Sends `{t: type, p: payload}` (plus `extra` keys). While disconnected the message waits in
   * the offline queue: returns `"sent"`, `"queued"` or `"dropped"` (the queue's `drop_newest`
   * policy); throws QueueFull (policy `reject`) or ConnectionLost (closed).
   */
  send(type: string, payload: unknown = {}, extra: Record<string, unknown> = {}): "sent" | "queued" | "dropped" {
    const env: Envelope = { t: type, p: payload ?? {}, ...extra };
    if (this.closing || this.lost) throw this.lost ?? new ConnectionLost("client closed");
    const link = this.link;
    if (link && this._state === "open") {
      this.transmit(link, env);
      return "sent";
    }
    const before = this.sendq.dropped;
    let kept: boolean;
    try {
      kept = this.sendq.push(env);
    } catch (e) {
      if (e instanceof QueueFull) this.stats.droppedSends++;
      throw e;
    }
    this.stats.droppedSends += this.sendq.dropped - before;
    if (kept) this.stats.queuedSends++;
    return kept ? "queued" : "dropped";
  }

  /** Sends with a fresh `cid` and resolves with the reply carrying it (RequestError for an error). */
  async request<P = unknown>(type: string, payload: unknown = {}, opts: { timeout?: number } = {}): Promise<WSEEvent<P>> {
    const timeout = opts.timeout ?? this.options.requestTimeout;
    const cid = newCid();
    const d = deferred<WSEEvent>();
    const timer = setTimeout(() => {
      this.pending.delete(cid);
      d.reject(new TimeoutError(`request ${type}: no reply within ${timeout} ms`));
    }, timeout);
    this.pending.set(cid, { ...d, timer });
    try {
      const link = await Promise.race([this.live(), d.promise.then(() => null)]);
      if (link) this.transmit(link, { t: type, p: payload ?? {}, cid });
      const reply = await d.promise;
      if (reply.type === "error") {
        const p = asRecord(reply.payload);
        throw new RequestError(String(p["code"] ?? "ERROR"), String(p["message"] ?? ""), reply.payload);
      }
      return reply as WSEEvent<P>;
    } finally {
      clearTimeout(timer);
      this.pending.delete(cid);
    }
  }

  /** Subscribes and resolves with the server's ack. Accepted topics are restored after reconnects. */
  async subscribe(
    topics: string | string[],
    opts: { recover?: boolean; presence?: boolean; timeout?: number } = {},
  ): Promise<SubscribeResult> {
    const names = typeof topics === "string" ? [topics] : [...topics];
    const link = await withTimeout(this.live(), opts.timeout ?? this.options.requestTimeout, "subscribe");
    const r = await this.subscribeOn(link, "subscribe", names, opts.recover ?? true, !!opts.presence, opts.timeout);
    for (const t of r.successTopics) {
      const prev = this.topics.get(t);
      this.topics.set(t, { presence: !!opts.presence || !!prev?.presence });
      this.positionFromAck(t, r.recovery[t]);
    }
    return r;
  }

  /** Leaves topics and resolves with the server's ack. */
  async unsubscribe(topics: string | string[], opts: { timeout?: number } = {}): Promise<SubscribeResult> {
    const names = typeof topics === "string" ? [topics] : [...topics];
    for (const t of names) {
      this.topics.delete(t);
      this.positions.delete(t);
      this.soft.delete(t);
      this.members.delete(t);
    }
    const link = await withTimeout(this.live(), opts.timeout ?? this.options.requestTimeout, "unsubscribe");
    return this.subscribeOn(link, "unsubscribe", names, false, false, opts.timeout);
  }

  /** The members of a topic subscribed with `presence: true` (user id to data). */
  presence(topic: string): Map<string, PresenceMember> {
    return new Map(this.members.get(topic) ?? []);
  }

  /** Sets this user's presence data in every topic it is in (`presence_update`). */
  updatePresence(data: unknown): void {
    this.send("presence_update", { data }, { c: "WSE" });
  }

  /**
   * Gets a fresh token from `getToken` and sends it to the server (`auth_refresh`), which
   * extends the connection. Resolves with the server's answer; rejects with AuthError.
   */
  async refreshToken(opts: { timeout?: number } = {}): Promise<{ expiresAt: number | null }> {
    const src = this.options.getToken;
    if (!src) throw new WSEError("refreshToken needs the getToken option");
    const token = await src();
    if (!token) throw new AuthError("getToken returned no token");
    this.token = token;
    const link = await withTimeout(this.live(), opts.timeout ?? this.options.requestTimeout, "refreshToken");
    const d = deferred<Record<string, unknown>>();
    this.refreshWaiters.push(d);
    this.transmit(link, { c: "WSE", t: "auth_refresh", p: { token } });
    let p: Record<string, unknown>;
    try {
      p = await withTimeout(d.promise, opts.timeout ?? this.options.requestTimeout, "auth_refresh");
    } catch (e) {
      const i = this.refreshWaiters.indexOf(d);
      if (i >= 0) this.refreshWaiters.splice(i, 1);
      throw e;
    }
    if (p["success"] !== true) {
      throw new AuthError(`token refresh refused: ${String(p["message"] ?? p["reason"] ?? "")}`, p["code"] as string, p["reason"] as string);
    }
    this.stats.tokenRefreshes++;
    const expiresAt = typeof p["expires_at"] === "number" ? (p["expires_at"] as number) : tokenExpiry(token);
    return { expiresAt };
  }

  // ---- the connection ------------------------------------------------------------------------

  private live(): Promise<Link> {
    if (this.lost) return Promise.reject(this.lost);
    if (this.closing) return Promise.reject(new ConnectionLost("client closed"));
    if (this.link && this._state === "open") return Promise.resolve(this.link);
    if (!this.started) void this.connect().catch(() => undefined);
    const d = deferred<Link>();
    this.readyWaiters.push(d);
    return d.promise;
  }

  private async wsCtor(): Promise<WebSocketCtor> {
    if (this.options.WebSocket) return this.options.WebSocket;
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

  private async freshToken(): Promise<string | undefined> {
    const src = this.options.getToken;
    if (src && (this.token === undefined || this.needFresh)) {
      const t = await src();
      this.token = t ?? undefined;
      this.needFresh = false;
    }
    return this.token;
  }

  private async open(resubscribe: boolean): Promise<void> {
    const o = this.options;
    const token = await this.freshToken();
    const Ctor = await this.wsCtor();
    let url = this.url;
    const headers: Record<string, string> = { ...o.headers };
    let where = o.tokenIn;
    if (where === "auto") where = isNode ? "header" : "query";
    if (token) {
      if (where === "query") url = withQuery(url, "token", token);
      else if (where === "header") headers["Authorization"] = `Bearer ${token}`;
      else if (isNode || typeof document === "undefined") headers["Cookie"] = `${o.cookieName}=${token}`;
      else document.cookie = `${o.cookieName}=${token}; path=/; SameSite=Strict`;
    }
    const session = o.encryption ? await Session.create() : null;
    // No await from here until the handlers are set: the socket's events must not be missed.
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
      this.onLinkClosed(link);
    };
    ws.onmessage = (ev) => this.onFrame(link, ev.data);
    this.link = link;
    try {
      await withTimeout(opened.promise, o.openTimeout, "WebSocket open");
      this.transmit(link, this.clientHello(link));
      try {
        await withTimeout(hello.promise, o.helloTimeout, "server_hello");
      } catch (e) {
        if (!(e instanceof TimeoutError)) throw e;
        if (o.encryption) throw new EncryptionError("no server_hello: the server did not answer the key exchange");
      }
      if (o.encryption && !link.session?.ready) {
        throw new EncryptionError("the server did not offer encryption (no encryption_public_key in server_hello)");
      }
      this.startKeepalive(link);
      if (resubscribe && this.topics.size) await withTimeout(this.restore(link), o.requestTimeout, "resubscribe");
    } catch (e) {
      this.kill(link);
      throw e;
    }
    this.setState("open");
    this.scheduleRefresh();
    const ready = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of ready) w.resolve(link);
    for (const env of this.sendq.drain()) this.transmit(link, env);
  }

  private clientHello(link: Link): Envelope {
    const o = this.options;
    const p: Record<string, unknown> = {
      client_version: `wse-client-ts/${VERSION}`,
      protocol_version: PROTOCOL_VERSION,
      features: {
        compression: o.compression,
        encryption: o.encryption,
        msgpack: o.msgpack,
        recovery: true,
        key_rotation: o.encryption && o.keyRotation,
        token_refresh: !!o.getToken,
      },
    };
    if (link.session) p["encryption_public_key"] = link.session.publicKeyB64;
    return { c: "WSE", t: "client_hello", p };
  }

  /** Drops a connection without waiting for the peer (it may be dead). */
  private kill(link: Link): void {
    if (link.dead) return;
    link.dead = true;
    try {
      link.ws.close(4000, "client abort");
    } catch {
      /* closed already */
    }
    if (this.link === link) this.lost_link(link);
  }

  private onLinkClosed(link: Link): void {
    if (link.dead) return;
    link.dead = true;
    if (this.link === link) this.lost_link(link);
  }

  /** The current connection ended: fail what depended on it, then reconnect (or give up). */
  private lost_link(link: Link): void {
    this.stopKeepalive();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    const err = new ConnectionLost(`connection lost (close code ${link.closeCode ?? "none"})`);
    for (const [, p] of this.pending) p.reject(err);
    this.pending.clear();
    for (const w of this.subWaiters.splice(0)) w.reject(err);
    for (const w of this.refreshWaiters.splice(0)) w.reject(err);
    if (this._state !== "open") return; // a failing open(): its caller decides
    if (this.closing || this.lost) return;
    const code = link.closeCode;
    if (code === AUTH_CLOSE && !this.options.getToken) {
      this.giveUp(new AuthError(`the server closed the connection: authentication failed (4401 ${link.closeReason})`, "AUTH_FAILED", link.closeReason));
      return;
    }
    if (code === AUTH_CLOSE) this.needFresh = true;
    if (!this.options.reconnect) {
      this.giveUp(new ConnectionLost(`connection closed (code ${code}) and reconnect is off`));
      return;
    }
    this.setState("reconnecting");
    void this.reconnectLoop();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wakeReconnect = resolve;
      this.reconnectTimer = setTimeout(resolve, ms);
    });
  }

  private async reconnectLoop(): Promise<void> {
    const o = this.options;
    let attempt = 0;
    let authFailures = 0;
    while (!this.closing && !this.lost) {
      await this.sleep(backoffDelay(attempt, o, o.random));
      if (this.closing || this.lost) return;
      try {
        await this.open(true);
        this.stats.reconnects++;
        return;
      } catch (e) {
        if (this.closing || this.lost) return;
        if (e instanceof AuthError) {
          // A token refused at the handshake: one more try with a fresh one, if we can get one;
          // a fresh token refused too is final.
          authFailures++;
          if (!o.getToken || authFailures > 1) {
            this.giveUp(e);
            return;
          }
          this.needFresh = true;
        }
        attempt++;
        if (o.maxReconnectAttempts !== null && attempt >= o.maxReconnectAttempts) {
          this.giveUp(new ConnectionLost(`gave up after ${attempt} reconnect attempts: ${(e as Error).message}`));
          return;
        }
      }
    }
  }

  private giveUp(err: Error, emit = true): void {
    if (this.lost) return;
    this.lost = err;
    this.stopTimers();
    const link = this.link;
    if (link && !link.dead) {
      link.dead = true;
      try {
        link.ws.close(1000);
      } catch {
        /* closed */
      }
    }
    this.failAll(err);
    this.setState("closed");
    if (emit) this.emit(this.local("closed", { error: err.message }));
    this.wake();
  }

  private failAll(err: Error): void {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    for (const w of this.subWaiters.splice(0)) w.reject(err);
    for (const w of this.refreshWaiters.splice(0)) w.reject(err);
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
  }

  private stopTimers(): void {
    this.stopKeepalive();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.wakeReconnect?.();
  }

  // ---- keepalive and token refresh -----------------------------------------------------------

  private startKeepalive(link: Link): void {
    this.stopKeepalive();
    const o = this.options;
    const tick = Math.max(50, Math.min(o.pingInterval, o.deadTimeout) / 4);
    let lastPing = Date.now();
    link.lastRx = Date.now();
    this.keepalive = setInterval(() => {
      const now = Date.now();
      if (now - link.lastRx > o.deadTimeout) {
        this.kill(link);
        return;
      }
      if (now - lastPing >= o.pingInterval) {
        lastPing = now;
        this.transmit(link, { c: "WSE", t: "ping", p: { timestamp: now } });
      }
    }, tick);
  }

  private stopKeepalive(): void {
    if (this.keepalive) clearInterval(this.keepalive);
    this.keepalive = null;
  }

  /** Plans the next refresh: `refreshAhead` before the token (or the server's deadline) ends. */
  private scheduleRefresh(expiresAt?: number | null): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (!this.options.getToken) return;
    const server = this.serverInfo["token_expires_at"];
    const exp = expiresAt ?? (this.token ? tokenExpiry(this.token) : null) ?? (typeof server === "number" ? server : null);
    if (exp === null) return;
    const left = exp - Date.now();
    const wait = Math.max(0, left > this.options.refreshAhead ? left - this.options.refreshAhead : left / 2);
    this.refreshTimer = setTimeout(() => void this.autoRefresh(exp), wait);
  }

  private async autoRefresh(exp: number): Promise<void> {
    if (this._state !== "open") return;
    try {
      const r = await this.refreshToken();
      this.emit(this.local("token_refresh", { success: true, expires_at: r.expiresAt }));
      this.scheduleRefresh(r.expiresAt);
    } catch (e) {
      this.emit(this.local("token_refresh", { success: false, error: (e as Error).message }));
      if (this._state !== "open") return;
      // Try again while there is time; the server's 4401 and a reconnect remain the backstop.
      const left = exp - Date.now();
      if (left > 200) this.refreshTimer = setTimeout(() => void this.autoRefresh(exp), Math.min(5_000, left / 2));
    }
  }

  // ---- receiving -----------------------------------------------------------------------------

  private onFrame(link: Link, data: unknown): void {
    if (link.dead) return;
    link.lastRx = Date.now();
    const frame = typeof data === "string" ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : String(data);
    if (link.pumping) {
      link.inbox.push(frame);
      return;
    }
    const r = this.process(link, frame);
    if (r) {
      link.pumping = true;
      void this.pump(link, r);
    }
  }

  /** Frames that need async work (zlib, E2E) are awaited one at a time, preserving order. */
  private async pump(link: Link, first: Promise<void>): Promise<void> {
    try {
      await first;
      while (!link.dead && link.inbox.length) {
        const r = this.process(link, link.inbox.shift()!);
        if (r) await r;
      }
    } finally {
      link.pumping = false;
    }
  }

  /** Decodes and dispatches one frame; a promise when it needs async work. */
  private process(link: Link, frame: string | Uint8Array): Promise<void> | undefined {
    const s = this.stats;
    let decoded: unknown;
    try {
      if (typeof frame === "string") {
        s.framesText++;
      } else {
        s.framesBinary++;
        const k = kindOf(frame);
        if (k === "encrypted") s.framesEncrypted++;
        else if (k === "zlib") s.framesZlib++;
        else if (k === "msgpack") s.framesMsgpack++;
      }
      const session = link.session;
      decoded = decodeFrame(frame, session ? (b) => session.open(b) : undefined, this.options.maxMessageBytes);
    } catch (e) {
      this.badFrame(e);
      return undefined;
    }
    if (decoded instanceof Promise) {
      return decoded.then(
        (msg) => this.dispatch(link, msg),
        (e) => this.badFrame(e),
      );
    }
    return this.dispatch(link, decoded);
  }

  private badFrame(e: unknown): void {
    this.stats.badFrames++;
    console.warn(`wse-client: dropped a frame that could not be decoded: ${(e as Error).message ?? e}`);
  }

  private dispatch(link: Link, raw: unknown): Promise<void> | undefined {
    if (link.dead) return undefined;
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      this.stats.badFrames++;
      return undefined;
    }
    const msg = raw as Envelope;
    const cid = msg.cid;
    if (typeof cid === "string") {
      const p = this.pending.get(cid);
      if (p) {
        this.pending.delete(cid);
        clearTimeout(p.timer);
        p.resolve(new WSEEvent(msg));
        return undefined;
      }
    }
    const t = (msg.t ?? msg.type ?? "") as string;
    if (msg.c === "WSE") {
      if (SYSTEM.has(t)) return this.system(link, t, msg);
      if (t === "error") this.serverError(link, msg);
      if (PRESENCE.has(t)) this.presenceEvent(t, asRecord(msg.p));
    }
    const tp = msg.tp;
    if (typeof tp === "string" && typeof msg.o === "number" && !this.fresh(tp, typeof msg.e === "string" ? msg.e : null, msg.o)) {
      return undefined;
    }
    this.deliver(new WSEEvent(msg));
    return undefined;
  }

  private fresh(topic: string, epoch: string | null, offset: number): boolean {
    const pos = this.positions.get(topic);
    if (!pos) {
      this.positions.set(topic, { epoch, offset });
      return true;
    }
    if (this.soft.has(topic)) {
      this.soft.delete(topic);
    } else if (pos.epoch === epoch && pos.offset !== null) {
      const last = pos.offset;
      if (offset <= last) {
        this.stats.duplicates++;
        return false;
      }
      if (offset > last + 1 && !this.recovering.has(topic)) {
        this.gap({ topic, epoch, offset: last, reason: "missed", server_epoch: epoch, server_offset: offset - 1 });
      }
    }
    pos.epoch = epoch;
    pos.offset = offset;
    return true;
  }

  private gap(g: Gap): void {
    this.stats.gaps++;
    this.deliver(this.local(GAP, g), true);
  }

  private system(link: Link, t: string, msg: Envelope): Promise<void> | undefined {
    const p = asRecord(msg.p);
    switch (t) {
      case "server_ready":
        this.serverInfo = asRecord(p["details"]);
        return undefined;
      case "server_hello": {
        this.serverHello = p;
        const hello = link.hello;
        const key = p["encryption_public_key"];
        if (link.session && !link.session.ready && typeof key === "string" && key) {
          return link.session.complete(key).then(
            () => hello?.resolve(),
            (e) => hello?.reject(e),
          );
        }
        hello?.resolve();
        return undefined;
      }
      case "ping":
        this.transmit(link, { c: "WSE", t: "PONG", p: { server_time: p["server_time"], client_timestamp: Date.now() } });
        return undefined;
      case "PONG":
      case "pong": {
        const ts = p["client_timestamp"];
        if (typeof ts === "number") this.latency = Date.now() - ts;
        return undefined;
      }
      case "key_rotation": {
        const s = link.session;
        if (!s?.ready) return undefined;
        const gen = Number(p["generation"] ?? s.generation + 1);
        // Awaited before the next frame is read: it comes under the new key.
        return s.rotate(gen).catch((e) => console.error("wse-client: key rotation failed", e));
      }
      case "subscription_update":
        this.subAck(p, msg);
        return undefined;
      case "auth_refresh": {
        const w = this.refreshWaiters.shift();
        w?.resolve(p);
        return undefined;
      }
    }
    return undefined;
  }

  private serverError(link: Link, msg: Envelope): void {
    const p = asRecord(msg.p);
    const code = p["code"];
    if (typeof code === "string" && code.startsWith("AUTH")) {
      link.hello?.reject(new AuthError(`${code}: ${String(p["message"] ?? "")}`, code));
    } else if (code === "KEY_EXCHANGE_FAILED") {
      link.hello?.reject(new EncryptionError(`the server failed the key exchange: ${String(p["message"] ?? "")}`));
    }
  }

  private presenceEvent(t: string, p: Record<string, unknown>): void {
    const topic = p["topic"];
    if (typeof topic !== "string") return;
    let m = this.members.get(topic);
    if (!m) this.members.set(topic, (m = new Map()));
    const user = p["user_id"];
    if (t === "presence_state") {
      m.clear();
      for (const [u, v] of Object.entries(asRecord(p["users"]))) {
        const r = asRecord(v);
        m.set(u, { data: r["data"] ?? null, connections: typeof r["connections"] === "number" ? (r["connections"] as number) : 1 });
      }
    } else if (typeof user === "string") {
      if (t === "presence_leave") m.delete(user);
      else m.set(user, { data: p["data"] ?? null, connections: m.get(user)?.connections ?? 1 });
    }
    this.emit(this.local("presence", { topic, members: Object.fromEntries(m) }));
  }

  private subAck(p: Record<string, unknown>, msg: Envelope): void {
    const recovery: Record<string, TopicRecovery> = {};
    const rr = asRecord(p["recovery"]);
    const per = "topics" in rr && typeof rr["topics"] === "object" ? asRecord(rr["topics"]) : rr;
    for (const [topic, v] of Object.entries(per)) {
      const r = asRecord(v);
      if (!Object.keys(r).length) continue;
      recovery[topic] = {
        topic,
        recovered: !!r["recovered"],
        epoch: typeof r["epoch"] === "string" ? (r["epoch"] as string) : null,
        offset: typeof r["offset"] === "number" ? (r["offset"] as number) : null,
        count: Number(r["count"] ?? 0),
      };
    }
    const failed = Array.isArray(p["failed_topics"]) ? (p["failed_topics"] as string[]) : [];
    const result: SubscribeResult = {
      ok: failed.length === 0,
      successTopics: Array.isArray(p["success_topics"]) ? (p["success_topics"] as string[]) : [],
      failedTopics: failed,
      errors: asRecord(p["errors"]) as Record<string, string>,
      recovery,
      raw: msg,
    };
    const action = p["action"];
    const answered = new Set([...result.successTopics, ...result.failedTopics]);
    const candidates = this.subWaiters.filter((w) => action === undefined || w.action === action);
    const same = (a: Set<string>, b: Set<string>) => a.size === b.size && [...a].every((x) => b.has(x));
    const entry = candidates.find((w) => same(w.topics, answered)) ?? candidates[0];
    if (!entry) return;
    this.subWaiters.splice(this.subWaiters.indexOf(entry), 1);
    entry.resolve(result);
  }

  // ---- subscriptions and recovery -------------------------------------------------------------

  private async subscribeOn(link: Link, action: string, topics: string[], recover: boolean, presence: boolean, timeout?: number): Promise<SubscribeResult> {
    const p: Record<string, unknown> = { action, topics };
    const asked: string[] = [];
    if (recover && action === "subscribe") {
      const positions: Record<string, { epoch: string; offset: number }> = {};
      for (const t of topics) {
        const pos = this.positions.get(t);
        if (pos && pos.epoch !== null && pos.offset !== null) {
          positions[t] = { epoch: pos.epoch, offset: pos.offset };
          asked.push(t);
        }
      }
      if (asked.length) {
        p["recover"] = true;
        p["recovery"] = positions;
        for (const t of asked) this.recovering.add(t);
      }
    }
    if (presence && action === "subscribe") p["presence"] = true;
    const d = deferred<SubscribeResult>();
    const waiter: SubWaiter = { action, topics: new Set(topics), resolve: d.resolve, reject: d.reject };
    this.subWaiters.push(waiter);
    try {
      this.transmit(link, { c: "WSE", t: "subscription_update", p });
      return await withTimeout(d.promise, timeout ?? this.options.requestTimeout, action);
    } finally {
      const i = this.subWaiters.indexOf(waiter);
      if (i >= 0) this.subWaiters.splice(i, 1);
      for (const t of topics) this.recovering.delete(t);
    }
  }

  private positionFromAck(topic: string, rec: TopicRecovery | undefined): void {
    if (!rec || rec.epoch === null || rec.offset === null) return;
    const pos = this.positions.get(topic);
    if (!pos || pos.offset === null || pos.epoch !== rec.epoch) {
      this.positions.set(topic, { epoch: rec.epoch, offset: rec.offset });
      this.soft.add(topic);
    }
  }

  /** After a reconnect: subscribe again with recovery, report what could not be recovered. */
  private async restore(link: Link): Promise<void> {
    const topics = [...this.topics.keys()];
    const before = new Map([...this.positions].map(([t, p]) => [t, { ...p }]));
    const withPresence = topics.filter((t) => this.topics.get(t)?.presence);
    const plain = topics.filter((t) => !this.topics.get(t)?.presence);
    const results: SubscribeResult[] = [];
    if (plain.length) results.push(await this.subscribeOn(link, "subscribe", plain, true, false));
    if (withPresence.length) results.push(await this.subscribeOn(link, "subscribe", withPresence, true, true));
    for (const result of results) {
      for (const t of [...result.successTopics, ...result.failedTopics]) {
        if (result.failedTopics.includes(t)) {
          this.topics.delete(t);
          continue;
        }
        const pos = before.get(t);
        const rec = result.recovery[t];
        if (!pos || pos.offset === null || !rec) {
          this.gap({ topic: t, epoch: pos?.epoch ?? null, offset: pos?.offset ?? null, reason: "no_recovery", server_epoch: null, server_offset: null });
        } else if (!rec.recovered) {
          this.gap({ topic: t, epoch: pos.epoch, offset: pos.offset, reason: "not_recovered", server_epoch: rec.epoch, server_offset: rec.offset });
          const cur = this.positions.get(t);
          if (cur && cur.epoch === pos.epoch && cur.offset === pos.offset) this.positions.set(t, { epoch: rec.epoch, offset: null });
        }
        this.positionFromAck(t, rec);
      }
    }
  }

  // ---- the wire ------------------------------------------------------------------------------

  /** Sends one envelope on `link`, in order, encoded as configured. */
  private transmit(link: Link, env: Envelope): void {
    if (link.dead) return;
    const o = this.options;
    const session = link.session?.ready ? link.session : null;
    let out: string | Uint8Array | Promise<Uint8Array>;
    if (session) {
      out = session.seal(utf8(JSON.stringify(env))).then((b) => withPrefix("E", b));
    } else if (o.sendFormat === "msgpack") {
      out = encodeMsgpack(env);
    } else {
      const text = JSON.stringify(env);
      out = o.compressThreshold > 0 && text.length >= o.compressThreshold ? deflate(utf8(text)).then((b) => withPrefix("C", b)) : text;
    }
    if (!(out instanceof Promise) && link.txBusy === 0) {
      this.rawSend(link, out);
      return;
    }
    link.txBusy++;
    const ready = out;
    link.tx = link.tx.then(async () => {
      try {
        this.rawSend(link, await ready);
      } catch (e) {
        console.error("wse-client: could not encode a message", e);
      } finally {
        link.txBusy--;
      }
    });
  }

  private rawSend(link: Link, data: string | Uint8Array): void {
    if (link.dead) return;
    try {
      link.ws.send(data);
    } catch {
      this.kill(link);
    }
  }
}

function withQuery(url: string, key: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(key, value);
  return u.toString();
}

/** A client for `url` (ws:// or wss://); `await connect(...)` opens it. */
export function connect(url: string, options: ClientOptions = {}): Promise<WSEClient> {
  return new WSEClient(url, options).connect();
}
