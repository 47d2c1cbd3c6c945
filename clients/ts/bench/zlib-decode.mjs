// `C:` frame decoding alone, in Node: frames/s and CPU per frame, through the codec of a built
// package (default ./dist; `npm run build` first). Not a test: run it on a quiet machine.
//
//   node bench/zlib-decode.mjs [--dist DIR] [--count 20000] [--size 2000]
//
// Frames are what bench/peers/wse_app.py sends for bench/ts_client.py's zlib format (at commit 912dcac) (an event
// `{"s": n, "d": "xxx..."}` of about `size` bytes, zlib-compressed, after "C:"). Paths:
// `decodeFrame` as the client calls it (node:zlib when the codec has it, else
// DecompressionStream), and `inflateStream` (DecompressionStream, the browsers' path) when the
// codec exports it, else its `inflate` (which was DecompressionStream).
import { deflateSync } from "node:zlib";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const arg = (k, d) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const dist = resolve(arg("dist", "dist"));
const count = Number(arg("count", 20000));
const size = Number(arg("size", 2000));
const codec = await import(pathToFileURL(`${dist}/codec.js`).href);
const zlibLoaded = codec.loadZlib ? await codec.loadZlib() : false;

const frames = [];
for (let s = 0; s < count; s++) {
  const env = JSON.stringify({ c: "U", t: "tick", tp: "bench", p: { s, d: "x".repeat(Math.max(0, size - 60)) } });
  frames.push(new Uint8Array([0x43, 0x3a, ...deflateSync(Buffer.from(env))]));
}

async function run(name, decode) {
  for (let i = 0; i < 500; i++) await decode(frames[i % frames.length]); // warm-up
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let expect = 0;
  for (const f of frames) {
    const r = decode(f);
    const msg = r instanceof Promise ? await r : r;
    if (msg.p.s !== expect++) throw new Error("out of order");
  }
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const cpu = (c.user + c.system) / 1e6;
  console.log(JSON.stringify({ dist, path: name, frames: count, size, frames_per_s: Math.round(count / wall), cpu_us_per_frame: +((cpu / count) * 1e6).toFixed(1) }));
}

await run(zlibLoaded ? "decodeFrame (node:zlib)" : "decodeFrame (DecompressionStream)", (f) => codec.decodeFrame(f));
const stream = codec.inflateStream ?? codec.inflate;
await run("DecompressionStream", (f) => stream(f.subarray(2)).then(codec.parseJson));
