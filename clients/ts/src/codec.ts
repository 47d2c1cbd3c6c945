/**
 * Wire frames: JSON (text or binary), `C:` zlib, `M:` msgpack, `E:` encrypted, and bare zlib
 * (first byte 0x78). zlib: in Node (and runtimes with `node:zlib`), zlib's synchronous calls once
 * `loadZlib()` has loaded it, so a `C:` frame decodes without a promise; elsewhere the
 * platform's CompressionStream/DecompressionStream.
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { FrameError } from "./errors.js";
import type { Envelope } from "./events.js";

/** Largest inflated `C:` frame accepted (a bound against zlib bombs). */
export const MAX_INFLATE = 16 * 1024 * 1024;

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const C = 0x43, M = 0x4d, E = 0x45, G = 0x47, COLON = 0x3a, BRACE = 0x7b, ZLIB = 0x78;

export function utf8(s: string): Uint8Array {
  return enc.encode(s);
}

/** The kind of a binary frame, by its prefix. */
export type FrameKind = "json" | "zlib" | "msgpack" | "encrypted" | "shared";

export function kindOf(b: Uint8Array): FrameKind {
  if (b.length >= 2 && b[1] === COLON) {
    if (b[0] === E) return "encrypted";
    if (b[0] === G) return "shared";
    if (b[0] === C) return "zlib";
    if (b[0] === M) return "msgpack";
  }
  if (b[0] === ZLIB) return "zlib";
  return "json";
}

