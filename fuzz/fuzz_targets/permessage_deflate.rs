//! permessage-deflate (RFC 7692, `protocol::deflate`): the inflation of what a client sends,
//! under the message-size cap, with and without context takeover, alone and through the frame
//! decoder; the engine's own compression; the negotiation of `Sec-WebSocket-Extensions`.
//!
//! Properties:
//! - the cap always holds: whatever the input, an inflated message is never longer than the cap
//!   (a bomb is refused once its output passes it), and a smaller cap never accepts what a
//!   larger one refuses (Ok under the small cap is the same Ok under the large one);
//! - a message cut short or with a corrupt byte is refused or inflates to something under the
//!   cap, never a panic;
//! - decode of encode is identity: messages deflated as a client does (each window size 9..=15,
//!   each level, with context takeover, one compressor for the whole sequence, or without, a
//!   fresh one per message) inflate back to themselves, in sequence, through one inflater; and
//!   through the frame decoder as masked frames cut into fragments, fed in pieces; a message
//!   inflated under a cap one byte short of it is refused as too large;
//! - the engine's compression (`deflate::compress`, each window and level) inflates back to the
//!   input;
//! - negotiation: an accepted offer's answer, offered again, is accepted with the same
//!   parameters and the same answer, and the window agreed is 0 (no outbound compression) or
//!   9..=15.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::BytesMut;
use flate2::{Compress, Compression, FlushCompress};
use libfuzzer_sys::fuzz_target;
use wse_fuzz::{client_frame, pieces, Rng};
use _runtime::protocol::deflate::{compress, negotiate, InflateError, Inflater, Params, Settings, RSV1};
use _runtime::protocol::frame::{Decoder, Event, OP_BINARY, OP_CONT, OP_PING};

const BIG: usize = 64 << 10;
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

fn params(client_no_context: bool) -> Params {
    Params { server_bits: 15, client_no_context, threshold: 0, level: 6 }
}

/// What a client sends for each message: raw deflate flushed with a sync flush, the trailing
/// `00 00 ff ff` removed. With context takeover one compressor deflates the whole sequence.
/// Compressors are kept per (window, level) and reset before use: setting one up costs more than
/// the rest of a run, and a reset one deflates exactly as a new one does.
fn client_deflate(msgs: &[&[u8]], bits: u8, level: u32, takeover: bool) -> Vec<Vec<u8>> {
    thread_local! {
        static CACHE: RefCell<HashMap<(u8, u32), Compress>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let z = c.entry((bits, level)).or_insert_with(|| Compress::new_with_window_bits(Compression::new(level), false, bits));
        z.reset();
        deflate_each(z, msgs, takeover)
    })
}

fn deflate_each(z: &mut Compress, msgs: &[&[u8]], takeover: bool) -> Vec<Vec<u8>> {
    msgs.iter()
        .map(|m| {
            if !takeover {
                z.reset();
            }
            let mut out = Vec::with_capacity(m.len() + 64);
            let mut pos = 0;
            loop {
                let in0 = z.total_in();
                z.compress_vec(&m[pos..], &mut out, FlushCompress::Sync).expect("deflate");
                pos += (z.total_in() - in0) as usize;
                if pos == m.len() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity().max(64));
            }
            assert!(out.ends_with(&TAIL), "a sync flush ends with an empty stored block");
            out.truncate(out.len() - TAIL.len());
            out
        })
        .collect()
}

/// Arbitrary bytes as one message, under two caps, with and without context takeover.
fn inflate_any(data: &[u8], rng: &mut Rng) {
    let small = match rng.below(4) {
        0 => rng.below(16),
        1 => rng.below(1024),
        _ => rng.below(BIG),
    };
    for keep in [true, false] {
        let big = Inflater::new(&params(!keep)).inflate(data, BIG);
        let little = Inflater::new(&params(!keep)).inflate(data, small);
        if let Ok(v) = &big {
            assert!(v.len() <= BIG, "inflate past the cap");
        }
        if let Ok(v) = &little {
            assert!(v.len() <= small, "inflate past the cap");
            assert_eq!(little, big, "a smaller cap accepted what a larger one did not");
        }
    }
    // The input as a sequence of messages through one inflater that keeps its window: each
    // under the cap, and after a refusal the next starts afresh (no panic on a stale state).
    let mut inf = Inflater::new(&params(false));
    for m in data.split(|b| *b == 0xa5) {
        if let Ok(v) = inf.inflate(m, small) {
            assert!(v.len() <= small, "inflate past the cap in a sequence");
        }
    }
}

