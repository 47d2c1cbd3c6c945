//! permessage-deflate (RFC 7692): the handshake's negotiation, the bounded inflation of what
//! clients send, and the compression of what the server sends.
//!
//! The server always answers `server_no_context_takeover`: each outgoing message is compressed
//! on its own, so the compressed frame of a publication depends only on the message and the
//! window size, and is built once and shared by every subscriber with that window (see
//! `outgoing::OutMsg::deflated`). Inbound, clients keep their context unless the configuration
//! asks them not to (`deflate_client_context_takeover`); without it the server drops its
//! inflater after each message, so an idle connection holds no window.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{header_len, put_header};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// The bit a compressed message's first frame carries.
pub const RSV1: u8 = 0x40;

/// What the engine's configuration allows (from `Config`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Let clients keep their LZ77 window between messages (the server then keeps an inflater
    /// per connection); false answers `client_no_context_takeover`.
    pub client_context_takeover: bool,
    /// Messages shorter than this go out uncompressed.
    pub threshold: usize,
    pub level: u8,
}

/// What one connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Window of outbound compression, 9..=15; 0: outbound messages go uncompressed (the client
    /// asked for a 256-byte window, which zlib cannot produce; RFC 7692 lets a sender not compress).
    pub server_bits: u8,
    /// The client resets its window after each message: the inflater is dropped after each.
    pub client_no_context: bool,
    pub threshold: u32,
    pub level: u8,
}

impl Params {
    /// Outbound messages are compressed at all.
    pub fn compresses(&self) -> bool {
        self.server_bits != 0
    }

    /// Index of this parameter set among those that produce different bytes (the window).
    pub fn key(&self) -> usize {
        (self.server_bits.clamp(9, 15) - 9) as usize
    }
}

/// Parameter sets that produce different compressed bytes (windows 9..=15).
pub const KEYS: usize = 7;

/// A window size value: `8`..`15`, digits only, no leading zero, optionally quoted.
fn window_bits(v: &str) -> Option<u8> {
    let v = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v);
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Splits a header value on `sep` outside quoted strings.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// One `permessage-deflate` offer, validated (RFC 7692 section 7.1): `None` when it must be
/// declined (an unknown or repeated parameter, a bad value).
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context: bool,
    client_no_context: bool,
    server_bits: Option<u8>,
    /// `client_max_window_bits` was present (with or without a value).
    client_bits: Option<Option<u8>>,
}

fn parse_offer(params: &[&str]) -> Option<Offer> {
    let mut o = Offer::default();
    for p in params {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        match (k.to_ascii_lowercase().as_str(), v) {
            ("server_no_context_takeover", None) if !o.server_no_context => o.server_no_context = true,
            ("client_no_context_takeover", None) if !o.client_no_context => o.client_no_context = true,
            ("server_max_window_bits", Some(v)) if o.server_bits.is_none() => o.server_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) if o.client_bits.is_none() => o.client_bits = Some(None),
            ("client_max_window_bits", Some(v)) if o.client_bits.is_none() => o.client_bits = Some(Some(window_bits(v)?)),
            _ => return None,
        }
    }
    Some(o)
}

/// Picks the first acceptable `permessage-deflate` offer among the values of the request's
/// `Sec-WebSocket-Extensions` headers (in order). Returns what was agreed and the response
/// header's value; `None` when there is no acceptable offer (the connection goes uncompressed).
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>, s: &Settings) -> Option<(Params, String)> {
    for value in headers {
        for ext in split_outside_quotes(value, ',') {
            let parts = split_outside_quotes(ext, ';');
            if !parts[0].trim().eq_ignore_ascii_case(NAME) {
                continue;
            }
            let Some(o) = parse_offer(&parts[1..]) else { continue };
            let client_no_context = o.client_no_context || !s.client_context_takeover;
            let mut resp = format!("{NAME}; server_no_context_takeover");
            if client_no_context {
                resp.push_str("; client_no_context_takeover");
            }
            let server_bits = match o.server_bits {
                Some(b) => {
                    resp.push_str(&format!("; server_max_window_bits={b}"));
                    if b < 9 {
                        0
                    } else {
                        b
                    }
                }
                None => 15,
            };
            // `client_max_window_bits` needs no answer: the inflater's 32 KiB window reads any size.
            let p = Params { server_bits, client_no_context, threshold: s.threshold.min(u32::MAX as usize) as u32, level: s.level };
            return Some((p, resp));
        }
    }
    None
}

