//! An outgoing envelope in every encoding a subscriber may need, each built at most once:
//! the plain JSON frame (always), `C:` zlib (when large and compression is on), `M:` msgpack
//! (on first use by a msgpack subscriber), the compact JSON frame without `id` and `ts` (on first
//! use by a subscriber that asked for it). Encrypted connections seal the JSON body themselves.

use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;

use super::compress;
use super::deflate::{self, Params};
use super::frame::{self, frame_in_place, HEADER_ROOM};
use super::msgpack;

/// How a connection wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Json = 0,
    Msgpack = 1,
    /// Encryption is required and the key exchange has not happened: data waits.
    AwaitKey = 2,
    /// E2E encrypted: every frame is `E:` + AES-GCM of the JSON envelope.
    Sealed = 3,
}

impl Mode {
    pub fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Msgpack,
            2 => Mode::AwaitKey,
            3 => Mode::Sealed,
            _ => Mode::Json,
        }
    }
}

/// Compression settings applied when a message is built.
#[derive(Debug, Clone, Copy)]
pub struct Zip {
    pub threshold: usize,
    pub level: u32,
}

pub struct OutMsg {
    plain: Bytes,
    /// Length of the frame header at the front of `plain`.
    hdr: usize,
    zip: Option<Zip>,
    compressed: OnceLock<Option<Bytes>>,
    msgpack: OnceLock<Bytes>,
    /// Where `,"id":"…","ts":"…"` lies in the body (the compact envelope leaves it out).
    id_ts: Option<(u32, u32)>,
    /// The compact frame and its header length.
    compact: OnceLock<(Bytes, usize)>,
    /// permessage-deflate frames built so far, by (encoding, window): `None` when compressing
    /// did not make it smaller. Shared by every subscriber with the same parameters.
    deflated: Mutex<Vec<(u8, Option<Bytes>)>>,
    /// The topic offset (recovery), 0 for messages to one connection.
    pub offset: u64,
    /// When it was built (ms), for the recovery TTL.
    pub at_ms: u64,
}

impl OutMsg {
    /// `buf` is a JSON envelope after `HEADER_ROOM` free bytes (as `Envelope::encode` makes it).
    pub fn new(buf: Vec<u8>, opcode: u8, zip: Option<Zip>, offset: u64, at_ms: u64) -> OutMsg {
        let body_len = buf.len() - HEADER_ROOM;
        let zip = zip.filter(|z| body_len > z.threshold);
        let plain = frame_in_place(opcode, buf);
        let hdr = plain.len() - body_len;
        let id_ts = id_ts_span(&plain[hdr..]);
        OutMsg { plain, hdr, zip, compressed: OnceLock::new(), msgpack: OnceLock::new(), id_ts, compact: OnceLock::new(), deflated: Mutex::default(), offset, at_ms }
    }

    /// Bytes the application sends as they are: no compression, no msgpack conversion
    /// (only sealing, on an encrypted connection). `buf` starts with `HEADER_ROOM` free bytes.
    pub fn raw(buf: Vec<u8>, opcode: u8) -> OutMsg {
        let body_len = buf.len() - HEADER_ROOM;
        let plain = frame_in_place(opcode, buf);
        let hdr = plain.len() - body_len;
        OutMsg { msgpack: OnceLock::from(plain.clone()), plain, hdr, zip: None, compressed: OnceLock::new(), id_ts: None, compact: OnceLock::new(), deflated: Mutex::default(), offset: 0, at_ms: 0 }
    }

    /// The JSON envelope, unframed (what encryption seals).
    pub fn body(&self) -> &[u8] {
        &self.plain[self.hdr..]
    }

    /// The plain JSON frame, uncompressed.
    pub fn plain(&self) -> &Bytes {
        &self.plain
    }

