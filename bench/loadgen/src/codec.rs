//! RFC 6455 framing, client side: masked frames out, unmasked server frames in.
//!
//! Encoding appends to a caller's buffer (many frames can be gathered into one write).
//! Decoding works in place on a byte slice and never copies a payload: `parse` returns the
//! header of the next complete frame and where its payload lies.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A small, fast PRNG (xorshift64*) for masking keys: unpredictable enough for a load
/// generator, and far cheaper than a system call per frame.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        let s = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t) | 1;
        Rng(s)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[inline]
    pub fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// XOR `data` with the 4-byte `key`, the key's phase starting at byte 0 of `data`.
/// Eight bytes at a time; the compiler vectorises the main loop.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k32 = u32::from_ne_bytes(key) as u64;
    let k64 = k32 | (k32 << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Append one complete (FIN) masked frame with `opcode` and `payload` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    let len = payload.len();
    out.reserve(len + 14);
    out.push(0x80 | (opcode & 0x0F));
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// A close frame's payload: the code, then a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(reason.as_bytes());
    v
}

/// The header of one complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a compressed message's first frame (permessage-deflate; the caller refuses it
    /// when the extension was not agreed).
    pub rsv1: bool,
    pub opcode: u8,
    /// Offset of the payload from the frame's start.
    pub header_len: usize,
    pub payload_len: usize,
    /// Server frames must not be masked; a masked one is reported with its key (and unmasked
    /// by the caller) rather than refused, so that a broken peer is counted, not fatal.
    pub mask: Option<[u8; 4]>,
}

impl Frame {
    #[inline]
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// RSV2 or RSV3 set (no extension uses them) or an unknown opcode.
    Protocol(&'static str),
    /// Declared length beyond the caller's limit.
    TooBig(u64),
}

/// Parse the frame at the start of `buf`. `Ok(None)`: not all of it is here yet.
#[inline]
pub fn parse(buf: &[u8], max_payload: u64) -> Result<Option<Frame>, ParseError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x30 != 0 {
        return Err(ParseError::Protocol("reserved bits set"));
    }
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(ParseError::Protocol("unknown opcode")),
    }
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let len7 = (b1 & 0x7F) as u64;
    let (len, mut hl) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4usize)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10usize)
        }
        n => (n, 2usize),
    };
    if opcode & 0x08 != 0 && (len > 125 || !fin) {
        return Err(ParseError::Protocol("bad control frame"));
    }
    if len > max_payload {
        return Err(ParseError::TooBig(len));
    }
    let mask = if masked {
        if buf.len() < hl + 4 {
            return Ok(None);
        }
        let k = [buf[hl], buf[hl + 1], buf[hl + 2], buf[hl + 3]];
        hl += 4;
        Some(k)
    } else {
        None
    };
    let len = len as usize;
    if buf.len() < hl + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        rsv1: b0 & 0x40 != 0,
        opcode,
        header_len: hl,
        payload_len: len,
        mask,
    }))
}

/// The code of a close frame's payload (1005 when it has none).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask_roundtrip(payload: &[u8]) {
        let mut out = Vec::new();
        let key = [0x37, 0xfa, 0x21, 0x3d];
        encode_frame(&mut out, OP_TEXT, payload, key);
        let f = parse(&out, u64::MAX).unwrap().unwrap();
        assert!(f.fin);
        assert_eq!(f.opcode, OP_TEXT);
        assert_eq!(f.payload_len, payload.len());
        assert_eq!(f.total_len(), out.len());
        assert_eq!(f.mask, Some(key));
        let mut p = out[f.header_len..].to_vec();
        apply_mask(&mut p, key);
        assert_eq!(p, payload);
    }

    #[test]
    fn rfc6455_masked_hello() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn roundtrip_all_length_forms() {
        for n in [0usize, 1, 7, 8, 9, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
            unmask_roundtrip(&payload);
        }
    }

    #[test]
    fn parse_unmasked_server_frames() {
        // RFC 6455 section 5.7 examples.
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let f = parse(&hello, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, f.header_len, f.payload_len, f.mask),
            (true, OP_TEXT, 2, 5, None)
        );
        // Fragmented: "Hel" then continuation "lo".
        let f1 = parse(&[0x01, 0x03, 0x48, 0x65, 0x6c], 1 << 20)
            .unwrap()
            .unwrap();
        assert!(!f1.fin);
        assert_eq!(f1.opcode, OP_TEXT);
        let f2 = parse(&[0x80, 0x02, 0x6c, 0x6f], 1 << 20).unwrap().unwrap();
        assert!(f2.fin);
        assert_eq!(f2.opcode, OP_CONT);
        // Unmasked ping "Hello".
        let ping = parse(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], 125)
            .unwrap()
            .unwrap();
        assert_eq!(ping.opcode, OP_PING);
        // 256 bytes binary, 16-bit length.
        let mut b = vec![0x82, 0x7E, 0x01, 0x00];
        b.extend(std::iter::repeat(0u8).take(256));
        let f = parse(&b, 1 << 20).unwrap().unwrap();
        assert_eq!((f.opcode, f.header_len, f.payload_len), (OP_BINARY, 4, 256));
        // 64 KiB binary, 64-bit length.
        let mut b = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        b.extend(std::iter::repeat(0u8).take(65536));
        let f = parse(&b, 1 << 20).unwrap().unwrap();
        assert_eq!((f.header_len, f.payload_len), (10, 65536));
    }

    #[test]
    fn parse_incomplete_and_errors() {
        assert_eq!(parse(&[0x81], 100), Ok(None));
        assert_eq!(parse(&[0x81, 0x05, 0x48], 100), Ok(None));
        assert_eq!(parse(&[0x82, 0x7E, 0x01], 1000), Ok(None));
        assert_eq!(
            parse(&[0x82, 0x7E, 0x01, 0x00], 100),
            Err(ParseError::TooBig(256))
        );
        assert!(matches!(
            parse(&[0xA1, 0x00], 100),
            Err(ParseError::Protocol(_))
        ));
        assert!(parse(&[0xC1, 0x00], 100).unwrap().unwrap().rsv1);
        assert!(matches!(
            parse(&[0x83, 0x00], 100),
            Err(ParseError::Protocol(_))
        ));
        // Control frames: not fragmented, at most 125 bytes.
        assert!(matches!(
            parse(&[0x09, 0x00], 100),
            Err(ParseError::Protocol(_))
        ));
        assert!(matches!(
            parse(&[0x89, 0x7E, 0x00, 0x80], 1000),
            Err(ParseError::Protocol(_))
        ));
    }

    #[test]
    fn mask_matches_bytewise_xor() {
        let key = [1u8, 2, 3, 250];
        for n in 0..40 {
            let orig: Vec<u8> = (0..n).map(|i| (i * 13) as u8).collect();
            let mut fast = orig.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = orig
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = vec![0x82, 0x02, b'a', b'b', 0x89, 0x00, 0x81, 0x01, b'c', 0x81];
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(f) = parse(&buf[at..], 100).unwrap() {
            frames.push((
                f.opcode,
                buf[at + f.header_len..at + f.total_len()].to_vec(),
            ));
            at += f.total_len();
        }
        assert_eq!(
            frames,
            vec![
                (OP_BINARY, b"ab".to_vec()),
                (OP_PING, vec![]),
                (OP_TEXT, b"c".to_vec())
            ]
        );
        assert_eq!(at, 9);
        buf.drain(..at);
        assert_eq!(parse(&buf, 100), Ok(None));
    }
}
