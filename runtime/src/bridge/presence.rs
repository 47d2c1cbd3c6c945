//! Presence across hosts. Each worker keeps its own presence (its connections per topic and
//! user, and user data) in a Redis hash of its own, and announces each change on one shard
//! channel; the workers of the other hosts mirror it as one presence source each (the merge is
//! pubsub/presence.rs, as for mesh peers; a worker's own host reaches it over the mesh, so its
//! Redis reports are skipped). A user on two hosts is one user there, their connections summed.
//!
//! - Every change runs `wire::PRESENCE` (`HSET`/`HDEL` the field, bump the hash's version,
//!   `SPUBLISH` the change with it). A mirror applies the next version and reads the whole hash
//!   again (`HGETALL`) on a gap, a new session or a source it has not seen.
//! - Liveness: every second a worker writes its expiry into the registry hash (`<src>` ->
//!   `<expiry ms>:<session>`) and reads everyone's. A source whose expiry passed (its worker or
//!   host died), or that left the registry (it stopped), is dropped: its users leave unless
//!   present elsewhere. Its hash expires by itself after the same TTL.
//! - All presence keys and the channel share the hash tag `{p}`: one slot in a Redis Cluster.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::cmd;
use serde_json::Value;

use super::{link::Link, scripts, wire, Bridge};
use crate::engine::Engine;
use crate::protocol::time::now_ms;
use crate::pubsub::presence::{Notice, Replica, Stamp};

/// One change of this worker's own presence, waiting to go to Redis: the hash field and its
/// new value (empty: removed).
pub(crate) type Op = (Vec<u8>, Vec<u8>);

/// Another host's worker, as mirrored here.
struct Source {
    /// Its id among the presence sources.
    id: u64,
    session: u64,
    version: u64,
    /// False until its hash has been read; changes arriving meanwhile wait in `held`.
    synced: bool,
    held: Vec<(u64, u64, Vec<u8>, Vec<u8>)>,
    /// What it reported: (topic, user) -> connections.
    counts: HashMap<(String, String), u32>,
    /// When this worker first heard of it (ms): a registry read begun before then may not
    /// list it yet.
    since_ms: u64,
}

impl Source {
    fn new(src: &str, session: u64) -> Self {
        Self { id: source_id(src), session, version: 0, synced: false, held: vec![], counts: HashMap::new(), since_ms: now_ms() }
    }
}

/// This worker's side of presence over Redis.
#[derive(Default)]
pub(crate) struct Mirror {
    sources: HashMap<String, Source>,
    /// Sources whose hash must be read.
    to_sync: HashSet<String>,
}

/// What goes out: changes of this worker's presence (filled under the presence lock).
#[derive(Default)]
pub(crate) struct Outbox {
    ops: Mutex<Vec<Op>>,
    /// False while the link is down: the next session sends a full snapshot instead.
    open: std::sync::atomic::AtomicBool,
}

/// A field: `c<topic len>:<topic><user>` (connections) or `d<user>` (data).
fn count_field(topic: &str, user: &str) -> Vec<u8> {
    format!("c{}:{topic}{user}", topic.len()).into_bytes()
}

fn parse_field(f: &[u8]) -> Option<Field> {
    let (&kind, rest) = f.split_first()?;
    let rest = std::str::from_utf8(rest).ok()?;
    match kind {
        b'c' => {
            let (len, tail) = rest.split_once(':')?;
            let len: usize = len.parse().ok()?;
            (len > 0 && tail.len() > len && tail.is_char_boundary(len))
                .then(|| Field::Count(tail[..len].to_string(), tail[len..].to_string()))
        }
        b'd' if !rest.is_empty() => Some(Field::Data(rest.to_string())),
        _ => None,
    }
}

enum Field {
    Count(String, String),
    Data(String),
}

/// CLOCK_REALTIME in ns: data stamps cross hosts on the wall clock.
fn wall_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn mono_ns() -> u64 {
    crate::mesh::presence::stamp(0).0
}

/// Data's value: `<wall ns>:<slot>:<json>` (the stamp moved from this host's monotonic clock).
fn data_value(stamp: Stamp, d: &Value) -> Vec<u8> {
    let wall = wall_ns().saturating_sub(mono_ns().saturating_sub(stamp.0));
    let mut v = format!("{wall}:{}:", stamp.1).into_bytes();
    v.extend_from_slice(&serde_json::to_vec(d).unwrap_or_else(|_| b"null".to_vec()));
    v
}

