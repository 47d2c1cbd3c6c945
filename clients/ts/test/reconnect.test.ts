import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { WSEClient, backoffDelay, AuthError, ConnectionLost, QueueFull, type WSEEvent } from "../src/index.js";
import { FakeWS, flush } from "./fakews.js";

const opts = { WebSocket: FakeWS as any, tokenIn: "query" as const, random: () => 1, helloTimeout: 1000 };

/** Starts a client and plays the server's side of the handshake. */
async function open(extra: Record<string, unknown> = {}): Promise<WSEClient> {
  const c = new WSEClient("ws://h/wse", { ...opts, ...extra });
  const p = c.connect();
  await flush();
  FakeWS.last.accept();
  await flush();
  FakeWS.last.hello();
  await p;
  return c;
}

function ack(ws: FakeWS, topics: string[], recovery: Record<string, unknown> = {}, failed: string[] = []): void {
  ws.push({ c: "WSE", t: "subscription_update", p: { action: "subscribe", success: !failed.length, success_topics: topics, failed_topics: failed, errors: {}, topics, recovery } });
}

function pub(ws: FakeWS, topic: string, epoch: string, o: number): void {
  ws.push({ c: "U", t: "pub", tp: topic, e: epoch, o, seq: o, p: { i: o } });
}

