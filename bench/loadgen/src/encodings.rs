//! The client side of two WSE encodings, for measuring their cost: E2E encryption (ECDH P-256
//! in `client_hello`/`server_hello`, HKDF-SHA256, `E:` + IV + AES-GCM-256, and batch keys with
//! their shared `G:` frames) and zlib (`C:`).
//! Written from the protocol description, independently of the engine's code.

use std::io::Read;

use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdh::EphemeralSecret;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::PublicKey;
use rand_core::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde_json::{json, Value};
use sha2::Sha256;

/// A key pair for one connection's exchange.
pub struct Hello {
    secret: EphemeralSecret,
    /// The `client_hello` message to send.
    pub message: String,
}

/// `batch_keys`: announce that it takes batch keys and `G:` frames.
pub fn client_hello(batch_keys: bool) -> Hello {
    let secret = EphemeralSecret::random(&mut OsRng);
    let public = base64::engine::general_purpose::STANDARD.encode(secret.public_key().to_encoded_point(false).as_bytes());
    let message = json!({"c":"WSE","t":"client_hello","p":{
        "client_version":"wse-loadgen","protocol_version":2,
        "features":{"encryption":true,"compression":false,"batch_keys":batch_keys},
        "encryption_public_key": public}})
    .to_string();
    Hello { secret, message }
}

impl Hello {
    /// The session key from the server's `server_hello` payload.
    pub fn finish(self, server_hello_p: &Value) -> Result<LessSafeKey, String> {
        let b64 = server_hello_p["encryption_public_key"].as_str().ok_or("server_hello without a public key")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| e.to_string())?;
        let server = PublicKey::from_sec1_bytes(&raw).map_err(|e| e.to_string())?;
        let shared = self.secret.diffie_hellman(&server);
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(None, shared.raw_secret_bytes())
            .expand(b"wse-encryption/aes-gcm-key", &mut key)
            .map_err(|e| e.to_string())?;
        Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|e| e.to_string())?))
    }
}

/// One subscriber's keys: its session key, and the batch key it was last sent (`batch_key`,
/// sealed under the session key) for the shared `G:` frames that follow it.
pub struct Keys {
    session: LessSafeKey,
    batch: Option<BatchKey>,
}

struct BatchKey {
    id: [u8; 8],
    aead: LessSafeKey,
    /// The last nonce counter opened under it: a frame at or below it is a replay.
    last: u64,
}

impl Keys {
    pub fn new(session: LessSafeKey) -> Self {
        Self { session, batch: None }
    }

    /// Takes a `batch_key` message (already opened from an `E:` frame).
    fn take_batch_key(&mut self, msg: &[u8]) -> Option<()> {
        let v: Value = serde_json::from_slice(msg).ok()?;
        let hex = v["p"]["id"].as_str()?;
        let raw = base64::engine::general_purpose::STANDARD.decode(v["p"]["key"].as_str()?).ok()?;
        let mut id = [0u8; 8];
        if hex.len() != 16 {
            return None;
        }
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).ok()?);
        self.batch = Some(BatchKey { id, aead, last: 0 });
        Some(())
    }
}

fn open_with(key: &LessSafeKey, iv: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let iv: [u8; 12] = iv.try_into().ok()?;
    let mut buf = sealed.to_vec();
    let n = key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf).ok()?.len();
    buf.truncate(n);
    Some(buf)
}

/// Opens an `E:` frame under the session key; `None` if it does not authenticate.
#[inline(never)]
pub fn open(key: &LessSafeKey, data: &[u8]) -> Option<Vec<u8>> {
    let body = data.strip_prefix(b"E:")?;
    if body.len() < 28 {
        return None;
    }
    let (iv, sealed) = body.split_at(12);
    open_with(key, iv, &[], sealed)
}

