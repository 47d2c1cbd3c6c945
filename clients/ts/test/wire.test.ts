import { describe, expect, it } from "vitest";
import { deflateStream, encodeMsgpack, withPrefix } from "../src/codec.js";
import { newStats } from "../src/events.js";
import { Link } from "../src/link.js";
import { resolveOptions } from "../src/options.js";
import { Wire } from "../src/wire.js";
import { FakeWS } from "./fakews.js";

const te = new TextEncoder();

/** A session whose decryption takes a while, as WebCrypto's does. */
function slowSession(): any {
  return {
    ready: true,
    open: (body: Uint8Array) => new Promise<Uint8Array>((res) => setTimeout(() => res(body), 30)),
  };
}

describe("the wire: frames in", () => {
  it("dispatches in arrival order whatever each frame's decoding takes; bad frames are counted and skipped", async () => {
    const seen: unknown[] = [];
    const stats = newStats();
    const wire = new Wire({ options: resolveOptions({}), stats, dispatch: (_l, m) => void seen.push((m as any).p.i), kill: () => undefined });
    const link = new Link(new FakeWS("ws://h/"));
    link.session = slowSession();
    const env = (i: number) => JSON.stringify({ c: "U", t: "x", p: { i } });
    const zlib = async (i: number) => withPrefix("C", await deflateStream(te.encode(env(i))));
    const frames: (string | ArrayBuffer)[] = [
      env(0),
      withPrefix("E", te.encode(env(1))).slice().buffer, // slow: the rest queue behind it
      (await zlib(2)).slice().buffer, // zlib (DecompressionStream here), queued
      env(3),
      withPrefix("C", te.encode("not zlib")).slice().buffer, // bad
      encodeMsgpack({ c: "U", t: "x", p: { i: 4 } }).slice().buffer,
      withPrefix("E", te.encode(env(5))).slice().buffer,
      (await zlib(6)).slice().buffer,
    ];
    for (const f of frames) wire.onFrame(link, f);
    const deadline = Date.now() + 10_000;
    while (seen.length < 7 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(seen).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(stats.badFrames).toBe(1);
    expect([stats.framesZlib, stats.framesEncrypted, stats.framesMsgpack, stats.framesText]).toEqual([3, 2, 1, 2]);
    expect(link.pumping).toBe(false);
  });
});
