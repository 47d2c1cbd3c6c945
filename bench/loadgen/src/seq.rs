//! Finding a message's sequence number cheaply, and checking each subscriber's sequence.
//!
//! Fast path: a byte search for the key (`"s":` in JSON, the msgpack string `s` after an `M:`
//! prefix) and an integer parse, with no full decode. A small sample of the messages (each
//! subscriber's first and last, and every `verify_every`-th) is also decoded in full and must
//! carry the same number; a mismatch is counted as `verify_failed`.

use memchr::memmem::Finder;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Msgpack,
}

/// Extracts the sequence field from a message.
pub struct SeqFinder {
    format: Format,
    field: String,
    json_key: Finder<'static>,
    mp_key: Finder<'static>,
}

impl SeqFinder {
    pub fn new(field: &str, format: Format) -> SeqFinder {
        let json_key = Finder::new(format!("\"{field}\":").as_bytes()).into_owned();
        let mut mp = Vec::new();
        // msgpack string header for the key (fixstr up to 31 bytes, else str8).
        if field.len() < 32 {
            mp.push(0xa0 | field.len() as u8);
        } else {
            mp.push(0xd9);
            mp.push(field.len() as u8);
        }
        mp.extend_from_slice(field.as_bytes());
        SeqFinder {
            format,
            field: field.to_string(),
            json_key,
            mp_key: Finder::new(&mp).into_owned(),
        }
    }

    /// The sequence number of a data message, or None if it carries none (a control message).
    #[inline]
    pub fn find(&self, data: &[u8]) -> Option<i64> {
        match self.format {
            Format::Json => {
                let i = self.json_key.find(data)?;
                parse_int(&data[i + self.json_key.needle().len()..])
            }
            Format::Msgpack => {
                let body = data.strip_prefix(b"M:")?;
                let i = self.mp_key.find(body)?;
                parse_mp_int(&body[i + self.mp_key.needle().len()..])
            }
        }
    }

    /// `find`, trying first where the key was in this subscriber's previous message (`hint`):
    /// consecutive messages of a topic share their layout, so the search is usually skipped.
    #[inline]
    pub fn find_hinted(&self, data: &[u8], hint: &mut usize) -> Option<i64> {
        if self.format == Format::Json {
            let key = self.json_key.needle();
            let h = *hint;
            if data.len() > h + key.len() && &data[h..h + key.len()] == key {
                return parse_int(&data[h + key.len()..]);
            }
            let i = self.json_key.find(data)?;
            *hint = i;
            return parse_int(&data[i + key.len()..]);
        }
        self.find(data)
    }

    /// Decode the whole message and return (the sequence field it really carries, the document).
    /// The field is looked up as `p.<field>` first, then `<field>` at the top level.
    pub fn full(&self, data: &[u8]) -> Result<(Option<i64>, Value), String> {
        let v: Value = match self.format {
            Format::Json => serde_json::from_slice(data).map_err(|e| format!("json: {e}"))?,
            Format::Msgpack => {
                let body = data.strip_prefix(b"M:").ok_or("no M: prefix")?;
                rmp_serde::from_slice(body).map_err(|e| format!("msgpack: {e}"))?
            }
        };
        if !v.is_object() {
            return Err("not an object".into());
        }
        // The envelope's payload (`p`), the message itself, or a Centrifugo push's data.
        let s = v
            .get("p")
            .and_then(|p| p.get(&self.field))
            .or_else(|| v.get(&self.field))
            .or_else(|| v.pointer("/push/pub/data").and_then(|d| d.get(&self.field)))
            .and_then(|x| x.as_i64());
        Ok((s, v))
    }

    /// Decode any message (for control frames: acks, server_ready, bench.done).
    pub fn decode(&self, data: &[u8]) -> Option<Value> {
        match self.format {
            Format::Json => serde_json::from_slice(data).ok(),
            Format::Msgpack => match data.strip_prefix(b"M:") {
                Some(body) => rmp_serde::from_slice(body).ok(),
                None => serde_json::from_slice(data).ok(),
            },
        }
    }
}

