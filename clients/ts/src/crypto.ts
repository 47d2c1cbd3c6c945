/**
 * E2E encryption through WebCrypto: ECDH P-256, HKDF-SHA256 (no salt), AES-256-GCM.
 * Frames are `E:` + 12-byte nonce + ciphertext + 16-byte tag; the nonce is 4 random bytes and a
 * 64-bit big-endian counter, so it never repeats under one key. Byte-compatible with the engine
 * and the Python client (`clients/python/wse_client/_crypto.py`), key rotation included.
 *
 * Batch keys: a topic's publications to several encrypted subscribers come sealed once, under the
 * topic's key (new whenever a subscriber left). Its key arrives first as a `batch_key` message inside an `E:` frame (taken here, when that frame is
 * opened, so it is in place before the next frame is decoded), then `G:` frames: 8-byte key id +
 * 12-byte nonce + ciphertext + tag, the id authenticated. A nonce not past the last one opened
 * under its key is a replay.
 */
import { EncryptionError } from "./errors.js";

export const SESSION_INFO = "wse-encryption/aes-gcm-key";
export const ROTATE_INFO = "wse-encryption/rotate/";
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
export const BATCH_ID_LEN = 8;
const BATCH_KEYS_KEPT = 16;

const te = new TextEncoder();

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (!s) {
    throw new EncryptionError(
      "WebCrypto (crypto.subtle) is not available: browsers offer it only in secure contexts (https:, http://localhost, http://127.0.0.1)",
    );
  }
  return s;
}

export function toBase64(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]!);
  return btoa(s);
}

export function fromBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** HKDF-SHA256 with no salt, 32 bytes of output. */
export async function hkdf(ikm: Uint8Array, info: string): Promise<Uint8Array> {
  const s = subtle();
  const k = await s.importKey("raw", ikm as BufferSource, "HKDF", false, ["deriveBits"]);
  const bits = await s.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: te.encode(info) }, k, 256);
  return new Uint8Array(bits);
}

/** The key after a `key_rotation` to `generation`. */
export function rotatedKey(key: Uint8Array, generation: number): Promise<Uint8Array> {
  return hkdf(key, ROTATE_INFO + String(generation));
}

/** AES-GCM under one key, with a never-repeating nonce. */
export class Sealer {
  private constructor(
    readonly key: Uint8Array,
    private readonly aead: CryptoKey,
    private readonly prefix: Uint8Array,
    private counter: bigint,
  ) {}

  /** A sealer for `key`; `prefix` and `counter` are for test vectors only (default: random, 0). */
  static async create(key: Uint8Array, prefix?: Uint8Array, counter = 0n): Promise<Sealer> {
    const aead = await subtle().importKey("raw", key as BufferSource, "AES-GCM", false, ["encrypt", "decrypt"]);
    const pre = prefix ?? globalThis.crypto.getRandomValues(new Uint8Array(4));
    return new Sealer(key, aead, pre, counter);
  }

  /** nonce + ciphertext + tag. The nonce is taken synchronously: calls seal in call order. */
  seal(plaintext: Uint8Array): Promise<Uint8Array> {
    const nonce = new Uint8Array(NONCE_LEN);
    nonce.set(this.prefix, 0);
    new DataView(nonce.buffer).setBigUint64(4, this.counter);
    this.counter += 1n;
    return subtle()
      .encrypt({ name: "AES-GCM", iv: nonce, tagLength: 128 }, this.aead, plaintext as BufferSource)
      .then((ct) => {
        const out = new Uint8Array(NONCE_LEN + ct.byteLength);
        out.set(nonce, 0);
        out.set(new Uint8Array(ct), NONCE_LEN);
        return out;
      });
  }

  async open(data: Uint8Array): Promise<Uint8Array> {
    const pt = await subtle().decrypt(
      { name: "AES-GCM", iv: data.subarray(0, NONCE_LEN) as BufferSource, tagLength: 128 },
      this.aead,
      data.subarray(NONCE_LEN) as BufferSource,
    );
    return new Uint8Array(pt);
  }
}

/** One connection's key exchange and the keys that follow it. */
export class Session {
  private send: Sealer | null = null;
  private recv: Sealer | null = null;
  private previous: Sealer | null = null;
  /** Batch keys by id (hex), oldest first, each with the last nonce counter opened under it. */
  private batch = new Map<string, { aead: CryptoKey; last: bigint }>();
  /** Ids of the keys taken from `E:` frames and not yet seen as messages (see `tookBatchKey`). */
  private announced = new Set<string>();
  generation = 0;

  private constructor(private readonly keys: CryptoKeyPair, readonly publicRaw: Uint8Array) {}

