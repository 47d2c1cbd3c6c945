/**
 * Wire frames: JSON (text or binary), `C:` zlib, `M:` msgpack, `E:` encrypted, and bare zlib
 * (first byte 0x78). zlib goes through the platform's CompressionStream/DecompressionStream.
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { FrameError } from "./errors.js";
import type { Envelope } from "./events.js";

/** Largest inflated `C:` frame accepted (a bound against zlib bombs). */
export const MAX_INFLATE = 16 * 1024 * 1024;

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const C = 0x43, M = 0x4d, E = 0x45, COLON = 0x3a, BRACE = 0x7b, ZLIB = 0x78;

export function utf8(s: string): Uint8Array {
  return enc.encode(s);
}

/** The kind of a binary frame, by its prefix. */
export type FrameKind = "json" | "zlib" | "msgpack" | "encrypted";

export function kindOf(b: Uint8Array): FrameKind {
  if (b.length >= 2 && b[1] === COLON) {
    if (b[0] === E) return "encrypted";
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

function streamOf(data: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(ctl) {
      ctl.enqueue(data);
      ctl.close();
    },
  });
}

/** zlib (RFC 1950) inflate, capped at `limit` bytes. */
export function inflate(data: Uint8Array, limit = MAX_INFLATE): Promise<Uint8Array> {
  const ds = new DecompressionStream("deflate");
  return pump(streamOf(data).pipeThrough(ds as unknown as ReadableWritablePair<Uint8Array, Uint8Array>), limit);
}

/** zlib (RFC 1950) deflate. */
export function deflate(data: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream("deflate");
  return pump(streamOf(data).pipeThrough(cs as unknown as ReadableWritablePair<Uint8Array, Uint8Array>), Infinity);
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
 * One frame to an object. `decrypt` opens the body of `E:` frames (undefined: no key yet, and
 * such a frame is an error). Synchronous frames (JSON, msgpack) return without a promise.
 */
export function decodeFrame(
  data: string | Uint8Array,
  decrypt?: (body: Uint8Array) => Promise<Uint8Array>,
  maxInflate = MAX_INFLATE,
): unknown | Promise<unknown> {
  if (typeof data === "string") return parseJson(data);
  switch (kindOf(data)) {
    case "json":
      return parseJson(data);
    case "msgpack":
      return parseMsgpack(data.subarray(2));
    case "zlib": {
      const body = data[0] === ZLIB ? data : data.subarray(2);
      return inflate(body, maxInflate).then(parseJson);
    }
    case "encrypted":
      if (!decrypt) throw new FrameError("encrypted frame but encryption is not set up");
      return decrypt(data.subarray(2)).then((plain) => decodeFrame(plain, undefined, maxInflate));
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
