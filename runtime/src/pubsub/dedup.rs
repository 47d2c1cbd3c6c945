//! Dedup: keys (event ids, idempotency keys) seen within a window are let through once. The
//! window is bounded both by count (the oldest keys go first) and by age.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default)]
struct State {
    /// Key -> the time it was first seen.
    seen: HashMap<Arc<str>, u64>,
    /// Keys in the order they were seen, for eviction.
    order: VecDeque<(Arc<str>, u64)>,
}

pub struct Dedup {
    max_keys: usize,
    max_age_ms: u64,
    state: Mutex<State>,
}

impl Dedup {
    /// Remembers at most `max_keys` keys (0 turns dedup off), each for `max_age_ms` (0: no age limit).
    pub fn new(max_keys: usize, max_age_ms: u64) -> Self {
        Self { max_keys, max_age_ms, state: Mutex::new(State::default()) }
    }

    pub fn enabled(&self) -> bool {
        self.max_keys > 0
    }

    /// True the first time `key` is offered within the window; false for a repeat.
    pub fn first(&self, key: &str, now_ms: u64) -> bool {
        if self.max_keys == 0 {
            return true;
        }
        let mut s = self.state.lock();
        self.evict(&mut s, now_ms);
        if s.seen.contains_key(key) {
            return false;
        }
        if s.order.len() >= self.max_keys {
            if let Some((old, _)) = s.order.pop_front() {
                s.seen.remove(&old);
            }
        }
        let k: Arc<str> = Arc::from(key);
        s.seen.insert(k.clone(), now_ms);
        s.order.push_back((k, now_ms));
        true
    }

    fn evict(&self, s: &mut State, now_ms: u64) {
        if self.max_age_ms == 0 {
            return;
        }
        while let Some((_, t)) = s.order.front() {
            if now_ms.saturating_sub(*t) < self.max_age_ms {
                break;
            }
            let (old, _) = s.order.pop_front().expect("front exists");
            s.seen.remove(&old);
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `id` of an inbound JSON envelope, found without parsing the payload when there is none.
pub fn envelope_id(json: &[u8]) -> Option<String> {
    use std::sync::LazyLock;
    static ID: LazyLock<memchr::memmem::Finder<'static>> = LazyLock::new(|| memchr::memmem::Finder::new(b"\"id\""));
    ID.find(json)?;
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        id: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_slice(json).ok()?;
    match head.id? {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 256 => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---- the engine's hooks ---------------------------------------------------------------------------

impl crate::engine::Engine {
    /// Publishes unless `key` was used within the dedup window; a repeat publishes nothing and
    /// returns 0.
    pub fn publish_keyed(&self, key: Option<&str>, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        if let Some(k) = key {
            if !self.dedup_publish.first(k, crate::protocol::time::now_ms()) {
                crate::metrics::Metrics::inc(&self.metrics.dedup_publish_dropped);
                return 0;
            }
        }
        self.publish(topic, category, msg_type, payload)
    }

    /// The reader's hook for an application message: false if the same user (or, anonymous,
    /// the same connection) sent a message with this `id` within the window.
    pub fn inbound_first(&self, conn: &crate::connection::Conn, json: &[u8]) -> bool {
        if !self.cfg.dedup_inbound || !self.dedup_inbound.enabled() {
            return true;
        }
        let Some(id) = envelope_id(json) else { return true };
        let key = match &conn.user_id {
            Some(u) => format!("u{}\0{id}", u.len()) + u,
            None => format!("c{}\0{id}", conn.id),
        };
        if self.dedup_inbound.first(&key, crate::protocol::time::now_ms()) {
            return true;
        }
        crate::metrics::Metrics::inc(&self.metrics.dedup_inbound_dropped);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_refused() {
        let d = Dedup::new(100, 0);
        assert!(d.first("a", 0));
        assert!(d.first("b", 0));
        assert!(!d.first("a", 1));
        assert!(!d.first("b", 1_000_000));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn count_bound_forgets_the_oldest() {
        let d = Dedup::new(3, 0);
        for k in ["a", "b", "c", "d"] {
            assert!(d.first(k, 0));
        }
        assert_eq!(d.len(), 3);
        assert!(d.first("a", 0), "a was evicted by d");
        assert!(!d.first("d", 0));
    }

    #[test]
    fn age_bound_forgets_old_keys() {
        let d = Dedup::new(100, 1000);
        assert!(d.first("a", 0));
        assert!(d.first("b", 600));
        assert!(!d.first("a", 999));
        assert!(d.first("a", 1000), "a is 1 s old: forgotten");
        assert!(!d.first("b", 1500));
        assert!(d.first("b", 1600));
    }

    #[test]
    fn zero_keys_turns_it_off() {
        let d = Dedup::new(0, 1000);
        assert!(d.first("a", 0) && d.first("a", 0));
        assert!(!d.enabled());
    }

    #[test]
    fn finds_envelope_ids() {
        assert_eq!(envelope_id(br#"{"t":"x","id":"abc","p":{"id":"inner"}}"#).as_deref(), Some("abc"));
        assert_eq!(envelope_id(br#"{"t":"x","id":42}"#).as_deref(), Some("42"));
        assert_eq!(envelope_id(br#"{"t":"x","p":{"id":"inner"}}"#), None, "only the envelope's own id");
        assert_eq!(envelope_id(br#"{"t":"x","p":{}}"#), None);
        assert_eq!(envelope_id(br#"{"t":"x","id":""}"#), None);
        assert_eq!(envelope_id(b"{not json \"id\""), None);
    }
}
