import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Session, Sealer, hkdf, rotatedKey, fromBase64, toBase64 } from "../src/crypto.js";
import { EncryptionError } from "../src/errors.js";

// Made by our Python client (test/vectors/make_vectors.py): the same keys must give the same bytes.
const V = JSON.parse(readFileSync(new URL("./vectors/vectors.json", import.meta.url), "utf8"));
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const te = new TextEncoder();
const td = new TextDecoder();

describe("E2E crypto against the Python client's vectors", () => {
  it("derives the same public key and session key", async () => {
    const s = await Session.fromJwk(V.client_jwk);
    expect(s.publicKeyB64).toBe(V.client_public_b64);
    expect(fromBase64(s.publicKeyB64)).toHaveLength(65);
    await s.complete(V.server_public_b64);
    expect(hex(s.key!)).toBe(V.session_key);
  });

  it("opens the Python frames and seals the same bytes, through key rotations", async () => {
    const s = await Session.fromJwk(V.client_jwk);
    await s.complete(V.server_public_b64);
    let gen = 0;
    for (const f of V.sealed) {
      if (f.generation !== gen) {
        await s.rotate(f.generation);
        gen = f.generation;
      }
      expect(hex(s.key!)).toBe(f.key);
      const body = unhex(f.frame).subarray(2);
      expect(td.decode(await s.open(body))).toBe(f.plaintext);
    }
    // Sealing: same key, same nonce (prefix + counter) → the same frame as Python's.
    for (const f of V.sealed.filter((x: any) => x.plaintext === V.sealed[0].plaintext)) {
      const sealer = await Sealer.create(unhex(f.key), unhex(V.nonce_prefix), BigInt(V.nonce_counter));
      expect(f.frame.slice(0, 4)).toBe("453a"); // "E:"
      expect(hex(await sealer.seal(te.encode(f.plaintext)))).toBe(f.frame.slice(4));
    }
  });

  it("rotated keys are HKDF(current key, rotate/N)", async () => {
    const k0 = unhex(V.session_key);
    const k1 = await rotatedKey(k0, 1);
    expect(hex(k1)).toBe(V.sealed.find((f: any) => f.generation === 1).key);
    expect(hex(await hkdf(k0, "wse-encryption/rotate/1"))).toBe(hex(k1));
  });

  it("still opens frames under the previous key after a rotation", async () => {
    const s = await Session.fromJwk(V.client_jwk);
    await s.complete(V.server_public_b64);
    await s.rotate(1);
    const gen0 = V.sealed.find((f: any) => f.generation === 0);
    expect(td.decode(await s.open(unhex(gen0.frame).subarray(2)))).toBe(gen0.plaintext);
  });

  it("refuses tampered, truncated and early frames", async () => {
    const s = await Session.fromJwk(V.client_jwk);
    const body = unhex(V.sealed[0].frame).subarray(2);
    await expect(s.open(body)).rejects.toBeInstanceOf(EncryptionError);
    await s.complete(V.server_public_b64);
    const bad = body.slice();
    bad[20] = bad[20]! ^ 1;
    await expect(s.open(bad)).rejects.toThrow(/authentication/);
    await expect(s.open(body.subarray(0, 20))).rejects.toThrow(/too short/);
    await expect(s.complete("AAAA")).rejects.toBeInstanceOf(EncryptionError);
  });

  it("nonces never repeat under a key", async () => {
    const s = await Session.create();
    const peer = await Session.create();
    await s.complete(peer.publicKeyB64);
    await peer.complete(s.publicKeyB64);
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const f = await s.seal(te.encode(`m${i}`));
      seen.add(hex(f.subarray(0, 12)));
      expect(td.decode(await peer.open(f))).toBe(`m${i}`);
    }
    expect(seen.size).toBe(100);
    expect(toBase64(fromBase64(V.client_public_b64))).toBe(V.client_public_b64);
  });

  it("takes batch keys only from E: frames and opens G: frames under them once", async () => {
    const server = await Session.create();
    const client = await Session.create();
    await server.complete(client.publicKeyB64);
    await client.complete(server.publicKeyB64);
    const key = globalThis.crypto.getRandomValues(new Uint8Array(32));
    const id = globalThis.crypto.getRandomValues(new Uint8Array(8));
    const announce = JSON.stringify({ c: "WSE", t: "batch_key", p: { id: hex(id), key: toBase64(key) } });
    const aead = await globalThis.crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
    const shared = async (n: number, text: string, kid = id) => {
      const nonce = new Uint8Array(12);
      new DataView(nonce.buffer).setBigUint64(4, BigInt(n));
      const ct = new Uint8Array(await globalThis.crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: kid }, aead, te.encode(text)));
      return new Uint8Array([...kid, ...nonce, ...ct]);
    };
    // Before its key: refused.
    await expect(client.openShared(await shared(1, "early"))).rejects.toThrow(/never received/);
    // A batch_key message in clear is no key.
    expect(client.tookBatchKey({ id: hex(id), key: toBase64(key) })).toBe(false);
    expect(td.decode(await client.open(await server.seal(te.encode(announce))))).toBe(announce);
    expect(client.tookBatchKey({ id: hex(id) })).toBe(true);
    expect(client.tookBatchKey({ id: hex(id) })).toBe(false);
    const first = await shared(1, '{"n":1}');
    expect(td.decode(await client.openShared(first))).toBe('{"n":1}');
    expect(td.decode(await client.openShared(await shared(2, '{"n":2}')))).toBe('{"n":2}');
    await expect(client.openShared(first)).rejects.toThrow(/replayed/);
    const bad = (await shared(3, '{"n":3}')).slice();
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 1;
    await expect(client.openShared(bad)).rejects.toThrow(/authentication/);
    // The id is authenticated: the same key under another id does not open it.
    const other = globalThis.crypto.getRandomValues(new Uint8Array(8));
    await client.open(await server.seal(te.encode(JSON.stringify({ c: "WSE", t: "batch_key", p: { id: hex(other), key: toBase64(key) } }))));
    const moved = await shared(4, "x");
    moved.set(other, 0);
    await expect(client.openShared(moved)).rejects.toThrow(/authentication/);
    await expect(client.openShared(new Uint8Array(10))).rejects.toThrow(/too short/);
    const malformed = JSON.stringify({ c: "WSE", t: "batch_key", p: { id: "zz", key: toBase64(key) } });
    await expect(client.open(await server.seal(te.encode(malformed)))).rejects.toThrow(/malformed/);
  });
});
