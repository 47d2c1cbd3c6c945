import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { decodeFrame, deflate, deflateStream, encodeMsgpack, encodeZlib, inflate, inflateStream, kindOf, loadZlib, parseJson } from "../src/codec.js";
import { FrameError } from "../src/errors.js";

const V = JSON.parse(readFileSync(new URL("./vectors/vectors.json", import.meta.url), "utf8"));
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const te = new TextEncoder();
const withC = (b: Uint8Array) => new Uint8Array([0x43, 0x3a, ...b]);

describe("codecs", () => {
  it("decodes JSON text, JSON bytes and the v1 prefixes", () => {
    const env = { c: "U", t: "x", p: { a: 1 } };
    expect(decodeFrame(JSON.stringify(env))).toEqual(env);
    expect(decodeFrame(te.encode(JSON.stringify(env)))).toEqual(env);
    expect(decodeFrame("WSE" + JSON.stringify(env))).toEqual(env);
    expect(decodeFrame("U" + JSON.stringify(env))).toEqual(env);
  });

  it("decodes C: zlib, bare zlib and M: msgpack frames made by the Python client", async () => {
    expect(kindOf(unhex(V.zlib_frame))).toBe("zlib");
    expect(await decodeFrame(unhex(V.zlib_frame))).toEqual(V.envelope);
    expect(await decodeFrame(unhex(V.raw_zlib_frame))).toEqual(V.envelope);
    expect(kindOf(unhex(V.msgpack_frame))).toBe("msgpack");
    expect(decodeFrame(unhex(V.msgpack_frame))).toEqual(V.envelope);
  });

  it("encodes C: and M: frames that decode back (Python's decoders read the same formats)", async () => {
    const z = await encodeZlib(V.envelope);
    expect([z[0], z[1], z[2]]).toEqual([0x43, 0x3a, 0x78]); // "C:" then a zlib header
    expect(await decodeFrame(z)).toEqual(V.envelope);
    const m = encodeMsgpack(V.envelope);
    expect(decodeFrame(m)).toEqual(V.envelope);
    expect(Buffer.from(m).toString("hex")).toBe(V.msgpack_frame); // both pick the smallest encodings
  });

  it("refuses what it cannot decode, with FrameError", async () => {
    expect(() => decodeFrame("{nope")).toThrow(FrameError);
    expect(() => decodeFrame(new Uint8Array([0xff, 0xfe, 0x7b]))).toThrow(/UTF-8/);
    expect(() => decodeFrame(te.encode("M:\xc1"))).toThrow(FrameError);
    // Synchronous with node:zlib loaded (thrown), a promise with DecompressionStream (rejected).
    await expect((async () => decodeFrame(te.encode("C:not zlib")))()).rejects.toThrow(FrameError);
    await expect(inflateStream(te.encode("not zlib"))).rejects.toThrow(FrameError);
    expect(() => decodeFrame(te.encode("E:" + "x".repeat(40)))).toThrow(/encryption is not set up/);
    expect(() => parseJson("")).toThrow(FrameError);
  });

  it("caps inflation (a zlib bomb stops at the limit), with node:zlib and with DecompressionStream", async () => {
    const bomb = await deflateStream(new Uint8Array(4 * 1024 * 1024));
    expect(bomb.length).toBeLessThan(10_000);
    for (const inf of [inflate, inflateStream]) {
      await expect(inf(bomb, 64 * 1024)).rejects.toThrow(/beyond 65536 bytes/);
      expect((await inf(bomb)).length).toBe(4 * 1024 * 1024);
    }
    expect(() => decodeFrame(withC(bomb), undefined, 64 * 1024)).toThrow(/beyond 65536 bytes/);
  });

  it("in Node, decodes C: frames synchronously through node:zlib; both paths agree", async () => {
    expect(await loadZlib()).toBe(true);
    const z = await encodeZlib(V.envelope);
    expect(decodeFrame(z)).toEqual(V.envelope); // not a promise
    expect(decodeFrame(unhex(V.zlib_frame))).toEqual(V.envelope); // made by the Python client
    const text = te.encode(JSON.stringify(V.envelope));
    expect(await inflateStream(await deflate(text))).toEqual(text);
    expect(await inflate(await deflateStream(text))).toEqual(new Uint8Array(text));
  });
});