/// Why an inbound compressed message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Its inflated size passed the message cap (inflation stopped there).
    TooLarge,
    /// Not valid DEFLATE data.
    Corrupt,
}

/// The empty stored block every message's data lacks (RFC 7692 section 7.2.2).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// The inbound side of one connection.
pub struct Inflater {
    z: Option<Box<Decompress>>,
    /// The client keeps its window between messages, so must we.
    keep: bool,
}

impl Inflater {
    pub fn new(p: &Params) -> Self {
        Self { z: None, keep: !p.client_no_context }
    }

    /// Inflates one message, refusing it as soon as its output passes `max` bytes: the cost of a
    /// bomb is bounded by the cap, never by what it would inflate to.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let z = self.z.get_or_insert_with(|| Box::new(Decompress::new(false)));
        let r = inflate_capped(z, data, max);
        if r.is_err() || !self.keep {
            // After an error the connection is closing; without context takeover the next
            // message starts afresh, and an idle connection should hold no window.
            self.z = None;
        }
        r
    }
}

fn inflate_capped(z: &mut Decompress, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let cap = max.saturating_add(1);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).max(64).min(cap));
    for input in [data, &TAIL[..]] {
        let mut pos = 0;
        loop {
            let (in0, out0) = (z.total_in(), z.total_out());
            let st = z.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
            pos += (z.total_in() - in0) as usize;
            if out.len() > max {
                return Err(InflateError::TooLarge);
            }
            if st == Status::StreamEnd {
                // A final block ends the stream: the rest of the message must be empty, and the
                // next message starts a new stream.
                z.reset(false);
                if pos < input.len() && input != TAIL {
                    return Err(InflateError::Corrupt);
                }
                return Ok(out);
            }
            let progressed = z.total_in() != in0 || z.total_out() != out0;
            if out.len() == out.capacity() {
                out.reserve((out.capacity()).min(cap - out.len()).max(1));
            } else if pos == input.len() || !progressed {
                break;
            }
        }
        if pos < input.len() {
            return Err(InflateError::Corrupt);
        }
    }
    Ok(out)
}

