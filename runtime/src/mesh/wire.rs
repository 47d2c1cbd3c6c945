//! The mesh's frames: `[u32 length LE][u8 kind][body]`, length counting kind and body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HELLO: u8 = 1;
pub const INTEREST_ADD: u8 = 2;
pub const INTEREST_DEL: u8 = 3;
pub const PUBLISH: u8 = 4;
/// With recovery on: a publication stamped by its topic's owner, sent to every peer.
pub const STAMPED: u8 = 5;
/// With recovery on: a publication handed to its topic's owner to be stamped.
pub const SEQUENCE: u8 = 6;
/// A run of one topic's recovery ring, sent to a peer when the link opens.
pub const SNAPSHOT: u8 = 7;
/// The last snapshot frame: the sender's state has all been sent.
pub const SYNCED: u8 = 8;
/// Presence replication (mesh/presence.rs); kinds 18 and 19 are kept for it too.
pub const PRESENCE_COUNT: u8 = 16;
pub const PRESENCE_DATA: u8 = 17;

/// Frames past this size are a broken peer, not a message.
pub const MAX_FRAME: usize = 64 << 20;

pub fn put_frame(out: &mut BytesMut, kind: u8, body: &[&[u8]]) {
    let len: usize = 1 + body.iter().map(|b| b.len()).sum::<usize>();
    out.reserve(4 + len);
    out.put_u32_le(len as u32);
    out.put_u8(kind);
    for b in body {
        out.put_slice(b);
    }
}

pub fn hello(slot: u32, name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    put_frame(&mut b, HELLO, &[&slot.to_le_bytes(), name.as_bytes()]);
    b
}

pub fn interest(out: &mut BytesMut, topic: &str, present: bool) {
    put_frame(out, if present { INTEREST_ADD } else { INTEREST_DEL }, &[topic.as_bytes()]);
}

