//! msgpack for connections that ask for it (`?format=msgpack`): `M:` + a msgpack map with the
//! same keys as the JSON envelope. Inbound msgpack becomes JSON before the engine (or Python)
//! reads it, so one application code path serves both formats.

use serde::Deserialize;
use serde_json::Value;

pub const PREFIX: &[u8; 2] = b"M:";
/// Nesting deeper than this is refused (serde_json's own parser stops at 128).
pub const MAX_DEPTH: usize = 64;

/// msgpack (without prefix) to JSON bytes. Binary values and non-string map keys are refused.
pub fn to_json(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(data);
    de.set_max_depth(MAX_DEPTH);
    let v = Value::deserialize(&mut de).map_err(|e| format!("invalid msgpack: {e}"))?;
    serde_json::to_vec(&v).map_err(|e| format!("invalid msgpack: {e}"))
}

/// A JSON envelope to `M:` + msgpack, after `reserve` free bytes.
pub fn from_json(json: &[u8], reserve: usize) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("payload is not JSON: {e}"))?;
    let mut out = Vec::with_capacity(reserve + 2 + json.len());
    out.resize(reserve, 0);
    out.extend_from_slice(PREFIX);
    rmp_serde::encode::write_named(&mut out, &v).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_and_limits() {
        let env = br#"{"c":"U","t":"price","seq":3,"p":{"s":"AAPL","px":1.5,"n":[1,2]},"v":1}"#;
        let m = from_json(env, 4).unwrap();
        assert_eq!(&m[4..6], PREFIX);
        let back: Value = serde_json::from_slice(&to_json(&m[6..]).unwrap()).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(env).unwrap());
        // 100 nested arrays: refused, not a stack overflow.
        let mut deep = vec![0x91u8; 100];
        deep.push(0xc0);
        assert!(to_json(&deep).unwrap_err().contains("depth"));
        assert!(to_json(&[0xc1]).is_err());
        // Truncated map.
        assert!(to_json(&[0x82, 0xa1, b'a']).is_err());
    }
}
