//! Pattern subscriptions: a subscribed topic with `*` (any run of characters, dots included)
//! or `?` (one character) is a pattern, and a publication to any topic it matches reaches its
//! subscribers. Live traffic only: recovery and queue groups take exact topics. A pattern the
//! client subscribed to itself is "checked": every topic it matches is decided for that
//! connection as an exact subscription would be (topic ACLs, the application's hook), once per
//! topic and connection (`gate.rs`). One the server made (`app.subscribe`) is not.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::auth::acl::glob_match;
use crate::connection::Conn;

pub fn is_pattern(topic: &str) -> bool {
    topic.contains(['*', '?'])
}

struct Entry {
    pattern: Arc<str>,
    /// Each subscriber, and whether what the pattern matches is checked for it.
    conns: Vec<(Arc<Conn>, bool)>,
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

    /// Adds `conn` to `pattern`: (added, first subscriber of the pattern). `checked`: the
    /// client asked for it, so what it matches is decided per topic.
    pub fn add(&self, pattern: &str, conn: &Arc<Conn>, checked: bool) -> (bool, bool) {
        let mut list = self.list.write();
        match list.iter_mut().find(|e| &*e.pattern == pattern) {
            Some(e) if e.conns.iter().any(|(c, _)| c.id == conn.id) => (false, false),
            Some(e) => {
                e.conns.push((conn.clone(), checked));
                self.count.fetch_add(1, Relaxed);
                (true, false)
            }
            None => {
                list.push(Entry { pattern: Arc::from(pattern), conns: vec![(conn.clone(), checked)] });
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
        e.conns.retain(|(c, _)| c.id != conn);
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

    /// The connections whose patterns match `topic`, once each, with whether the topic must
    /// be checked for them (false if any of their matching patterns is the server's).
    pub fn subscribers(&self, topic: &str) -> Vec<(Arc<Conn>, bool)> {
        if self.is_empty() {
            return vec![];
        }
        let mut out: Vec<(Arc<Conn>, bool)> = vec![];
        for e in self.list.read().iter().filter(|e| glob_match(&e.pattern, topic)) {
            for (c, checked) in &e.conns {
                match out.iter_mut().find(|(o, _)| o.id == c.id) {
                    Some(o) => o.1 &= *checked,
                    None => out.push((c.clone(), *checked)),
                }
            }
        }
        out
    }
}