fn parse_data(v: &[u8]) -> Option<(Stamp, Value)> {
    let s = std::str::from_utf8(v).ok()?;
    let (wall, rest) = s.split_once(':')?;
    let (slot, json) = rest.split_once(':')?;
    let wall: u64 = wall.parse().ok()?;
    // Back onto this host's monotonic clock, so it compares with the stamps made here.
    let mono = mono_ns().saturating_sub(wall_ns().saturating_sub(wall));
    Some(((mono, slot.parse().ok()?), serde_json::from_slice(json.as_bytes()).ok()?))
}

/// A change as published: `<src len>:<src><session>:<version>:<field len>:<field><value>`.
fn parse_change(m: &[u8]) -> Option<(&str, u64, u64, &[u8], &[u8])> {
    let (n, rest) = take_num(m)?;
    let src = std::str::from_utf8(rest.get(..n as usize)?).ok()?;
    let (session, rest) = take_num(&rest[n as usize..])?;
    let (version, rest) = take_num(rest)?;
    let (fl, rest) = take_num(rest)?;
    let field = rest.get(..fl as usize)?;
    Some((src, session, version, field, &rest[fl as usize..]))
}

fn take_num(b: &[u8]) -> Option<(u64, &[u8])> {
    let i = memchr::memchr(b':', b)?;
    Some((std::str::from_utf8(&b[..i]).ok()?.parse().ok()?, &b[i + 1..]))
}

/// A source's id among the presence sources: a hash of its name, top bit set (mesh sources
/// are addresses, far below it).
fn source_id(src: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    h.finish() | 1 << 63
}

/// This worker as a presence replica: its changes go to Redis.
pub(crate) struct ToRedis(pub Arc<Bridge>);

impl Replica for ToRedis {
    fn count(&self, topic: &str, user: &str, n: u32) {
        let v = if n == 0 { vec![] } else { n.to_string().into_bytes() };
        self.0.presence_out(count_field(topic, user), v);
    }

    fn data(&self, user: &str, stamp: Stamp, d: &Value) {
        self.0.presence_out(format!("d{user}").into_bytes(), data_value(stamp, d));
    }
}

impl Bridge {
    fn presence_out(&self, field: Vec<u8>, value: Vec<u8>) {
        if self.outbox.open.load(Relaxed) {
            self.outbox.ops.lock().push((field, value));
            self.out_wake.notify_one();
        }
    }

    fn is_own(&self, src: &str) -> bool {
        src.strip_prefix("p:").and_then(|s| s.strip_prefix(self.host.as_str())).is_some_and(|s| s.starts_with(':'))
    }

    pub(crate) fn presence_pending(&self) -> bool {
        !self.outbox.ops.lock().is_empty() || !self.mirror.lock().to_sync.is_empty()
    }
}

/// Applies one change of source `s`; notices for the engine to announce.
fn apply(engine: &Engine, s: &mut Source, field: &[u8], value: &[u8], out: &mut Vec<Notice<Arc<crate::connection::Conn>>>) {
    match parse_field(field) {
        Some(Field::Count(t, u)) => {
            let n: u32 = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            if n == 0 {
                s.counts.remove(&(t.clone(), u.clone()));
            } else {
                s.counts.insert((t.clone(), u.clone()), n);
            }
            out.extend(engine.presence.remote_count(s.id, &t, &u, n));
        }
        Some(Field::Data(u)) => {
            if let Some((stamp, d)) = parse_data(value).filter(|(_, d)| {
                serde_json::to_vec(d).map_or(false, |v| v.len() <= engine.presence.max_data_bytes())
            }) {
                out.extend(engine.presence.remote_data(&u, stamp, d));
            }
        }
        None => {}
    }
}

impl Engine {
    fn presence_announce(&self, notices: Vec<Notice<Arc<crate::connection::Conn>>>) {
        for n in notices {
            let user = n.user.clone();
            self.announce(0, n);
            self.presence_tidy(&user);
        }
    }

    /// A change published by some worker (its own host's are skipped: the mesh has them).
    pub(crate) fn redis_presence_in(&self, b: &Bridge, msg: &[u8]) {
        let Some((src, session, version, field, value)) = parse_change(msg) else {
            b.stats.malformed.fetch_add(1, Relaxed);
            return;
        };
        if b.is_own(src) {
            return;
        }
        let mut notices = vec![];
        let mut guard = b.mirror.lock();
        let m = &mut *guard;
        let s = m.sources.entry(src.to_string()).or_insert_with(|| Source::new(src, session));
        if s.synced && s.session == session && version <= s.version {
            return;
        }
        if s.synced && s.session == session && version == s.version + 1 {
            s.version = version;
            apply(self, s, field, value, &mut notices);
        } else {
            // Not read yet, a new session, or a change missed: read the whole hash.
            s.synced = false;
            s.held.push((session, version, field.to_vec(), value.to_vec()));
            m.to_sync.insert(src.to_string());
            b.out_wake.notify_one();
        }
        drop(guard);
        self.presence_announce(notices);
    }

