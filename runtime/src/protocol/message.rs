//! Inbound messages: strip legacy prefixes, and tell engine-handled system messages from
//! application messages (which go to Python untouched).

use serde::Deserialize;
use serde_json::Value;

/// What an inbound message is, as far as the engine cares.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// `subscription_update` and friends: handled by the engine.
    System { msg_type: String, payload: Value },
    /// A JSON envelope for the application (its bytes, legacy prefix removed).
    App(&'a [u8]),
    /// Not JSON: passed to Python as raw text or binary.
    Other,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    c: Option<&'a str>,
    #[serde(default, borrow)]
    t: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, rename = "type", borrow)]
    type_: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Full {
    #[serde(default)]
    t: Option<String>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    p: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
}

/// System types the engine answers itself.
pub fn engine_handles(t: &str) -> bool {
    matches!(t, "subscription_update" | "ping" | "PONG" | "pong" | "client_hello" | "presence_update" | "auth_refresh")
}

/// Removes the v1 text prefixes `WSE{`, `S{`, `U{` (keeping the brace).
pub fn strip_legacy(data: &[u8]) -> &[u8] {
    for p in [&b"WSE"[..], b"S", b"U"] {
        if data.len() > p.len() && data.starts_with(p) && data[p.len()] == b'{' {
            return &data[p.len()..];
        }
    }
    data
}

/// Could `data` be a message the engine answers? Only if one of the names appears, quoted.
fn may_be_system(data: &[u8]) -> bool {
    use std::sync::LazyLock;
    static FINDERS: LazyLock<Vec<memchr::memmem::Finder<'static>>> = LazyLock::new(|| {
        ["\"subscription_update\"", "\"ping\"", "\"PONG\"", "\"pong\"", "\"client_hello\"", "\"presence_update\"", "\"auth_refresh\""]
            .iter()
            .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
            .collect()
    });
    FINDERS.iter().any(|f| f.find(data).is_some())
}

pub fn classify(data: &[u8]) -> Inbound<'_> {
    let data = strip_legacy(data);
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Inbound::Other;
    }
    if !may_be_system(data) {
        // NOTE: most traffic is application messages: Python parses those (orjson) anyway, so
        // the engine does not parse them a second time. Malformed JSON is Python's to report.
        return Inbound::App(data);
    }
    let Ok(head) = serde_json::from_slice::<Head>(data) else {
        return Inbound::Other;
    };
    let t = head.t.or(head.type_);
    let is_sys = match (&t, head.c) {
        (Some(t), Some("WSE")) | (Some(t), None) => engine_handles(t),
        _ => false,
    };
    if is_sys {
        if let Ok(full) = serde_json::from_slice::<Full>(data) {
            return Inbound::System {
                msg_type: full.t.or(full.type_).unwrap_or_default(),
                payload: full.p.or(full.payload).unwrap_or(Value::Null),
            };
        }
    }
    Inbound::App(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let m = br#"WSE{"c":"WSE","t":"subscription_update","p":{"action":"subscribe","topics":["a"]}}"#;
        match classify(m) {
            Inbound::System { msg_type, payload } => {
                assert_eq!(msg_type, "subscription_update");
                assert_eq!(payload["topics"][0], "a");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(br#"{"type":"chat","payload":{"x":"y\"z"}}"#), Inbound::App(_)));
        assert!(matches!(classify(b"hello"), Inbound::Other));
        // Malformed JSON that names no system type goes to the application, which reports it.
        assert!(matches!(classify(b"{not json"), Inbound::App(_)));
        assert!(matches!(classify(br#"{"t":"ping" oops"#), Inbound::Other));
        assert!(matches!(classify(br#"{"t":"chat","p":{"text":"ping"}}"#), Inbound::App(_)));
        assert!(matches!(classify(br#"U{"t":"x"}"#), Inbound::App(d) if d[0] == b'{'));
    }
}