/// A publication as it crosses the mesh; `sent_ns` is CLOCK_MONOTONIC (shared by the host's processes).
pub fn publish(sent_ns: u64, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> Option<Bytes> {
    publication(PUBLISH, sent_ns, topic, category, msg_type, payload)
}

/// `PUBLISH` and `SEQUENCE` share one layout: a u64 (send time, or the hand-off's id) first.
fn publication(kind: u8, lead: u64, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> Option<Bytes> {
    if topic.len() > u16::MAX as usize || category.len() > u8::MAX as usize || msg_type.len() > u16::MAX as usize {
        return None;
    }
    let mut b = BytesMut::new();
    put_frame(
        &mut b,
        kind,
        &[
            &lead.to_le_bytes(),
            &(topic.len() as u16).to_le_bytes(),
            topic.as_bytes(),
            &[category.len() as u8],
            category.as_bytes(),
            &(msg_type.len() as u16).to_le_bytes(),
            msg_type.as_bytes(),
            payload,
        ],
    );
    Some(b.freeze())
}

/// A publication with its topic's stamp, as the owner built it: `body` is the JSON envelope
/// (signed if signing is on), so a mirror frames it as it is.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Stamp {
    pub epoch: u32,
    pub offset: u64,
    pub at_ms: u64,
}

pub fn stamped(out: &mut BytesMut, origin: u64, sent_ns: u64, topic: &str, st: &Stamp, body: &[u8]) {
    put_frame(
        out,
        STAMPED,
        &[
            &origin.to_le_bytes(),
            &sent_ns.to_le_bytes(),
            &st.epoch.to_le_bytes(),
            &st.offset.to_le_bytes(),
            &st.at_ms.to_le_bytes(),
            &(topic.len() as u16).to_le_bytes(),
            topic.as_bytes(),
            body,
        ],
    );
}

/// A publication for the owner to stamp; `id` comes back in the owner's `STAMPED` frame.
pub fn sequence(id: u64, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> Option<Bytes> {
    publication(SEQUENCE, id, topic, category, msg_type, payload)
}

/// Part of a topic's ring: `(offset, at_ms, body)` entries in offset order; `owner` is true
/// when the sender stamped the topic's last publication itself.
pub fn snapshot(out: &mut BytesMut, topic: &str, epoch: u32, pushed: u64, owner: bool, entries: &[(u64, u64, &[u8])]) {
    let mut b = BytesMut::new();
    b.put_u32_le(epoch);
    b.put_u64_le(pushed);
    b.put_u8(owner as u8);
    b.put_u16_le(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    b.put_u32_le(entries.len() as u32);
    for (offset, at, body) in entries {
        b.put_u64_le(*offset);
        b.put_u64_le(*at);
        b.put_u32_le(body.len() as u32);
        b.put_slice(body);
    }
    put_frame(out, SNAPSHOT, &[&b]);
}

pub fn synced(out: &mut BytesMut) {
    put_frame(out, SYNCED, &[]);
}

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Hello { slot: u32, name: String },
    Interest { topic: String, present: bool },
    Publish { sent_ns: u64, topic: String, category: String, msg_type: String, payload: Bytes },
    Stamped { origin: u64, sent_ns: u64, topic: String, stamp: Stamp, body: Bytes },
    Sequence { id: u64, topic: String, category: String, msg_type: String, payload: Bytes },
    Snapshot { topic: String, epoch: u32, pushed: u64, owner: bool, entries: Vec<(Stamp, Bytes)> },
    Synced,
    Presence(super::presence::PresenceFrame),
}

/// Takes one whole frame off the front of `buf`: Ok(None) if more bytes are needed, Err if the
/// bytes cannot be a frame (the link is then dropped).
pub fn take(buf: &mut BytesMut) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(format!("bad frame length {len}"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(len).freeze();
    let kind = body.get_u8();
    let wire = 4 + len;
    let text = |b: Bytes| String::from_utf8(b.to_vec()).map_err(|_| "topic is not UTF-8".to_string());
    let f = match kind {
        HELLO => {
            if body.len() < 4 {
                return Err("short hello".into());
            }
            let slot = body.get_u32_le();
            Frame::Hello { slot, name: text(body)? }
        }
        INTEREST_ADD | INTEREST_DEL => Frame::Interest { topic: text(body)?, present: kind == INTEREST_ADD },
        PUBLISH | SEQUENCE => {
            let short = || "short publish".to_string();
            if body.len() < 10 {
                return Err(short());
            }
            let sent_ns = body.get_u64_le();
            let tl = body.get_u16_le() as usize;
            if body.len() < tl + 1 {
                return Err(short());
            }
            let topic = text(body.split_to(tl))?;
            let cl = body.get_u8() as usize;
            if body.len() < cl + 2 {
                return Err(short());
            }
            let category = text(body.split_to(cl))?;
            let ml = body.get_u16_le() as usize;
            if body.len() < ml {
                return Err(short());
            }
            let msg_type = text(body.split_to(ml))?;
            if kind == SEQUENCE {
                Frame::Sequence { id: sent_ns, topic, category, msg_type, payload: body }
            } else {
                Frame::Publish { sent_ns, topic, category, msg_type, payload: body }
            }
        }
        STAMPED => {
            if body.len() < 8 * 4 + 4 + 2 {
                return Err("short stamped".into());
            }
            let origin = body.get_u64_le();
            let sent_ns = body.get_u64_le();
            let epoch = body.get_u32_le();
            let offset = body.get_u64_le();
            let at_ms = body.get_u64_le();
            let tl = body.get_u16_le() as usize;
            if body.len() < tl {
                return Err("short stamped".into());
            }
            let topic = text(body.split_to(tl))?;
            Frame::Stamped { origin, sent_ns, topic, stamp: Stamp { epoch, offset, at_ms }, body }
        }
        SNAPSHOT => {
            let short = || "short snapshot".to_string();
            if body.len() < 4 + 8 + 1 + 2 {
                return Err(short());
            }
            let epoch = body.get_u32_le();
            let pushed = body.get_u64_le();
            let owner = body.get_u8() != 0;
            let tl = body.get_u16_le() as usize;
            if body.len() < tl + 4 {
                return Err(short());
            }
            let topic = text(body.split_to(tl))?;
            let n = body.get_u32_le() as usize;
            // Each entry takes at least 20 bytes: a count past that is a lie.
            if n > body.len() / 20 {
                return Err(short());
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                if body.len() < 20 {
                    return Err(short());
                }
                let offset = body.get_u64_le();
                let at_ms = body.get_u64_le();
                let len = body.get_u32_le() as usize;
                if body.len() < len {
                    return Err(short());
                }
                entries.push((Stamp { epoch, offset, at_ms }, body.split_to(len)));
            }
            if !body.is_empty() {
                return Err("snapshot longer than its entries".into());
            }
            Frame::Snapshot { topic, epoch, pushed, owner, entries }
        }
        SYNCED if body.is_empty() => Frame::Synced,
        SYNCED => return Err("synced frame with a body".into()),
        PRESENCE_COUNT | PRESENCE_DATA => Frame::Presence(super::presence::decode(kind, body)?),
        k => return Err(format!("unknown frame kind {k}")),
    };
    Ok(Some((f, wire)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut all = hello(3, "mesh-3-1.sock");
        interest(&mut all, "room.a", true);
        interest(&mut all, "room.a", false);
        all.extend_from_slice(&publish(42, "room.a", "U", "chat", b"{\"x\":1}").unwrap());
        let bytes = all.freeze();
        // Fed one byte at a time, the frames come out whole and in order.
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for b in bytes.iter() {
            buf.put_u8(*b);
            while let Some((f, _)) = take(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], Frame::Hello { slot: 3, name: "mesh-3-1.sock".into() });
        assert_eq!(got[1], Frame::Interest { topic: "room.a".into(), present: true });
        assert_eq!(got[2], Frame::Interest { topic: "room.a".into(), present: false });
        match &got[3] {
            Frame::Publish { sent_ns, topic, category, msg_type, payload } => {
                assert_eq!((*sent_ns, topic.as_str(), category.as_str(), msg_type.as_str()), (42, "room.a", "U", "chat"));
                assert_eq!(&payload[..], b"{\"x\":1}");
            }
            f => panic!("{f:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn recovery_frames_round_trip() {
        let mut all = BytesMut::new();
        let st = Stamp { epoch: 9, offset: 41, at_ms: 1234 };
        stamped(&mut all, 77, 5, "t", &st, b"{\"p\":1}");
        all.extend_from_slice(&sequence(78, "t", "U", "m", b"{}").unwrap());
        snapshot(&mut all, "t", 9, 41, true, &[(40, 1, b"a"), (41, 2, b"bc")]);
        synced(&mut all);
        let mut got = vec![];
        while let Some((f, _)) = take(&mut all).unwrap() {
            got.push(f);
        }
        assert_eq!(got[0], Frame::Stamped { origin: 77, sent_ns: 5, topic: "t".into(), stamp: st, body: Bytes::from_static(b"{\"p\":1}") });
        assert_eq!(got[1], Frame::Sequence { id: 78, topic: "t".into(), category: "U".into(), msg_type: "m".into(), payload: Bytes::from_static(b"{}") });
        match &got[2] {
            Frame::Snapshot { topic, epoch: 9, pushed: 41, owner: true, entries } => {
                assert_eq!(topic, "t");
                assert_eq!(entries.len(), 2);
                assert_eq!((entries[1].0.offset, entries[1].0.at_ms, &entries[1].1[..]), (41, 2, &b"bc"[..]));
            }
            f => panic!("{f:?}"),
        }
        assert_eq!(got[3], Frame::Synced);
        // A snapshot that claims more entries than it carries is refused.
        let mut b = BytesMut::new();
        snapshot(&mut b, "t", 1, 1, false, &[(1, 1, b"x")]);
        let n = b.len();
        b[n - 25] = 200;
        assert!(take(&mut b).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(take(&mut b).is_err());
        let mut b = BytesMut::from(&[2u8, 0, 0, 0, 9, 1][..]);
        assert!(take(&mut b).is_err());
        let mut b = BytesMut::from(&[3u8, 0, 0, 0, PUBLISH, 1, 2][..]);
        assert!(take(&mut b).is_err());
        // Bytes a frame does not account for (found by fuzz/fuzz_targets/mesh_wire.rs).
        let mut b = BytesMut::from(&[2u8, 0, 0, 0, SYNCED, 0][..]);
        assert!(take(&mut b).is_err());
        let mut b = BytesMut::new();
        snapshot(&mut b, "t", 1, 1, false, &[(1, 1, b"x")]);
        b[0] += 1;
        b.put_u8(0);
        assert!(take(&mut b).is_err());
    }
}
