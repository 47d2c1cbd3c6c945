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
    /// A `subscription_update` naming more topics than allowed in one message: refused whole,
    /// before its topics were parsed.
    TooManyTopics { count: usize },
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

/// Counts the elements of a JSON array without keeping them (anything else counts 0).
#[derive(Default)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct TopicsCount {
    #[serde(default)]
    topics: Count,
}

#[derive(Deserialize)]
struct CountHead {
    #[serde(default)]
    p: Option<TopicsCount>,
    #[serde(default)]
    payload: Option<TopicsCount>,
}

/// How many topics a `subscription_update` names, counted without allocating them (0 when
/// it is not shaped as one: the full parse reports that).
fn count_topics(data: &[u8]) -> usize {
    match serde_json::from_slice::<CountHead>(data) {
        Ok(h) => h.p.or(h.payload).map_or(0, |t| t.topics.0),
        Err(_) => 0,
    }
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

/// Sorts one inbound message. A `subscription_update` naming more than `max_topics` topics is
/// refused before its topics are parsed.
pub fn classify(data: &[u8], max_topics: usize) -> Inbound<'_> {
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
        if t.as_deref() == Some("subscription_update") {
            let count = count_topics(data);
            if count > max_topics {
                return Inbound::TooManyTopics { count };
            }
        }
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
        match classify(m, 10) {
            Inbound::System { msg_type, payload } => {
                assert_eq!(msg_type, "subscription_update");
                assert_eq!(payload["topics"][0], "a");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(br#"{"type":"chat","payload":{"x":"y\"z"}}"#, 10), Inbound::App(_)));
        assert!(matches!(classify(b"hello", 10), Inbound::Other));
        // Malformed JSON that names no system type goes to the application, which reports it.
        assert!(matches!(classify(b"{not json", 10), Inbound::App(_)));
        assert!(matches!(classify(br#"{"t":"ping" oops"#, 10), Inbound::Other));
        assert!(matches!(classify(br#"{"t":"chat","p":{"text":"ping"}}"#, 10), Inbound::App(_)));
        assert!(matches!(classify(br#"U{"t":"x"}"#, 10), Inbound::App(d) if d[0] == b'{'));
    }
}
