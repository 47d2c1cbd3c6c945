//! permessage-deflate (RFC 7692), the client's receiving side: the offer a browser makes, the
//! server's answer, and one inflater per connection. The generator sends its own frames
//! uncompressed (allowed: compression is per message and optional).

use std::cell::RefCell;
use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress, Status};

thread_local! {
    /// Without context takeover a message inflates the same whatever came before, and a server
    /// that compresses a publication once sends the same bytes to every subscriber: what this
    /// thread inflated lately, by compressed bytes (emptied past `CACHE_BYTES`), so that the
    /// generator inflates each publication once, not once per subscriber.
    static CACHE: RefCell<(HashMap<Vec<u8>, Vec<u8>>, usize)> = RefCell::new((HashMap::new(), 0));
}
const CACHE_BYTES: usize = 64 << 20;

/// The offer, as browsers make it.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// One connection's inflater, set up from the server's `Sec-WebSocket-Extensions` answer.
pub struct Inflate {
    d: Decompress,
    /// `server_no_context_takeover`: every message starts a fresh window.
    pub no_context: bool,
    /// `server_max_window_bits` (15 when not said). A 15-bit window inflates any smaller one.
    pub window_bits: u8,
    out: Vec<u8>,
}

impl Inflate {
    /// The inflater the answer asks for; `None` when the server did not agree to the extension.
    pub fn from_answer(answer: &str) -> Result<Option<Inflate>, String> {
        let Some(ext) = answer
            .split(',')
            .find(|e| e.split(';').next().unwrap_or("").trim() == "permessage-deflate")
        else {
            return Ok(None);
        };
        let (mut no_context, mut window_bits) = (false, 15u8);
        for p in ext.split(';').skip(1) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.trim() {
                "server_no_context_takeover" => no_context = true,
                "server_max_window_bits" => {
                    window_bits = v.trim().trim_matches('"').parse().unwrap_or(0);
                    if !(8..=15).contains(&window_bits) {
                        return Err(format!("bad server_max_window_bits in {ext:?}"));
                    }
                }
                "client_no_context_takeover" | "client_max_window_bits" => {}
                other => return Err(format!("unknown permessage-deflate parameter {other:?}")),
            }
        }
        Ok(Some(Inflate {
            d: Decompress::new(false),
            no_context,
            window_bits,
            out: Vec::new(),
        }))
    }

    /// Inflates one message's payload (its frames' bytes, without the `00 00 ff ff` tail the
    /// sender removed), refusing more than `max` bytes of output.
    pub fn message(&mut self, data: &[u8], max: usize) -> Result<&[u8], String> {
        self.out.clear();
        if self.no_context {
            let hit = CACHE.with(|c| {
                c.borrow()
                    .0
                    .get(data)
                    .map(|v| self.out.extend_from_slice(v))
            });
            if hit.is_some() {
                return Ok(&self.out);
            }
            self.d.reset(false);
            self.inflate(data, max)?;
            CACHE.with(|c| {
                let (map, size) = &mut *c.borrow_mut();
                if *size > CACHE_BYTES {
                    map.clear();
                    *size = 0;
                }
                *size += data.len() + self.out.len();
                map.insert(data.to_vec(), self.out.clone());
            });
            return Ok(&self.out);
        }
        self.inflate(data, max)?;
        Ok(&self.out)
    }

    fn inflate(&mut self, data: &[u8], max: usize) -> Result<(), String> {
        for mut input in [data, &[0, 0, 0xff, 0xff][..]] {
            loop {
                if self.out.len() == self.out.capacity() {
                    if self.out.len() >= max {
                        return Err(format!("inflated message over {max} bytes"));
                    }
                    self.out
                        .reserve((2 * data.len() + 4096).min(max - self.out.len()));
                }
                let (n_in, n_out) = (self.d.total_in(), self.out.len());
                let st = self
                    .d
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|e| format!("inflate: {e}"))?;
                input = &input[(self.d.total_in() - n_in) as usize..];
                if self.out.len() > max {
                    return Err(format!("inflated message over {max} bytes"));
                }
                let full = self.out.len() == self.out.capacity();
                if st == Status::StreamEnd || (input.is_empty() && !full) {
                    break;
                }
                if !full && self.out.len() == n_out && self.d.total_in() == n_in {
                    return Err("inflate: no progress".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A message as a server sends it: raw deflate, sync-flushed, the tail removed.
    fn deflate(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn answer_parameters() {
        assert!(Inflate::from_answer("x-other").unwrap().is_none());
        let i = Inflate::from_answer(
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        )
        .unwrap()
        .unwrap();
        assert!(i.no_context && i.window_bits == 10);
        assert!(Inflate::from_answer("permessage-deflate; server_max_window_bits=20").is_err());
        assert!(Inflate::from_answer("permessage-deflate; bogus").is_err());
    }

    #[test]
    fn inflates_with_and_without_context_and_bounds_the_output() {
        let msg = br#"{"t":"tick","p":{"s":1,"x":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
        let mut c = Compress::new(Compression::default(), false);
        let mut i = Inflate::from_answer("permessage-deflate").unwrap().unwrap();
        for _ in 0..3 {
            let wire = deflate(&mut c, msg);
            assert_eq!(i.message(&wire, 1 << 20).unwrap(), &msg[..]);
        }
        let mut i = Inflate::from_answer("permessage-deflate; server_no_context_takeover")
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            let wire = deflate(&mut Compress::new(Compression::default(), false), msg);
            assert_eq!(i.message(&wire, 1 << 20).unwrap(), &msg[..]);
        }
        let bomb = deflate(
            &mut Compress::new(Compression::best(), false),
            &vec![b'a'; 1 << 20],
        );
        assert!(i.message(&bomb, 64 << 10).is_err());
    }
}