    /// Bytes held in memory (for the recovery budget).
    pub fn size(&self) -> usize {
        let zipped = self.compressed.get().and_then(|c| c.as_ref()).map_or(0, |c| c.len());
        let compact = self.compact.get().filter(|(c, _)| c.as_ptr() != self.plain.as_ptr()).map_or(0, |(c, _)| c.len());
        let deflated: usize = self.deflated.lock().iter().map(|(_, f)| f.as_ref().map_or(0, |f| f.len())).sum();
        self.plain.len() + zipped + self.msgpack.get().map_or(0, |m| m.len()) + compact + deflated
    }

    /// The frame for a connection with permessage-deflate `p` in `mode` (JSON or msgpack):
    /// compressed on its own (no context), once per parameter set, when that makes it smaller
    /// (always with a threshold of 0).
    /// The flag says whether this call did the compression.
    /// `compact`: the compact JSON envelope (see `compact`).
    pub fn deflated(&self, mode: Mode, compact: bool, p: &Params) -> (Bytes, bool) {
        let compact = compact && mode == Mode::Json;
        let base = if compact { self.compact() } else { self.frame_for(mode) };
        let (opcode, payload) = deflate::parse_own(&base);
        if !p.compresses() || payload.len() < p.threshold as usize {
            return (base, false);
        }
        let key = (mode as u8) << 4 | u8::from(compact) << 3 | p.key() as u8;
        let mut cache = self.deflated.lock();
        if let Some((_, f)) = cache.iter().find(|(k, _)| *k == key) {
            return (f.clone().unwrap_or(base), false);
        }
        let c = deflate::compress(payload, p.server_bits, p.level, HEADER_ROOM);
        // A message that does not shrink goes uncompressed, unless the threshold is 0 (compress all).
        let f = (p.threshold == 0 || c.len() - HEADER_ROOM < payload.len()).then(|| deflate::frame(opcode, c, HEADER_ROOM));
        cache.push((key, f.clone()));
        (f.unwrap_or(base), true)
    }

    fn compact_parts(&self) -> &(Bytes, usize) {
        self.compact.get_or_init(|| {
            let Some((a, b)) = self.id_ts else { return (self.plain.clone(), self.hdr) };
            let body = self.body();
            let (a, b) = (a as usize, b as usize);
            let mut v = Vec::with_capacity(HEADER_ROOM + body.len() - (b - a));
            v.resize(HEADER_ROOM, 0);
            v.extend_from_slice(&body[..a]);
            v.extend_from_slice(&body[b..]);
            let body_len = v.len() - HEADER_ROOM;
            let f = frame_in_place(self.plain[0] & 0x0f, v);
            let hdr = f.len() - body_len;
            (f, hdr)
        })
    }

    /// The JSON frame in the compact envelope: without `id` and `ts` (the same frame when the
    /// envelope has none).
    pub fn compact(&self) -> Bytes {
        self.compact_parts().0.clone()
    }

    /// The compact envelope, unframed (what encryption seals for a compact connection).
    pub fn compact_body(&self) -> &[u8] {
        let (f, hdr) = self.compact_parts();
        &f[*hdr..]
    }

    /// The frame for a JSON connection that accepts `C:` frames: compressed when large (the
    /// full envelope), otherwise the plain or (`compact`) the compact frame.
    pub fn zipped(&self, compact: bool) -> Bytes {
        let uncompressed = || if compact { self.compact() } else { self.plain.clone() };
        let Some(z) = self.zip else { return uncompressed() };
        let c = self
            .compressed
            .get_or_init(|| {
                let c = frame_in_place(frame::OP_BINARY, compress::compress(self.body(), z.level, HEADER_ROOM));
                (c.len() < self.plain.len()).then_some(c)
            })
            .as_ref();
        c.cloned().unwrap_or_else(uncompressed)
    }

    /// The frame for a JSON or msgpack connection (uncompressed).
    pub fn frame_for(&self, mode: Mode) -> Bytes {
        match mode {
            Mode::Msgpack => self
                .msgpack
                .get_or_init(|| match msgpack::from_json(self.body(), HEADER_ROOM) {
                    Ok(v) => frame_in_place(frame::OP_BINARY, v),
                    // The application's payload was not JSON: it goes as it is.
                    Err(_) => self.plain.clone(),
                })
                .clone(),
            _ => self.plain.clone(),
        }
    }
}

