//! E2E encryption for one connection: ECDH P-256 key agreement in `client_hello`/`server_hello`,
//! HKDF-SHA256 to a 32-byte AES-GCM key, `E:` + IV + ciphertext + tag on the wire.
//!
//! Nonces: ours are a per-key random 4-byte prefix and a 64-bit counter, so they never repeat
//! under one key. The client's are its own; a replayed client IV is refused (a window of the
//! last `REPLAY_WINDOW` client IVs per key), and so is one with our prefix (a reflected frame). Rotation derives the next key from the current one
//! (HKDF, info `wse-encryption/rotate/<generation>`); the previous key stays valid for inbound
//! frames for a grace period, for what the client sent before it saw the rotation.

use std::collections::{HashSet, VecDeque};

use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdh::EphemeralSecret;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::PublicKey;
use rand_core::{OsRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Sha256;

pub const PREFIX: &[u8; 2] = b"E:";
pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
const HKDF_INFO: &[u8] = b"wse-encryption/aes-gcm-key";
const ROTATE_INFO: &str = "wse-encryption/rotate/";
const REPLAY_WINDOW: usize = 4096;
/// Batch keys a session remembers sending: fewer than the 16 a client keeps, so the server never
/// counts on one the client has let go.
const BATCH_KEYS_KNOWN: usize = 8;

#[derive(Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The client's public key is not a valid uncompressed P-256 point (or not base64).
    BadPublicKey,
    /// Shorter than IV + tag.
    Truncated,
    /// Authentication failed under every key we hold: tampered, or not ours.
    Rejected,
    /// This IV was already used under this key.
    Replayed,
}

impl CryptoError {
    pub fn as_str(&self) -> &'static str {
        match self {
            CryptoError::BadPublicKey => "invalid encryption public key",
            CryptoError::Truncated => "encrypted frame too short",
            CryptoError::Rejected => "encrypted frame failed authentication",
            CryptoError::Replayed => "encrypted frame replayed",
        }
    }
}

struct Key {
    /// ring's AES-256-GCM (assembly with AES-NI and carry-less multiply where the CPU has them):
    /// two to four times the speed of the portable crate on 160 B to 1 KiB frames, which is the
    /// E2E fan-out's cost per subscriber.
    aead: LessSafeKey,
    raw: [u8; 32],
    prefix: [u8; 4],
    counter: u64,
    seen: HashSet<[u8; IV_LEN]>,
    order: VecDeque<[u8; IV_LEN]>,
}

impl Key {
    fn new(raw: [u8; 32]) -> Self {
        let mut prefix = [0u8; 4];
        OsRng.fill_bytes(&mut prefix);
        Self {
            aead: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("a 32-byte AES-256 key")),
            raw,
            prefix,
            counter: 0,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn next_iv(&mut self) -> [u8; IV_LEN] {
        self.counter += 1;
        let mut iv = [0u8; IV_LEN];
        iv[..4].copy_from_slice(&self.prefix);
        iv[4..].copy_from_slice(&self.counter.to_be_bytes());
        iv
    }

    fn remember(&mut self, iv: [u8; IV_LEN]) -> bool {
        if !self.seen.insert(iv) {
            return false;
        }
        self.order.push_back(iv);
        if self.order.len() > REPLAY_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn open(&mut self, iv: &[u8; IV_LEN], ct: &[u8], tag: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let authentic = |buf: &mut Vec<u8>| -> bool {
            buf.reserve_exact(ct.len() + TAG_LEN);
            buf.extend_from_slice(ct);
            buf.extend_from_slice(tag);
            match self.aead.open_in_place(Nonce::assume_unique_for_key(*iv), Aad::empty(), buf) {
                Ok(plain) => {
                    let n = plain.len();
                    buf.truncate(n);
                    true
                }
                Err(_) => false,
            }
        };
        let mut buf = Vec::new();
        // One of our own nonces coming back is a frame of ours reflected at us.
        if self.seen.contains(iv) || iv[..4] == self.prefix {
            // Only a replay if it also authenticates; otherwise it is just garbage.
            return Err(if authentic(&mut buf) { CryptoError::Replayed } else { CryptoError::Rejected });
        }
        if !authentic(&mut buf) {
            return Err(CryptoError::Rejected);
        }
        self.remember(*iv);
        Ok(buf)
    }
}

/// The server half of a key exchange: our public key for `server_hello`, and the session.
pub struct Exchange {
    pub server_public_b64: String,
    pub session: Session,
}

/// Answers a client's `encryption_public_key` (base64 of a 65-byte SEC1 point).
pub fn respond(client_public_b64: &str) -> Result<Exchange, CryptoError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(client_public_b64.trim())
        .map_err(|_| CryptoError::BadPublicKey)?;
    if raw.len() != 65 || raw[0] != 4 {
        return Err(CryptoError::BadPublicKey);
    }
    let client = PublicKey::from_sec1_bytes(&raw).map_err(|_| CryptoError::BadPublicKey)?;
    let secret = EphemeralSecret::random(&mut OsRng);
    let ours = secret.public_key().to_encoded_point(false);
    let shared = secret.diffie_hellman(&client);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, shared.raw_secret_bytes())
        .expand(HKDF_INFO, &mut key)
        .map_err(|_| CryptoError::BadPublicKey)?;
    Ok(Exchange {
        server_public_b64: base64::engine::general_purpose::STANDARD.encode(ours.as_bytes()),
        session: Session::from_key(key),
    })
}

