//! Outbound WSE v2 envelopes, written straight into bytes:
//! `{"c","t","id","ts","seq","p","v"}` (plus `tp` for topic publications).

use serde_json::Value;

use super::time::{now_ms, write_rfc3339, write_u64, write_uuid7};

pub const CAT_SYSTEM: &str = "WSE";

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// One envelope. `payload` must already be JSON (it is copied verbatim).
pub struct Envelope<'a> {
    pub category: &'a str,
    pub msg_type: &'a str,
    pub seq: u64,
    pub topic: Option<&'a str>,
    /// Recovery stamp of a topic publication: epoch and offset (`e`, `o`).
    pub stamp: Option<(u32, u64)>,
    /// Correlation id: a reply carries the `cid` of the request it answers.
    pub cid: Option<&'a str>,
    pub payload: &'a [u8],
}

impl Envelope<'_> {
    /// Writes the envelope; `reserve` bytes are left free at the front (room for a frame header).
    pub fn encode(&self, reserve: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(reserve + 128 + self.msg_type.len() + self.payload.len());
        out.resize(reserve, 0);
        let ms = now_ms();
        out.extend_from_slice(b"{\"c\":");
        write_json_str(&mut out, self.category);
        out.extend_from_slice(b",\"t\":");
        write_json_str(&mut out, self.msg_type);
        out.extend_from_slice(b",\"id\":\"");
        write_uuid7(&mut out, ms);
        out.extend_from_slice(b"\",\"ts\":\"");
        write_rfc3339(&mut out, ms);
        out.extend_from_slice(b"\",\"seq\":");
        write_u64(&mut out, self.seq);
        if let Some(cid) = self.cid {
            out.extend_from_slice(b",\"cid\":");
            write_json_str(&mut out, cid);
        }
        if let Some(tp) = self.topic {
            out.extend_from_slice(b",\"tp\":");
            write_json_str(&mut out, tp);
        }
        if let Some((epoch, offset)) = self.stamp {
            out.extend_from_slice(format!(",\"e\":\"{epoch:08x}\",\"o\":").as_bytes());
            write_u64(&mut out, offset);
        }
        out.extend_from_slice(b",\"p\":");
        out.extend_from_slice(if self.payload.is_empty() { b"{}" } else { self.payload });
        out.extend_from_slice(b",\"v\":1}");
        out
    }
}

/// A system message (`c: "WSE"`) whose payload is a JSON value.
pub fn system(msg_type: &str, seq: u64, payload: &Value) -> Vec<u8> {
    let p = serde_json::to_vec(payload).unwrap_or_else(|_| b"{}".to_vec());
    Envelope { category: CAT_SYSTEM, msg_type, seq, topic: None, stamp: None, cid: None, payload: &p }.encode(0)
}

pub fn error(code: &str, message: &str, seq: u64) -> Vec<u8> {
    system("error", seq, &serde_json::json!({"code": code, "message": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_valid_json() {
        let e = Envelope { category: "U", msg_type: "price \"x\"\n", seq: 7, topic: Some("t1"), stamp: Some((0xab, 7)), cid: Some("r-1"), payload: b"{\"a\":1}" };
        let v: Value = serde_json::from_slice(&e.encode(0)).unwrap();
        assert_eq!(v["t"], "price \"x\"\n");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["tp"], "t1");
        assert_eq!(v["p"]["a"], 1);
        assert_eq!(v["e"], "000000ab");
        assert_eq!(v["o"], 7);
        assert_eq!(v["cid"], "r-1");
        assert_eq!(v["v"], 1);
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        let mut s = vec![];
        write_json_str(&mut s, "\u{1}");
        assert_eq!(s, b"\"\\u0001\"");
    }
}