/// The span of `,"id":"<uuid>","ts":"<time>"` in an envelope. `,"` cannot occur inside a JSON
/// string (a quote there is escaped), so the first match is the member itself.
fn id_ts_span(body: &[u8]) -> Option<(u32, u32)> {
    const ID: &[u8] = b",\"id\":\"";
    const TS: &[u8] = b"\",\"ts\":\"";
    // Built once: `memmem::find` would build its searcher on every call (once per publication).
    static FIND_ID: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(ID));
    let a = FIND_ID.find(body)?;
    let id_end = a + ID.len() + 36;
    if body.get(id_end..id_end + TS.len())? != TS {
        return None;
    }
    let ts = id_end + TS.len();
    let close = ts + memchr::memchr(b'"', body.get(ts..)?)?;
    Some((a as u32, (close + 1) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::envelope::Envelope;

    #[test]
    fn encodings() {
        let small = Envelope { category: "U", msg_type: "t", seq: 1, topic: None, stamp: None, cid: None, payload: b"{\"a\":1}" };
        let m = OutMsg::new(small.encode(HEADER_ROOM), frame::OP_BINARY, Some(Zip { threshold: 1024, level: 6 }), 0, 0);
        assert_eq!(m.frame_for(Mode::Json), m.plain);
        assert_eq!(m.zipped(false), m.plain);
        assert_eq!(m.zipped(true), m.compact());
        assert_eq!(m.body()[0], b'{');
        let mp = m.frame_for(Mode::Msgpack);
        assert_eq!(&mp[2..4], b"M:");

        let text = format!("{{\"text\":\"{}\"}}", "x".repeat(2000));
        let big = Envelope { category: "U", msg_type: "t", seq: 2, topic: Some("a"), stamp: Some((7, 2)), cid: None, payload: text.as_bytes() };
        let m = OutMsg::new(big.encode(HEADER_ROOM), frame::OP_BINARY, Some(Zip { threshold: 1024, level: 6 }), 2, 0);
        assert_eq!(m.frame_for(Mode::Json), m.plain);
        let f = m.zipped(true);
        assert!(f.len() < 200, "{}", f.len());
        // A 126..=65535-byte payload has a 4-byte frame header.
        assert_eq!(&f[4..6], b"C:");
        let body = compress::inflate(&f[6..], 1 << 20).unwrap();
        assert_eq!(body, m.body());
    }

    #[test]
    fn compact_drops_id_and_ts_only() {
        let e = Envelope { category: "U", msg_type: "a,\"id\":\"", seq: 3, topic: Some("t"), stamp: None, cid: None, payload: b"{\"id\":\"x\"}" };
        let m = OutMsg::new(e.encode(HEADER_ROOM), frame::OP_TEXT, None, 3, 0);
        let full: serde_json::Value = serde_json::from_slice(m.body()).unwrap();
        let c = m.compact();
        assert_eq!(c[0], 0x80 | frame::OP_TEXT);
        let body = m.compact_body();
        assert_eq!(&c[c.len() - body.len()..], body);
        let mut compact: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(compact.get("id").is_none() && compact.get("ts").is_none());
        assert_eq!(compact["p"]["id"], "x");
        assert_eq!(compact["t"], "a,\"id\":\"");
        compact["id"] = full["id"].clone();
        compact["ts"] = full["ts"].clone();
        assert_eq!(compact, full);
        assert_eq!(m.body().len() - body.len(), 76);
        // A raw message has no envelope to cut: the same frame.
        let raw = OutMsg::raw([vec![0; HEADER_ROOM], b"{\"id\":1}".to_vec()].concat(), frame::OP_TEXT);
        assert_eq!(raw.compact(), *raw.plain());
    }
}