pub struct Session {
    current: Key,
    previous: Option<(Key, u64)>,
    generation: u64,
    /// When the current key was made (ms), for the rotation interval.
    pub keyed_at_ms: u64,
    /// The batch keys (`crypto/batch.rs`, by serial) sent under this session, oldest first.
    batch_keys: Vec<u64>,
}

impl Session {
    pub fn from_key(raw: [u8; 32]) -> Self {
        Self { current: Key::new(raw), previous: None, generation: 0, keyed_at_ms: crate::protocol::time::now_ms(), batch_keys: Vec::new() }
    }

    /// Whether batch key `serial` was sent to this client (and it still keeps it).
    pub fn holds_batch_key(&self, serial: u64) -> bool {
        self.batch_keys.contains(&serial)
    }

    /// Notes that batch key `serial` was sent (forgetting the oldest past `BATCH_KEYS_KNOWN`).
    pub fn sent_batch_key(&mut self, serial: u64) {
        if self.batch_keys.len() >= BATCH_KEYS_KNOWN {
            self.batch_keys.remove(0);
        }
        self.batch_keys.push(serial);
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Encrypts `plain` into `E:` + IV + ciphertext + tag, after `reserve` free bytes.
    pub fn seal(&mut self, plain: &[u8], reserve: usize) -> Vec<u8> {
        let iv = self.current.next_iv();
        let mut out = Vec::with_capacity(reserve + 2 + IV_LEN + plain.len() + TAG_LEN);
        out.resize(reserve, 0);
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(&iv);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .current
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut out[start..])
            .expect("AES-GCM encryption of an in-memory buffer");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Decrypts an `E:` frame's body (without the prefix) under the current or previous key.
    pub fn open(&mut self, body: &[u8], now_ms: u64) -> Result<Vec<u8>, CryptoError> {
        if body.len() < IV_LEN + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (iv, rest) = body.split_at(IV_LEN);
        let iv: [u8; IV_LEN] = iv.try_into().expect("split at IV_LEN");
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        match self.current.open(&iv, ct, tag) {
            Err(CryptoError::Rejected) => {}
            r => return r,
        }
        match &mut self.previous {
            Some((k, until)) if now_ms <= *until => k.open(&iv, ct, tag),
            _ => Err(CryptoError::Rejected),
        }
    }

    /// Moves to the next key; the old one opens inbound frames until `grace_ms` from now.
    /// Returns the new generation, which the `key_rotation` message announces.
    pub fn rotate(&mut self, now_ms: u64, grace_ms: u64) -> u64 {
        self.generation += 1;
        let next = derive_next(&self.current.raw, self.generation);
        let old = std::mem::replace(&mut self.current, Key::new(next));
        self.previous = Some((old, now_ms + grace_ms));
        self.keyed_at_ms = now_ms;
        self.generation
    }
}

/// next = HKDF-SHA256(ikm = current key, no salt, info = "wse-encryption/rotate/<generation>").
pub fn derive_next(current: &[u8; 32], generation: u64) -> [u8; 32] {
    let info = format!("{ROTATE_INFO}{generation}");
    let mut next = [0u8; 32];
    Hkdf::<Sha256>::new(None, current).expand(info.as_bytes(), &mut next).expect("32 bytes is a valid HKDF length");
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client side for the tests: its own key pair and the same derivation.
    fn client_pair() -> (EphemeralSecret, String) {
        let s = EphemeralSecret::random(&mut OsRng);
        let p = base64::engine::general_purpose::STANDARD.encode(s.public_key().to_encoded_point(false).as_bytes());
        (s, p)
    }

    fn client_key(secret: &EphemeralSecret, server_b64: &str) -> [u8; 32] {
        let raw = base64::engine::general_purpose::STANDARD.decode(server_b64).unwrap();
        let shared = secret.diffie_hellman(&PublicKey::from_sec1_bytes(&raw).unwrap());
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(None, shared.raw_secret_bytes()).expand(HKDF_INFO, &mut key).unwrap();
        key
    }

    #[test]
    fn exchange_seal_open_replay_tamper_rotate() {
        let (cs, cp) = client_pair();
        let mut ex = respond(&cp).unwrap();
        let key = client_key(&cs, &ex.server_public_b64);
        let mut client = Session::from_key(key);

        // server -> client
        let f = ex.session.seal(b"{\"t\":\"x\"}", 0);
        assert_eq!(&f[..2], PREFIX);
        assert_eq!(client.open(&f[2..], 0).unwrap(), b"{\"t\":\"x\"}");
        // Nonces differ message to message.
        let g = ex.session.seal(b"{\"t\":\"x\"}", 0);
        assert_ne!(f[2..14], g[2..14]);

        // client -> server, then the same frame again.
        let c = client.seal(b"hello", 0);
        assert_eq!(ex.session.open(&c[2..], 0).unwrap(), b"hello");
        assert_eq!(ex.session.open(&c[2..], 0), Err(CryptoError::Replayed));
        // A server frame reflected back at the server.
        let f = ex.session.seal(b"{}", 0);
        assert_eq!(ex.session.open(&f[2..], 0), Err(CryptoError::Replayed));

        // Tampered and truncated.
        let mut t = client.seal(b"hello", 0);
        let n = t.len();
        t[n - 20] ^= 1;
        assert_eq!(ex.session.open(&t[2..], 0), Err(CryptoError::Rejected));
        assert_eq!(ex.session.open(&t[2..20], 0), Err(CryptoError::Truncated));

        // Rotation: the server moves on; the client follows; the old key is accepted for a grace time.
        let old = client.seal(b"late", 0);
        let gen = ex.session.rotate(1_000, 500);
        assert_eq!(gen, 1);
        let mut client2 = Session::from_key(derive_next(&key, 1));
        let f = ex.session.seal(b"new", 0);
        assert_eq!(client2.open(&f[2..], 0).unwrap(), b"new");
        assert!(client.open(&f[2..], 0).is_err());
        assert_eq!(ex.session.open(&old[2..], 1_200).unwrap(), b"late");
        let old2 = client.seal(b"too late", 0);
        assert_eq!(ex.session.open(&old2[2..], 2_000), Err(CryptoError::Rejected));
        let c = client2.seal(b"fresh", 0);
        assert_eq!(ex.session.open(&c[2..], 2_000).unwrap(), b"fresh");
    }

    #[test]
    fn a_session_remembers_its_last_batch_keys_only() {
        let mut s = Session::from_key([3; 32]);
        for k in 1..=BATCH_KEYS_KNOWN as u64 {
            s.sent_batch_key(k);
        }
        assert!(s.holds_batch_key(1) && s.holds_batch_key(BATCH_KEYS_KNOWN as u64));
        // One more: the oldest is forgotten (it will be sent again if it is used again).
        s.sent_batch_key(100);
        assert!(!s.holds_batch_key(1) && s.holds_batch_key(2) && s.holds_batch_key(100));
    }

    #[test]
    fn bad_public_keys() {
        assert!(respond("not base64!").is_err());
        let zeros = base64::engine::general_purpose::STANDARD.encode([4u8; 65]);
        assert_eq!(respond(&zeros).err(), Some(CryptoError::BadPublicKey));
        let short = base64::engine::general_purpose::STANDARD.encode([4u8; 33]);
        assert_eq!(respond(&short).err(), Some(CryptoError::BadPublicKey));
    }
}
