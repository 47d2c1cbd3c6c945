//! Presence: which users are in a topic. A user joins a topic with their first connection to
//! subscribe and leaves with their last; each user may carry a small JSON document (`data`).
//! Changes come back as `Notice`s, with the topic's watchers (connections that asked for
//! presence events) copied out, so the caller sends them outside the lock.
//!
//! In a cluster the view is the cluster's: this worker's own connections ("local") plus what
//! each linked peer reports (a "source": its connections per topic and user, and user data).
//! A user is present while any worker has a connection of theirs in the topic; connections
//! add up. Local changes go out to every linked `Replica` under the lock, so a new link gets a
//! snapshot and then every later change, in order. Data carries a `Stamp`; the latest wins.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

/// When data was set: (CLOCK_MONOTONIC ns, worker slot). Ordered; the greater wins.
pub type Stamp = (u64, u32);

/// Where local changes go (a mesh peer). Called under the presence lock: must not block.
pub trait Replica: Send + Sync {
    /// `user` has `n` connections in `topic` through this worker (0: none).
    fn count(&self, topic: &str, user: &str, n: u32);
    /// `user`'s data, set at `stamp`.
    fn data(&self, user: &str, stamp: Stamp, data: &Value);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
    Update,
}

impl Change {
    /// The envelope type subscribers receive.
    pub fn msg_type(self) -> &'static str {
        match self {
            Change::Join => "presence_join",
            Change::Leave => "presence_leave",
            Change::Update => "presence_update",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Change::Join => 0,
            Change::Leave => 1,
            Change::Update => 2,
        }
    }
}

/// One change, for the application and for the topic's watchers.
#[derive(Debug, Clone)]
pub struct Notice<W> {
    pub change: Change,
    pub topic: Arc<str>,
    pub user: Arc<str>,
    pub data: Arc<Value>,
    pub watchers: Vec<W>,
}

/// A user's connections in one topic: through this worker, and in the whole cluster.
#[derive(Default)]
struct Here {
    local: u32,
    total: u64,
}

/// A topic's members: connections per user, and who watches.
struct Members<W> {
    users: HashMap<Arc<str>, Here>,
    conns: u64,
    watchers: HashMap<u64, W>,
}

impl<W> Default for Members<W> {
    fn default() -> Self {
        Self { users: HashMap::new(), conns: 0, watchers: HashMap::new() }
    }
}

#[derive(Default)]
struct User {
    data: Option<Arc<Value>>,
    stamp: Stamp,
    /// Topics the user is present in, anywhere in the cluster.
    topics: HashSet<Arc<str>>,
    /// How many of them have a connection of the user through this worker.
    local_topics: u32,
}

/// What one peer reports: topic → user → connections.
type Source = HashMap<Arc<str>, HashMap<Arc<str>, u32>>;

struct State<W> {
    topics: HashMap<Arc<str>, Members<W>>,
    users: HashMap<Arc<str>, User>,
    sources: HashMap<u64, Source>,
    replicas: Vec<(u64, Arc<dyn Replica>)>,
}

pub struct Presence<W> {
    max_data_bytes: usize,
    state: Mutex<State<W>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError {
    TooLarge { size: usize, max: usize },
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateError::TooLarge { size, max } => write!(f, "presence data is {size} bytes; at most {max} allowed"),
        }
    }
}

static NULL: std::sync::LazyLock<Arc<Value>> = std::sync::LazyLock::new(|| Arc::new(Value::Null));

impl<W: Clone> State<W> {
    fn notice(&self, change: Change, topic: &Arc<str>, user: &Arc<str>) -> Notice<W> {
        let data = self.users.get(user).and_then(|u| u.data.clone()).unwrap_or_else(|| NULL.clone());
        let watchers = self.topics.get(topic).map(|m| m.watchers.values().cloned().collect()).unwrap_or_default();
        Notice { change, topic: topic.clone(), user: user.clone(), data, watchers }
    }