thread_local! {
    /// One compressor per window size and level, reset between messages (a new one is a
    /// 256 KiB allocation).
    static COMPRESSORS: RefCell<Vec<(u8, u8, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// Compresses `payload` on its own (no context) into the payload of one message, without the
/// trailing `00 00 ff ff`, after `reserve` free bytes.
pub fn compress(payload: &[u8], bits: u8, level: u8, reserve: usize) -> Vec<u8> {
    COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let i = match cs.iter().position(|(b, l, _)| *b == bits && *l == level) {
            Some(i) => i,
            None => {
                cs.push((bits, level, Compress::new_with_window_bits(Compression::new(level.min(9) as u32), false, bits)));
                cs.len() - 1
            }
        };
        let z = &mut cs[i].2;
        z.reset();
        let mut out = Vec::with_capacity(reserve + payload.len() + payload.len() / 16 + 32);
        out.resize(reserve, 0);
        let mut pos = 0;
        loop {
            let in0 = z.total_in();
            z.compress_vec(&payload[pos..], &mut out, FlushCompress::Sync).expect("deflate into a Vec");
            pos += (z.total_in() - in0) as usize;
            if pos == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// A compressed message frame (FIN and RSV1 set) from a buffer whose first `reserve` bytes
/// are free, as `compress` leaves it.
pub fn frame(opcode: u8, mut v: Vec<u8>, reserve: usize) -> Bytes {
    let len = v.len() - reserve;
    let h = header_len(len);
    let mut hdr = BytesMut::with_capacity(h);
    put_header(&mut hdr, opcode, len);
    hdr[0] |= RSV1;
    let start = reserve - h;
    v[start..reserve].copy_from_slice(&hdr);
    let mut b = Bytes::from(v);
    let _ = b.split_to(start);
    b
}

/// The opcode and payload of a frame the server built (FIN set, unmasked).
pub fn parse_own(f: &[u8]) -> (u8, &[u8]) {
    let hdr = match f[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (f[0] & 0x0f, &f[hdr..])
}

#[cfg(test)]
mod tests {
    use super::super::frame::{Decoder, Event, OP_BINARY, OP_CONT, OP_PING, OP_TEXT};
    use super::*;

    const S: Settings = Settings { client_context_takeover: true, threshold: 0, level: 6 };

    fn neg(h: &str) -> Option<(Params, String)> {
        negotiate([h], &S)
    }

    #[test]
    fn negotiation() {
        let (p, r) = neg("permessage-deflate").unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
        assert_eq!((p.server_bits, p.client_no_context), (15, false));
        // A browser's offer.
        let (p, r) = neg("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!((p.server_bits, r.as_str()), (15, "permessage-deflate; server_no_context_takeover"));
        let (p, r) = neg("permessage-deflate; client_no_context_takeover; server_max_window_bits=10").unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10");
        assert_eq!((p.server_bits, p.client_no_context), (10, true));
        let (p, _) = neg("permessage-deflate; server_max_window_bits=8").unwrap();
        assert!(!p.compresses());
        let (_, r) = neg("PerMessage-Deflate; Server_No_Context_Takeover; client_max_window_bits=\"12\"").unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
        // The server may ask clients not to keep their context.
        let strict = Settings { client_context_takeover: false, ..S };
        let (p, r) = negotiate(["permessage-deflate"], &strict).unwrap();
        assert!(p.client_no_context && r.ends_with("client_no_context_takeover"));
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(neg(bad), None, "{bad}");
        }
        let (p, _) = neg("permessage-deflate; bogus, permessage-deflate; server_max_window_bits=12").unwrap();
        assert_eq!(p.server_bits, 12);
        // Offers spread over several headers, other extensions before.
        let (p, _) = negotiate(["foo; a=\"x,y\"", "permessage-deflate; server_max_window_bits=11"], &S).unwrap();
        assert_eq!(p.server_bits, 11);
    }

    fn params(client_no_context: bool) -> Params {
        Params { server_bits: 15, client_no_context, threshold: 0, level: 6 }
    }

    #[test]
    fn round_trip_without_and_with_context() {
        let msg = br#"{"t":"price","p":{"sym":"ABC","px":101.25,"qty":300}}"#;
        for bits in 9..=15 {
            let c = compress(msg, bits, 6, 0);
            let mut inf = Inflater::new(&params(true));
            assert_eq!(inf.inflate(&c, 1 << 20).unwrap(), msg);
            assert!(inf.z.is_none(), "no window kept without context takeover");
        }
        // A client that keeps its context: the second message refers back to the first.
        let mut zc = Compress::new(Compression::default(), false);
        let mut inf = Inflater::new(&params(false));
        for _ in 0..3 {
            let mut out = Vec::with_capacity(256);
            zc.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
            assert!(out.ends_with(&TAIL));
            out.truncate(out.len() - 4);
            assert_eq!(inf.inflate(&out, 1 << 20).unwrap(), msg);
        }
        assert!(inf.z.is_some());
        // Empty messages and the one-byte empty block.
        assert_eq!(inf.inflate(&compress(b"", 15, 6, 0), 10).unwrap(), b"");
        assert_eq!(Inflater::new(&params(true)).inflate(&[0x00], 10).unwrap(), b"");
    }

    #[test]
    fn bomb_stops_at_the_cap() {
        let zeros = vec![0u8; 32 << 20];
        let c = compress(&zeros, 15, 9, 0);
        assert!(c.len() < 64 << 10, "{}", c.len());
        let mut inf = Inflater::new(&params(false));
        assert_eq!(inf.inflate(&c, 1 << 20), Err(InflateError::TooLarge));
        assert_eq!(Inflater::new(&params(true)).inflate(b"\xff\xff\xff garbage", 1 << 20), Err(InflateError::Corrupt));
        // Exactly at the cap is fine.
        let c = compress(&zeros[..1000], 15, 6, 0);
        assert_eq!(Inflater::new(&params(true)).inflate(&c, 1000).unwrap().len(), 1000);
        assert_eq!(Inflater::new(&params(true)).inflate(&c, 999), Err(InflateError::TooLarge));
    }

    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut v = vec![b0, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        v.extend_from_slice(payload);
        v
    }

    fn decode(frames: &[Vec<u8>], max: usize) -> Result<Vec<Event>, u16> {
        let mut d = Decoder::new(max).with_deflate(Some(Inflater::new(&params(true))));
        let mut buf = BytesMut::from(&frames.concat()[..]);
        let mut out = vec![];
        while let Some(e) = d.next(&mut buf).map_err(|v| v.code)? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn decoder_inflates_rsv1_messages_and_enforces_the_rules() {
        let msg = b"hello hello hello hello";
        let c = compress(msg, 15, 6, 0);
        // Whole, and in fragments with a ping between: RSV1 on the first frame only.
        assert_eq!(decode(&[client_frame(0x80 | RSV1 | OP_TEXT, &c)], 100), Ok(vec![Event::Text(Bytes::from_static(msg))]));
        let frags = [client_frame(RSV1 | OP_BINARY, &c[..3]), client_frame(0x80 | OP_PING, b""), client_frame(0x80 | OP_CONT, &c[3..])];
        assert_eq!(decode(&frags, 100), Ok(vec![Event::Ping(Bytes::new()), Event::Binary(Bytes::from_static(msg))]));
        // Uncompressed messages still pass.
        assert_eq!(decode(&[client_frame(0x81, b"plain")], 100), Ok(vec![Event::Text(Bytes::from_static(b"plain"))]));
        // RSV1 on a control frame or a continuation, RSV2: 1002. Too big once inflated: 1009.
        assert_eq!(decode(&[client_frame(0x80 | RSV1 | OP_PING, b"")], 100), Err(1002));
        assert_eq!(decode(&[client_frame(RSV1 | OP_TEXT, &c[..3]), client_frame(0x80 | RSV1 | OP_CONT, &c[3..])], 100), Err(1002));
        assert_eq!(decode(&[client_frame(0x80 | 0x20 | OP_TEXT, b"x")], 100), Err(1002));
        assert_eq!(decode(&[client_frame(0x80 | RSV1 | OP_TEXT, &c)], msg.len() - 1), Err(1009));
        // Inflated text must be UTF-8; without the extension RSV1 is an error.
        assert_eq!(decode(&[client_frame(0x80 | RSV1 | OP_TEXT, &compress(b"\xff\xfe", 15, 6, 0))], 100), Err(1007));
        let mut plain = Decoder::new(100);
        let mut buf = BytesMut::from(&client_frame(0x80 | RSV1 | OP_TEXT, &c)[..]);
        assert_eq!(plain.next(&mut buf).unwrap_err().code, 1002);
    }

    #[test]
    fn frames_carry_rsv1() {
        let c = compress(&[b'a'; 300], 15, 6, 10);
        let f = frame(OP_TEXT, c.clone(), 10);
        assert_eq!(f[0], 0x80 | RSV1 | 0x1);
        let (op, p) = parse_own(&f);
        assert_eq!((op, p), (1, &c[10..]));
        let big = compress(&vec![7u8; 70_000], 15, 0, 10); // level 0: stored, longer than 65535
        let f = frame(2, big, 10);
        assert_eq!(f[1], 127);
    }
}
