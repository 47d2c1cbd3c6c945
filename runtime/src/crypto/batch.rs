//! Batch keys: E2E fan-out sealed once per publication instead of once per subscriber.
//!
//! A topic's publications going to several encrypted connections are sealed once under the
//! topic's random AES-256-GCM key; each connection that announced `batch_keys` in
//! `client_hello` gets that key the first time, as a `batch_key` system message sealed under its
//! own session key (`E:`), then only the shared `G:` frames. Every subscriber's queue takes the
//! same bytes, as in plaintext fan-out.
//!
//! Wire: `G:` + key id (8 bytes) + nonce (12) + ciphertext + tag (16), the key id being the
//! additional authenticated data. Nonces count up under a key (sealing happens under the topic's
//! lock, so in delivery order), and a client refuses a nonce at or below the last one it opened
//! under the same key (a replayed frame). The topic replaces its key when a subscriber leaves
//! (or when one that held the key is not among a batch's recipients: the next batch has a new
//! key), and after `WORN_AFTER` seals, so one that left cannot open what comes after. The key
//! reaches only connections holding a session key, inside an authenticated `E:` frame; a
//! `batch_key` in plaintext is not one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::session::{IV_LEN, TAG_LEN};

pub const PREFIX: &[u8; 2] = b"G:";
pub const ID_LEN: usize = 8;
/// Seals under one key before the topic takes a new one.
pub const WORN_AFTER: u64 = 1 << 24;

pub struct BatchKey {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
    counter: AtomicU64,
    /// The `batch_key` system message (JSON): what each connection gets, sealed for it.
    announce: Vec<u8>,
}

impl Default for BatchKey {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchKey {
    /// A fresh key and id from the operating system's generator.
    pub fn new() -> Self {
        let mut raw = [0u8; 32 + ID_LEN];
        OsRng.fill_bytes(&mut raw);
        let (key, id) = raw.split_at(32);
        Self::from_parts(
            key.try_into().expect("32 bytes"),
            id.try_into().expect("ID_LEN bytes"),
        )
    }

    fn from_parts(key: [u8; 32], id: [u8; ID_LEN]) -> Self {
        let mut announce = Vec::with_capacity(100);
        announce.extend_from_slice(br#"{"c":"WSE","t":"batch_key","p":{"id":""#);
        for b in id {
            announce.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        announce.extend_from_slice(br#"","key":""#);
        announce.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(key)
                .as_bytes(),
        );
        announce.extend_from_slice(br#""}}"#);
        Self {
            id,
            aead: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte AES-256 key"),
            ),
            counter: AtomicU64::new(0),
            announce,
        }
    }

    /// The key's id, as a number (what a connection remembers it by).
    pub fn serial(&self) -> u64 {
        u64::from_be_bytes(self.id)
    }

    /// True once it has sealed `WORN_AFTER` frames.
    pub fn worn(&self) -> bool {
        self.counter.load(Relaxed) >= WORN_AFTER
    }

    /// The `batch_key` message to seal for each connection, ahead of the batch's frames.
    pub fn announce(&self) -> &[u8] {
        &self.announce
    }

    /// `G:` + id + nonce + ciphertext + tag, after `reserve` free bytes.
    pub fn seal(&self, plain: &[u8], reserve: usize) -> Vec<u8> {
        // Sealing runs under the topic's lock: the counter's order is the delivery order.
        let n = self.counter.fetch_add(1, Relaxed) + 1;
        let mut iv = [0u8; IV_LEN];
        iv[4..].copy_from_slice(&n.to_be_bytes());
        let mut out = Vec::with_capacity(reserve + 2 + ID_LEN + IV_LEN + plain.len() + TAG_LEN);
        out.resize(reserve, 0);
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&iv);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(&self.id),
                &mut out[start..],
            )
            .expect("AES-GCM encryption of an in-memory buffer");
        out.extend_from_slice(tag.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, written from the wire description above.
    fn open(key: &[u8; 32], frame: &[u8]) -> Option<(Vec<u8>, [u8; ID_LEN], u64)> {
        let body = frame.strip_prefix(PREFIX)?;
        if body.len() < ID_LEN + IV_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = body.split_at(ID_LEN);
        let (iv, sealed) = rest.split_at(IV_LEN);
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
        let mut buf = sealed.to_vec();
        let iv: [u8; IV_LEN] = iv.try_into().ok()?;
        let n = aead
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(id), &mut buf)
            .ok()?
            .len();
        buf.truncate(n);
        Some((
            buf,
            id.try_into().ok()?,
            u64::from_be_bytes(iv[4..].try_into().ok()?),
        ))
    }

    #[test]
    fn announce_carries_the_key_and_frames_open_under_it_in_order() {
        let k = BatchKey::new();
        let v: serde_json::Value = serde_json::from_slice(k.announce()).unwrap();
        assert_eq!(v["t"], "batch_key");
        let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(v["p"]["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let id = v["p"]["id"].as_str().unwrap();
        let a = k.seal(b"{\"n\":1}", 0);
        let b = k.seal(b"{\"n\":2}", 3);
        assert_eq!(&b[..3], &[0, 0, 0]);
        let (pa, ida, na) = open(&raw, &a).unwrap();
        let (pb, _, nb) = open(&raw, &b[3..]).unwrap();
        assert_eq!(
            (pa.as_slice(), pb.as_slice()),
            (&b"{\"n\":1}"[..], &b"{\"n\":2}"[..])
        );
        assert_eq!(
            ida.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            id
        );
        assert!(nb > na, "nonces count up: {na} then {nb}");
    }

    #[test]
    fn tampering_another_key_or_another_id_fails() {
        let k = BatchKey::new();
        let v: serde_json::Value = serde_json::from_slice(k.announce()).unwrap();
        let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(v["p"]["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let f = k.seal(b"payload", 0);
        let mut t = f.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(open(&raw, &t).is_none());
        // The id is authenticated: the same ciphertext under another id does not open.
        let mut t = f.clone();
        t[2] ^= 1;
        assert!(open(&raw, &t).is_none());
        assert!(open(&[7u8; 32], &f).is_none());
        // Two keys never share an id or a key.
        let other = BatchKey::new();
        assert_ne!(other.id, k.id);
        assert_ne!(other.announce(), k.announce());
    }
}