/// Opens a `G:` frame (key id, nonce, ciphertext, tag; the id authenticated) under the batch
/// key with that id; `None` without that key, if it does not authenticate, or if its nonce is
/// not past the last one opened under the key.
#[inline(never)]
fn open_shared(keys: &mut Keys, data: &[u8]) -> Option<Vec<u8>> {
    let body = data.strip_prefix(b"G:")?;
    if body.len() < 8 + 28 {
        return None;
    }
    let (id, rest) = body.split_at(8);
    let (iv, sealed) = rest.split_at(12);
    let k = keys.batch.as_mut().filter(|k| k.id == id)?;
    let n = u64::from_be_bytes(iv[4..].try_into().ok()?);
    if n <= k.last {
        return None;
    }
    let plain = open_with(&k.aead, iv, id, sealed)?;
    k.last = n;
    Some(plain)
}

/// Inflates a `C:` frame (capped at 16 MiB). Never inlined: its decoder's state is tens of KiB of
/// stack, and inlined into `plain` every plaintext frame paid for probing that frame's pages (four
/// tenths of the generator's time in fan-out, which made it the bottleneck).
#[inline(never)]
pub fn inflate(data: &[u8]) -> Option<Vec<u8>> {
    let body = data.strip_prefix(b"C:")?;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(body).take(16 << 20).read_to_end(&mut out).ok()?;
    Some(out)
}

/// A frame's plain content: decrypted or inflated when it is `E:`, `G:` or `C:`, else itself.
/// A `batch_key` message is taken into `keys` and comes back empty (it is no publication).
pub fn plain<'a>(keys: Option<&mut Keys>, data: &'a [u8], buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    if data.starts_with(b"E:") {
        let keys = keys?;
        *buf = open(&keys.session, data)?;
        if buf.starts_with(br#"{"c":"WSE","t":"batch_key""#) {
            keys.take_batch_key(buf)?;
            return Some(&[]);
        }
        return Some(buf);
    }
    if data.starts_with(b"G:") {
        *buf = open_shared(keys?, data)?;
        return Some(buf);
    }
    if data.starts_with(b"C:") {
        *buf = inflate(data)?;
        return Some(buf);
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    fn sealer(key: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap())
    }

    fn seal(key: &[u8; 32], prefix: &[u8], nonce_n: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(&nonce_n.to_be_bytes());
        let mut buf = plain.to_vec();
        sealer(key).seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf).unwrap();
        [prefix, aad, &iv, &buf].concat()
    }

    /// A batch key comes inside an `E:` frame; `G:` frames open under it once each, in order.
    #[test]
    fn batch_keys_then_shared_frames() {
        let (mut session, mut batch, mut id) = ([0u8; 32], [0u8; 32], [0u8; 8]);
        OsRng.fill_bytes(&mut session);
        OsRng.fill_bytes(&mut batch);
        OsRng.fill_bytes(&mut id);
        let mut keys = Keys::new(sealer(&session));
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let announce = json!({"c":"WSE","t":"batch_key","p":{"id": hex, "key": base64::engine::general_purpose::STANDARD.encode(batch)}});
        let mut buf = Vec::new();
        let g1 = seal(&batch, b"G:", 1, &id, b"{\"s\":1}");
        assert!(plain(Some(&mut keys), &g1, &mut buf).is_none(), "no key yet");
        let e = seal(&session, b"E:", 7, &[], announce.to_string().as_bytes());
        // `seal` put the (empty) AAD between prefix and nonce: for `E:` that is nothing.
        assert_eq!(plain(Some(&mut keys), &e, &mut buf), Some(&b""[..]));
        assert_eq!(plain(Some(&mut keys), &g1, &mut buf), Some(&b"{\"s\":1}"[..]));
        assert!(plain(Some(&mut keys), &g1, &mut buf).is_none(), "a replay");
        let mut bad = seal(&batch, b"G:", 2, &id, b"{\"s\":2}");
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(plain(Some(&mut keys), &bad, &mut buf).is_none(), "tampered");
        let g2 = seal(&batch, b"G:", 2, &id, b"{\"s\":2}");
        assert_eq!(plain(Some(&mut keys), &g2, &mut buf), Some(&b"{\"s\":2}"[..]));
    }
}
