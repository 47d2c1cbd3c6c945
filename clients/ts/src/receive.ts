/**
 * Received messages, routed: a reply to a request, a system message (hello and key exchange,
 * pings, key rotation, acks, token refresh answers), presence, or an event for the application
 * (publications checked for duplicates and gaps first).
 */
import { AuthError, EncryptionError } from "./errors.js";
import { WSEEvent, type ClientStats, type Envelope } from "./events.js";
import type { Link } from "./link.js";
import { PRESENCE_EVENTS, PresenceBook } from "./presence.js";
import type { TokenKeeper } from "./refresh.js";
import type { Requests } from "./requests.js";
import { localEvent, type EventStream } from "./stream.js";
import type { Subscriptions } from "./subscriptions.js";
import { asRecord } from "./util.js";

const SYSTEM = new Set(["server_ready", "server_hello", "ping", "PONG", "pong", "key_rotation", "subscription_update", "auth_refresh", "batch_key"]);

/** Where the receiver records what the server said about itself and the round trip. */
export interface ServerFacts {
  serverInfo: Record<string, unknown>;
  serverHello: Record<string, unknown>;
  latency: number | null;
}

export interface ReceiverParts {
  readonly facts: ServerFacts;
  readonly stats: ClientStats;
  readonly events: EventStream;
  readonly requests: Requests;
  readonly subs: Subscriptions;
  readonly members: PresenceBook;
  readonly tokens: TokenKeeper;
  transmit(link: Link, env: Envelope): void;
}

export class Receiver {
  constructor(private readonly x: ReceiverParts) {}

  /** Routes a decoded message; a promise when that needs async work (awaited before the next). */
  dispatch(link: Link, raw: unknown): Promise<void> | undefined {
    const x = this.x;
    if (link.dead) return undefined;
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      x.stats.badFrames++;
      return undefined;
    }
    const msg = raw as Envelope;
    if (x.requests.answer(msg)) return undefined;
    const t = (msg.t ?? msg.type ?? "") as string;
    if (msg.c === "WSE") {
      if (SYSTEM.has(t)) return this.system(link, t, msg);
      if (t === "error") this.serverError(link, msg);
      if (PRESENCE_EVENTS.has(t)) {
        const changed = x.members.apply(t, asRecord(msg.p));
        if (changed) x.events.emit(localEvent("presence", changed));
      }
    }
    const tp = msg.tp;
    if (typeof tp === "string" && typeof msg.o === "number" && !x.subs.fresh(tp, typeof msg.e === "string" ? msg.e : null, msg.o)) {
      return undefined;
    }
    x.events.deliver(new WSEEvent(msg));
    return undefined;
  }

  private system(link: Link, t: string, msg: Envelope): Promise<void> | undefined {
    const x = this.x;
    const p = asRecord(msg.p);
    switch (t) {
      case "server_ready":
        x.facts.serverInfo = asRecord(p["details"]);
        return undefined;
      case "server_hello": {
        x.facts.serverHello = p;
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
        x.transmit(link, { c: "WSE", t: "PONG", p: { server_time: p["server_time"], client_timestamp: Date.now() } });
        return undefined;
      case "PONG":
      case "pong": {
        const ts = p["client_timestamp"];
        if (typeof ts === "number") x.facts.latency = Date.now() - ts;
        return undefined;
      }
      case "key_rotation": {
        const s = link.session;
        if (!s?.ready) return undefined;
        const gen = Number(p["generation"] ?? s.generation + 1);
        // Awaited before the next frame is read: it comes under the new key.
        return s.rotate(gen).catch((e) => console.error("wse-client: key rotation failed", e));
      }
      case "batch_key":
        // Taken by the session when it opened the E: frame that carried it (crypto.ts); one that
        // came in clear is no key and is ignored.
        if (link.session?.tookBatchKey(p)) x.stats.batchKeys++;
        else x.stats.badFrames++;
        return undefined;
      case "subscription_update":
        x.subs.onAck(p, msg);
        return undefined;
      case "auth_refresh":
        x.tokens.answer(p);
        return undefined;
    }
    return undefined;
  }

  /** An error during the handshake fails it (AuthError, EncryptionError); the event goes on. */
  private serverError(link: Link, msg: Envelope): void {
    const p = asRecord(msg.p);
    const code = p["code"];
    if (typeof code === "string" && code.startsWith("AUTH")) {
      link.hello?.reject(new AuthError(`${code}: ${String(p["message"] ?? "")}`, code));
    } else if (code === "KEY_EXCHANGE_FAILED") {
      link.hello?.reject(new EncryptionError(`the server failed the key exchange: ${String(p["message"] ?? "")}`));
    }
  }
}
