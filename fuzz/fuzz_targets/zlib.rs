//! The `C:` zlib encoding and its inflate cap (`protocol::compress`): a client's compressed
//! message is inflated up to `max_message_bytes` and refused past it (an `C:` prefix, as on the
//! wire, is removed first). Caps here are drawn from the input, up to 64 KiB.
//!
//! Properties:
//! - the cap always holds: inflate never returns more than the cap;
//! - a smaller cap never accepts what a larger one refuses: Ok under the small cap means the
//!   same Ok under the large one;
//! - decode of encode is identity: `compress` then `inflate` gives the input back under a cap
//!   that fits it, and TooLarge under a cap one byte short; the same for raw deflate.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use wse_fuzz::Rng;
use _runtime::protocol::compress::{compress, inflate, InflateError, PREFIX};

const BIG: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let body = data.strip_prefix(PREFIX).unwrap_or(data);
    let mut rng = Rng::from_data(data);
    let small = match rng.below(4) {
        0 => rng.below(16),
        1 => rng.below(1024),
        _ => rng.below(BIG),
    };
    let big = inflate(body, BIG);
    let little = inflate(body, small);
    if let Ok(v) = &big {
        assert!(v.len() <= BIG, "inflate past the cap");
    }
    match &little {
        Ok(v) => {
            assert!(v.len() <= small, "inflate past the cap");
            assert_eq!(little, big, "a smaller cap accepted what a larger one did not");
        }
        // Refused under the small cap: the large one may accept (the output fits there).
        Err(_) => {}
    }

    // Round trip of the input itself, zlib and raw deflate (on one run in four: a compressor's
    // set-up is most of a run's cost).
    if rng.below(4) != 0 {
        return;
    }
    let level = rng.below(10) as u32;
    let reserve = rng.below(11);
    let c = compress(data, level, reserve);
    assert_eq!(&c[reserve..reserve + 2], PREFIX);
    let z = &c[reserve + 2..];
    assert_eq!(inflate(z, data.len()).as_deref(), Ok(data), "zlib round trip");
    if !data.is_empty() {
        assert_eq!(inflate(z, data.len() - 1), Err(InflateError::TooLarge), "cap one byte short");
    }
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    let raw = e.finish().unwrap();
    assert_eq!(inflate(&raw, data.len() + 1).as_deref(), Ok(data), "raw deflate round trip");
});
