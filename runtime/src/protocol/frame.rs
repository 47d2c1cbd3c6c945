//! RFC 6455 frames. Server frames are built once into `Bytes` and shared; client frames are
//! parsed in place from the connection's read buffer and reassembled into messages.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::deflate::{self, InflateError, Inflater};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Builds an unmasked server frame (FIN set) in one allocation.
pub fn build(opcode: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut b, opcode, payload.len());
    b.extend_from_slice(payload);
    b.freeze()
}

/// Writes a FIN frame header for a payload of `len` bytes.
pub fn put_header(b: &mut BytesMut, opcode: u8, len: usize) {
    b.put_u8(0x80 | opcode);
    if len < 126 {
        b.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        b.put_u8(126);
        b.put_u16(len as u16);
    } else {
        b.put_u8(127);
        b.put_u64(len as u64);
    }
}

/// Size of the header `put_header` writes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    // Control frame payloads are at most 125 bytes; cut the reason on a char boundary.
    let mut r = reason;
    while r.len() > 123 {
        let mut end = 123;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    p.extend_from_slice(r.as_bytes());
    build(OP_CLOSE, &p)
}

/// A protocol violation; the connection is closed with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// What the parser produced from the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(Option<u16>),
}

fn unmask(data: &mut [u8], key: [u8; 4]) {
    let k64 = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().unwrap()) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Is `code` one a peer may send in a Close frame (RFC 6455 7.4)?
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Incremental reassembly of a (possibly fragmented) message, with UTF-8 checked as data arrives.
pub struct Decoder {
    max_message: usize,
    partial: Option<(u8, BytesMut)>,
    /// How far the partial text message is known to be valid UTF-8.
    utf8_checked: usize,
    /// permessage-deflate, when negotiated: messages whose first frame has RSV1 are inflated.
    deflate: Option<Inflater>,
    /// The partial message is compressed.
    compressed: bool,
}

enum Utf8 {
    Valid,
    Incomplete(usize),
    Invalid,
}

