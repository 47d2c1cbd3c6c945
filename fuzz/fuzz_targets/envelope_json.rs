//! The JSON envelope: inbound classification (`protocol::message::classify`, with the legacy
//! `WSE{`/`S{`/`U{` prefixes) and the outbound writer (`protocol::envelope::Envelope::encode`).
//!
//! Properties:
//! - classify never panics; what it hands the application is the input less a legacy prefix;
//!   what the engine answers itself is one of the system types it handles;
//! - decode of encode is identity: an envelope written with category, type, topic, cid and a
//!   payload drawn from the input parses as JSON and gives back each field; a string written by
//!   `write_json_str` parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wse_fuzz::{fields, json_eq, Rng};
use _runtime::protocol::envelope::{write_json_str, Envelope};
use _runtime::protocol::message::{classify, engine_handles, strip_legacy, Inbound};

fuzz_target!(|data: &[u8]| {
    // The cap on topics in one subscription_update: small, from the input, so both sides of it are met.
    let max_topics = data.first().map_or(0, |b| *b as usize % 8);
    match classify(data, max_topics) {
        Inbound::System { msg_type, .. } => assert!(engine_handles(&msg_type), "system type {msg_type:?}"),
        Inbound::TooManyTopics { count } => assert!(count > max_topics, "refused {count} topics under a cap of {max_topics}"),
        Inbound::App(json) => {
            assert_eq!(json, strip_legacy(data));
            assert!(json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
        }
        Inbound::Other => {}
    }

    let f = fields(data, 0, 5);
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (category, msg_type, topic, cid) = (s(f[0]), s(f[1]), s(f[2]), s(f[3]));
    let payload = match serde_json::from_slice::<Value>(f[4]) {
        Ok(v) if wse_fuzz::depth(&v) < 100 => Some(v),
        _ => None,
    };
    let pbytes = payload.as_ref().map(|v| serde_json::to_vec(v).unwrap()).unwrap_or_default();
    let mut rng = Rng::from_data(data);
    let seq = rng.next();
    let stamp = (rng.below(3) == 0).then(|| (rng.next() as u32, rng.next()));
    let e = Envelope {
        category: &category,
        msg_type: &msg_type,
        seq,
        topic: (!topic.is_empty()).then_some(topic.as_str()),
        stamp,
        cid: (!cid.is_empty()).then_some(cid.as_str()),
        payload: &pbytes,
    };
    let reserve = rng.below(11);
    let out = e.encode(reserve);
    assert!(out[..reserve].iter().all(|b| *b == 0));
    let v: Value = serde_json::from_slice(&out[reserve..]).expect("an envelope we wrote is not JSON");
    assert_eq!(v["c"], category.as_str());
    assert_eq!(v["t"], msg_type.as_str());
    assert_eq!(v["seq"], seq);
    assert_eq!(v["v"], 1);
    assert_eq!(v.get("tp").and_then(Value::as_str), e.topic);
    assert_eq!(v.get("cid").and_then(Value::as_str), e.cid);
    if let Some((epoch, offset)) = stamp {
        assert_eq!(v["e"], format!("{epoch:08x}"));
        assert_eq!(v["o"], offset);
    }
    let want = payload.unwrap_or_else(|| serde_json::json!({}));
    assert!(json_eq(&v["p"], &want), "payload changed");

    let mut quoted = Vec::new();
    write_json_str(&mut quoted, &msg_type);
    assert_eq!(serde_json::from_slice::<String>(&quoted).expect("write_json_str output is not JSON"), msg_type);
});
