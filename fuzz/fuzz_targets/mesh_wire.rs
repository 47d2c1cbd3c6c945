//! The mesh wire format (`mesh::wire::take`, with presence frames from `mesh::presence`): what
//! a peer worker sends down a mesh link, `[u32 len LE][u8 kind][body]` frames back to back.
//!
//! Properties:
//! - fed in pieces, `take` yields exactly the frames (and the error) it yields from the whole
//!   stream: a prefix of a valid stream asks for more, never fails;
//! - each frame's reported wire size is what it consumed; no frame is over `MAX_FRAME`;
//! - decode of encode is identity: each frame written again with the engine's own builders
//!   decodes to the same frame, and byte for byte to the same bytes where the encoding is
//!   canonical (all kinds but presence data, whose JSON is re-serialised, and a snapshot's
//!   owner flag, any non-zero byte of which reads as true).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wse_fuzz::{json_eq, pieces, Rng};
use _runtime::mesh::presence::{self, PresenceFrame};
use _runtime::mesh::wire::{self, take, Frame, MAX_FRAME};

/// Frames (with the bytes each came from) until more input is needed or an error.
fn decode(chunks: &[&[u8]]) -> (Vec<(Frame, Vec<u8>)>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            let before = buf.clone();
            match take(&mut buf) {
                Ok(Some((f, n))) => {
                    assert_eq!(before.len() - buf.len(), n, "wire size is not what was consumed");
                    assert!(n <= 4 + MAX_FRAME);
                    out.push((f, before[..n].to_vec()));
                }
                Ok(None) => {
                    assert_eq!(before, buf, "bytes consumed without a frame");
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn encode(f: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    match f {
        Frame::Hello { slot, name } => b = wire::hello(*slot, name),
        Frame::Interest { topic, present } => wire::interest(&mut b, topic, *present),
        Frame::Publish { sent_ns, topic, category, msg_type, payload } => {
            b.extend_from_slice(&wire::publish(*sent_ns, topic, category, msg_type, payload).expect("fits"))
        }
        Frame::Sequence { id, topic, category, msg_type, payload } => {
            b.extend_from_slice(&wire::sequence(*id, topic, category, msg_type, payload).expect("fits"))
        }
        Frame::Stamped { origin, sent_ns, topic, stamp, body } => wire::stamped(&mut b, *origin, *sent_ns, topic, stamp, body),
        Frame::Snapshot { topic, epoch, pushed, owner, entries } => {
            let e: Vec<(u64, u64, &[u8])> = entries.iter().map(|(s, body)| (s.offset, s.at_ms, &body[..])).collect();
            wire::snapshot(&mut b, topic, *epoch, *pushed, *owner, &e)
        }
        Frame::Synced => wire::synced(&mut b),
        Frame::Presence(PresenceFrame::Count { topic, user, n }) => presence::count(&mut b, topic, user, *n),
        Frame::Presence(PresenceFrame::Data { user, stamp, data }) => presence::data(&mut b, user, *stamp, data),
    }
    b
}

fn same(a: &Frame, b: &Frame) -> bool {
    match (a, b) {
        (
            Frame::Presence(PresenceFrame::Data { user: u1, stamp: s1, data: d1 }),
            Frame::Presence(PresenceFrame::Data { user: u2, stamp: s2, data: d2 }),
        ) => u1 == u2 && s1 == s2 && json_eq(d1, d2),
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole, err) = decode(&[data]);
    let mut rng = Rng::from_data(data);
    let cut = pieces(data, &mut rng, 64);
    let (split, err2) = decode(&cut);
    assert!(whole.len() == split.len() && whole.iter().zip(&split).all(|(a, b)| same(&a.0, &b.0) && a.1 == b.1));
    assert_eq!(err, err2, "error differs when the stream comes in pieces");

    for (f, bytes) in &whole {
        let mut again = encode(f);
        let canonical = match f {
            Frame::Presence(PresenceFrame::Data { .. }) => false,
            Frame::Snapshot { .. } => bytes.len() > 4 + 13 && bytes[4 + 13] <= 1,
            _ => true,
        };
        if canonical {
            assert_eq!(&again[..], &bytes[..], "re-encoded frame differs: {f:?}");
        }
        let n = again.len();
        let (g, m) = take(&mut again).expect("a re-encoded frame is refused").expect("a re-encoded frame is incomplete");
        assert_eq!(m, n);
        assert!(same(f, &g), "re-encoded frame decodes differently: {f:?} vs {g:?}");
    }
});
