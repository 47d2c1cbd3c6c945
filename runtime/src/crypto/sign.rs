//! HMAC-SHA256 message signing. The signature covers the envelope's JSON bytes without the
//! signature member, which is always the last one: `{...,"sig":"<base64>"}`. So a signer adds
//! it by replacing the closing brace, and a verifier removes it to get the signed bytes back.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MEMBER: &[u8] = b",\"sig\":\"";

#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SigError {
    Missing,
    Invalid,
}

impl Signer {
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < 32 {
            return Err("signing_key must be at least 32 bytes".into());
        }
        Ok(Self { mac: Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())? })
    }

    fn tag(&self, data: &[u8]) -> String {
        let mut m = self.mac.clone();
        m.update(data);
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    }

    /// Signs the JSON object in `buf[from..]` in place, appending the `sig` member.
    pub fn sign(&self, buf: &mut Vec<u8>, from: usize) {
        if buf.len() <= from || buf.last() != Some(&b'}') {
            return;
        }
        let sig = self.tag(&buf[from..]);
        buf.pop();
        buf.extend_from_slice(MEMBER);
        buf.extend_from_slice(sig.as_bytes());
        buf.extend_from_slice(b"\"}");
    }

    /// Checks a signed JSON object (trailing whitespace allowed).
    pub fn verify(&self, data: &[u8]) -> Result<(), SigError> {
        let end = data.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        let data = &data[..end];
        let Some(start) = memchr::memmem::rfind(data, MEMBER) else { return Err(SigError::Missing) };
        let tail = &data[start + MEMBER.len()..];
        let Some(sig) = tail.strip_suffix(b"\"}") else { return Err(SigError::Invalid) };
        let sig = base64::engine::general_purpose::STANDARD.decode(sig).map_err(|_| SigError::Invalid)?;
        let mut m = self.mac.clone();
        m.update(&data[..start]);
        m.update(b"}");
        m.verify_slice(&sig).map_err(|_| SigError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let s = Signer::new(&[7u8; 32]).unwrap();
        let mut b = b"xx{\"t\":\"a\",\"p\":{\"k\":1}}".to_vec();
        s.sign(&mut b, 2);
        assert!(b.ends_with(b"\"}"));
        let v: serde_json::Value = serde_json::from_slice(&b[2..]).unwrap();
        assert_eq!(v["sig"].as_str().unwrap().len(), 44);
        assert_eq!(s.verify(&b[2..]), Ok(()));
        let mut bad = b[2..].to_vec();
        bad[10] = b'b';
        assert_eq!(s.verify(&bad), Err(SigError::Invalid));
        assert_eq!(s.verify(b"{\"t\":\"a\"}"), Err(SigError::Missing));
        assert_eq!(Signer::new(&[1u8; 32]).unwrap().verify(&b[2..]), Err(SigError::Invalid));
        assert!(Signer::new(b"short").is_err());
    }
}