    /// The shared keys of `topic` and `user`, creating the topic's entry if needed.
    fn keys(&mut self, topic: &str, user: &str) -> (Arc<str>, Arc<str>) {
        let t = match self.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(topic);
                self.topics.insert(k.clone(), Members::default());
                k
            }
        };
        let u = self.users.get_key_value(user).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(user));
        (t, u)
    }

    /// Adds `n` connections of `user` to `topic` (`local`: through this worker); a notice if
    /// the user was absent. Returns the local count after it too.
    fn add(&mut self, topic: &str, user: &str, n: u32, local: bool) -> (Option<Notice<W>>, u32) {
        let (t, u) = self.keys(topic, user);
        let m = self.topics.get_mut(&t).expect("created by keys");
        m.conns += n as u64;
        let h = m.users.entry(u.clone()).or_default();
        h.total += n as u64;
        if local {
            h.local += n;
        }
        let (first, here) = (h.total == n as u64, h.local);
        let entry = self.users.entry(u.clone()).or_default();
        let was_absent = entry.topics.is_empty();
        if first {
            entry.topics.insert(t.clone());
        }
        if local && here == n {
            entry.local_topics += 1;
            if entry.local_topics == 1 {
                // The user's first topic here: peers that forgot their data get it again.
                if let Some(d) = &entry.data {
                    for (_, r) in &self.replicas {
                        r.data(&u, entry.stamp, d);
                    }
                }
            }
        } else if !local && first && was_absent {
            // Present again after being nowhere: whoever forgot the data meanwhile gets it back.
            if let Some(d) = &entry.data {
                for (_, r) in &self.replicas {
                    r.data(&u, entry.stamp, d);
                }
            }
        }
        (first.then(|| self.notice(Change::Join, &t, &u)), here)
    }

    /// Removes `n` connections of `user` from `topic` (at most as many as there are, and with
    /// `local`, at most this worker's); a notice if it was the last. Returns the local count
    /// after, or None if the user was not there (nothing changed).
    fn remove(&mut self, topic: &str, user: &str, n: u32, local: bool) -> Option<(Option<Notice<W>>, u32)> {
        let t = self.topics.get_key_value(topic)?.0.clone();
        let m = self.topics.get_mut(topic)?;
        let u = m.users.get_key_value(user)?.0.clone();
        let h = m.users.get_mut(user)?;
        let n = if local { n.min(h.local) } else { (n as u64).min(h.total - h.local as u64) as u32 };
        if n == 0 {
            return None;
        }
        if local {
            h.local -= n;
        }
        h.total -= n as u64;
        m.conns = m.conns.saturating_sub(n as u64);
        let (gone, here) = (h.total == 0, h.local);
        if local && here == 0 {
            if let Some(e) = self.users.get_mut(&u) {
                e.local_topics = e.local_topics.saturating_sub(1);
            }
        }
        if !gone {
            return Some((None, here));
        }
        m.users.remove(user);
        if let Some(e) = self.users.get_mut(user) {
            e.topics.remove(topic);
        }
        let notice = self.notice(Change::Leave, &t, &u);
        self.drop_if_empty(&t);
        Some((Some(notice), here))
    }

    fn drop_if_empty(&mut self, topic: &str) {
        if self.topics.get(topic).is_some_and(|m| m.users.is_empty() && m.watchers.is_empty()) {
            self.topics.remove(topic);
        }
    }

    fn replicate_count(&self, topic: &str, user: &str, n: u32) {
        for (_, r) in &self.replicas {
            r.count(topic, user, n);
        }
    }

    /// Sets `user`'s data if `stamp` is newer than what is held; notices for each topic.
    fn set_data(&mut self, user: &str, stamp: Stamp, data: Value) -> Option<Vec<Notice<W>>> {
        let key: Arc<str> = self.users.get_key_value(user).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(user));
        let u = self.users.entry(key.clone()).or_default();
        if u.data.is_some() && u.stamp >= stamp {
            return None;
        }
        u.data = Some(Arc::new(data));
        u.stamp = stamp;
        let topics: Vec<Arc<str>> = u.topics.iter().cloned().collect();
        Some(topics.iter().map(|t| self.notice(Change::Update, t, &key)).collect())
    }
}