async function pump(stream: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > limit) {
        await reader.cancel().catch(() => undefined);
        throw new FrameError(`zlib frame inflates beyond ${limit} bytes`);
      }
      chunks.push(value);
    }
  } catch (e) {
    if (e instanceof FrameError) throw e;
    throw new FrameError(`bad zlib frame: ${(e as Error).message ?? e}`);
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** `node:zlib`'s synchronous calls, once loaded. */
interface NodeZlib {
  inflateSync(data: Uint8Array, opts: { maxOutputLength: number }): Uint8Array;
  deflateSync(data: Uint8Array): Uint8Array;
}

let zlib: NodeZlib | null = null;
let zlibLoading: Promise<boolean> | null = null;
const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;

/**
 * Loads `node:zlib` where there is one (Node, Deno, Bun): resolves true when the synchronous
 * path is ready. In browsers it resolves false without trying (no import a bundler would have
 * to shim). The client calls it before connecting.
 */
export function loadZlib(): Promise<boolean> {
  if (!zlibLoading) {
    zlibLoading = !proc?.versions?.node
      ? Promise.resolve(false)
      : (async () => {
          try {
            const name = "node:zlib";
            const m = (await import(/* @vite-ignore */ name)) as NodeZlib & { default?: NodeZlib };
            const z = typeof m.inflateSync === "function" ? m : m.default;
            if (z && typeof z.inflateSync === "function") zlib = z;
          } catch {
            /* not there: DecompressionStream */
          }
          return zlib !== null;
        })();
  }
  return zlibLoading;
}

/** A Node Buffer as a plain Uint8Array (same memory). */
function plain(b: Uint8Array): Uint8Array {
  return b.constructor === Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function inflateNode(z: NodeZlib, data: Uint8Array, limit: number): Uint8Array {
  try {
    // maxOutputLength stops a zlib bomb at the limit (RangeError ERR_BUFFER_TOO_LARGE).
    return plain(z.inflateSync(data, { maxOutputLength: Math.min(limit, 2 ** 31 - 1) || 1 }));
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") throw new FrameError(`zlib frame inflates beyond ${limit} bytes`);
    throw new FrameError(`bad zlib frame: ${(e as Error).message ?? e}`);
  }
}

/** Feeds `data` to a transform stream and reads what comes out (no extra source stream, no pipe). */
function through(t: { writable: WritableStream<Uint8Array>; readable: ReadableStream<Uint8Array> }, data: Uint8Array, limit: number): Promise<Uint8Array> {
  const w = t.writable.getWriter();
  // Errors surface on the readable side (pump); these are only to keep them from going unhandled.
  w.write(data).catch(() => undefined);
  w.close().catch(() => undefined);
  return pump(t.readable, limit);
}

/** zlib (RFC 1950) inflate, capped at `limit` bytes. */
export function inflate(data: Uint8Array, limit = MAX_INFLATE): Promise<Uint8Array> {
  if (zlib) {
    try {
      return Promise.resolve(inflateNode(zlib, data, limit));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  if (proc?.versions?.node && !zlibLoading) return loadZlib().then(() => inflate(data, limit));
  return inflateStream(data, limit);
}

/** zlib inflate through DecompressionStream (what browsers use), capped at `limit` bytes. */
export function inflateStream(data: Uint8Array, limit = MAX_INFLATE): Promise<Uint8Array> {
  const ds = new DecompressionStream("deflate") as unknown as ReadableWritablePair<Uint8Array, Uint8Array>;
  return through(ds, data, limit);
}

/** zlib (RFC 1950) deflate. */
export function deflate(data: Uint8Array): Promise<Uint8Array> {
  if (zlib) return Promise.resolve(plain(zlib.deflateSync(data)));
  return deflateStream(data);
}

/** zlib deflate through CompressionStream (what browsers use). */
export function deflateStream(data: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream("deflate") as unknown as ReadableWritablePair<Uint8Array, Uint8Array>;
  return through(cs, data, Infinity);
}

function stripLegacy(s: string): string {
  // v1 prefixes: WSE{, S{, U{
  const c0 = s.charCodeAt(0);
  if (c0 === BRACE) return s;
  if (s.startsWith("WSE{")) return s.slice(3);
  if (s.startsWith("S{") || s.startsWith("U{")) return s.slice(1);
  return s;
}

/** JSON text (or UTF-8 bytes) to an envelope. */
export function parseJson(data: string | Uint8Array): unknown {
  let s: string;
  try {
    s = typeof data === "string" ? data : dec.decode(data);
  } catch {
    throw new FrameError("frame is not UTF-8");
  }
  try {
    return JSON.parse(stripLegacy(s));
  } catch (e) {
    throw new FrameError(`not JSON: ${(e as Error).message}`);
  }
}

/** msgpack bytes (after `M:`) to an object. */
export function parseMsgpack(data: Uint8Array): unknown {
  try {
    return mpDecode(data, { useBigInt64: false });
  } catch (e) {
    throw new FrameError(`bad msgpack frame: ${(e as Error).message}`);
  }
}

/**
 * One frame to an object. `decrypt` opens the body of `E:` frames and `openShared` that of `G:`
 * frames (undefined: no key yet, and such a frame is an error). Synchronous frames (JSON, msgpack; zlib once `loadZlib()` has
 * resolved true) return without a promise; their errors are thrown, the others' rejected.
 */
export function decodeFrame(
  data: string | Uint8Array,
  decrypt?: (body: Uint8Array) => Promise<Uint8Array>,
  maxInflate = MAX_INFLATE,
  openShared?: (body: Uint8Array) => Promise<Uint8Array>,
): unknown | Promise<unknown> {
  if (typeof data === "string") return parseJson(data);
  switch (kindOf(data)) {
    case "json":
      return parseJson(data);
    case "msgpack":
      return parseMsgpack(data.subarray(2));
    case "zlib": {
      const body = data[0] === ZLIB ? data : data.subarray(2);
      // With node:zlib loaded, synchronous (a bad frame throws FrameError here).
      if (zlib) return parseJson(inflateNode(zlib, body, maxInflate));
      return inflate(body, maxInflate).then(parseJson);
    }
    case "encrypted":
      if (!decrypt) throw new FrameError("encrypted frame but encryption is not set up");
      return decrypt(data.subarray(2)).then((plain) => decodeFrame(plain, undefined, maxInflate));
    case "shared":
      if (!openShared) throw new FrameError("shared encrypted frame but encryption is not set up");
      return openShared(data.subarray(2)).then(parseJson);
  }
}

/** An envelope as JSON text (what the client sends by default). */
export function encodeJson(env: Envelope): string {
  return JSON.stringify(env);
}

function prefixed(p0: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 2);
  out[0] = p0;
  out[1] = COLON;
  out.set(body, 2);
  return out;
}

/** An envelope as an `M:` frame. */
export function encodeMsgpack(env: Envelope): Uint8Array {
  return prefixed(M, mpEncode(env, { ignoreUndefined: true }));
}

/** An envelope as a `C:` frame (zlib of its JSON). */
export async function encodeZlib(env: Envelope): Promise<Uint8Array> {
  return prefixed(C, await deflate(utf8(JSON.stringify(env))));
}

export function withPrefix(p0: "E" | "C" | "M", body: Uint8Array): Uint8Array {
  return prefixed(p0.charCodeAt(0), body);
}