  /** A fresh P-256 key pair. */
  static async create(): Promise<Session> {
    const s = subtle();
    const keys = (await s.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"])) as CryptoKeyPair;
    return new Session(keys, new Uint8Array(await s.exportKey("raw", keys.publicKey)));
  }

  /** A session from a known private key (JWK with x, y, d): for test vectors. */
  static async fromJwk(jwk: JsonWebKey): Promise<Session> {
    const s = subtle();
    const alg = { name: "ECDH", namedCurve: "P-256" };
    const priv = await s.importKey("jwk", jwk, alg, true, ["deriveBits"]);
    const { d: _d, ...pubJwk } = jwk;
    const pub = await s.importKey("jwk", { ...pubJwk, key_ops: [] }, alg, true, []);
    return new Session({ privateKey: priv, publicKey: pub }, new Uint8Array(await s.exportKey("raw", pub)));
  }

  /** Our public key for `client_hello`: base64 of the 65-byte uncompressed point. */
  get publicKeyB64(): string {
    return toBase64(this.publicRaw);
  }

  get ready(): boolean {
    return this.send !== null;
  }

  /** The current key (raw bytes), once the exchange is done. */
  get key(): Uint8Array | null {
    return this.recv?.key ?? null;
  }

  /** Derives the session key from the server's public key (base64, from `server_hello`). */
  async complete(serverPublicB64: string, prefix?: Uint8Array, counter?: bigint): Promise<void> {
    const s = subtle();
    let peer: CryptoKey;
    try {
      const raw = fromBase64(serverPublicB64);
      peer = await s.importKey("raw", raw as BufferSource, { name: "ECDH", namedCurve: "P-256" }, false, []);
    } catch (e) {
      throw new EncryptionError(`the server's encryption_public_key is not a P-256 point: ${(e as Error).message ?? e}`);
    }
    const secret = new Uint8Array(await s.deriveBits({ name: "ECDH", public: peer }, this.keys.privateKey, 256));
    const sealer = await Sealer.create(await hkdf(secret, SESSION_INFO), prefix, counter);
    this.send = this.recv = sealer;
  }

  /** Switches both directions to the next key; frames under the previous one still open. */
  async rotate(generation: number, prefix?: Uint8Array, counter?: bigint): Promise<void> {
    if (!this.recv) throw new EncryptionError("key_rotation before the key exchange");
    const next = await Sealer.create(await rotatedKey(this.recv.key, generation), prefix, counter);
    this.previous = this.recv;
    this.send = this.recv = next;
    this.generation = generation;
  }

  /** The body of an `E:` frame (without the prefix). */
  seal(plaintext: Uint8Array): Promise<Uint8Array> {
    if (!this.send) throw new EncryptionError("encrypting before the key exchange");
    return this.send.seal(plaintext);
  }

  /** The plaintext of an `E:` frame's body; a `batch_key` in it is taken before it resolves. */
  async open(body: Uint8Array): Promise<Uint8Array> {
    const plain = await this.openSealed(body);
    if (plain.length < 200 && plain.length > 30) {
      const head = new TextDecoder().decode(plain.subarray(0, 40));
      if (head.includes('"batch_key"')) await this.takeBatchKey(plain);
    }
    return plain;
  }

  /** Keeps the key of a `batch_key` message (JSON) opened from an `E:` frame. */
  private async takeBatchKey(plain: Uint8Array): Promise<void> {
    let id: unknown, key: Uint8Array;
    try {
      const m = JSON.parse(new TextDecoder().decode(plain)) as { c?: unknown; t?: unknown; p?: { id?: unknown; key?: unknown } };
      if (m.c !== "WSE" || m.t !== "batch_key") return;
      id = m.p?.id;
      key = fromBase64(String(m.p?.key));
    } catch {
      throw new EncryptionError("malformed batch_key");
    }
    if (typeof id !== "string" || !/^[0-9a-f]{16}$/.test(id) || key.length !== 32) {
      throw new EncryptionError("malformed batch_key: wrong id or key length");
    }
    const aead = await subtle().importKey("raw", key as BufferSource, "AES-GCM", false, ["decrypt"]);
    this.batch.delete(id);
    this.batch.set(id, { aead, last: 0n });
    this.announced.add(id);
    while (this.batch.size > BATCH_KEYS_KEPT) this.batch.delete(this.batch.keys().next().value!);
    while (this.announced.size > BATCH_KEYS_KEPT) this.announced.delete(this.announced.values().next().value!);
  }

  /** True once for the payload of a `batch_key` message whose key came inside an `E:` frame. */
  tookBatchKey(p: Record<string, unknown>): boolean {
    return typeof p["id"] === "string" && this.announced.delete(p["id"]);
  }

  /** The plaintext of a `G:` frame's body (without the prefix), under its batch key. */
  async openShared(body: Uint8Array): Promise<Uint8Array> {
    if (body.length < BATCH_ID_LEN + NONCE_LEN + TAG_LEN) throw new EncryptionError("shared encrypted frame too short");
    const idBytes = body.subarray(0, BATCH_ID_LEN);
    let id = "";
    for (const b of idBytes) id += b.toString(16).padStart(2, "0");
    const entry = this.batch.get(id);
    if (!entry) throw new EncryptionError("shared encrypted frame under a batch key never received");
    const nonce = body.subarray(BATCH_ID_LEN, BATCH_ID_LEN + NONCE_LEN);
    const counter = new DataView(nonce.buffer, nonce.byteOffset, NONCE_LEN).getBigUint64(4);
    if (counter <= entry.last) throw new EncryptionError("shared encrypted frame replayed");
    let pt: ArrayBuffer;
    try {
      pt = await subtle().decrypt(
        { name: "AES-GCM", iv: nonce as BufferSource, additionalData: idBytes as BufferSource, tagLength: 128 },
        entry.aead,
        body.subarray(BATCH_ID_LEN + NONCE_LEN) as BufferSource,
      );
    } catch {
      throw new EncryptionError("shared encrypted frame failed authentication");
    }
    // Frames are opened one at a time, in order (wire.ts): no other open of this key ran meanwhile.
    entry.last = counter;
    return new Uint8Array(pt);
  }

  private async openSealed(body: Uint8Array): Promise<Uint8Array> {
    const recv = this.recv;
    if (!recv) throw new EncryptionError("an encrypted frame arrived before the key exchange");
    if (body.length < NONCE_LEN + TAG_LEN) throw new EncryptionError("encrypted frame too short");
    try {
      return await recv.open(body);
    } catch {
      if (this.previous) {
        try {
          return await this.previous.open(body);
        } catch {
          /* fall through */
        }
      }
      throw new EncryptionError("encrypted frame failed authentication");
    }
  }
}
