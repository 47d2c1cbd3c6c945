//! The mesh's publication frame, as the engine's `mesh/wire.rs` lays it out:
//! `[u32 length LE][u8 kind = 4][u64 sent_ns][u16 topic len][topic][u8 category len][category]
//! [u16 type len][type][payload]`, length counting everything after itself. Here the payload
//! starts with the message's sequence number (u64 LE), so the consumer can check order.

pub const PUBLISH: u8 = 4;
const TOPIC: &[u8] = b"bench";
const CATEGORY: &[u8] = b"U";
const MSG_TYPE: &[u8] = b"tick";
/// Bytes of a frame before its payload.
pub const OVERHEAD: usize = 4 + 1 + 8 + 2 + TOPIC.len() + 1 + CATEGORY.len() + 2 + MSG_TYPE.len();

/// Writes a whole frame of `size` bytes (length prefix included) into `out` (cleared first).
pub fn build(out: &mut Vec<u8>, size: usize, seq: u64, sent_ns: u64) {
    assert!(
        size >= OVERHEAD + 8,
        "frames are at least {} bytes",
        OVERHEAD + 8
    );
    out.clear();
    out.extend_from_slice(&((size - 4) as u32).to_le_bytes());
    out.push(PUBLISH);
    out.extend_from_slice(&sent_ns.to_le_bytes());
    out.extend_from_slice(&(TOPIC.len() as u16).to_le_bytes());
    out.extend_from_slice(TOPIC);
    out.push(CATEGORY.len() as u8);
    out.extend_from_slice(CATEGORY);
    out.extend_from_slice(&(MSG_TYPE.len() as u16).to_le_bytes());
    out.extend_from_slice(MSG_TYPE);
    out.extend_from_slice(&seq.to_le_bytes());
    out.resize(size, b'x');
}

/// A parsed publication: its send time, sequence number and payload.
pub struct Publish<'a> {
    pub sent_ns: u64,
    pub seq: u64,
    pub payload: &'a [u8],
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("short publish".into());
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

/// Parses one whole frame (length prefix included), checking every length as the engine does.
pub fn parse(frame: &[u8]) -> Result<Publish<'_>, String> {
    let mut b = frame;
    let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap()) as usize;
    if len != b.len() {
        return Err(format!("frame length {len} but {} bytes", b.len()));
    }
    if take(&mut b, 1)?[0] != PUBLISH {
        return Err("not a publish frame".into());
    }
    let sent_ns = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
    let tl = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
    std::str::from_utf8(take(&mut b, tl)?).map_err(|_| "topic is not UTF-8")?;
    let cl = take(&mut b, 1)?[0] as usize;
    std::str::from_utf8(take(&mut b, cl)?).map_err(|_| "category is not UTF-8")?;
    let ml = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
    std::str::from_utf8(take(&mut b, ml)?).map_err(|_| "type is not UTF-8")?;
    let seq = u64::from_le_bytes(b.get(..8).ok_or("no sequence number")?.try_into().unwrap());
    Ok(Publish {
        sent_ns,
        seq,
        payload: b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_every_benchmark_size_round_trip() {
        let mut f = Vec::new();
        for size in [64, 512, 4096] {
            build(&mut f, size, 77, 123_456);
            assert_eq!(f.len(), size);
            let p = parse(&f).unwrap();
            assert_eq!(
                (p.sent_ns, p.seq, p.payload.len()),
                (123_456, 77, size - OVERHEAD)
            );
        }
        f[0] ^= 1;
        assert!(parse(&f).is_err());
    }
}
