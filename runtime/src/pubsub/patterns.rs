//! Pattern subscriptions: a subscribed topic with `*` (any run of characters, dots included)
//! or `?` (one character) is a pattern, and a publication to any topic it matches reaches its
//! subscribers. Live traffic only: recovery and queue groups take exact topics. The topic ACL
//! (the server's and the connection's) applies to every topic a pattern matches.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::auth::acl::{glob_match, TopicAcl};
use crate::connection::Conn;

pub fn is_pattern(topic: &str) -> bool {
    topic.contains(['*', '?'])
}

struct Entry {
    pattern: Arc<str>,
    conns: Vec<Arc<Conn>>,
}

#[derive(Default)]
pub struct Patterns {
    list: RwLock<Vec<Entry>>,
    /// Subscriptions to patterns, so publishing skips the lock when there are none.
    count: AtomicUsize,
}

impl Patterns {
    pub fn is_empty(&self) -> bool {
        self.count.load(Relaxed) == 0
    }

    /// Adds `conn` to `pattern`: (added, first subscriber of the pattern).
    pub fn add(&self, pattern: &str, conn: &Arc<Conn>) -> (bool, bool) {
        let mut list = self.list.write();
        match list.iter_mut().find(|e| &*e.pattern == pattern) {
            Some(e) if e.conns.iter().any(|c| c.id == conn.id) => (false, false),
            Some(e) => {
                e.conns.push(conn.clone());
                self.count.fetch_add(1, Relaxed);
                (true, false)
            }
            None => {
                list.push(Entry { pattern: Arc::from(pattern), conns: vec![conn.clone()] });
                self.count.fetch_add(1, Relaxed);
                (true, true)
            }
        }
    }

    /// Removes `conn` from `pattern`: (removed, it was the last subscriber).
    pub fn remove(&self, pattern: &str, conn: u64) -> (bool, bool) {
        let mut list = self.list.write();
        let Some(i) = list.iter().position(|e| &*e.pattern == pattern) else { return (false, false) };
        let e = &mut list[i];
        let before = e.conns.len();
        e.conns.retain(|c| c.id != conn);
        if e.conns.len() == before {
            return (false, false);
        }
        self.count.fetch_sub(1, Relaxed);
        let last = e.conns.is_empty();
        if last {
            list.swap_remove(i);
        }
        (true, last)
    }

    /// True if some pattern matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        !self.is_empty() && self.list.read().iter().any(|e| glob_match(&e.pattern, topic))
    }

    /// The connections whose patterns match `topic` and whose ACL lets them read it, once each.
    pub fn subscribers(&self, topic: &str, acl: &TopicAcl) -> Vec<Arc<Conn>> {
        if self.is_empty() || !acl.permits(topic) {
            return vec![];
        }
        let mut out: Vec<Arc<Conn>> = vec![];
        for e in self.list.read().iter().filter(|e| glob_match(&e.pattern, topic)) {
            for c in &e.conns {
                if c.acl.as_ref().is_none_or(|a| a.permits(topic)) && !out.iter().any(|o| o.id == c.id) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}
