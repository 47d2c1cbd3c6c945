/**
 * The TypeScript client's side of bench/ts_client.py (at commit 912dcac): one client receives a stream from
 * bench/peers/wse_app.py and times it (the same protocol as bench/client_throughput_client.py).
 */
import { connect, VERSION, type ClientOptions, type WSEEvent } from "../src/index.js";

export interface Args {
  url: string;
  format: "json" | "msgpack" | "zlib" | "e2e";
  count: number;
  size: number;
  warmup: number;
  timeout: number;
  where: string;
}

export async function throughput(a: Args): Promise<Record<string, unknown>> {
  const opts: ClientOptions = { maxQueue: a.count + a.warmup + 100, requestTimeout: 30_000 };
  let url = a.url;
  if (a.format === "msgpack") opts.msgpack = true;
  if (a.format === "e2e") opts.encryption = true;
  if (a.format === "zlib") url += (url.includes("?") ? "&" : "?") + "compression=true";
  const c = await connect(url, opts);
  try {
    await c.subscribe("bench");
    const it = c[Symbol.asyncIterator]();
    const receive = async (n: number): Promise<[number, number]> => {
      let got = 0, bad = 0, expect = 0;
      const end = Date.now() + a.timeout * 1000;
      while (got < n && Date.now() < end) {
        const r = await it.next();
        if (r.done) break;
        const ev = r.value as WSEEvent<{ s: number }>;
        if (ev.type !== "tick") continue;
        if (ev.payload.s !== expect) bad++;
        expect = ev.payload.s + 1;
        got++;
      }
      return [got, bad];
    };
    c.send("bench.publish", { topic: "bench", count: a.warmup, size: a.size });
    const [warm] = await receive(a.warmup);
    if (warm !== a.warmup) throw new Error(`warm-up: received ${warm} of ${a.warmup}`);
    const cpu0 = nodeCpu();
    const t0 = performance.now();
    c.send("bench.publish", { topic: "bench", count: a.count, size: a.size });
    const [got, bad] = await receive(a.count);
    const seconds = (performance.now() - t0) / 1000;
    const cpu1 = nodeCpu();
    return {
      library: `wse-client (TS) ${VERSION} in ${a.where}`,
      format: a.format,
      received: got,
      expected: a.count,
      out_of_order: bad,
      seconds,
      msgs_per_s: got / seconds,
      client_cpu_s: cpu0 === null || cpu1 === null ? null : cpu1 - cpu0,
      frames: { zlib: c.stats.framesZlib, msgpack: c.stats.framesMsgpack, encrypted: c.stats.framesEncrypted },
    };
  } finally {
    c.close();
  }
}

function nodeCpu(): number | null {
  const p = (globalThis as { process?: { cpuUsage?: () => { user: number; system: number } } }).process;
  if (!p?.cpuUsage) return null;
  const u = p.cpuUsage();
  return (u.user + u.system) / 1e6;
}