impl<W: Clone> Presence<W> {
    pub fn new(max_data_bytes: usize) -> Self {
        Self {
            max_data_bytes,
            state: Mutex::new(State {
                topics: HashMap::new(),
                users: HashMap::new(),
                sources: HashMap::new(),
                replicas: Vec::new(),
            }),
        }
    }

    pub fn max_data_bytes(&self) -> usize {
        self.max_data_bytes
    }

    /// One more connection of `user` in `topic` through this worker; a notice if the user was
    /// in the topic nowhere in the cluster.
    pub fn join(&self, topic: &str, user: &str) -> Option<Notice<W>> {
        let mut s = self.state.lock();
        let (notice, here) = s.add(topic, user, 1, true);
        s.replicate_count(topic, user, here);
        notice
    }

    /// One connection of `user` through this worker left `topic`; a notice if it was the
    /// user's last there in the cluster.
    pub fn leave(&self, topic: &str, user: &str) -> Option<Notice<W>> {
        let mut s = self.state.lock();
        let (notice, here) = s.remove(topic, user, 1, true)?;
        s.replicate_count(topic, user, here);
        notice
    }

    /// Sets `user`'s data (at `stamp`, or just after the stamp held if that is later); one
    /// notice per topic the user is in.
    pub fn update(&self, user: &str, data: Value, stamp: Stamp) -> Result<Vec<Notice<W>>, UpdateError> {
        let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > self.max_data_bytes {
            return Err(UpdateError::TooLarge { size, max: self.max_data_bytes });
        }
        let mut s = self.state.lock();
        let held = s.users.get(user).map_or((0, 0), |u| u.stamp);
        let stamp = if stamp > held { stamp } else { (held.0.saturating_add(1), stamp.1) };
        let notices = s.set_data(user, stamp, data).unwrap_or_default();
        if let Some(d) = s.users.get(user).and_then(|u| u.data.clone()) {
            for (_, r) in &s.replicas {
                r.data(user, stamp, &d);
            }
        }
        Ok(notices)
    }

    /// Nobody holds `user` here any more (no connection on this worker): forget their data
    /// unless they are still present somewhere in the cluster.
    pub fn forget(&self, user: &str) {
        let mut s = self.state.lock();
        if s.users.get(user).is_some_and(|u| u.topics.is_empty()) {
            s.users.remove(user);
        }
    }

    /// `conn` wants presence events of `topic`.
    pub fn watch(&self, topic: &str, conn: u64, w: W) {
        let mut s = self.state.lock();
        match s.topics.get_mut(topic) {
            Some(m) => {
                m.watchers.insert(conn, w);
            }
            None => {
                let mut m = Members::default();
                m.watchers.insert(conn, w);
                s.topics.insert(Arc::from(topic), m);
            }
        }
    }

    pub fn unwatch(&self, topic: &str, conn: u64) {
        let mut s = self.state.lock();
        if let Some(m) = s.topics.get_mut(topic) {
            m.watchers.remove(&conn);
            s.drop_if_empty(topic);
        }
    }

    /// Members of `topic`: (user, data, connections).
    pub fn members(&self, topic: &str) -> Vec<(Arc<str>, Arc<Value>, u32)> {
        let s = self.state.lock();
        let Some(m) = s.topics.get(topic) else { return vec![] };
        m.users
            .iter()
            .map(|(u, h)| {
                let data = s.users.get(u).and_then(|x| x.data.clone()).unwrap_or_else(|| NULL.clone());
                (u.clone(), data, h.total.min(u32::MAX as u64) as u32)
            })
            .collect()
    }

    /// (users, connections) in `topic`, without listing them.
    pub fn count(&self, topic: &str) -> (usize, usize) {
        self.state.lock().topics.get(topic).map_or((0, 0), |m| (m.users.len(), m.conns as usize))
    }

