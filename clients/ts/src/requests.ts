/** Requests with a `cid`: each waits for the reply carrying its cid, or its timeout. */
import { TimeoutError } from "./errors.js";
import { WSEEvent, type Envelope } from "./events.js";
import { deferred, newCid, type Pending } from "./util.js";

export class Requests {
  private pending = new Map<string, Pending<WSEEvent> & { timer: ReturnType<typeof setTimeout> }>();

  /** A new request: its cid, the reply (TimeoutError after `timeout` ms), and `done()` to forget it. */
  start(type: string, timeout: number): { cid: string; reply: Promise<WSEEvent>; done: () => void } {
    const cid = newCid();
    const d = deferred<WSEEvent>();
    const timer = setTimeout(() => {
      this.pending.delete(cid);
      d.reject(new TimeoutError(`request ${type}: no reply within ${timeout} ms`));
    }, timeout);
    this.pending.set(cid, { ...d, timer });
    const done = () => {
      clearTimeout(timer);
      this.pending.delete(cid);
    };
    return { cid, reply: d.promise, done };
  }

  /** The reply to a waiting request: resolves it (true), or false if no request has its cid. */
  answer(msg: Envelope): boolean {
    const cid = msg.cid;
    if (typeof cid !== "string") return false;
    const p = this.pending.get(cid);
    if (!p) return false;
    this.pending.delete(cid);
    clearTimeout(p.timer);
    p.resolve(new WSEEvent(msg));
    return true;
  }

  /** Every waiting request fails with `err`. */
  fail(err: Error): void {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }
}
