/**
 * What `send` holds while disconnected: a bounded FIFO with a policy for when it is full, and
 * (in browsers, optionally) a copy in IndexedDB so that a reload does not lose it.
 */
import { QueueFull } from "./errors.js";
import type { Envelope } from "./events.js";

/** When the queue is full: drop the oldest message, drop the new one, or reject the send. */
export type QueuePolicy = "drop_oldest" | "drop_newest" | "reject";

export interface SendQueueOptions {
  /** Most messages held (1,000; 0: no queue, sends while disconnected are rejected). */
  max: number;
  policy: QueuePolicy;
  /** An IndexedDB database name to persist the queue in (browsers only). */
  persist?: string | undefined;
}

interface Stored {
  key?: number;
  env: Envelope;
  /** Settles once the IndexedDB copy exists (or failed). */
  saved?: Promise<void>;
}

export class SendQueue {
  private items: Stored[] = [];
  dropped = 0;
  private db: Promise<IDBDatabase | null> | null = null;

  constructor(readonly opts: SendQueueOptions) {
    if (opts.persist && typeof indexedDB !== "undefined") this.db = openDb(opts.persist);
  }

  get length(): number {
    return this.items.length;
  }

  /** Adds a message; false when the policy dropped the new one; throws QueueFull for `reject`. */
  push(env: Envelope): boolean {
    if (this.items.length >= this.opts.max) {
      if (this.opts.policy === "reject" || this.opts.max === 0) {
        throw new QueueFull(`offline send queue full (${this.opts.max} messages)`);
      }
      this.dropped++;
      if (this.opts.policy === "drop_newest") return false;
      const old = this.items.shift();
      if (old) void this.forget(old);
    }
    const item: Stored = { env };
    this.items.push(item);
    if (this.db) item.saved = this.store(item);
    return true;
  }

  /** Resolves once every held message's IndexedDB copy is written. */
  async settled(): Promise<void> {
    await Promise.all(this.items.map((i) => i.saved));
  }

  /** Takes every held message, oldest first. */
  drain(): Envelope[] {
    const out = this.items;
    this.items = [];
    for (const it of out) void this.forget(it);
    return out.map((i) => i.env);
  }

  /** Loads what a previous page left in IndexedDB (ahead of anything queued since). */
  async restore(): Promise<number> {
    const db = await this.db;
    if (!db) return 0;
    const saved = await new Promise<Stored[]>((resolve) => {
      const req = db.transaction("q", "readonly").objectStore("q").getAll();
      req.onsuccess = () => resolve(req.result as Stored[]);
      req.onerror = () => resolve([]);
    });
    await Promise.all(this.items.map((i) => i.saved));
    const known = new Set(this.items.map((i) => i.key));
    const fresh = saved.filter((s) => !known.has(s.key));
    for (const f of fresh) f.saved = Promise.resolve();
    this.items = [...fresh, ...this.items].slice(-Math.max(this.opts.max, 0));
    return fresh.length;
  }

  private async store(item: Stored): Promise<void> {
    const db = await this.db;
    if (!db) return;
    await new Promise<void>((resolve) => {
      const req = db.transaction("q", "readwrite").objectStore("q").add({ env: item.env });
      req.onsuccess = () => {
        item.key = req.result as number;
        resolve();
      };
      req.onerror = () => resolve();
    });
  }

  private async forget(item: Stored): Promise<void> {
    const db = await this.db;
    if (!db) return;
    await item.saved; // the add may be in flight
    if (item.key === undefined) return;
    db.transaction("q", "readwrite").objectStore("q").delete(item.key);
  }
}

function openDb(name: string): Promise<IDBDatabase | null> {
  return new Promise((resolve) => {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore("q", { keyPath: "key", autoIncrement: true });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null);
  });
}
