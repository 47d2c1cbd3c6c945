// `C:` frame inflation in headless Chromium (Debian's), two ways of driving DecompressionStream:
// `pipe` (a one-chunk ReadableStream piped through it: what the client did) and `writer` (the
// chunk written straight to its writable side: what codec.ts does now), each one frame after
// another and all started at once. Frames/s; not a test: run it on a quiet machine.
//
//   node bench/zlib-decode-browser.mjs [--count 5000] [--size 2000]
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const arg = (k, d) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const count = Number(arg("count", 5000));
const size = Number(arg("size", 2000));
const frames = [];
for (let s = 0; s < count; s++) {
  const env = JSON.stringify({ c: "U", t: "tick", tp: "bench", p: { s, d: "x".repeat(Math.max(0, size - 60)) } });
  frames.push([...deflateSync(Buffer.from(env))]);
}
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  const out = await page.evaluate(async (arrays) => {
    const frames = arrays.map((a) => new Uint8Array(a));
    async function drain(readable) {
      const r = readable.getReader();
      const chunks = [];
      let total = 0;
      for (;;) {
        const { value, done } = await r.read();
        if (done) break;
        total += value.length;
        chunks.push(value);
      }
      if (chunks.length === 1) return chunks[0];
      const o = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        o.set(c, at);
        at += c.length;
      }
      return o;
    }
    const ways = {
      pipe: (d) => drain(new ReadableStream({ start(c) { c.enqueue(d); c.close(); } }).pipeThrough(new DecompressionStream("deflate"))),
      writer: (d) => {
        const ds = new DecompressionStream("deflate");
        const w = ds.writable.getWriter();
        w.write(d).catch(() => undefined);
        w.close().catch(() => undefined);
        return drain(ds.readable);
      },
    };
    const dec = new TextDecoder();
    const res = {};
    for (const round of [0, 1]) {
      for (const [name, f] of Object.entries(ways)) {
        let t0 = performance.now();
        for (const fr of frames) JSON.parse(dec.decode(await f(fr)));
        const oneByOne = frames.length / ((performance.now() - t0) / 1000);
        t0 = performance.now();
        for (const p of frames.map(f)) JSON.parse(dec.decode(await p));
        const allAtOnce = frames.length / ((performance.now() - t0) / 1000);
        if (round) res[name] = { one_by_one: Math.round(oneByOne), all_at_once: Math.round(allAtOnce) }; // round 0 warms up
      }
    }
    return res;
  }, frames);
  console.log(JSON.stringify({ browser: browser.version(), frames: count, size, frames_per_s: out }));
} finally {
  await browser.close();
}