    /// Reads the hashes of the sources waiting for it, and applies them with what waited.
    pub(crate) async fn presence_sync(&self, b: &Bridge, link: &mut Link) -> redis::RedisResult<()> {
        let todo: Vec<String> = b.mirror.lock().to_sync.drain().collect();
        for src in todo {
            let all: Vec<(Vec<u8>, Vec<u8>)> = cmd("HGETALL").arg(wire::presence_key(&b.prefix, &src)).query_async(link).await?;
            let mut notices = vec![];
            let mut m = b.mirror.lock();
            let Some(s) = m.sources.get_mut(&src) else { continue };
            let num = |k: &[u8]| all.iter().find(|(f, _)| f == k).and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
            let (Some(session), Some(version)) = (num(b"#e"), num(b"#v")) else {
                // Gone (stopped, or expired): everything it reported leaves.
                let id = s.id;
                m.sources.remove(&src);
                drop(m);
                self.presence_announce(self.presence.unlink(id));
                continue;
            };
            let mut now: HashMap<(String, String), u32> = HashMap::new();
            for (f, v) in &all {
                if let Some(Field::Count(t, u)) = parse_field(f) {
                    if let Some(n) = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0) {
                        now.insert((t, u), n);
                    }
                }
            }
            for (k, _) in s.counts.iter().filter(|(k, _)| !now.contains_key(*k)) {
                notices.extend(self.presence.remote_count(s.id, &k.0, &k.1, 0));
            }
            for ((t, u), n) in &now {
                notices.extend(self.presence.remote_count(s.id, t, u, *n));
            }
            s.counts = now;
            for (f, v) in &all {
                if f.first() == Some(&b'd') {
                    apply(self, s, f, v, &mut notices);
                }
            }
            (s.session, s.version, s.synced) = (session, version, true);
            for (e, v, f, val) in std::mem::take(&mut s.held) {
                if e != s.session || v <= s.version {
                    continue;
                }
                if v == s.version + 1 {
                    s.version = v;
                    apply(self, s, &f, &val, &mut notices);
                } else {
                    s.synced = false;
                }
            }
            if !s.synced {
                m.to_sync.insert(src);
            }
            drop(m);
            self.presence_announce(notices);
        }
        Ok(())
    }

    /// A new connection: this worker's presence hash starts a new session, the channel is
    /// subscribed, and every other source is read again (changes may have been missed).
    pub(crate) async fn presence_start(&self, b: &Arc<Bridge>, link: &mut Link, session: u64) -> redis::RedisResult<()> {
        let key = wire::presence_key(&b.prefix, &b.publisher);
        redis::pipe()
            .del(&key)
            .hset_multiple(&key, &[("#e", session), ("#v", 0)])
            .pexpire(&key, b.presence_ttl_ms as i64)
            .exec_async(link)
            .await?;
        cmd("SSUBSCRIBE").arg(wire::presence_channel(&b.prefix)).exec_async(link).await?;
        {
            let mut m = b.mirror.lock();
            let all: Vec<String> = m.sources.keys().cloned().collect();
            m.to_sync.extend(all);
        }
        b.outbox.ops.lock().clear();
        b.outbox.open.store(true, Relaxed);
        // A snapshot of this worker's presence, then every change, into the outbox.
        self.presence.link(source_id(&b.publisher), Arc::new(ToRedis(b.clone())));
        self.presence_tick(b, link, session).await
    }

    /// The link is down: nothing more goes out until the next session's snapshot.
    pub(crate) fn presence_stop(&self, b: &Bridge) {
        b.outbox.open.store(false, Relaxed);
        self.presence.unlink(source_id(&b.publisher));
        b.outbox.ops.lock().clear();
    }

    /// Sends this worker's changes (one pipeline, in order).
    pub(crate) async fn presence_send(&self, b: &Bridge, link: &mut Link, session: u64) -> redis::RedisResult<()> {
        let ops = std::mem::take(&mut *b.outbox.ops.lock());
        if ops.is_empty() {
            return Ok(());
        }
        let key = wire::presence_key(&b.prefix, &b.publisher);
        let ch = wire::presence_channel(&b.prefix);
        scripts::exec(link, |by_sha| {
            let mut p = redis::pipe();
            for (f, v) in &ops {
                let mut c = scripts::PRESENCE.head(by_sha, 1);
                c.arg(&key).arg(&ch).arg(&b.publisher).arg(session).arg(f).arg(v).arg(b.presence_ttl_ms);
                p.add_command(c).ignore();
            }
            p
        })
        .await
    }

    /// Every second: this worker's expiry into the registry, everyone's out of it; sources
    /// that expired or left are dropped, new ones (or new sessions) read.
    pub(crate) async fn presence_tick(&self, b: &Bridge, link: &mut Link, session: u64) -> redis::RedisResult<()> {
        let reg = wire::presence_registry(&b.prefix);
        let now = now_ms();
        let ttl = b.presence_ttl_ms;
        redis::pipe()
            .hset(&reg, &b.publisher, format!("{}:{session}", now + ttl))
            .pexpire(wire::presence_key(&b.prefix, &b.publisher), ttl as i64)
            .pexpire(&reg, (ttl * 4) as i64)
            .exec_async(link)
            .await?;
        let all: Vec<(String, String)> = cmd("HGETALL").arg(&reg).query_async(link).await?;
        let mut live: HashMap<String, u64> = HashMap::new();
        let mut dead = vec![];
        for (src, v) in all {
            let parsed = v.split_once(':').and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)));
            match parsed {
                Some((exp, s)) if exp > now => {
                    live.insert(src, s);
                }
                _ => dead.push(src),
            }
        }
        if !dead.is_empty() {
            cmd("HDEL").arg(&reg).arg(&dead).exec_async(link).await?;
        }
        let mut gone = vec![];
        {
            let mut m = b.mirror.lock();
            let m = &mut *m;
            m.sources.retain(|src, s| {
                let keep = live.contains_key(src) || s.since_ms >= now;
                if !keep {
                    gone.push(s.id);
                }
                keep
            });
            for (src, s) in live.into_iter().filter(|(src, _)| !b.is_own(src)) {
                let e = m.sources.entry(src.clone()).or_insert_with(|| Source::new(&src, s));
                if !e.synced || e.session != s {
                    e.synced = false;
                    m.to_sync.insert(src);
                }
            }
        }
        for id in gone {
            self.presence_announce(self.presence.unlink(id));
        }
        Ok(())
    }

    /// The engine stops: this worker leaves the registry at once (other hosts drop it on
    /// their next tick, not after the TTL).
    pub(crate) async fn presence_leave(&self, b: &Bridge, link: &mut Link) {
        let _ = redis::pipe()
            .hdel(wire::presence_registry(&b.prefix), &b.publisher)
            .del(wire::presence_key(&b.prefix, &b.publisher))
            .exec_async(link)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_changes_parse_back() {
        let f = count_field("room:1", "ann:x");
        assert!(matches!(parse_field(&f), Some(Field::Count(t, u)) if t == "room:1" && u == "ann:x"));
        assert!(matches!(parse_field(b"dbob"), Some(Field::Data(u)) if u == "bob"));
        for bad in [&b""[..], b"c", b"c9:ab", b"cx:ab", b"d", b"q1:ab", b"c0:ab"] {
            assert!(parse_field(bad).is_none(), "{bad:?}");
        }
        let msg = [&b"9:p:h1:7:9942:3:"[..], format!("{}:", f.len()).as_bytes(), &f, b"2"].concat();
        let (src, e, v, field, value) = parse_change(&msg).unwrap();
        assert_eq!((src, e, v, field, value), ("p:h1:7:99", 42, 3, &f[..], &b"2"[..]));
        assert!(parse_change(b"99:short").is_none());
    }

    #[test]
    fn data_stamps_cross_on_the_wall_clock_and_come_back_near_where_they_were() {
        let st = (mono_ns(), 3);
        let ((mono, slot), d) = parse_data(&data_value(st, &serde_json::json!({"s": 1}))).unwrap();
        assert_eq!((slot, d), (3, serde_json::json!({"s": 1})));
        assert!(mono.abs_diff(st.0) < 1_000_000_000, "{mono} {}", st.0);
    }

    #[test]
    fn own_host_sources_are_recognised() {
        let b = super::super::tests::bridge("h1");
        assert!(b.is_own("p:h1:12:ab"));
        assert!(!b.is_own("p:h10:12:ab"));
        assert!(!b.is_own("p:h2:12:ab"));
        assert_ne!(source_id("p:h2:1:a"), source_id("p:h2:1:b"));
        assert!(source_id("x") >= 1 << 63);
    }
}