    /// Topics with anyone present, and users with any presence state.
    pub fn totals(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.topics.values().filter(|m| !m.users.is_empty()).count(), s.users.len())
    }

    // ---- the cluster: peers' reports in, local changes out -------------------------------------

    /// Links a replica: it gets this worker's presence now (data, then connections) and every
    /// local change after it, in order.
    pub fn link(&self, id: u64, r: Arc<dyn Replica>) {
        let mut s = self.state.lock();
        for (name, u) in &s.users {
            if let (true, Some(d)) = (u.local_topics > 0, &u.data) {
                r.data(name, u.stamp, d);
            }
        }
        for (t, m) in &s.topics {
            for (u, h) in &m.users {
                if h.local > 0 {
                    r.count(t, u, h.local);
                }
            }
        }
        s.replicas.retain(|(i, _)| *i != id);
        s.replicas.push((id, r));
    }

    /// The link to source `id` is gone: no more changes to it, and everything it reported is
    /// taken away (leave notices for users present nowhere else).
    pub fn unlink(&self, id: u64) -> Vec<Notice<W>> {
        let mut s = self.state.lock();
        s.replicas.retain(|(i, _)| *i != id);
        let Some(src) = s.sources.remove(&id) else { return vec![] };
        let mut out = vec![];
        for (t, users) in src {
            for (u, n) in users {
                if let Some((Some(notice), _)) = s.remove(&t, &u, n, false) {
                    out.push(notice);
                }
            }
        }
        out
    }

    /// Source `id` reports `n` connections of `user` in `topic`; a notice if that makes the
    /// user present or absent in the cluster.
    pub fn remote_count(&self, id: u64, topic: &str, user: &str, n: u32) -> Option<Notice<W>> {
        let mut s = self.state.lock();
        let src = s.sources.entry(id).or_default();
        let old = src.get(topic).and_then(|m| m.get(user)).copied().unwrap_or(0);
        if old == n {
            return None;
        }
        if n == 0 {
            if let Some(m) = src.get_mut(topic) {
                m.remove(user);
                if m.is_empty() {
                    src.remove(topic);
                }
            }
        } else {
            src.entry(Arc::from(topic)).or_default().insert(Arc::from(user), n);
        }
        if n > old {
            s.add(topic, user, n - old, false).0
        } else {
            s.remove(topic, user, old - n, false).and_then(|(notice, _)| notice)
        }
    }

    /// Source data for `user` set at `stamp`: taken if newer than what is held; notices for
    /// each topic the user is in.
    pub fn remote_data(&self, user: &str, stamp: Stamp, data: Value) -> Vec<Notice<W>> {
        self.state.lock().set_data(user, stamp, data).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn join_on_first_connection_leave_on_last() {
        let p: Presence<u32> = Presence::new(100);
        p.watch("room", 9, 9);
        let j = p.join("room", "ann").expect("first connection joins");
        assert_eq!((j.change, &*j.topic, &*j.user, j.watchers.clone()), (Change::Join, "room", "ann", vec![9]));
        assert!(p.join("room", "ann").is_none(), "second connection: no event");
        assert_eq!(p.count("room"), (1, 2));
        assert!(p.leave("room", "ann").is_none());
        let l = p.leave("room", "ann").expect("last connection leaves");
        assert_eq!(l.change, Change::Leave);
        assert_eq!(p.count("room"), (0, 0));
        assert!(p.leave("room", "ann").is_none(), "leaving twice is harmless");
        assert!(p.leave("nowhere", "ann").is_none());
    }

    #[test]
    fn data_is_per_user_with_a_size_cap() {
        let p: Presence<u32> = Presence::new(30);
        p.join("a", "ann");
        p.join("b", "ann");
        p.join("b", "bob");
        let notices = p.update("ann", json!({"status": "away"}), (1, 0)).unwrap();
        let mut topics: Vec<&str> = notices.iter().map(|n| &*n.topic).collect();
        topics.sort();
        assert_eq!(topics, ["a", "b"]);
        assert!(notices.iter().all(|n| n.change == Change::Update && n.data["status"] == "away"));
        let err = p.update("ann", json!({"status": "x".repeat(40)}), (1, 0)).unwrap_err();
        assert!(matches!(err, UpdateError::TooLarge { max: 30, .. }));
        let mut members = p.members("b");
        members.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(members[0].1["status"], "away", "refused update changed nothing");
        assert_eq!(*members[1].1, Value::Null);
        // The data goes out with the join to a new topic too.
        assert_eq!(p.join("c", "ann").unwrap().data["status"], "away");
    }

    #[test]
    fn forget_drops_data_only_when_absent_everywhere() {
        let p: Presence<u32> = Presence::new(100);
        p.join("a", "ann");
        p.update("ann", json!(1), (1, 0)).unwrap();
        p.forget("ann");
        assert_eq!(*p.members("a")[0].1, json!(1));
        p.leave("a", "ann");
        p.forget("ann");
        assert_eq!(p.totals(), (0, 0));
        assert!(p.join("a", "ann").unwrap().data.is_null());
    }

    #[test]
    fn watchers_come_and_go() {
        let p: Presence<u32> = Presence::new(100);
        p.watch("t", 1, 1);
        p.watch("t", 2, 2);
        p.unwatch("t", 1);
        assert_eq!(p.join("t", "u").unwrap().watchers, vec![2]);
        p.unwatch("t", 2);
        assert!(p.leave("t", "u").unwrap().watchers.is_empty());
        assert_eq!(p.totals(), (0, 1), "no topic left; the user's entry waits for forget");
        p.forget("u");
        assert_eq!(p.totals(), (0, 0));
    }

    /// A replica that records what it is sent.
    #[derive(Default)]
    struct Rec(Mutex<Vec<String>>);

    impl Replica for Rec {
        fn count(&self, topic: &str, user: &str, n: u32) {
            self.0.lock().push(format!("count {topic} {user} {n}"));
        }
        fn data(&self, user: &str, stamp: Stamp, data: &Value) {
            self.0.lock().push(format!("data {user} {stamp:?} {data}"));
        }
    }

    impl Rec {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    fn kinds(ns: &[Notice<u32>]) -> Vec<(Change, String, String)> {
        ns.iter().map(|n| (n.change, n.topic.to_string(), n.user.to_string())).collect()
    }

    #[test]
    fn a_link_gets_a_snapshot_then_every_local_change_in_order() {
        let p: Presence<u32> = Presence::new(100);
        p.join("room", "ann");
        p.join("room", "ann");
        p.update("ann", json!("busy"), (5, 0)).unwrap();
        // Present only through a peer: not this worker's to report.
        p.remote_count(7, "room", "bob", 1);
        let r = Arc::new(Rec::default());
        p.link(1, r.clone());
        assert_eq!(r.take(), ["data ann (5, 0) \"busy\"", "count room ann 2"]);
        p.leave("room", "ann");
        p.join("hall", "ann");
        p.update("ann", json!("away"), (3, 0)).unwrap();
        assert_eq!(
            r.take(),
            ["count room ann 1", "count hall ann 1", "data ann (6, 0) \"away\""],
            "a stamp older than the one held is moved just past it"
        );
        // A user's first topic here sends their data ahead of the count (a peer may have forgotten it).
        p.update("cyd", json!(1), (10, 0)).unwrap();
        r.take();
        p.join("room", "cyd");
        assert_eq!(r.take(), ["data cyd (10, 0) 1", "count room cyd 1"]);
        // Remote reports are not echoed back out.
        p.remote_count(7, "room", "dan", 2);
        assert!(r.take().is_empty());
        assert!(p.unlink(1).is_empty(), "the replica reported nothing itself");
        p.join("room", "ann");
        assert!(r.take().is_empty(), "unlinked: nothing more");
    }

    #[test]
    fn cluster_view_sums_connections_and_joins_once() {
        let p: Presence<u32> = Presence::new(100);
        p.watch("room", 9, 9);
        // ann first through peer 1: one join.
        let j = p.remote_count(1, "room", "ann", 1).expect("first connection anywhere joins");
        assert_eq!((j.change, j.watchers.clone()), (Change::Join, vec![9]));
        assert!(p.join("room", "ann").is_none(), "present already: no second join");
        assert!(p.remote_count(2, "room", "ann", 3).is_none());
        assert!(p.remote_count(2, "room", "ann", 3).is_none(), "a repeated report changes nothing");
        assert_eq!(p.count("room"), (1, 5));
        assert_eq!(p.members("room")[0].2, 5);
        assert!(p.remote_count(1, "room", "ann", 0).is_none());
        assert!(p.leave("room", "ann").is_none());
        assert!(p.leave("room", "ann").is_none(), "no local connection left to remove");
        assert_eq!(p.count("room"), (1, 3));
        let l = p.remote_count(2, "room", "ann", 0).expect("the last connection anywhere leaves");
        assert_eq!(l.change, Change::Leave);
        assert_eq!(p.count("room"), (0, 0));
        assert!(p.remote_count(2, "room", "ann", 0).is_none());
    }

    #[test]
    fn a_dropped_link_takes_its_users_away_and_only_those_absent_elsewhere_leave() {
        let p: Presence<u32> = Presence::new(100);
        p.watch("a", 9, 9);
        p.remote_count(1, "a", "ann", 2);
        p.remote_count(1, "a", "bob", 1);
        p.remote_count(1, "b", "bob", 1);
        p.remote_count(2, "a", "bob", 1);
        p.join("a", "cyd");
        p.remote_count(1, "a", "cyd", 4);
        let mut gone = kinds(&p.unlink(1));
        gone.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        assert_eq!(
            gone,
            [(Change::Leave, "a".into(), "ann".into()), (Change::Leave, "b".into(), "bob".into())]
        );
        let mut left: Vec<(String, u32)> = p.members("a").into_iter().map(|(u, _, n)| (u.to_string(), n)).collect();
        left.sort();
        assert_eq!(left, [("bob".to_string(), 1), ("cyd".to_string(), 1)]);
        assert_eq!(p.count("b"), (0, 0));
        assert!(p.unlink(1).is_empty(), "twice is harmless");
        // A new link from the same peer starts from nothing.
        assert!(p.remote_count(1, "a", "ann", 1).is_some());
    }

    #[test]
    fn data_from_peers_is_taken_when_newer_and_sent_back_to_those_that_forgot() {
        let p: Presence<u32> = Presence::new(100);
        p.remote_count(1, "a", "ann", 1);
        let ns = p.remote_data("ann", (10, 1), json!("x"));
        assert_eq!(kinds(&ns), [(Change::Update, "a".into(), "ann".into())]);
        assert!(p.remote_data("ann", (9, 2), json!("old")).is_empty(), "older: ignored");
        assert!(p.remote_data("ann", (10, 1), json!("same")).is_empty(), "same stamp: ignored");
        assert_eq!(*p.members("a")[0].1, json!("x"));
        assert_eq!(p.remote_data("ann", (10, 2), json!("y")).len(), 1, "ties go to the higher slot");
        // A local update after it wins everywhere: its stamp moves past the one held.
        let r = Arc::new(Rec::default());
        p.link(1, r.clone());
        p.update("ann", json!("z"), (4, 0)).unwrap();
        assert_eq!(r.take(), ["data ann (11, 0) \"z\""]);
        // ann leaves everywhere; this worker still holds her (a connection here): when she is
        // back through a peer, the data goes out again for peers that forgot it.
        p.remote_count(1, "a", "ann", 0);
        p.remote_count(1, "b", "ann", 1);
        assert_eq!(r.take(), ["data ann (11, 0) \"z\""]);
        p.remote_count(1, "c", "ann", 1);
        assert!(r.take().is_empty(), "already present: no resend");
        // Present nowhere and forgotten: the next data is taken whatever its stamp.
        p.remote_count(1, "b", "ann", 0);
        p.remote_count(1, "c", "ann", 0);
        p.forget("ann");
        assert_eq!(p.totals(), (0, 0));
        p.remote_data("ann", (1, 1), json!("fresh"));
        p.remote_count(1, "a", "ann", 1);
        assert_eq!(*p.members("a")[0].1, json!("fresh"));
    }
}

