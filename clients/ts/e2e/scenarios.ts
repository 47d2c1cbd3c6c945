/**
 * End-to-end scenarios, run unchanged in headless Chromium and in Node against a real server
 * (started by tests/ts/test_ts_e2e.py). Each throws on a failed check and returns what it saw.
 */
import { AuthError, WSEClient, connect, type ClientOptions, type WSEEvent } from "../src/index.js";

export interface Env {
  /** ws://127.0.0.1:PORT/wse */
  engine: string;
  /** http://127.0.0.1:PORT/token: ?sub=&exp_in= answers a JWT signed with the server's secret. */
  tokenUrl: string;
  /** Where this runs: "browser" or "node". */
  where: "browser" | "node";
  /** The server is the published wse-server 2.5.1 (no token refresh, expiry, ...). */
  reference?: boolean;
}

type Result = Record<string, unknown>;

function check(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function waitFor(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function token(env: Env, sub = "user-1", expIn = 300): Promise<string> {
  const r = await fetch(`${env.tokenUrl}?sub=${encodeURIComponent(sub)}&exp_in=${expIn}`);
  check(r.ok, `token endpoint answered ${r.status}`);
  return r.text();
}

function base(env: Env): ClientOptions {
  return { tokenIn: env.where === "browser" ? "query" : "header", requestTimeout: 15_000 };
}

const uniq = () => Math.random().toString(36).slice(2, 10);

/** Receives `count` publications of `topic` (type `pub`), `{i}` in order, via `for await`. */
async function collect(c: WSEClient, count: number, onEach?: (i: number) => void): Promise<number[]> {
  const seen: number[] = [];
  for await (const ev of c as AsyncIterable<WSEEvent<{ i: number }>>) {
    if (ev.type === "recovery_gap") throw new Error(`gap reported: ${JSON.stringify(ev.payload)}`);
    if (ev.type !== "pub") continue;
    seen.push(ev.payload.i);
    onEach?.(ev.payload.i);
    if (seen.length >= count) break;
  }
  return seen;
}

function inOrder(seen: number[], count: number): void {
  check(seen.length === count, `received ${seen.length} of ${count}`);
  for (let i = 0; i < count; i++) check(seen[i] === i, `publication ${i} in place (got ${seen[i]})`);
}

export const scenarios: Record<string, (env: Env) => Promise<Result>> = {
  /** The token in the access_token cookie (set on document.cookie in a browser, a header in Node). */
  async cookie_token(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env, "cookie-user"), tokenIn: "cookie" });
    try {
      const r = await c.request<{ user?: string; echo: { x: number } }>("rpc", { x: 1 });
      check(r.payload.echo.x === 1, "the request was answered");
      const user = r.payload.user ?? c.serverInfo["user_id"]; // the reference's rpc does not say
      check(user === "cookie-user", `the server saw user ${user}`);
      return { user, serverUser: c.serverInfo["user_id"] };
    } finally {
      c.close();
      // The engine prefers the cookie to ?token=: later scenarios must not send this one.
      if (env.where === "browser") document.cookie = "access_token=; Max-Age=0; path=/";
    }
  },

  /** The token in ?token= (the server has JWTConfig.query_param on). */
  async query_token(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env, "query-user"), tokenIn: "query" });
    try {
      const r = await c.request<{ user: string }>("rpc", {});
      check(r.payload.user === "query-user", `the server saw user ${r.payload.user}`);
      return { user: r.payload.user };
    } finally {
      c.close();
    }
  },

  /** 10,000 publications, in order, none lost. */
  async ordered_10k(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env) });
    try {
      const topic = `bulk-${uniq()}`;
      const ack = await c.subscribe(topic);
      check(ack.ok, "subscribed");
      const got = collect(c, 10_000);
      c.send("publish", { topic, count: 10_000 });
      const seen = await got;
      inOrder(seen, 10_000);
      check(c.stats.duplicates === 0 && c.stats.gaps === 0, "no duplicates, no gaps");
      return { received: seen.length, framesBinary: c.stats.framesBinary };
    } finally {
      c.close();
    }
  },

  /** E2E: sealed request and publications both ways, across key rotations. */
  async encrypted(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env), encryption: true });
    try {
      check(c.encrypted, "encrypted");
      const text = "héllo ✓ ".repeat(20);
      const r = await c.request<{ echo: { text: string } }>("rpc", { text });
      check(r.payload.echo.text === text, "the sealed echo came back intact");
      const topic = `sealed-${uniq()}`;
      await c.subscribe(topic);
      // A second encrypted subscriber: a burst to both is sealed once (batch keys, G: frames) by ours.
      const c2 = await connect(env.engine, { ...base(env), token: await token(env), encryption: true });
      let batchKeys = 0;
      try {
        await c2.subscribe(topic);
        const got = collect(c, 200);
        const got2 = collect(c2, 200);
        c.send("publish", { topic, count: 200 });
        inOrder(await got, 200);
        inOrder(await got2, 200);
        check(c.stats.framesEncrypted > 200, `frames were sealed (${c.stats.framesEncrypted})`);
        check(c.stats.badFrames === 0 && c2.stats.badFrames === 0, "no frame failed to open");
        batchKeys = Math.min(c.stats.batchKeys, c2.stats.batchKeys);
        if (!env.reference) check(batchKeys >= 1, `the burst came under batch keys (${c.stats.batchKeys}, ${c2.stats.batchKeys})`);
      } finally {
        c2.close();
      }
      let rotated = 0;
      if (!env.reference) {
        // The server rotates the key every second here: go on across two rotations.
        await waitFor(() => c.keyGeneration >= 2, "two key rotations");
        rotated = c.keyGeneration;
        const again = await c.request<{ echo: { n: number } }>("rpc", { n: 2 });
        check(again.payload.echo.n === 2, "a request under the rotated key");
        const more = collect(c, 50);
        c.send("publish", { topic, count: 50 });
        inOrder(await more, 50);
      }
      return { framesEncrypted: c.stats.framesEncrypted, generation: rotated, batchKeys };
    } finally {
      c.close();
    }
  },

  /** C: zlib both ways: a large request goes compressed, the large reply comes compressed. */
  async compressed(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env), compression: true, compressThreshold: 256 });
    try {
      const blob = "the quick brown fox jumps over the lazy dog ".repeat(200);
      const r = await c.request<{ echo: { blob: string } }>("rpc", { blob });
      check(r.payload.echo.blob === blob, "the compressed echo came back intact");
      check(c.stats.framesZlib >= 1, `the reply came as C: (${c.stats.framesZlib})`);
      return { framesZlib: c.stats.framesZlib, bytes: blob.length };
    } finally {
      c.close();
    }
  },

  /** M: msgpack both ways. */
  async msgpack(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env), msgpack: true, sendFormat: "msgpack" });
    try {
      const r = await c.request<{ echo: { v: unknown } }>("rpc", { v: { a: [1, 2.5, "x", true, null] } });
      check(JSON.stringify(r.payload.echo.v) === JSON.stringify({ a: [1, 2.5, "x", true, null] }), "msgpack echo intact");
      const topic = `mp-${uniq()}`;
      await c.subscribe(topic);
      const got = collect(c, 100);
      c.send("publish", { topic, count: 100 });
      inOrder(await got, 100);
      check(c.stats.framesMsgpack > 100, `frames were msgpack (${c.stats.framesMsgpack})`);
      return { framesMsgpack: c.stats.framesMsgpack };
    } finally {
      c.close();
    }
  },

  /** The server drops the connection mid-stream; every publication arrives exactly once. */
  async drop_recover(env) {
    const c = await connect(env.engine, { ...base(env), getToken: () => token(env), backoffInitial: 100 });
    try {
      const topic = `stream-${uniq()}`;
      await c.subscribe(topic);
      const total = 3000;
      let kicked = false;
      const got = collect(c, total, (i) => {
        if (i === 500 && !kicked) {
          kicked = true;
          c.send("kick", { code: 1011 });
        }
      });
      c.send("stream", { topic, count: total, interval: 0.001 });
      const seen = await got;
      inOrder(seen, total);
      check(c.stats.reconnects >= 1, "the client reconnected");
      check(c.stats.gaps === 0, "no gap");
      return { reconnects: c.stats.reconnects, duplicatesDropped: c.stats.duplicates, received: seen.length };
    } finally {
      c.close();
    }
  },

  /** Tokens that live 3 s, refreshed ahead of expiry: the same connection outlives several. */
  async token_refresh(env) {
    const c = await connect(env.engine, { ...base(env), getToken: () => token(env, "refresher", 3), refreshAhead: 2_000 });
    try {
      const first = c.serverInfo["token_expires_at"];
      check(typeof first === "number", "server_ready gives token_expires_at");
      await waitFor(() => Date.now() > (first as number) + 2_500 && c.stats.tokenRefreshes >= 2, "past the first token's expiry");
      check(c.connected && c.stats.reconnects === 0, "still the same connection");
      const r = await c.request<{ user: string }>("rpc", {});
      check(r.payload.user === "refresher", "requests still work");
      return { refreshes: c.stats.tokenRefreshes, reconnects: c.stats.reconnects };
    } finally {
      c.close();
    }
  },

  /** Browser: sends made while offline wait in IndexedDB and go out from the next client. */
  async offline_queue_indexeddb(env) {
    check(env.where === "browser", "IndexedDB is a browser feature");
    const db = `wse-e2e-${uniq()}`;
    // A client that never connected (as if the page went offline, then was closed).
    const offline = new WSEClient(env.engine, { ...base(env), sendQueue: { persist: db } });
    check(offline.send("rpc", { persisted: 1 }, { cid: "persisted-1" }) === "queued", "queued while offline");
    check(offline.send("rpc", { persisted: 2 }, { cid: "persisted-2" }) === "queued", "queued while offline");
    await offline.persisted();
    offline.close();
    // The next page load: the same queue name, now online.
    const replies: string[] = [];
    const c = new WSEClient(env.engine, { ...base(env), token: await token(env, "queued-user"), sendQueue: { persist: db } });
    c.on("rpc.reply", (e) => replies.push(String(e.cid)));
    await c.connect();
    try {
      await waitFor(() => replies.length === 2, "the persisted messages' replies");
      check(replies.join() === "persisted-1,persisted-2", `in order (${replies})`);
      return { replies };
    } finally {
      c.close();
    }
  },

  /** A token that expires (and no getToken): the server closes with 4401 and the client stops. */
  async token_expired(env) {
    const c = await connect(env.engine, { ...base(env), token: await token(env, "shortlived", 2) });
    const r = await c.request<{ user: string }>("rpc", {});
    check(r.payload.user === "shortlived", "connected first");
    await waitFor(() => c.closed, "the server to close the connection", 15_000);
    const err = c.error;
    check(err instanceof AuthError, `closed with an AuthError (${err})`);
    check(err.reason === "expired", `reason expired (${err.reason})`);
    return { error: err.message };
  },
};

export async function run(name: string, env: Env): Promise<{ name: string; ok: boolean; result?: Result; error?: string }> {
  const f = scenarios[name];
  if (!f) return { name, ok: false, error: `no scenario ${name}` };
  try {
    return { name, ok: true, result: await f(env) };
  } catch (e) {
    return { name, ok: false, error: String((e as Error)?.stack ?? e) };
  }
}
