//! The mesh's frames: `[u32 length LE][u8 kind][body]`, length counting kind and body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HELLO: u8 = 1;
pub const INTEREST_ADD: u8 = 2;
pub const INTEREST_DEL: u8 = 3;
pub const PUBLISH: u8 = 4;
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
    if topic.len() > u16::MAX as usize || category.len() > u8::MAX as usize || msg_type.len() > u16::MAX as usize {
        return None;
    }
    let mut b = BytesMut::new();
    put_frame(
        &mut b,
        PUBLISH,
        &[
            &sent_ns.to_le_bytes(),
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

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Hello { slot: u32, name: String },
    Interest { topic: String, present: bool },
    Publish { sent_ns: u64, topic: String, category: String, msg_type: String, payload: Bytes },
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
        PUBLISH => {
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
            Frame::Publish { sent_ns, topic, category, msg_type, payload: body }
        }
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
    fn garbage_is_an_error_not_a_panic() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(take(&mut b).is_err());
        let mut b = BytesMut::from(&[2u8, 0, 0, 0, 9, 1][..]);
        assert!(take(&mut b).is_err());
        let mut b = BytesMut::from(&[3u8, 0, 0, 0, PUBLISH, 1, 2][..]);
        assert!(take(&mut b).is_err());
    }
}
