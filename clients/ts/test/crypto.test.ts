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
});