fn check_utf8(data: &[u8]) -> Utf8 {
    match simdutf8::compat::from_utf8(data) {
        Ok(_) => Utf8::Valid,
        Err(e) if e.error_len().is_none() => Utf8::Incomplete(e.valid_up_to()),
        Err(_) => Utf8::Invalid,
    }
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Self { max_message, partial: None, utf8_checked: 0, deflate: None, compressed: false }
    }

    /// Accepts compressed messages (RSV1 on a message's first frame) and inflates them.
    pub fn with_deflate(mut self, inflater: Option<Inflater>) -> Self {
        self.deflate = inflater;
        self
    }

    /// A whole message: inflated if it came compressed, and text checked for UTF-8 (`checked`:
    /// bytes already known valid).
    fn message(&mut self, op: u8, payload: BytesMut, compressed: bool, checked: bool) -> Result<Event, Violation> {
        let data = match (compressed, self.deflate.as_mut()) {
            (true, Some(inf)) => match inf.inflate(&payload, self.max_message) {
                Ok(v) => Bytes::from(v),
                Err(InflateError::TooLarge) => return Err(violation(1009, "message too big")),
                Err(InflateError::Corrupt) => return Err(violation(1007, "invalid compressed data")),
            },
            _ => payload.freeze(),
        };
        if op == OP_TEXT && !(checked && !compressed) && simdutf8::basic::from_utf8(&data).is_err() {
            return Err(violation(1007, "invalid UTF-8 in text message"));
        }
        Ok(if op == OP_TEXT { Event::Text(data) } else { Event::Binary(data) })
    }

    /// Parses one event from `buf`, consuming its bytes; `Ok(None)` when more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Violation> {
        loop {
            if buf.len() < 2 {
                return Ok(None);
            }
            let b0 = buf[0];
            let b1 = buf[1];
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0F;
            // RSV1 marks a compressed message, on its first frame only (RFC 7692 section 6).
            let rsv1 = b0 & 0x70 == deflate::RSV1 && self.deflate.is_some() && (opcode == OP_TEXT || opcode == OP_BINARY);
            if b0 & 0x70 != 0 && !rsv1 {
                return Err(violation(1002, "reserved bits set"));
            }
            if b1 & 0x80 == 0 {
                return Err(violation(1002, "client frames must be masked"));
            }
            let (len, hlen) = match b1 & 0x7F {
                126 => {
                    if buf.len() < 4 {
                        return Ok(None);
                    }
                    (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
                }
                127 => {
                    if buf.len() < 10 {
                        return Ok(None);
                    }
                    let l = u64::from_be_bytes(buf[2..10].try_into().unwrap());
                    if l >> 63 != 0 {
                        return Err(violation(1002, "invalid payload length"));
                    }
                    (l, 10)
                }
                n => (n as u64, 2),
            };
            let is_control = opcode & 0x8 != 0;
            if is_control {
                if !fin {
                    return Err(violation(1002, "fragmented control frame"));
                }
                if len > 125 {
                    return Err(violation(1002, "control frame too long"));
                }
            }
            match opcode {
                OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
                _ => return Err(violation(1002, "unknown opcode")),
            }
            if !is_control {
                let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len());
                if so_far as u64 + len > self.max_message as u64 {
                    return Err(violation(1009, "message too big"));
                }
                match (opcode, self.partial.is_some()) {
                    (OP_CONT, false) => return Err(violation(1002, "continuation without start")),
                    (OP_TEXT | OP_BINARY, true) => {
                        return Err(violation(1002, "new message inside a fragmented one"))
                    }
                    _ => {}
                }
            }
            let total = hlen + 4 + len as usize;
            if buf.len() < total {
                // Fail fast on invalid UTF-8 in an unfinished single text frame is not attempted;
                // the whole frame is checked once it is here.
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let key = [buf[hlen], buf[hlen + 1], buf[hlen + 2], buf[hlen + 3]];
            buf.advance(hlen + 4);
            let mut payload = buf.split_to(len as usize);
            unmask(&mut payload, key);
            match opcode {
                OP_PING => return Ok(Some(Event::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Event::Pong)),
                OP_CLOSE => {
                    if payload.is_empty() {
                        return Ok(Some(Event::Close(None)));
                    }
                    if payload.len() == 1 {
                        return Err(violation(1002, "close payload of one byte"));
                    }
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    if !valid_close_code(code) {
                        return Err(violation(1002, "invalid close code"));
                    }
                    if std::str::from_utf8(&payload[2..]).is_err() {
                        return Err(violation(1007, "close reason is not UTF-8"));
                    }
                    return Ok(Some(Event::Close(Some(code))));
                }
                _ => {}
            }
            // Data frame.
            if opcode != OP_CONT && fin {
                return self.message(opcode, payload, rsv1, false).map(Some);
            }
            if opcode != OP_CONT {
                self.partial = Some((opcode, payload));
                self.utf8_checked = 0;
                self.compressed = rsv1;
            } else {
                let (_, p) = self.partial.as_mut().unwrap();
                p.extend_from_slice(&payload);
            }
            let (op, p) = self.partial.as_ref().unwrap();
            if *op == OP_TEXT && !self.compressed {
                match check_utf8(&p[self.utf8_checked..]) {
                    Utf8::Valid => self.utf8_checked = p.len(),
                    Utf8::Incomplete(n) if !fin => self.utf8_checked += n,
                    _ => return Err(violation(1007, "invalid UTF-8 in text message")),
                }
            }
            if fin {
                let (op, p) = self.partial.take().unwrap();
                return self.message(op, p, self.compressed, true).map(Some);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut v = vec![(if fin { 0x80 } else { 0 }) | op];
        let n = payload.len();
        if n < 126 {
            v.push(0x80 | n as u8);
        } else if n < 65536 {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    fn parse_all(bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        let mut d = Decoder::new(1 << 20);
        let mut buf = BytesMut::from(bytes);
        let mut out = vec![];
        while let Some(e) = d.next(&mut buf)? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn text_binary_and_sizes() {
        for n in [0usize, 5, 125, 126, 65535, 65536, 200_000] {
            let p = vec![b'a'; n];
            let ev = parse_all(&client_frame(true, OP_TEXT, &p)).unwrap();
            assert_eq!(ev, vec![Event::Text(Bytes::from(p))]);
        }
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut v = client_frame(false, OP_TEXT, "héll".as_bytes());
        v.extend(client_frame(true, OP_PING, b"p"));
        v.extend(client_frame(true, OP_CONT, b"o"));
        let ev = parse_all(&v).unwrap();
        assert_eq!(ev, vec![Event::Ping(Bytes::from_static(b"p")), Event::Text(Bytes::from("héllo"))]);
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_but_invalid_fails() {
        let s = "κόσμε".as_bytes();
        let mut v = client_frame(false, OP_TEXT, &s[..3]);
        v.extend(client_frame(true, OP_CONT, &s[3..]));
        assert_eq!(parse_all(&v).unwrap(), vec![Event::Text(Bytes::copy_from_slice(s))]);
        let bad = client_frame(true, OP_TEXT, &[0xce, 0xba, 0xff]);
        assert_eq!(parse_all(&bad).unwrap_err().code, 1007);
        let mut v = client_frame(false, OP_TEXT, &[0xff]);
        v.extend(client_frame(true, OP_CONT, b"a"));
        assert_eq!(parse_all(&v).unwrap_err().code, 1007);
    }

    #[test]
    fn violations() {
        assert_eq!(parse_all(&client_frame(true, OP_CONT, b"x")).unwrap_err().code, 1002);
        assert_eq!(parse_all(&client_frame(false, OP_PING, b"x")).unwrap_err().code, 1002);
        assert_eq!(parse_all(&client_frame(true, 3, b"")).unwrap_err().code, 1002);
        assert_eq!(parse_all(&client_frame(true, OP_PING, &[0; 126])).unwrap_err().code, 1002);
        assert_eq!(parse_all(&client_frame(true, OP_CLOSE, &[3])).unwrap_err().code, 1002);
        assert_eq!(parse_all(&client_frame(true, OP_CLOSE, &999u16.to_be_bytes())).unwrap_err().code, 1002);
        let mut unmasked = client_frame(true, OP_TEXT, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(parse_all(&unmasked).unwrap_err().code, 1002);
        let mut d = Decoder::new(1000);
        let mut buf = BytesMut::from(&client_frame(true, OP_BINARY, &[0; 1001])[..]);
        assert_eq!(d.next(&mut buf).unwrap_err().code, 1009);
    }

    #[test]
    fn partial_input_waits() {
        let f = client_frame(true, OP_BINARY, &[7; 300]);
        let mut d = Decoder::new(1 << 20);
        let mut buf = BytesMut::from(&f[..100]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(&f[100..]);
        assert_eq!(d.next(&mut buf).unwrap(), Some(Event::Binary(Bytes::from(vec![7; 300]))));
    }

    #[test]
    fn server_frames() {
        assert_eq!(&build(OP_BINARY, b"hi")[..], &[0x82, 2, b'h', b'i']);
        let f = build(OP_TEXT, &[0; 70000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70010);
        assert_eq!(close_frame(1000, "")[..], [0x88, 2, 0x03, 0xe8]);
    }
}

/// Room `Envelope::encode` leaves at the front for the longest frame header.
pub const HEADER_ROOM: usize = 10;

/// Turns a buffer whose first `HEADER_ROOM` bytes are free into a frame, without copying the payload.
pub fn frame_in_place(opcode: u8, mut v: Vec<u8>) -> Bytes {
    let len = v.len() - HEADER_ROOM;
    let h = header_len(len);
    let start = HEADER_ROOM - h;
    let mut hdr = BytesMut::with_capacity(h);
    put_header(&mut hdr, opcode, len);
    v[start..HEADER_ROOM].copy_from_slice(&hdr);
    let mut b = Bytes::from(v);
    b.advance(start);
    b
}

#[cfg(test)]
mod in_place_tests {
    use super::*;

    #[test]
    fn in_place_matches_build() {
        for n in [3usize, 200, 70_000] {
            let mut v = vec![0u8; HEADER_ROOM];
            v.resize(HEADER_ROOM + n, b'z');
            assert_eq!(frame_in_place(OP_BINARY, v), build(OP_BINARY, &vec![b'z'; n]));
        }
    }
}
