/**
 * The client: one logical session over successive WebSocket connections. It reconnects with
 * backoff, resubscribes with per-topic recovery, drops duplicates, reports gaps, keeps the
 * connection alive, refreshes its token and holds sends while disconnected.
 *
 * The parts: link.ts (one connection: dialing, handshake, keepalive), wire.ts (frames out and
 * in), receive.ts (routing what arrives), stream.ts (events: handlers and `for await`), subscriptions.ts (topics and recovery),
 * requests.ts (replies by cid), presence.ts, refresh.ts (the token), sendqueue.ts (offline
 * sends), codec.ts and crypto.ts. This file ties them together: the lifecycle and the public API.
 */
import { backoffDelay } from "./backoff.js";
import { loadZlib } from "./codec.js";
import { Session } from "./crypto.js";
import { AuthError, ConnectionLost, QueueFull, RequestError, WSEError } from "./errors.js";
import { GAP, WSEEvent, newStats, type ClientStats, type ConnectionState, type Envelope, type Gap, type PresenceMember, type SubscribeResult } from "./events.js";
import { AUTH_CLOSE, dial, handshake, keepalive, webSocketCtor, type Link } from "./link.js";
import { resolveOptions, type ClientOptions, type Resolved } from "./options.js";
import { PresenceBook } from "./presence.js";
import { Receiver } from "./receive.js";
import { TokenKeeper } from "./refresh.js";
import { Requests } from "./requests.js";
import { SendQueue } from "./sendqueue.js";
import { EventStream, localEvent, type Handler } from "./stream.js";
import { Subscriptions } from "./subscriptions.js";
import { asRecord, deferred, isNode, withQuery, withTimeout, type Pending } from "./util.js";
import { Wire } from "./wire.js";

export { VERSION, PROTOCOL_VERSION, AUTH_CLOSE } from "./link.js";
export type { Handler } from "./stream.js";
export type { ClientStats } from "./events.js";

export class WSEClient implements AsyncIterable<WSEEvent> {
  readonly url: string;
  readonly options: Resolved;
  /** `server_ready.p.details` of the current connection. */
  serverInfo: Record<string, unknown> = {};
  /** `server_hello.p` of the current connection. */
  serverHello: Record<string, unknown> = {};
  /** Round trip of the last client ping, ms. */
  latency: number | null = null;
  readonly stats: ClientStats = newStats();

