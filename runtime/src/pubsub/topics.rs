//! The topic registry. A publication is framed once, inside the topic's lock (so its `seq`
//! and its place in every subscriber's queue agree), and the same bytes go to each subscriber.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::connection::Conn;

#[derive(Default)]
struct TopicState {
    seq: u64,
    subs: Vec<Arc<Conn>>,
    index: HashMap<u64, usize>,
}

#[derive(Default)]
pub struct Topic {
    state: Mutex<TopicState>,
}

impl Topic {
    pub fn subscriber_count(&self) -> usize {
        self.state.lock().subs.len()
    }

    /// Frames the next publication with the topic's next `seq` and hands it to `emit`, both
    /// under the topic's lock, so `seq` order and queue order agree. Returns the subscriber count.
    pub fn next(&self, build: impl FnOnce(u64) -> Bytes, emit: impl FnOnce(Bytes)) -> usize {
        let mut s = self.state.lock();
        s.seq += 1;
        emit(build(s.seq));
        s.subs.len()
    }

    /// Queues frames (in order) on every current subscriber: one lock and one wake-up each.
    pub fn push_frames(&self, frames: &[Bytes]) -> Fanout {
        let s = self.state.lock();
        let mut f = Fanout::default();
        for c in &s.subs {
            let r = c.out.push_many(frames);
            f.delivered += r.queued;
            f.dropped += r.dropped;
            f.overflowed += r.overflowed;
        }
        f
    }
}

/// Result of one publication.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: usize,
    pub dropped: usize,
    pub overflowed: usize,
}

/// Told when a topic comes into being (true) or goes away (false), under the registry's lock,
/// so calls arrive in the order the changes happened.
pub type InterestHook = Box<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Default)]
pub struct Topics {
    map: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    on_interest: std::sync::OnceLock<InterestHook>,
}

impl Topics {
    /// Sets the one interest hook (the cluster mesh uses it); false if one was set already.
    pub fn set_interest_hook(&self, hook: InterestHook) -> bool {
        self.on_interest.set(hook).is_ok()
    }

    fn interest(&self, topic: &str, present: bool) {
        if let Some(h) = self.on_interest.get() {
            h(topic, present);
        }
    }

    /// Every topic with subscribers now.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.map.read().keys().cloned().collect()
    }

    /// Adds `conn` to `topic`; false if it was already there.
    pub fn subscribe(&self, topic: &str, conn: &Arc<Conn>) -> bool {
        let t = {
            let map = self.map.read();
            map.get(topic).cloned()
        };
        let t = match t {
            Some(t) => t,
            None => {
                let mut map = self.map.write();
                match map.get(topic) {
                    Some(t) => t.clone(),
                    None => {
                        let t = Arc::new(Topic::default());
                        map.insert(Arc::from(topic), t.clone());
                        self.interest(topic, true);
                        t
                    }
                }
            }
        };
        let mut s = t.state.lock();
        if s.index.contains_key(&conn.id) {
            return false;
        }
        let i = s.subs.len();
        s.subs.push(conn.clone());
        s.index.insert(conn.id, i);
        true
    }

    /// Removes `conn` from `topic`; the topic goes away with its last subscriber.
    pub fn unsubscribe(&self, topic: &str, conn_id: u64) -> bool {
        let Some(t) = self.map.read().get(topic).cloned() else { return false };
        let empty = {
            let mut s = t.state.lock();
            let Some(i) = s.index.remove(&conn_id) else { return false };
            s.subs.swap_remove(i);
            if i < s.subs.len() {
                let moved = s.subs[i].id;
                s.index.insert(moved, i);
            }
            s.subs.is_empty()
        };
        if empty {
            let mut map = self.map.write();
            if let Some(t) = map.get(topic) {
                if t.state.lock().subs.is_empty() {
                    map.remove(topic);
                    self.interest(topic, false);
                }
            }
        }
        true
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.get(topic).map_or(0, |t| t.subscriber_count())
    }

    pub fn topic_count(&self) -> usize {
        self.map.read().len()
    }

    pub fn get(&self, topic: &str) -> Option<Arc<Topic>> {
        self.map.read().get(topic).cloned()
    }
}
