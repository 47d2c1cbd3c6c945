//! The client side of two WSE encodings, for measuring their cost: E2E encryption (ECDH P-256
//! in `client_hello`/`server_hello`, HKDF-SHA256, `E:` + IV + AES-GCM-256) and zlib (`C:`).
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

pub fn client_hello() -> Hello {
    let secret = EphemeralSecret::random(&mut OsRng);
    let public = base64::engine::general_purpose::STANDARD.encode(secret.public_key().to_encoded_point(false).as_bytes());
    let message = json!({"c":"WSE","t":"client_hello","p":{
        "client_version":"wse-loadgen","protocol_version":2,
        "features":{"encryption":true,"compression":false},
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

/// Opens an `E:` frame; `None` if it does not authenticate.
#[inline(never)]
pub fn open(key: &LessSafeKey, data: &[u8]) -> Option<Vec<u8>> {
    let body = data.strip_prefix(b"E:")?;
    if body.len() < 28 {
        return None;
    }
    let (iv, sealed) = body.split_at(12);
    let iv: [u8; 12] = iv.try_into().ok()?;
    let mut buf = sealed.to_vec();
    let n = key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf).ok()?.len();
    buf.truncate(n);
    Some(buf)
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

/// A frame's plain content: decrypted or inflated when it is `E:` or `C:`, else itself.
pub fn plain<'a>(key: Option<&LessSafeKey>, data: &'a [u8], buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    if data.starts_with(b"E:") {
        *buf = open(key?, data)?;
        return Some(buf);
    }
    if data.starts_with(b"C:") {
        *buf = inflate(data)?;
        return Some(buf);
    }
    Some(data)
}
