//! RFC 6455 frame decoding and message reassembly (`protocol::frame::Decoder`): a client's byte
//! stream after the upgrade (fragments, interleaved control frames, close codes, UTF-8).
//!
//! Properties, for two message caps (1 MiB and a small one drawn from the input):
//! - fed in pieces (every prefix of the stream is seen), the decoder produces exactly what it
//!   produces from the whole stream, and the same violation at the same point: a prefix of a
//!   valid stream asks for more, never fails;
//! - no data message is over the cap; no control payload over 125 bytes; text is valid UTF-8;
//!   a close code is one a peer may send;
//! - decode of encode is identity: the messages, sent again as masked frames cut into other
//!   fragments with pings between them, come out the same.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wse_fuzz::{client_frame, pieces, Rng};
use _runtime::protocol::frame::{valid_close_code, Decoder, Event, Violation, OP_BINARY, OP_CONT, OP_PING, OP_TEXT};

/// All the events of `chunks` fed one after another, and the violation that stopped it, if any.
fn decode(max: usize, chunks: &[&[u8]]) -> (Vec<Event>, Option<Violation>) {
    let mut d = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match d.next(&mut buf) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(v) => return (out, Some(v)),
            }
        }
    }
    (out, None)
}

fn check(max: usize, data: &[u8], rng: &mut Rng) {
    let (whole, err) = decode(max, &[data]);
    let cut = pieces(data, rng, 64);
    let (split, err2) = decode(max, &cut);
    assert_eq!(whole, split, "events differ when the stream comes in pieces");
    assert_eq!(err, err2, "violation differs when the stream comes in pieces");
    if let Some(v) = &err {
        assert!(matches!(v.code, 1002 | 1007 | 1009), "unexpected close code {}", v.code);
    }
    for e in &whole {
        match e {
            Event::Text(t) => {
                assert!(t.len() <= max, "text message over the cap");
                assert!(std::str::from_utf8(t).is_ok(), "text message is not UTF-8");
            }
            Event::Binary(b) => assert!(b.len() <= max, "binary message over the cap"),
            Event::Ping(p) => assert!(p.len() <= 125, "ping payload over 125 bytes"),
            Event::Pong => {}
            Event::Close(c) => assert!(c.is_none_or(valid_close_code), "close code not allowed"),
        }
    }
    // Encode again, fragmented differently, a ping between fragments: the same events.
    let mut again = Vec::new();
    let mut expect = Vec::new();
    for e in &whole {
        let key = (rng.next() as u32).to_ne_bytes();
        match e {
            Event::Text(p) | Event::Binary(p) => {
                let op = if matches!(e, Event::Text(_)) { OP_TEXT } else { OP_BINARY };
                let parts = if p.is_empty() { vec![&p[..]] } else { pieces(p, rng, p.len()) };
                for (i, part) in parts.iter().enumerate() {
                    let last = i + 1 == parts.len();
                    client_frame(&mut again, last, if i == 0 { op } else { OP_CONT }, part, key);
                    if !last && rng.below(4) == 0 {
                        client_frame(&mut again, true, OP_PING, b"fz", key);
                        expect.push(Event::Ping(Bytes::from_static(b"fz")));
                    }
                }
                expect.push(if op == OP_TEXT { Event::Text(p.clone()) } else { Event::Binary(p.clone()) });
            }
            Event::Ping(p) => {
                client_frame(&mut again, true, OP_PING, p, key);
                expect.push(Event::Ping(p.clone()));
            }
            _ => {}
        }
    }
    let cut = pieces(&again, rng, 256);
    let (round, err3) = decode(max, &cut);
    assert_eq!(err3, None, "re-encoded messages refused");
    assert_eq!(round, expect, "re-encoded messages differ");
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::from_data(data);
    check(1 << 20, data, &mut rng);
    let small = 1 + rng.below(300);
    check(small, data, &mut rng);
});
