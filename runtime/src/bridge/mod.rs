//! The Redis bridge: several hosts (each one `wse run` cluster) as one engine. Each worker
//! holds one multiplexed Redis connection (or a Redis Cluster connection) and subscribes, with
//! sharded pub/sub, only to the topics it has subscribers for; patterns ride classic
//! `PSUBSCRIBE` on a second channel that publishers use only while some host has a pattern
//! that matches.
//!
//! Without recovery a publication is delivered on its own host at once (the worker's
//! subscribers and the mesh) and sent to Redis; each worker drops what its own host sent.
//! With recovery, Redis stamps it (a Lua script: one epoch and offset per topic for the whole
//! deployment, kept in a stream bounded by `MAXLEN ~`), and every worker, its own included,
//! delivers it when it comes back stamped.
//!
//! While Redis is unreachable, publications wait in a bounded buffer (past it they are dropped
//! and counted); a breaker stops commands from piling up and the link is redialled with
//! backoff; on return the worker subscribes again and recovery reads the streams.

mod inbound;
mod link;
mod presence;
mod scripts;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rand_core::{OsRng, RngCore};
use tokio::sync::Notify;

use crate::auth::acl::glob_match;
use crate::config::Config;
use crate::pubsub::patterns::is_pattern;
use crate::pubsub::topics::Topics;
pub use link::run;

/// A publication waiting to go to Redis.
pub(crate) struct Out {
    topic: String,
    body: Vec<u8>,
    /// Rising per publisher (this worker): Redis stamps each number once.
    id: u64,
}

/// Messages held while a topic catches up: channel, message, via a pattern.
type Held = Vec<(Vec<u8>, Vec<u8>, bool)>;

/// A change in what this worker wants from Redis.
enum Change {
    /// The topic (or pattern) got its first subscriber in this worker, or lost its last.
    Local(String, bool),
    /// A subscription being prepared holds the topic subscribed until it has joined.
    Pin(String, bool),
}

#[derive(Default)]
pub struct BridgeStats {
    pub published: AtomicU64,
    pub published_bytes: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Received messages this host had already delivered (its own, without recovery).
    pub own: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    pub lag_ms_sum: AtomicU64,
    pub lag_count: AtomicU64,
    pub lag_ms_max: AtomicU64,
    /// Subscriptions that read a topic's position and history from Redis, and those that could not.
    pub positions: AtomicU64,
    pub position_failures: AtomicU64,
    /// Topics read again from Redis after a reconnect, and those whose history no longer
    /// covered the outage (their subscribers see a gap or a new epoch).
    pub catch_ups: AtomicU64,
    pub catch_up_gaps: AtomicU64,
    pub malformed: AtomicU64,
}

pub struct Bridge {
    pub urls: Vec<String>,
    pub prefix: String,
    /// This host's id: workers of one `wse run` share it.
    pub host: String,
    /// Recovery on: Redis stamps every publication.
    pub stamps: bool,
    /// Presence on: each worker's presence goes through Redis to the other hosts.
    pub presence: bool,
    presence_ttl_ms: u64,
    outbox: presence::Outbox,
    mirror: Mutex<presence::Mirror>,
    max_buffer: usize,
    stream_len: usize,
    ttl_ms: u64,
    out: Mutex<VecDeque<Out>>,
    out_wake: Notify,
    /// This worker as a publisher (`p:<host>:<pid>:<random>`), and its publications' numbers.
    publisher: String,
    next_id: AtomicU64,
    changes: Mutex<Vec<Change>>,
    changes_wake: Notify,
    /// Topics and patterns subscribed on Redis (confirmed), and a wake-up when that changes.
    confirmed: Mutex<HashSet<String>>,
    confirmed_wake: Notify,
    /// Patterns with subscribers anywhere in the deployment (publishers read it).
    live_patterns: RwLock<Vec<String>>,
    /// This worker's patterns (kept alive in the deployment's registry).
    local_patterns: Mutex<HashSet<String>>,
    /// Topics being caught up after a reconnect (recovery on): what arrives live meanwhile
    /// waits here (channel, message, via a pattern) and is taken after the history.
    catching: Mutex<HashMap<String, Held>>,
    pub up: AtomicBool,
    pub stats: BridgeStats,
    link: Mutex<Option<link::Link>>,
}

