//! zlib for large messages (`C:` + zlib on the wire) and capped inflation of what clients send:
//! a compression bomb is refused once its output passes the cap, never inflated in full.

use std::io::{Read, Write};

use flate2::read::{DeflateDecoder, ZlibDecoder};
use flate2::write::ZlibEncoder;
use flate2::Compression;

pub const PREFIX: &[u8; 2] = b"C:";

#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Neither zlib nor raw deflate.
    Corrupt,
    /// The output would exceed the cap.
    TooLarge,
}

/// `C:` + zlib of `body`, after `reserve` free bytes.
pub fn compress(body: &[u8], level: u32, reserve: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(reserve + 2 + body.len() / 2 + 16);
    out.resize(reserve, 0);
    out.extend_from_slice(PREFIX);
    let mut enc = ZlibEncoder::new(out, Compression::new(level.min(9)));
    enc.write_all(body).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

/// Inflates zlib (or raw deflate) data, refusing output over `cap` bytes.
pub fn inflate(data: &[u8], cap: usize) -> Result<Vec<u8>, InflateError> {
    match read_capped(ZlibDecoder::new(data), cap) {
        Err(InflateError::Corrupt) => read_capped(DeflateDecoder::new(data), cap),
        r => r,
    }
}

fn read_capped(r: impl Read, cap: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let n = r.take(cap as u64 + 1).read_to_end(&mut out).map_err(|_| InflateError::Corrupt)?;
    if n > cap {
        return Err(InflateError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bomb() {
        let body = br#"{"t":"x","p":{"text":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#.repeat(40);
        let c = compress(&body, 6, 3);
        assert_eq!(&c[3..5], PREFIX);
        assert!(c.len() < body.len() / 4);
        assert_eq!(inflate(&c[5..], 1 << 20).unwrap(), body);
        // 64 MiB of zeros compresses to about 64 KiB; the cap stops it at 1 MiB + 1 byte.
        let bomb = compress(&vec![0u8; 64 << 20], 9, 0);
        assert_eq!(inflate(&bomb[2..], 1 << 20), Err(InflateError::TooLarge));
        assert_eq!(inflate(b"not zlib at all", 1 << 20), Err(InflateError::Corrupt));
        // Raw deflate is accepted too.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(b"{\"a\":1}").unwrap();
        assert_eq!(inflate(&e.finish().unwrap(), 100).unwrap(), b"{\"a\":1}");
    }
}