/// Messages drawn from the input, deflated as a client would, inflate back to themselves.
fn round_trip(data: &[u8], rng: &mut Rng) {
    let msgs: Vec<&[u8]> = pieces(data, rng, data.len().max(1)).into_iter().take(8).collect();
    let bits = 9 + rng.below(7) as u8;
    let level = rng.below(10) as u32;
    let takeover = rng.below(2) == 0;
    let z = client_deflate(&msgs, bits, level, takeover);
    let mut inf = Inflater::new(&params(!takeover));
    for (m, c) in msgs.iter().zip(&z) {
        assert_eq!(inf.inflate(c, m.len()).as_deref(), Ok(*m), "round trip (window {bits}, level {level}, takeover {takeover})");
    }
    if let (Some(m), Some(c)) = (msgs.first(), z.first()) {
        if !m.is_empty() {
            assert_eq!(Inflater::new(&params(true)).inflate(c, m.len() - 1), Err(InflateError::TooLarge), "cap one byte short");
        }
        // Cut short, or a byte changed: refused or under the cap, never a panic.
        if !c.is_empty() {
            let cut = rng.below(c.len());
            if let Ok(v) = Inflater::new(&params(true)).inflate(&c[..cut], m.len()) {
                assert!(v.len() <= m.len());
            }
            let mut bad = c.clone();
            let i = rng.below(bad.len());
            bad[i] ^= 1 << rng.below(8);
            if let Ok(v) = Inflater::new(&params(true)).inflate(&bad, m.len()) {
                assert!(v.len() <= m.len());
            }
        }
    }

    // The same messages as masked frames (RSV1 on the first fragment), fragmented, with a ping
    // between fragments, fed to the frame decoder in pieces.
    let mut wire = Vec::new();
    for (i, c) in z.iter().enumerate() {
        let key = [i as u8, 0x5a, rng.below(256) as u8, 7];
        let frags = pieces(c, rng, c.len().max(1));
        if frags.is_empty() {
            let at = wire.len();
            client_frame(&mut wire, true, OP_BINARY, &[], key);
            wire[at] |= RSV1;
            continue;
        }
        for (k, f) in frags.iter().enumerate() {
            let at = wire.len();
            client_frame(&mut wire, k + 1 == frags.len(), if k == 0 { OP_BINARY } else { OP_CONT }, f, key);
            if k == 0 {
                wire[at] |= RSV1;
            }
            if k == 0 && frags.len() > 1 {
                client_frame(&mut wire, true, OP_PING, b"p", key);
            }
        }
    }
    let mut d = Decoder::new(BIG).with_deflate(Some(Inflater::new(&params(!takeover))));
    let mut buf = BytesMut::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    for piece in pieces(&wire, rng, 64) {
        buf.extend_from_slice(piece);
        while let Some(e) = d.next(&mut buf).expect("a valid compressed stream") {
            match e {
                Event::Binary(b) => got.push(b.to_vec()),
                Event::Ping(_) => {}
                e => panic!("unexpected event {e:?}"),
            }
        }
    }
    let want: Vec<Vec<u8>> = msgs.iter().filter(|m| m.len() <= BIG).map(|m| m.to_vec()).collect();
    assert_eq!(got, want, "through the frame decoder");
}

/// The engine's outbound compression inflates back to the input.
fn engine_round_trip(data: &[u8], rng: &mut Rng) {
    let bits = 9 + rng.below(7) as u8;
    let level = rng.below(10) as u8;
    let reserve = rng.below(15);
    let c = compress(data, bits, level, reserve);
    assert_eq!(Inflater::new(&params(true)).inflate(&c[reserve..], data.len()).as_deref(), Ok(data), "engine compression round trip");
}

fn negotiation(data: &[u8]) {
    let Ok(h) = std::str::from_utf8(data) else { return };
    for takeover in [true, false] {
        let s = Settings { client_context_takeover: takeover, threshold: 0, level: 6 };
        let Some((p, resp)) = negotiate(h.split('\n'), &s) else { continue };
        assert!(p.server_bits == 0 || (9..=15).contains(&p.server_bits), "window {}", p.server_bits);
        assert!(takeover || p.client_no_context, "context takeover agreed though the config refuses it");
        assert_eq!(negotiate([resp.as_str()], &s), Some((p, resp.clone())), "the answer, offered again");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::from_data(data);
    inflate_any(data, &mut rng);
    match rng.below(4) {
        0 => negotiation(data),
        // A compressor's set-up is most of a run's cost: one run in two.
        1 | 2 => round_trip(data, &mut rng),
        _ => engine_round_trip(data, &mut rng),
    }
});
