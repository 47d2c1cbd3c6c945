/** A WebSocket stand-in for the state-machine tests: the test plays the server. */
import type { WebSocketLike } from "../src/options.js";

export class FakeWS implements WebSocketLike {
  static all: FakeWS[] = [];
  static get last(): FakeWS {
    const w = FakeWS.all[FakeWS.all.length - 1];
    if (!w) throw new Error("no socket yet");
    return w;
  }
  readyState = 0;
  binaryType = "blob";
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: Record<string, any>[] = [];
  closedWith: number | null = null;
  constructor(readonly url: string, readonly protocols?: unknown, readonly options?: any) {
    FakeWS.all.push(this);
  }
  send(data: string | ArrayBufferLike | Uint8Array): void {
    if (typeof data !== "string") throw new Error("the fake takes JSON text only");
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000): void {
    this.closedWith = code;
    this.readyState = 3;
  }
  // ---- the test's side ----
  accept(details: Record<string, unknown> = {}): void {
    this.readyState = 1;
    this.onopen?.({});
    this.push({ c: "WSE", t: "server_ready", p: { details: { features: { recovery: true }, ...details } } });
  }
  /** Answers the client_hello. */
  hello(p: Record<string, unknown> = {}): void {
    this.push({ c: "WSE", t: "server_hello", p: { features: {}, ...p } });
  }
  push(env: unknown): void {
    this.onmessage?.({ data: JSON.stringify(env) });
  }
  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  ofType(t: string): Record<string, any>[] {
    return this.sent.filter((m) => m["t"] === t);
  }
  lastOf(t: string): Record<string, any> {
    const all = this.ofType(t);
    const m = all[all.length - 1];
    if (!m) throw new Error(`nothing of type ${t} sent`);
    return m;
  }
}

/** Lets pending promise callbacks run (no timers). */
export async function flush(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}
