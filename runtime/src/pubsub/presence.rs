//! Presence: which users are in a topic. A user joins a topic with their first connection to
//! subscribe and leaves with their last; each user may carry a small JSON document (`data`).
//! Changes come back as `Notice`s, with the topic's watchers (connections that asked for
//! presence events) copied out, so the caller sends them outside the lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

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

/// A topic's members: connections per user, and who watches.
struct Members<W> {
    users: HashMap<Arc<str>, u32>,
    conns: usize,
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
    topics: HashSet<Arc<str>>,
}

struct State<W> {
    topics: HashMap<Arc<str>, Members<W>>,
    users: HashMap<Arc<str>, User>,
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

impl<W: Clone> Presence<W> {
    pub fn new(max_data_bytes: usize) -> Self {
        Self { max_data_bytes, state: Mutex::new(State { topics: HashMap::new(), users: HashMap::new() }) }
    }

    fn notice(s: &State<W>, change: Change, topic: &Arc<str>, user: &Arc<str>) -> Notice<W> {
        let data = s.users.get(user).and_then(|u| u.data.clone()).unwrap_or_else(|| NULL.clone());
        let watchers = s.topics.get(topic).map(|m| m.watchers.values().cloned().collect()).unwrap_or_default();
        Notice { change, topic: topic.clone(), user: user.clone(), data, watchers }
    }

    /// One more connection of `user` in `topic`; a notice if it is the user's first.
    pub fn join(&self, topic: &str, user: &str) -> Option<Notice<W>> {
        let mut s = self.state.lock();
        let s = &mut *s;
        let topic_key = match s.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(topic);
                s.topics.insert(k.clone(), Members::default());
                k
            }
        };
        let members = s.topics.get_mut(topic).expect("inserted above");
        members.conns += 1;
        if let Some(n) = members.users.get_mut(user) {
            *n += 1;
            return None;
        }
        let user_key: Arc<str> = s.users.get_key_value(user).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(user));
        members.users.insert(user_key.clone(), 1);
        s.users.entry(user_key.clone()).or_default().topics.insert(topic_key.clone());
        Some(Self::notice(s, Change::Join, &topic_key, &user_key))
    }

    /// One connection of `user` left `topic`; a notice if it was the user's last there.
    pub fn leave(&self, topic: &str, user: &str) -> Option<Notice<W>> {
        let mut s = self.state.lock();
        let s = &mut *s;
        let topic_key = s.topics.get_key_value(topic)?.0.clone();
        let members = s.topics.get_mut(topic)?;
        let user_key = members.users.get_key_value(user)?.0.clone();
        members.conns = members.conns.saturating_sub(1);
        let n = members.users.get_mut(user)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        members.users.remove(user);
        if let Some(u) = s.users.get_mut(user) {
            u.topics.remove(topic);
        }
        let notice = Self::notice(s, Change::Leave, &topic_key, &user_key);
        self.drop_if_empty(s, &topic_key);
        Some(notice)
    }

    fn drop_if_empty(&self, s: &mut State<W>, topic: &str) {
        if s.topics.get(topic).is_some_and(|m| m.users.is_empty() && m.watchers.is_empty()) {
            s.topics.remove(topic);
        }
    }

    /// Sets `user`'s data; one notice per topic the user is in.
    pub fn update(&self, user: &str, data: Value) -> Result<Vec<Notice<W>>, UpdateError> {
        let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > self.max_data_bytes {
            return Err(UpdateError::TooLarge { size, max: self.max_data_bytes });
        }
        let mut s = self.state.lock();
        let key: Arc<str> = s.users.get_key_value(user).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(user));
        let u = s.users.entry(key.clone()).or_default();
        u.data = Some(Arc::new(data));
        let topics: Vec<Arc<str>> = u.topics.iter().cloned().collect();
        Ok(topics.iter().map(|t| Self::notice(&s, Change::Update, t, &key)).collect())
    }

    /// The user's last connection is gone: forget their data (they are in no topic by now).
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
            self.drop_if_empty(&mut s, topic);
        }
    }

    /// Members of `topic`: (user, data, connections).
    pub fn members(&self, topic: &str) -> Vec<(Arc<str>, Arc<Value>, u32)> {
        let s = self.state.lock();
        let Some(m) = s.topics.get(topic) else { return vec![] };
        m.users
            .iter()
            .map(|(u, n)| (u.clone(), s.users.get(u).and_then(|x| x.data.clone()).unwrap_or_else(|| NULL.clone()), *n))
            .collect()
    }

    /// (users, connections) in `topic`, without listing them.
    pub fn count(&self, topic: &str) -> (usize, usize) {
        self.state.lock().topics.get(topic).map_or((0, 0), |m| (m.users.len(), m.conns))
    }

    /// Topics with anyone present, and users with any presence state.
    pub fn totals(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.topics.values().filter(|m| !m.users.is_empty()).count(), s.users.len())
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
        let notices = p.update("ann", json!({"status": "away"})).unwrap();
        let mut topics: Vec<&str> = notices.iter().map(|n| &*n.topic).collect();
        topics.sort();
        assert_eq!(topics, ["a", "b"]);
        assert!(notices.iter().all(|n| n.change == Change::Update && n.data["status"] == "away"));
        let err = p.update("ann", json!({"status": "x".repeat(40)})).unwrap_err();
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
        p.update("ann", json!(1)).unwrap();
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
}
