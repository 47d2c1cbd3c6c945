/**
 * The token's lifecycle on the client: a fresh one from `getToken` before a connection (and
 * after a 4401), `auth_refresh` on the open connection `refreshAhead` before it expires.
 */
import { AuthError, WSEError } from "./errors.js";
import type { ClientStats, Envelope, WSEEvent } from "./events.js";
import type { Link } from "./link.js";
import type { Resolved } from "./options.js";
import { localEvent } from "./stream.js";
import { tokenExpiry } from "./token.js";
import { deferred, withTimeout, type Pending } from "./util.js";

/** What the token keeper needs from its client. */
export interface TokenOwner {
  readonly options: Resolved;
  readonly stats: ClientStats;
  readonly serverInfo: Record<string, unknown>;
  readonly connected: boolean;
  live(): Promise<Link>;
  transmit(link: Link, env: Envelope): void;
  emit(ev: WSEEvent): void;
}

export class TokenKeeper {
  token: string | undefined;
  /** The token was refused or expired: ask getToken for a new one before the next connection. */
  needFresh = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private waiters: Pending<Record<string, unknown>>[] = [];

  constructor(private readonly owner: TokenOwner) {
    this.token = owner.options.token;
  }

  /** The token for the next connection (a fresh one from getToken when needed). */
  async forConnection(): Promise<string | undefined> {
    const src = this.owner.options.getToken;
    if (src && (this.token === undefined || this.needFresh)) {
      const t = await src();
      this.token = t ?? undefined;
      this.needFresh = false;
    }
    return this.token;
  }

  /** Gets a token from getToken and sends it (`auth_refresh`); resolves with the new expiry. */
  async refresh(opts: { timeout?: number } = {}): Promise<{ expiresAt: number | null }> {
    const o = this.owner.options;
    const src = o.getToken;
    if (!src) throw new WSEError("refreshToken needs the getToken option");
    const token = await src();
    if (!token) throw new AuthError("getToken returned no token");
    this.token = token;
    const link = await withTimeout(this.owner.live(), opts.timeout ?? o.requestTimeout, "refreshToken");
    const d = deferred<Record<string, unknown>>();
    this.waiters.push(d);
    this.owner.transmit(link, { c: "WSE", t: "auth_refresh", p: { token } });
    let p: Record<string, unknown>;
    try {
      p = await withTimeout(d.promise, opts.timeout ?? o.requestTimeout, "auth_refresh");
    } catch (e) {
      const i = this.waiters.indexOf(d);
      if (i >= 0) this.waiters.splice(i, 1);
      throw e;
    }
    if (p["success"] !== true) {
      throw new AuthError(`token refresh refused: ${String(p["message"] ?? p["reason"] ?? "")}`, p["code"] as string, p["reason"] as string);
    }
    this.owner.stats.tokenRefreshes++;
    const expiresAt = typeof p["expires_at"] === "number" ? (p["expires_at"] as number) : tokenExpiry(token);
    return { expiresAt };
  }

  /** The server's `auth_refresh` answer. */
  answer(p: Record<string, unknown>): void {
    this.waiters.shift()?.resolve(p);
  }

  /** Refreshes waiting for an answer fail (the connection is gone). */
  fail(err: Error): void {
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  /** Plans the next refresh: `refreshAhead` before the token (or the server's deadline) ends. */
  schedule(expiresAt?: number | null): void {
    this.stop();
    const o = this.owner.options;
    if (!o.getToken) return;
    const server = this.owner.serverInfo["token_expires_at"];
    const exp = expiresAt ?? (this.token ? tokenExpiry(this.token) : null) ?? (typeof server === "number" ? server : null);
    if (exp === null) return;
    const left = exp - Date.now();
    const wait = Math.max(0, left > o.refreshAhead ? left - o.refreshAhead : left / 2);
    this.timer = setTimeout(() => void this.auto(exp), wait);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private async auto(exp: number): Promise<void> {
    if (!this.owner.connected) return;
    try {
      const r = await this.refresh();
      this.owner.emit(localEvent("token_refresh", { success: true, expires_at: r.expiresAt }));
      this.schedule(r.expiresAt);
    } catch (e) {
      this.owner.emit(localEvent("token_refresh", { success: false, error: (e as Error).message }));
      if (!this.owner.connected) return;
      // Try again while there is time; the server's 4401 and a reconnect remain the backstop.
      const left = exp - Date.now();
      if (left > 200) this.timer = setTimeout(() => void this.auto(exp), Math.min(5_000, left / 2));
    }
  }
}