  private _state: ConnectionState = "connecting";
  private link: Link | null = null;
  private closing = false;
  private lost: Error | null = null;
  private started: Promise<this> | null = null;
  private readyWaiters: Pending<Link>[] = [];
  private events: EventStream;
  private wire: Wire;
  private subs: Subscriptions;
  private requests = new Requests();
  private members = new PresenceBook();
  private tokens: TokenKeeper;
  private sendq: SendQueue;
  private keepalive: ReturnType<typeof setInterval> | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private wakeReconnect: (() => void) | null = null;

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
    this.sendq = new SendQueue(o.sendQueue);
    // node:zlib's synchronous inflate for `C:` frames where there is one (Node); loaded during
    // the handshake, not awaited: until then (and in browsers) frames go through DecompressionStream.
    void loadZlib();
    const self = this;
    this.events = new EventStream(
      {
        get lostError() { return self.lost; },
        get isClosing() { return self.closing; },
        giveUp: (e) => this.giveUp(e),
        stats: this.stats,
      },
      o.maxQueue,
      o.overflow,
    );
    const transmit = (l: Link, env: Envelope) => this.wire.transmit(l, env);
    this.subs = new Subscriptions({ options: o, stats: this.stats, transmit, gap: (g) => this.gap(g) });
    this.tokens = new TokenKeeper({
      options: o,
      stats: this.stats,
      get serverInfo() { return self.serverInfo; },
      get connected() { return self.connected; },
      live: () => this.live(),
      transmit,
      emit: (ev) => this.events.emit(ev),
    });
    const receiver = new Receiver({
      facts: this,
      stats: this.stats,
      events: this.events,
      requests: this.requests,
      subs: this.subs,
      members: this.members,
      tokens: this.tokens,
      transmit,
    });
    this.wire = new Wire({ options: o, stats: this.stats, dispatch: (l, m) => receiver.dispatch(l, m), kill: (l) => this.kill(l) });
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
    this.closeSocket(code, reason);
    this.failAll(new ConnectionLost("client closed"));
    this.setState("closed");
    this.events.wake();
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
    return [...this.subs.topics.keys()];
  }

  /** The last (epoch, offset) seen per topic. */
  get recoveryPositions(): Record<string, { epoch: string | null; offset: number | null }> {
    return Object.fromEntries([...this.subs.positions].map(([t, p]) => [t, { ...p }]));
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
    return this.events.on(type, handler);
  }

  off<P = unknown>(type: string, handler: Handler<P>): void {
    this.events.off(type, handler);
  }

  /** `for await (const event of client)`: every event, from the first `next()` on. */
  [Symbol.asyncIterator](): AsyncIterator<WSEEvent> {
    return this.events.iterator();
  }

  /** The next event (used by `for await`); `timeout` ms: TimeoutError. */
  recv(timeout?: number): Promise<WSEEvent> {
    return this.events.recv(timeout);
  }

  private setState(s: ConnectionState): void {
    if (this._state === s) return;
    this._state = s;
    this.events.emit(localEvent("state", { state: s }));
  }

  private gap(g: Gap): void {
    this.stats.gaps++;
    this.events.deliver(localEvent(GAP, g), true);
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
      this.wire.transmit(link, env);
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
    const r = this.requests.start(type, opts.timeout ?? this.options.requestTimeout);
    try {
      const link = await Promise.race([this.live(), r.reply.then(() => null)]);
      if (link) this.wire.transmit(link, { t: type, p: payload ?? {}, cid: r.cid });
      const reply = await r.reply;
      if (reply.type === "error") {
        const p = asRecord(reply.payload);
        throw new RequestError(String(p["code"] ?? "ERROR"), String(p["message"] ?? ""), reply.payload);
      }
      return reply as WSEEvent<P>;
    } finally {
      r.done();
    }
  }

  /** Subscribes and resolves with the server's ack. Accepted topics are restored after reconnects. */
  async subscribe(
    topics: string | string[],
    opts: { recover?: boolean; presence?: boolean; timeout?: number } = {},
  ): Promise<SubscribeResult> {
    const names = typeof topics === "string" ? [topics] : [...topics];
    const link = await withTimeout(this.live(), opts.timeout ?? this.options.requestTimeout, "subscribe");
    const r = await this.subs.request(link, "subscribe", names, opts.recover ?? true, !!opts.presence, opts.timeout);
    this.subs.accepted(r, !!opts.presence);
    return r;
  }

  /** Leaves topics and resolves with the server's ack. */
  async unsubscribe(topics: string | string[], opts: { timeout?: number } = {}): Promise<SubscribeResult> {
    const names = typeof topics === "string" ? [topics] : [...topics];
    this.subs.forget(names);
    this.members.forget(names);
    const link = await withTimeout(this.live(), opts.timeout ?? this.options.requestTimeout, "unsubscribe");
    return this.subs.request(link, "unsubscribe", names, false, false, opts.timeout);
  }

  /** The members of a topic subscribed with `presence: true` (user id to data). */
  presence(topic: string): Map<string, PresenceMember> {
    return this.members.of(topic);
  }

  /** Sets this user's presence data in every topic it is in (`presence_update`). */
  updatePresence(data: unknown): void {
    this.send("presence_update", { data }, { c: "WSE" });
  }

  /**
   * Gets a fresh token from `getToken` and sends it to the server (`auth_refresh`), which
   * extends the connection. Resolves with the server's answer; rejects with AuthError.
   */
  refreshToken(opts: { timeout?: number } = {}): Promise<{ expiresAt: number | null }> {
    return this.tokens.refresh(opts);
  }

  // ---- the connection ------------------------------------------------------------------------

  /** The open connection, now or once (re)connected. */
  private live(): Promise<Link> {
    if (this.lost) return Promise.reject(this.lost);
    if (this.closing) return Promise.reject(new ConnectionLost("client closed"));
    if (this.link && this._state === "open") return Promise.resolve(this.link);
    if (!this.started) void this.connect().catch(() => undefined);
    const d = deferred<Link>();
    this.readyWaiters.push(d);
    return d.promise;
  }

  private async open(resubscribe: boolean): Promise<void> {
    const o = this.options;
    const token = await this.tokens.forConnection();
    const Ctor = await webSocketCtor(o);
    const session = o.encryption ? await Session.create() : null;
    const { link, opened } = dial(this.url, token, o, Ctor, session, {
      frame: (l, data) => this.wire.onFrame(l, data),
      closed: (l) => this.onLinkClosed(l),
    });
    this.link = link;
    try {
      await handshake(link, opened, o, (env) => this.wire.transmit(link, env));
      this.stopKeepalive();
      this.keepalive = keepalive(link, o, (env) => this.wire.transmit(link, env), (l) => this.kill(l));
      if (resubscribe && this.subs.topics.size) await withTimeout(this.subs.restore(link), o.requestTimeout, "resubscribe");
    } catch (e) {
      this.kill(link);
      throw e;
    }
    this.setState("open");
    this.tokens.schedule();
    const ready = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of ready) w.resolve(link);
    for (const env of this.sendq.drain()) this.wire.transmit(link, env);
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
    if (this.link === link) this.linkLost(link);
  }

  private onLinkClosed(link: Link): void {
    if (link.dead) return;
    link.dead = true;
    if (this.link === link) this.linkLost(link);
  }

  /** Closes the current socket (for good: close() or giving up). */
  private closeSocket(code: number, reason = ""): void {
    const link = this.link;
    if (!link || link.dead) return;
    link.dead = true;
    try {
      link.ws.close(code, reason);
    } catch {
      /* already closed */
    }
  }

  /** The current connection ended: fail what depended on it, then reconnect (or give up). */
  private linkLost(link: Link): void {
    this.stopKeepalive();
    this.tokens.stop();
    const err = new ConnectionLost(`connection lost (close code ${link.closeCode ?? "none"})`);
    this.requests.fail(err);
    this.subs.fail(err);
    this.tokens.fail(err);
    if (this._state !== "open") return; // a failing open(): its caller decides
    if (this.closing || this.lost) return;
    const code = link.closeCode;
    if (code === AUTH_CLOSE && !this.options.getToken) {
      this.giveUp(new AuthError(`the server closed the connection: authentication failed (4401 ${link.closeReason})`, "AUTH_FAILED", link.closeReason));
      return;
    }
    if (code === AUTH_CLOSE) this.tokens.needFresh = true;
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
          this.tokens.needFresh = true;
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
    this.closeSocket(1000);
    this.failAll(err);
    this.setState("closed");
    if (emit) this.events.emit(localEvent("closed", { error: err.message }));
    this.events.wake();
  }

  private failAll(err: Error): void {
    this.requests.fail(err);
    this.subs.fail(err);
    this.tokens.fail(err);
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
  }

  private stopKeepalive(): void {
    if (this.keepalive) clearInterval(this.keepalive);
    this.keepalive = null;
  }

  private stopTimers(): void {
    this.stopKeepalive();
    this.tokens.stop();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.wakeReconnect?.();
  }

}

/** A client for `url` (ws:// or wss://); `await connect(...)` opens it. */
export function connect(url: string, options: ClientOptions = {}): Promise<WSEClient> {
  return new WSEClient(url, options).connect();
}
