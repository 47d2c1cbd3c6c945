/**
 * Frames on a connection: envelopes out (JSON, `M:` msgpack, `C:` zlib, `E:` encrypted, kept in
 * order when some need async work) and frames in (decoded, in order, async ones awaited one at
 * a time), counted in the client's stats.
 */
import { decodeFrame, deflate, encodeMsgpack, kindOf, utf8, withPrefix } from "./codec.js";
import type { ClientStats, Envelope } from "./events.js";
import type { Link } from "./link.js";
import type { Resolved } from "./options.js";

/** What the wire needs from its client. */
export interface WireOwner {
  readonly options: Resolved;
  readonly stats: ClientStats;
  /** A frame decoded: route it (a promise when that needs async work, awaited before the next). */
  dispatch(link: Link, msg: unknown): Promise<void> | undefined;
  /** The socket refused a send: drop the connection. */
  kill(link: Link): void;
}

export class Wire {
  constructor(private readonly owner: WireOwner) {}

  /** Sends one envelope on `link`, in order, encoded as configured. */
  transmit(link: Link, env: Envelope): void {
    if (link.dead) return;
    const o = this.owner.options;
    const session = link.session?.ready ? link.session : null;
    let out: string | Uint8Array | Promise<Uint8Array>;
    if (session) {
      out = session.seal(utf8(JSON.stringify(env))).then((b) => withPrefix("E", b));
    } else if (o.sendFormat === "msgpack") {
      out = encodeMsgpack(env);
    } else {
      const text = JSON.stringify(env);
      out = o.compressThreshold > 0 && text.length >= o.compressThreshold ? deflate(utf8(text)).then((b) => withPrefix("C", b)) : text;
    }
    if (!(out instanceof Promise) && link.txBusy === 0) {
      this.rawSend(link, out);
      return;
    }
    link.txBusy++;
    const ready = out;
    link.tx = link.tx.then(async () => {
      try {
        this.rawSend(link, await ready);
      } catch (e) {
        console.error("wse-client: could not encode a message", e);
      } finally {
        link.txBusy--;
      }
    });
  }

  private rawSend(link: Link, data: string | Uint8Array): void {
    if (link.dead) return;
    try {
      link.ws.send(data);
    } catch {
      this.owner.kill(link);
    }
  }

  /** A frame from the socket. */
  onFrame(link: Link, data: unknown): void {
    if (link.dead) return;
    link.lastRx = Date.now();
    const frame = typeof data === "string" ? data : bytesOf(data);
    if (link.pumping) {
      // Behind a frame still being decoded: it waits its turn. (Starting zlib frames' inflation
      // on arrival was measured slower in Chromium: many DecompressionStreams at once cost more
      // than one after another; bench/zlib-decode-browser.mjs.)
      link.inbox.push(frame);
      return;
    }
    const r = this.process(link, frame);
    if (r) {
      link.pumping = true;
      void this.pump(link, r);
    }
  }

  /** Frames that need async work (zlib, E2E) are awaited one at a time, preserving order. */
  private async pump(link: Link, first: Promise<void>): Promise<void> {
    try {
      await first;
      while (!link.dead && link.inbox.length) {
        const r = this.process(link, link.inbox.shift()!);
        if (r) await r;
      }
    } finally {
      link.pumping = false;
    }
  }

  /** Decodes and dispatches one frame; a promise when it needs async work. */
  private process(link: Link, frame: string | Uint8Array): Promise<void> | undefined {
    const out = this.decode(link, frame);
    if (!out.ok) {
      this.badFrame(out.error);
      return undefined;
    }
    const decoded = out.value;
    if (decoded instanceof Promise) {
      return decoded.then(
        (msg) => this.owner.dispatch(link, msg),
        (e) => this.badFrame(e),
      );
    }
    return this.owner.dispatch(link, decoded);
  }

  private decode(link: Link, frame: string | Uint8Array): Decoded {
    const s = this.owner.stats;
    try {
      if (typeof frame === "string") {
        s.framesText++;
      } else {
        s.framesBinary++;
        const k = kindOf(frame);
        if (k === "encrypted" || k === "shared") s.framesEncrypted++;
        else if (k === "zlib") s.framesZlib++;
        else if (k === "msgpack") s.framesMsgpack++;
      }
      const session = link.session;
      const open = session ? (b: Uint8Array) => session.open(b) : undefined;
      const openShared = session ? (b: Uint8Array) => session.openShared(b) : undefined;
      return { ok: true, value: decodeFrame(frame, open, this.owner.options.maxMessageBytes, openShared) };
    } catch (error) {
      return { ok: false, error };
    }
  }

  private badFrame(e: unknown): void {
    this.owner.stats.badFrames++;
    console.warn(`wse-client: dropped a frame that could not be decoded: ${(e as Error).message ?? e}`);
  }
}

type Decoded = { ok: true; value: unknown } | { ok: false; error: unknown };


/**
 * A binary frame's bytes. `instanceof ArrayBuffer` is not enough: the socket may come from
 * another realm (an iframe's, or Node's `ws` under a DOM emulation such as jsdom).
 */
function bytesOf(data: unknown): Uint8Array | string {
  if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === "[object ArrayBuffer]") return new Uint8Array(data as ArrayBuffer);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return String(data);
}
