/**
 * The client's events: handlers registered with `on()`, and the bounded queue behind
 * `for await` / `recv()` with its overflow policy.
 */
import { ConnectionLost, WSEError } from "./errors.js";
import { OVERFLOW, WSEEvent } from "./events.js";
import type { OverflowPolicy } from "./options.js";
import { deferred, withTimeout, type Pending } from "./util.js";

export type Handler<P = unknown> = (event: WSEEvent<P>) => void;

/** What the stream needs from its client. */
export interface StreamOwner {
  /** Why the client gave up, or null. */
  readonly lostError: Error | null;
  /** `close()` was called. */
  readonly isClosing: boolean;
  /** The receive queue overflowed under the `error` policy. */
  giveUp(err: Error): void;
  /** Counters: every event delivered, events the queue dropped. */
  readonly stats: { received: number; dropped: number };
}

/** An event the client makes itself (category WSE). */
export function localEvent(type: string, payload: unknown): WSEEvent {
  return new WSEEvent({ c: "WSE", t: type, p: payload });
}

export class EventStream {
  private handlers = new Map<string, Set<Handler<any>>>();
  private queue: WSEEvent[] = [];
  private iterating = false;
  private overflowing = false;
  private waiter: Pending<void> | null = null;

  constructor(
    private readonly owner: StreamOwner,
    private readonly maxQueue: number,
    private readonly overflow: OverflowPolicy,
  ) {}

  on<P = unknown>(type: string, handler: Handler<P>): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => this.off(type, handler);
  }

  off<P = unknown>(type: string, handler: Handler<P>): void {
    this.handlers.get(type)?.delete(handler);
  }

  iterator(): AsyncIterator<WSEEvent> {
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
        if (this.overflowing && this.queue.length <= this.maxQueue / 2) this.overflowing = false;
        return { value: ev, done: false };
      }
      if (this.owner.lostError) throw this.owner.lostError;
      if (this.owner.isClosing) return { value: undefined, done: true };
      const w = deferred<void>();
      this.waiter = w;
      await w.promise;
    }
  }

  /** Lets a waiting `next()` look again (an event, or the end). */
  wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.resolve();
  }

  /** To the handlers only. */
  emit(ev: WSEEvent): void {
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

  /** To the handlers and the iteration queue (`always`: even past the queue's bound). */
  deliver(ev: WSEEvent, always = false): void {
    this.owner.stats.received++;
    this.emit(ev);
    if (!this.iterating) return;
    const q = this.queue;
    if (q.length >= this.maxQueue && !always) {
      this.owner.stats.dropped++;
      if (this.overflow === "error") {
        this.owner.giveUp(new WSEError(`receive queue full (${this.maxQueue} events)`));
        return;
      }
      if (this.overflow === "drop_newest") {
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
    this.emit(localEvent(OVERFLOW, { policy: this.overflow, dropped: this.owner.stats.dropped }));
  }
}