/// Builds the bridge when the config names Redis, and hooks it to the topic registry.
pub fn attach(cfg: &Config, topics: &Topics) -> Result<Option<Arc<Bridge>>, String> {
    let Some(url) = cfg.redis_url.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
    let urls: Vec<String> = url.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
    for u in &urls {
        redis::Client::open(u.as_str()).map_err(|e| format!("redis_url {u:?}: {e}"))?;
    }
    if cfg.redis_prefix.is_empty() || cfg.redis_prefix.contains(['{', '}']) {
        return Err("redis_prefix must be non-empty, without braces".into());
    }
    if cfg.redis_buffer == 0 {
        return Err("redis_buffer must be positive".into());
    }
    if cfg.redis_presence_ttl_ms < 2000 {
        return Err("redis_presence_ttl_ms must be at least 2000 (workers renew it every second)".into());
    }
    let host = cfg.redis_host.clone().unwrap_or_else(|| format!("{:016x}", OsRng.next_u64()));
    let b = Arc::new(Bridge {
        urls,
        prefix: cfg.redis_prefix.clone(),
        host: host.clone(),
        stamps: cfg.recovery,
        presence: cfg.presence,
        presence_ttl_ms: cfg.redis_presence_ttl_ms,
        outbox: Default::default(),
        mirror: Default::default(),
        max_buffer: cfg.redis_buffer,
        stream_len: if cfg.redis_stream_len > 0 { cfg.redis_stream_len } else { cfg.recovery_buffer.max(1) },
        ttl_ms: cfg.recovery_ttl_ms.max(1000),
        out: Mutex::default(),
        out_wake: Notify::new(),
        publisher: format!("p:{host}:{}:{:08x}", std::process::id(), OsRng.next_u32()),
        next_id: AtomicU64::new(1),
        changes: Mutex::default(),
        changes_wake: Notify::new(),
        confirmed: Mutex::default(),
        confirmed_wake: Notify::new(),
        live_patterns: RwLock::default(),
        local_patterns: Mutex::default(),
        catching: Mutex::default(),
        up: AtomicBool::new(false),
        stats: BridgeStats::default(),
        link: Mutex::new(None),
    });
    let h = b.clone();
    topics.set_interest_hook(Box::new(move |topic, present| h.change(Change::Local(topic.to_string(), present))));
    Ok(Some(b))
}

impl Bridge {
    fn change(&self, c: Change) {
        self.changes.lock().push(c);
        self.changes_wake.notify_one();
    }