/// A decimal integer at the start of `b` (after optional spaces). None if there are no digits
/// (e.g. the key's value is a string).
#[inline]
pub fn parse_int(b: &[u8]) -> Option<i64> {
    let mut i = 0;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    let neg = i < b.len() && b[i] == b'-';
    if neg {
        i += 1;
    }
    let start = i;
    let mut v: i64 = 0;
    while i < b.len() && b[i].is_ascii_digit() && i - start < 18 {
        v = v * 10 + (b[i] - b'0') as i64;
        i += 1;
    }
    if i == start {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// A msgpack integer at the start of `b`.
#[inline]
pub fn parse_mp_int(b: &[u8]) -> Option<i64> {
    let t = *b.first()?;
    let be = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        Some(s.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
    };
    Some(match t {
        0x00..=0x7f => t as i64,
        0xe0..=0xff => (t as i8) as i64,
        0xcc => be(1)? as i64,
        0xcd => be(2)? as i64,
        0xce => be(4)? as i64,
        0xcf => be(8)? as i64,
        0xd0 => be(1)? as u8 as i8 as i64,
        0xd1 => be(2)? as u16 as i16 as i64,
        0xd2 => be(4)? as u32 as i32 as i64,
        0xd3 => be(8)? as i64,
        _ => return None,
    })
}

/// One subscriber's view of a round: sequences `0 .. expected` must each arrive once, in order.
///
/// - duplicate: a sequence seen before in this round;
/// - gap: a sequence more than one past the highest so far (`gap_missing` adds up the skipped);
/// - reordered: a sequence below the highest so far that had not been seen (a late arrival);
/// - out_of_range: outside `0 .. expected`;
/// - missing (at the end): `expected - distinct`.
#[derive(Default, Clone, Debug)]
pub struct SeqCheck {
    pub expected: u64,
    bits: Vec<u64>,
    /// Highest sequence seen + 1.
    next: u64,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub gap_missing: u64,
    pub reordered: u64,
    pub out_of_range: u64,
}

impl SeqCheck {
    pub fn new(expected: u64) -> SeqCheck {
        let mut c = SeqCheck::default();
        c.reset(expected);
        c
    }

    pub fn reset(&mut self, expected: u64) {
        let words = expected.div_ceil(64) as usize;
        self.bits.clear();
        self.bits.resize(words, 0);
        *self = SeqCheck {
            expected,
            bits: std::mem::take(&mut self.bits),
            ..Default::default()
        };
    }

    /// The counters alone (no bitset): for reports.
    pub fn counts(&self) -> SeqCheck {
        SeqCheck {
            bits: Vec::new(),
            ..*self
        }
    }

    pub fn complete(&self) -> bool {
        self.distinct >= self.expected
    }

    pub fn missing(&self) -> u64 {
        self.expected - self.distinct
    }

    /// Record one delivery; returns true when it was the expected next one.
    #[inline]
    pub fn on(&mut self, s: i64) -> bool {
        self.received += 1;
        if s < 0 || s as u64 >= self.expected {
            self.out_of_range += 1;
            return false;
        }
        let s = s as u64;
        let (w, b) = ((s >> 6) as usize, 1u64 << (s & 63));
        if self.bits[w] & b != 0 {
            self.duplicates += 1;
            return false;
        }
        self.bits[w] |= b;
        self.distinct += 1;
        if s == self.next {
            self.next = s + 1;
            true
        } else if s > self.next {
            self.gaps += 1;
            self.gap_missing += s - self.next;
            self.next = s + 1;
            false
        } else {
            self.reordered += 1;
            false
        }
    }

    pub fn clean(&self) -> bool {
        self.duplicates == 0
            && self.gaps == 0
            && self.reordered == 0
            && self.out_of_range == 0
            && self.complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fast_path() {
        let f = SeqFinder::new("s", Format::Json);
        let msg = br#"{"c":"U","t":"tick","seq":17,"tp":"bench","p":{"s":16,"d":"xxx"},"v":1}"#;
        assert_eq!(f.find(msg), Some(16));
        let mut hint = 0;
        assert_eq!(f.find_hinted(msg, &mut hint), Some(16));
        assert_eq!(hint, 47);
        let msg2 = br#"{"c":"U","t":"tick","seq":18,"tp":"bench","p":{"s":17,"d":"xxx"},"v":1}"#;
        assert_eq!(f.find_hinted(msg2, &mut hint), Some(17));
        let msg3 = br#"{"c":"U","t":"tick","seq":100,"tp":"bench","p":{"s":99,"d":"xxx"},"v":1}"#;
        assert_eq!(f.find_hinted(msg3, &mut hint), Some(99));
        assert_eq!(hint, 48);
        assert_eq!(f.full(msg).unwrap().0, Some(16));
        assert_eq!(
            f.find(br#"{"t":"server_ready","p":{"server_time":"x"}}"#),
            None
        );
        assert_eq!(f.find(br#"{"p":{"published":3,"publish_s":0.1}}"#), None);
        assert_eq!(parse_int(b" -42,"), Some(-42));
        assert_eq!(parse_int(b"\"x\""), None);
    }

    #[test]
    fn msgpack_fast_path() {
        let f = SeqFinder::new("s", Format::Msgpack);
        for s in [0i64, 5, 127, 128, 255, 256, 65535, 65536, 1 << 33] {
            let v = serde_json::json!({"c": "U", "t": "tick", "p": {"s": s, "d": "xxxx"}});
            let mut data = b"M:".to_vec();
            data.extend(rmp_serde::to_vec_named(&v).unwrap());
            assert_eq!(f.find(&data), Some(s), "s = {s}");
            assert_eq!(f.full(&data).unwrap().0, Some(s));
        }
    }

    #[test]
    fn seq_check_classifies() {
        let mut c = SeqCheck::new(10);
        for s in [0, 1, 2, 2, 5, 3, 4, 6, 7, 8, 9, 12] {
            c.on(s);
        }
        assert_eq!(c.received, 12);
        assert_eq!(c.distinct, 10);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.gaps, 1);
        assert_eq!(c.gap_missing, 2);
        assert_eq!(c.reordered, 2);
        assert_eq!(c.out_of_range, 1);
        assert!(c.complete());
        assert!(!c.clean());
        c.reset(3);
        for s in 0..3 {
            assert!(c.on(s));
        }
        assert!(c.clean());
    }
}
