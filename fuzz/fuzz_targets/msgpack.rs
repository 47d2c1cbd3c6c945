//! The `M:` msgpack encoding (`protocol::msgpack`): inbound msgpack becomes JSON
//! (`to_json`, depth-capped), outbound JSON envelopes become msgpack (`from_json`). The input is
//! a message body (an `M:` prefix, as on the wire, is removed first).
//!
//! Properties:
//! - to_json never panics, refuses nesting past `MAX_DEPTH`, and what it returns is JSON equal
//!   to the msgpack value read directly;
//! - decode of encode is identity both ways: msgpack -> JSON -> msgpack -> JSON gives the same
//!   value; input that is JSON (nesting within the cap) -> msgpack -> JSON gives the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wse_fuzz::{depth, json_eq};
use _runtime::protocol::msgpack::{from_json, to_json, MAX_DEPTH, PREFIX};

fn round(json: &[u8]) -> Value {
    let m = from_json(json, 3).expect("JSON that parsed is refused by from_json");
    assert_eq!(&m[3..5], PREFIX);
    let back = to_json(&m[5..]).expect("msgpack we wrote is refused");
    serde_json::from_slice(&back).expect("to_json output is not JSON")
}

fuzz_target!(|data: &[u8]| {
    let body = data.strip_prefix(PREFIX).unwrap_or(data);
    if let Ok(json) = to_json(body) {
        let v: Value = serde_json::from_slice(&json).expect("to_json output is not JSON");
        assert!(depth(&v) <= MAX_DEPTH, "nesting past the cap accepted");
        let direct: Value = rmp_serde::from_slice(body).expect("rmp reads what to_json read");
        assert!(json_eq(&v, &direct), "to_json changed the value");
        assert!(json_eq(&round(&json), &v), "msgpack -> JSON -> msgpack -> JSON changed the value");
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if depth(&v) < MAX_DEPTH {
            assert!(json_eq(&round(data), &v), "JSON -> msgpack -> JSON changed the value");
        }
    }
});