    /// Queues a publication for Redis (`early`: this host has delivered it already); false if
    /// the buffer is full (dropped and counted).
    pub fn send(&self, topic: &str, early: bool, category: &str, msg_type: &str, payload: &[u8]) -> bool {
        let Some(body) = wire::body(&self.host, early, category, msg_type, payload) else {
            self.stats.dropped.fetch_add(1, Relaxed);
            return false;
        };
        let mut q = self.out.lock();
        if q.len() >= self.max_buffer {
            drop(q);
            self.stats.dropped.fetch_add(1, Relaxed);
            return false;
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        q.push_back(Out { topic: topic.to_string(), body, id });
        let first = q.len() == 1;
        drop(q);
        if first {
            self.out_wake.notify_one();
        }
        true
    }

    /// True if some host has a pattern subscriber `topic` matches.
    fn pattern_wanted(&self, topic: &str) -> bool {
        let p = self.live_patterns.read();
        !p.is_empty() && p.iter().any(|p| glob_match(p, topic))
    }

    pub fn buffered(&self) -> usize {
        self.out.lock().len()
    }

    fn is_confirmed(&self, topic: &str) -> bool {
        self.confirmed.lock().contains(topic)
    }

    /// Counters as JSON (read by the worker's control socket).
    pub fn stats_json(&self) -> String {
        let s = &self.stats;
        let subs = self.confirmed.lock();
        serde_json::json!({
            "up": self.up.load(Relaxed),
            "cluster": self.link.lock().as_ref().is_some_and(|l| l.is_cluster()),
            "stamps": self.stamps,
            "host": &self.host,
            "subscriptions": subs.iter().filter(|t| !is_pattern(t)).count(),
            "pattern_subscriptions": subs.iter().filter(|t| is_pattern(t)).count(),
            "buffered": self.buffered(),
            "buffer_limit": self.max_buffer,
            "published": s.published.load(Relaxed),
            "published_bytes": s.published_bytes.load(Relaxed),
            "received": s.received.load(Relaxed),
            "received_bytes": s.received_bytes.load(Relaxed),
            "own": s.own.load(Relaxed),
            "dropped": s.dropped.load(Relaxed),
            "reconnects": s.reconnects.load(Relaxed),
            "errors": s.errors.load(Relaxed),
            "lag_ms_sum": s.lag_ms_sum.load(Relaxed),
            "lag_count": s.lag_count.load(Relaxed),
            "lag_ms_max": s.lag_ms_max.load(Relaxed),
            "positions": s.positions.load(Relaxed),
            "position_failures": s.position_failures.load(Relaxed),
            "catch_ups": s.catch_ups.load(Relaxed),
            "catch_up_gaps": s.catch_up_gaps.load(Relaxed),
            "malformed": s.malformed.load(Relaxed),
        })
        .to_string()
    }
}

/// What the link should hold subscribed: local interest or a pin.
#[derive(Default)]
struct Wants {
    map: HashMap<String, (bool, u32)>,
}

impl Wants {
    /// Applies a change; returns the topic and whether it is now wanted, if that flipped.
    fn apply(&mut self, c: Change) -> Option<(String, bool)> {
        let (topic, local, pin) = match c {
            Change::Local(t, p) => (t, Some(p), None),
            Change::Pin(t, p) => (t, None, Some(p)),
        };
        let e = self.map.entry(topic.clone()).or_insert((false, 0));
        let before = e.0 || e.1 > 0;
        if let Some(l) = local {
            e.0 = l;
        }
        if let Some(p) = pin {
            e.1 = if p { e.1 + 1 } else { e.1.saturating_sub(1) };
        }
        let after = e.0 || e.1 > 0;
        if !after {
            self.map.remove(&topic);
        }
        (before != after).then_some((topic, after))
    }

    fn all(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A bridge of host `host` (never dialled).
    pub fn bridge(host: &str) -> Arc<Bridge> {
        let cfg = Config { redis_url: Some("redis://127.0.0.1:1".into()), redis_host: Some(host.into()), ..Config::default() };
        let topics = Topics::new(None, Default::default());
        attach(&cfg, &topics).unwrap().unwrap()
    }

    #[test]
    fn a_topic_is_wanted_while_it_has_local_interest_or_a_pin() {
        let mut w = Wants::default();
        assert_eq!(w.apply(Change::Pin("t".into(), true)), Some(("t".into(), true)));
        assert_eq!(w.apply(Change::Local("t".into(), true)), None);
        assert_eq!(w.apply(Change::Pin("t".into(), false)), None);
        assert_eq!(w.apply(Change::Local("t".into(), false)), Some(("t".into(), false)));
        assert!(w.all().is_empty());
        assert_eq!(w.apply(Change::Local("a.*".into(), true)), Some(("a.*".into(), true)));
        assert_eq!(w.all(), vec!["a.*".to_string()]);
    }
}