beforeEach(() => {
  FakeWS.all = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("backoff", () => {
  it("grows exponentially, is capped, and jitters within [d/2, d]", () => {
    const o = { backoffInitial: 250, backoffFactor: 2, backoffMax: 30_000 };
    expect(backoffDelay(0, o, () => 1)).toBe(250);
    expect(backoffDelay(0, o, () => 0)).toBe(125);
    expect(backoffDelay(3, o, () => 1)).toBe(2000);
    expect(backoffDelay(20, o, () => 1)).toBe(30_000);
    expect(backoffDelay(1000, o, () => 0)).toBe(15_000);
  });
});

describe("the reconnect state machine", () => {
  it("reconnects after the backoff, resubscribes with recovery, drops duplicates", async () => {
    const c = await open();
    const states: string[] = [];
    c.on<{ state: string }>("state", (e) => states.push(e.payload.state));
    const got: number[] = [];
    c.on<{ i: number }>("pub", (e) => got.push(e.payload.i));
    const ws1 = FakeWS.last;
    const sub = c.subscribe("news");
    await flush();
    expect(ws1.lastOf("subscription_update").p).toEqual({ action: "subscribe", topics: ["news"] });
    ack(ws1, ["news"], { news: { epoch: "e1", offset: 0 } });
    expect((await sub).successTopics).toEqual(["news"]);
    for (let i = 1; i <= 3; i++) pub(ws1, "news", "e1", i);
    ws1.drop(1006);
    expect(c.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(249);
    expect(FakeWS.all).toHaveLength(1); // backoffInitial with jitter 1: 250 ms
    await vi.advanceTimersByTimeAsync(1);
    const ws2 = FakeWS.last;
    expect(ws2).not.toBe(ws1);
    ws2.accept();
    await flush();
    ws2.hello();
    await flush();
    expect(ws2.lastOf("subscription_update").p).toEqual({
      action: "subscribe", topics: ["news"], recover: true, recovery: { news: { epoch: "e1", offset: 3 } },
    });
    // The replay overlaps what was seen: 3 is a duplicate.
    for (const o of [3, 4, 5]) pub(ws2, "news", "e1", o);
    ack(ws2, ["news"], { news: { epoch: "e1", offset: 5, recovered: true, count: 2 } });
    await vi.advanceTimersByTimeAsync(0);
    expect(c.state).toBe("open");
    expect(got).toEqual([1, 2, 3, 4, 5]);
    expect(c.stats.duplicates).toBe(1);
    expect(c.stats.reconnects).toBe(1);
    expect(states).toEqual(["reconnecting", "open"]);
    c.close();
  });

  it("backs off exponentially between failed attempts and gives up after maxReconnectAttempts", async () => {
    const c = await open({ maxReconnectAttempts: 3 });
    const closed: WSEEvent[] = [];
    c.on("closed", (e) => closed.push(e));
    FakeWS.last.drop(1006);
    const delays = [250, 500, 1000];
    for (const d of delays) {
      const n = FakeWS.all.length;
      await vi.advanceTimersByTimeAsync(d - 1);
      expect(FakeWS.all).toHaveLength(n);
      await vi.advanceTimersByTimeAsync(1);
      expect(FakeWS.all).toHaveLength(n + 1);
      FakeWS.last.drop(1006); // the attempt fails
      await flush();
    }
    expect(c.state).toBe("closed");
    expect(c.error).toBeInstanceOf(ConnectionLost);
    expect(closed).toHaveLength(1);
    await expect(c.recv()).rejects.toBeInstanceOf(ConnectionLost);
  });

  it("reports gaps: an offset jump, a topic the server could not recover, one with no recovery", async () => {
    const c = await open();
    const gaps: any[] = [];
    c.on("recovery_gap", (e) => gaps.push(e.payload));
    const ws1 = FakeWS.last;
    const s = c.subscribe(["a", "b"]);
    await flush();
    ack(ws1, ["a", "b"], { a: { epoch: "ea", offset: 0 } });
    await s;
    pub(ws1, "a", "ea", 1);
    pub(ws1, "a", "ea", 4);
    expect(gaps[0]).toMatchObject({ topic: "a", reason: "missed", offset: 1, server_offset: 3 });
    ws1.drop(1006);
    await vi.advanceTimersByTimeAsync(250);
    const ws2 = FakeWS.last;
    ws2.accept();
    await flush();
    ws2.hello();
    await flush();
    ack(ws2, ["a", "b"], { a: { epoch: "ea2", offset: 0, recovered: false, count: 0 } });
    await vi.advanceTimersByTimeAsync(0);
    expect(gaps.slice(1)).toEqual([
      { topic: "a", epoch: "ea", offset: 4, reason: "not_recovered", server_epoch: "ea2", server_offset: 0 },
      { topic: "b", epoch: null, offset: null, reason: "no_recovery", server_epoch: null, server_offset: null },
    ]);
    expect(c.stats.gaps).toBe(3);
    c.close();
  });

  it("a 4401 without getToken is final; with getToken it fetches a fresh token and reconnects", async () => {
    const c = await open({ token: "t0" });
    FakeWS.last.drop(4401, "expired");
    expect(c.state).toBe("closed");
    expect(c.error).toBeInstanceOf(AuthError);

    let n = 0;
    const getToken = vi.fn(async () => `t${++n}`);
    const d = new WSEClient("ws://h/wse", { ...opts, getToken });
    const p = d.connect();
    await flush();
    expect(FakeWS.last.url).toContain("token=t1");
    FakeWS.last.accept();
    await flush();
    FakeWS.last.hello();
    await p;
    FakeWS.last.drop(4401, "expired");
    expect(d.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWS.last.url).toContain("token=t2");
    expect(getToken).toHaveBeenCalledTimes(2);
    // t2 refused at the handshake: one more fresh token (t3); refused too: final.
    FakeWS.last.accept();
    FakeWS.last.drop(4401, "signature");
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeWS.last.url).toContain("token=t3");
    FakeWS.last.accept();
    FakeWS.last.drop(4401, "signature");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWS.last.url).toContain("token=t3");
    expect(d.state).toBe("closed");
    expect(d.error).toBeInstanceOf(AuthError);
  });

  it("refreshes the token ahead of expiry with auth_refresh, on the same connection", async () => {
    const now = Date.now();
    const jwt = (exp: number) => `h.${Buffer.from(JSON.stringify({ sub: "u", exp })).toString("base64url")}.s`;
    let next = Math.floor(now / 1000) + 60;
    const getToken = vi.fn(async () => jwt(next));
    const c = await open({ getToken, refreshAhead: 10_000 });
    const ws = FakeWS.last;
    expect(ws.ofType("auth_refresh")).toHaveLength(0);
    next += 60;
    await vi.advanceTimersByTimeAsync(next * 1000 - 60_000 - now - 10_000 - 5);
    expect(ws.ofType("auth_refresh")).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(10);
    await flush();
    expect(ws.lastOf("auth_refresh").p).toEqual({ token: jwt(next) });
    ws.push({ c: "WSE", t: "auth_refresh", p: { success: true, expires_at: next * 1000 } });
    await flush();
    expect(c.stats.tokenRefreshes).toBe(1);
    expect(FakeWS.all).toHaveLength(1);
    c.close();
  });

  it("holds sends while disconnected, with a bounded queue and its policies", async () => {
    const c = await open({ sendQueue: { max: 2, policy: "drop_oldest" } });
    FakeWS.last.drop(1006);
    expect(c.send("m", { n: 1 })).toBe("queued");
    expect(c.send("m", { n: 2 })).toBe("queued");
    expect(c.send("m", { n: 3 })).toBe("queued"); // 1 dropped
    expect(c.stats.droppedSends).toBe(1);
    await vi.advanceTimersByTimeAsync(250);
    FakeWS.last.accept();
    await flush();
    FakeWS.last.hello();
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeWS.last.ofType("m").map((m) => m.p.n)).toEqual([2, 3]);
    c.close();

    const r = await open({ sendQueue: { max: 1, policy: "reject" } });
    FakeWS.last.drop(1006);
    r.send("m", {});
    expect(() => r.send("m", {})).toThrow(QueueFull);
    r.close();
    const n = await open({ sendQueue: { max: 1, policy: "drop_newest" } });
    FakeWS.last.drop(1006);
    expect(n.send("m", {})).toBe("queued");
    expect(n.send("m", {})).toBe("dropped");
    n.close();
  });

  it("pings, and drops a connection silent past deadTimeout", async () => {
    const c = await open({ pingInterval: 1000, deadTimeout: 3000 });
    const ws = FakeWS.last;
    await vi.advanceTimersByTimeAsync(1000);
    const ping = ws.lastOf("ping");
    ws.push({ c: "WSE", t: "PONG", p: { client_timestamp: ping.p.timestamp } });
    expect(c.latency).toBe(0);
    ws.push({ c: "WSE", t: "ping", p: { server_time: 1 } });
    expect(ws.lastOf("PONG").p.server_time).toBe(1);
    await vi.advanceTimersByTimeAsync(2900);
    expect(ws.closedWith).toBe(null);
    await vi.advanceTimersByTimeAsync(400); // the keepalive checks every deadTimeout/4
    expect(ws.closedWith).toBe(4000);
    expect(c.state).toBe("reconnecting");
    c.close();
  });

  it("matches requests to replies by cid and times them out", async () => {
    const c = await open();
    const ws = FakeWS.last;
    const r = c.request("rpc", { x: 1 }, { timeout: 500 });
    await flush();
    const cid = ws.lastOf("rpc").cid;
    ws.push({ t: "rpc.reply", cid, p: { ok: true } });
    expect((await r).payload).toEqual({ ok: true });
    const f = c.request("rpc.fail");
    await flush();
    ws.push({ c: "WSE", t: "error", cid: ws.lastOf("rpc.fail").cid, p: { code: "NOPE", message: "no" } });
    await expect(f).rejects.toThrow("NOPE: no");
    const t = c.request("rpc.silent", {}, { timeout: 500 });
    const check = expect(t).rejects.toThrow(/no reply within 500/);
    await vi.advanceTimersByTimeAsync(500);
    await check;
    c.close();
  });

  it("iterates events; the receive queue drops the oldest when full", async () => {
    const c = await open({ maxQueue: 2 });
    const it = c[Symbol.asyncIterator]();
    const over: unknown[] = [];
    c.on("queue_overflow", (e) => over.push(e.payload));
    for (let i = 0; i < 4; i++) FakeWS.last.push({ t: "n", p: i });
    expect((await it.next()).value.payload).toBe(2);
    expect((await it.next()).value.payload).toBe(3);
    expect(c.stats.dropped).toBe(2);
    expect(over).toHaveLength(1);
    c.close();
    expect((await it.next()).done).toBe(true);
  });
});
