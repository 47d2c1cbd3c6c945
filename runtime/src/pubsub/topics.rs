//! The topic registry. A publication is built once, inside the topic's lock (so its `seq` and
//! its place in every subscriber's queue agree), and shared by every subscriber.
//!
//! Recovery: with it on, each topic keeps the publications it delivered in a ring (bounded in
//! count, age and, across all topics, bytes), stamped with the topic's epoch and offset. A
//! subscriber that says where it stopped gets what it missed replayed, under the same lock that
//! adds it to the topic, so replay and live traffic neither overlap nor leave a gap.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rand_core::{OsRng, RngCore};

use super::patterns::{is_pattern, Patterns};
use crate::auth::acl::TopicAcl;
use crate::connection::Conn;
use crate::deliver::{deliver, Batch};
use crate::outbound::PushMany;
use crate::protocol::outgoing::OutMsg;
use crate::protocol::time::now_ms;

/// Recovery limits.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryLimits {
    /// Publications kept per topic.
    pub max_messages: usize,
    pub ttl_ms: u64,
    /// Bytes kept across all topics.
    pub max_bytes: usize,
}

struct TopicState {
    seq: u64,
    /// The last offset handed to subscribers (and to the ring).
    pushed: u64,
    epoch: u32,
    subs: Vec<Arc<Conn>>,
    index: HashMap<u64, usize>,
    /// Queue groups: each publication goes to one member of each group, in turn.
    groups: Vec<Group>,
    /// Publications kept for recovery, with the bytes each was counted for.
    ring: VecDeque<(Arc<OutMsg>, usize)>,
    ring_bytes: usize,
    /// Last publication or departure (ms): with recovery on, an idle topic (and its epoch)
    /// outlives its subscribers by the TTL, so one that left before anything was published
    /// can still recover what came after.
    last_active_ms: u64,
    /// In a cluster with recovery: who stamps this topic's publications.
    owner: Owner,
    /// Mirrored publications waiting for a gap before them to fill (see `next_mirrored`).
    held: Vec<(u64, Arc<str>, Arc<OutMsg>)>,
}

/// Who stamped a topic's last publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Unknown,
    Me,
    /// A peer on the mesh, by its socket name.
    Peer(Arc<str>),
}

impl TopicState {
    fn new() -> Self {
        let mut epoch = 0;
        while epoch == 0 {
            epoch = OsRng.next_u32();
        }
        Self {
            seq: 0,
            pushed: 0,
            epoch,
            subs: Vec::new(),
            index: HashMap::new(),
            groups: Vec::new(),
            ring: VecDeque::new(),
            ring_bytes: 0,
            last_active_ms: now_ms(),
            owner: Owner::Unknown,
            held: Vec::new(),
        }
    }

    /// Starts the ring over for another epoch (a mirror following a new owner).
    fn reset(&mut self, epoch: u32, before: u64, total: &AtomicUsize) {
        while !self.ring.is_empty() {
            evict_front(self, total);
        }
        self.epoch = epoch;
        self.seq = before;
        self.pushed = before;
    }
}

struct Group {
    name: Arc<str>,
    members: Vec<Arc<Conn>>,
    next: usize,
}

impl TopicState {
    fn count(&self) -> usize {
        self.subs.len() + self.groups.iter().map(|g| g.members.len()).sum::<usize>()
    }

    fn is_member(&self, conn: u64) -> bool {
        self.index.contains_key(&conn) || self.groups.iter().any(|g| g.members.iter().any(|c| c.id == conn))
    }

    /// Hands each publication to the next member of each group that takes it.
    fn push_groups(&mut self, msgs: &[Arc<OutMsg>], f: &mut PushMany) {
        for g in &mut self.groups {
            for m in msgs {
                let one = Batch::new(std::slice::from_ref(m));
                // A member that is closing or over budget passes the message to the next one.
                for _ in 0..g.members.len() {
                    let c = &g.members[g.next % g.members.len()];
                    g.next = (g.next + 1) % g.members.len();
                    let r = deliver(c, &one);
                    let taken = r.queued > 0;
                    f.add(r);
                    if taken {
                        break;
                    }
                }
            }
        }
    }
}

pub struct Topic {
    pub name: Arc<str>,
    state: Mutex<TopicState>,
}

/// What a subscriber asked to recover, and what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub epoch: u32,
    pub offset: u64,
    pub recovered: bool,
    pub count: usize,
}

impl Topic {
    fn new(name: Arc<str>) -> Self {
        Self { name, state: Mutex::new(TopicState::new()) }
    }

    pub fn subscriber_count(&self) -> usize {
        self.state.lock().count()
    }

    /// Queue groups and their sizes.
    pub fn groups(&self) -> Vec<(String, usize)> {
        self.state.lock().groups.iter().map(|g| (g.name.to_string(), g.members.len())).collect()
    }

    /// Builds the next publication with the topic's next offset and epoch and hands it to
    /// `emit`, both under the topic's lock, so offset order and queue order agree.
    /// Returns the subscriber count.
    pub fn next(&self, build: impl FnOnce(u64, u32) -> Arc<OutMsg>, emit: impl FnOnce(Arc<OutMsg>, u32)) -> usize {
        let mut s = self.state.lock();
        s.seq += 1;
        s.owner = Owner::Me;
        let (seq, epoch) = (s.seq, s.epoch);
        emit(build(seq, epoch), epoch);
        s.count()
    }

    /// Who stamps this topic (in a cluster with recovery).
    pub fn owner(&self) -> Owner {
        self.state.lock().owner.clone()
    }

    /// Takes a publication its owner stamped (a mirror): hands it to `emit` under the lock if
    /// it is the next one, and ignores one already taken. Another epoch starts the ring over.
    /// One that comes after a gap from a new owner while the previous owner's link is still
    /// open is held: the previous owner's last publications may still be on that link (with
    /// three workers or more), and they go first.
    pub fn next_mirrored(&self, m: Mirrored<'_>, total: &AtomicUsize, build: impl FnOnce() -> Arc<OutMsg>, emit: &mut dyn FnMut(Arc<OutMsg>)) -> Took {
        let mut s = self.state.lock();
        if m.epoch != s.epoch && s.owner == Owner::Me && !m.outranks_me {
            return Took::Ignored;
        }
        if m.epoch != s.epoch {
            s.reset(m.epoch, m.offset.saturating_sub(1), total);
            s.held.clear();
        } else if m.offset <= s.seq {
            return Took::Ignored;
        } else if m.offset > s.seq + 1 {
            if s.held.len() >= MAX_HELD {
                // The gap is not filling: what waited goes, in order, before this one.
                release_held(&mut s, emit, true);
            }
            if let Owner::Peer(prev) = &s.owner {
                if **prev != **m.from && (m.linked)(prev) {
                    let msg = build();
                    s.held.push((m.offset, m.from.clone(), msg));
                    return Took::Held;
                }
            }
        }
        s.seq = m.offset;
        s.owner = Owner::Peer(m.from.clone());
        emit(build());
        release_held(&mut s, emit, false);
        Took::Taken
    }

    /// A peer's link closed: publications held for a gap it might have filled go now.
    pub fn flush_held(&self, emit: &mut dyn FnMut(Arc<OutMsg>)) {
        let mut s = self.state.lock();
        if !s.held.is_empty() {
            release_held(&mut s, emit, true);
        }
    }

    /// The topic's ring for a peer: `f(epoch, pushed, stamped here, entries)` under the lock.
    pub fn snapshot<R>(&self, f: impl FnOnce(u32, u64, bool, &mut dyn Iterator<Item = &Arc<OutMsg>>) -> R) -> R {
        let s = self.state.lock();
        f(s.epoch, s.pushed, s.owner == Owner::Me, &mut s.ring.iter().map(|(m, _)| m))
    }

    /// Takes part of a peer's ring (a worker joining the mesh): with no history of its own, or
    /// the same epoch, it keeps what it lacks; another epoch replaces its own only if that is
    /// newer. `owner` names the peer when the peer stamps the topic.
    pub fn merge(&self, epoch: u32, pushed: u64, owner: Option<&Arc<str>>, entries: Vec<Arc<OutMsg>>, lim: &RecoveryLimits, total: &AtomicUsize) {
        let mut s = self.state.lock();
        let mine_newest = s.ring.back().map_or(0, |(m, _)| m.at_ms);
        let theirs_newest = entries.last().map_or(0, |m| m.at_ms);
        let fresh = s.seq == 0 && s.ring.is_empty();
        if epoch != s.epoch {
            if !fresh && theirs_newest <= mine_newest {
                return;
            }
            let before = entries.first().map_or(pushed, |m| m.offset.saturating_sub(1));
            s.reset(epoch, before, total);
        }
        // Older entries than the ring's first (or, with the ring empty, than the next to be
        // pushed: mirrored publications may still be on their way to it) go in front; newer
        // than anything it has or awaits, at the back.
        let front = Some(s.ring.front().map_or(s.pushed + 1, |(m, _)| m.offset));
        let mut older: Vec<(Arc<OutMsg>, usize)> = vec![];
        for m in entries {
            let n = m.size();
            if front.is_some_and(|f| m.offset < f) {
                older.push((m, n));
            } else if m.offset > s.pushed && m.offset > s.seq {
                s.pushed = m.offset;
                s.seq = m.offset;
                s.ring_bytes += n;
                total.fetch_add(n, Relaxed);
                s.ring.push_back((m, n));
            }
        }
        // Only a contiguous run can go in front.
        if let (Some(f), Some(last)) = (front, older.last()) {
            if last.0.offset + 1 == f {
                for (m, n) in older.into_iter().rev() {
                    s.ring_bytes += n;
                    total.fetch_add(n, Relaxed);
                    s.ring.push_front((m, n));
                }
            }
        }
        // A peer whose ring has expired still knows where the offsets stand.
        if s.ring.is_empty() && s.seq < pushed {
            s.seq = pushed;
            s.pushed = pushed;
        }
        if let Some(o) = owner {
            s.owner = Owner::Peer(o.clone());
        }
        s.last_active_ms = s.last_active_ms.max(theirs_newest);
        while s.ring.len() > lim.max_messages || (total.load(Relaxed) > lim.max_bytes && !s.ring.is_empty()) {
            evict_front(&mut s, total);
        }
    }

    /// Queues publications (in order) on every current subscriber, one lock and one wake-up
    /// each, and keeps them for recovery.
    /// `also`: pattern subscribers of the topic (those subscribed to it as well get it once).
    pub fn push(&self, msgs: &[Arc<OutMsg>], ring: Option<(&RecoveryLimits, &AtomicUsize)>, also: &[Arc<Conn>]) -> PushMany {
        let mut s = self.state.lock();
        let mut f = PushMany::default();
        let batch = Batch::new(msgs);
        for c in &s.subs {
            f.add(deliver(c, &batch));
        }
        for c in also {
            if !s.index.contains_key(&c.id) {
                f.add(deliver(c, &batch));
            }
        }
        if !s.groups.is_empty() {
            s.push_groups(msgs, &mut f);
        }
        if let Some(last) = msgs.last() {
            s.pushed = last.offset;
            s.last_active_ms = last.at_ms;
        }
        if let Some((lim, total)) = ring {
            for m in msgs {
                // Counted once, here: encodings built later for replays are not re-counted.
                let n = m.size();
                s.ring_bytes += n;
                total.fetch_add(n, Relaxed);
                s.ring.push_back((m.clone(), n));
            }
            // Over the count, or over the global budget: this topic gives up its oldest.
            while s.ring.len() > lim.max_messages || (total.load(Relaxed) > lim.max_bytes && !s.ring.is_empty()) {
                evict_front(&mut s, total);
            }
        }
        f
    }

    /// Adds `conn` (false if it was there). With `recover = Some((epoch, offset))` the
    /// publications after `offset` are delivered to it first, if the topic still has them all;
    /// to a connection already in the topic, they are delivered all the same (a gap fill).
    /// `first` runs, under the lock, when this makes the topic's first subscriber.
    fn add(&self, conn: &Arc<Conn>, recover: Option<(u32, u64)>, group: Option<&str>, first: impl FnOnce()) -> (bool, Recovery) {
        let mut s = self.state.lock();
        let mut rec = Recovery { epoch: s.epoch, offset: s.pushed, recovered: false, count: 0 };
        let member = s.is_member(conn.id);
        if member && (recover.is_none() || group.is_some()) {
            return (false, rec);
        }
        if let Some(name) = group {
            // Group members share the stream: no per-member replay.
            match s.groups.iter_mut().find(|g| &*g.name == name) {
                Some(g) => g.members.push(conn.clone()),
                None => s.groups.push(Group { name: Arc::from(name), members: vec![conn.clone()], next: 0 }),
            }
            if s.count() == 1 {
                first();
            }
            return (true, rec);
        }
        if let Some((epoch, offset)) = recover {
            let first = s.ring.front().map_or(s.pushed + 1, |(m, _)| m.offset);
            if epoch == s.epoch && offset <= s.pushed && offset + 1 >= first {
                let missed: Vec<Arc<OutMsg>> =
                    s.ring.iter().filter(|(m, _)| m.offset > offset).map(|(m, _)| m.clone()).collect();
                if !missed.is_empty() {
                    deliver(conn, &Batch::new(&missed));
                }
                rec.recovered = true;
                rec.count = missed.len();
            }
        }
        if member {
            // A gap fill for a topic it is already in: the replay may repeat what it has (the
            // client drops those by offset); live traffic goes on as before.
            return (false, rec);
        }
        let i = s.subs.len();
        s.subs.push(conn.clone());
        s.index.insert(conn.id, i);
        if s.count() == 1 {
            first();
        }
        (true, rec)
    }

    /// Drops publications older than `cutoff_ms`; true if the topic is now empty and idle.
    fn expire(&self, cutoff_ms: u64, total: &AtomicUsize) -> bool {
        let mut s = self.state.lock();
        while s.ring.front().is_some_and(|(m, _)| m.at_ms < cutoff_ms) {
            evict_front(&mut s, total);
        }
        s.count() == 0 && s.ring.is_empty() && s.last_active_ms < cutoff_ms
    }
}

/// Publications held back for a gap, at most (per topic).
const MAX_HELD: usize = 4096;

/// What a mirror gets: a publication's stamp, who sent it, and whether that peer wins the
/// topic's election against this worker and whether a peer is still linked.
pub struct Mirrored<'a> {
    pub epoch: u32,
    pub offset: u64,
    pub from: &'a Arc<str>,
    pub outranks_me: bool,
    pub linked: &'a dyn Fn(&str) -> bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Took {
    Taken,
    Held,
    Ignored,
}

/// Hands on held publications that are now next (all of them, in order, with `all`).
fn release_held(s: &mut TopicState, emit: &mut dyn FnMut(Arc<OutMsg>), all: bool) {
    s.held.sort_by_key(|(o, _, _)| *o);
    let held = std::mem::take(&mut s.held);
    let mut rest = vec![];
    for (o, from, msg) in held {
        if o <= s.seq {
            continue;
        }
        if all || (o == s.seq + 1 && rest.is_empty()) {
            s.seq = o;
            s.owner = Owner::Peer(from);
            emit(msg);
        } else {
            rest.push((o, from, msg));
        }
    }
    s.held = rest;
}

fn evict_front(s: &mut TopicState, total: &AtomicUsize) {
    if let Some((_, n)) = s.ring.pop_front() {
        s.ring_bytes -= n;
        total.fetch_sub(n, Relaxed);
    }
}

/// Told when a topic gains its first subscriber (true) or loses its last (false), under the
/// topic's lock, so a topic's calls arrive in the order its changes happened.
pub type InterestHook = Box<dyn Fn(&str, bool) + Send + Sync>;

pub struct Topics {
    map: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    pub patterns: Patterns,
    /// The server's topic ACL, applied to every topic a pattern matches.
    acl: TopicAcl,
    recovery: Option<RecoveryLimits>,
    ring_bytes: AtomicUsize,
    on_interest: std::sync::OnceLock<InterestHook>,
}

impl Topics {
    pub fn new(recovery: Option<RecoveryLimits>, acl: TopicAcl) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            patterns: Patterns::default(),
            acl,
            recovery,
            ring_bytes: AtomicUsize::new(0),
            on_interest: Default::default(),
        }
    }

    /// Sets the one interest hook (the cluster mesh uses it); false if one was set already.
    pub fn set_interest_hook(&self, hook: InterestHook) -> bool {
        self.on_interest.set(hook).is_ok()
    }

    fn interest(&self, topic: &str, present: bool) {
        if let Some(h) = self.on_interest.get() {
            h(topic, present);
        }
    }

    /// Bytes held in every ring (what a mirror's `next_mirrored` and `merge` count against).
    pub fn ring_total(&self) -> &AtomicUsize {
        &self.ring_bytes
    }

    /// Every topic, with or without subscribers.
    pub fn all(&self) -> Vec<(Arc<str>, Arc<Topic>)> {
        self.map.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every topic with subscribers now.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.map.read().iter().filter(|(_, t)| t.subscriber_count() > 0).map(|(k, _)| k.clone()).collect()
    }

    pub fn recovery(&self) -> Option<&RecoveryLimits> {
        self.recovery.as_ref()
    }

    /// Bytes held in recovery rings.
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes.load(Relaxed)
    }

    /// The topic, created if missing.
    pub fn get_or_create(&self, topic: &str) -> Arc<Topic> {
        if let Some(t) = self.map.read().get(topic) {
            return t.clone();
        }
        self.map.write().entry(Arc::from(topic)).or_insert_with_key(|k| Arc::new(Topic::new(k.clone()))).clone()
    }

    /// Adds `conn` to `topic` (replaying what it missed if asked); false if it was there.
    /// A pattern (see patterns.rs) takes no recovery and no group.
    pub fn subscribe(&self, topic: &str, conn: &Arc<Conn>, recover: Option<(u32, u64)>, group: Option<&str>) -> (bool, Recovery) {
        if is_pattern(topic) {
            let (added, first) = self.patterns.add(topic, conn);
            if first {
                self.interest(topic, true);
            }
            return (added, Recovery { epoch: 0, offset: 0, recovered: false, count: 0 });
        }
        self.get_or_create(topic).add(conn, recover, group, || self.interest(topic, true))
    }

    /// Hands a run of publications of one topic to its subscribers, pattern subscribers
    /// included (and to its ring). Without recovery, a topic only patterns matched goes.
    pub fn push(&self, t: &Topic, msgs: &[Arc<OutMsg>]) -> PushMany {
        let also = self.patterns.subscribers(&t.name, &self.acl);
        let f = t.push(msgs, self.recovery.as_ref().map(|l| (l, &self.ring_bytes)), &also);
        if !also.is_empty() && self.recovery.is_none() && t.subscriber_count() == 0 {
            self.remove_if_idle(&t.name);
        }
        f
    }

    /// Removes `conn` from `topic`; without recovery a topic goes away with its last subscriber.
    pub fn unsubscribe(&self, topic: &str, conn_id: u64) -> bool {
        if is_pattern(topic) {
            let (removed, last) = self.patterns.remove(topic, conn_id);
            if last {
                self.interest(topic, false);
            }
            return removed;
        }
        let Some(t) = self.map.read().get(topic).cloned() else { return false };
        let empty = {
            let mut s = t.state.lock();
            if let Some(i) = s.index.remove(&conn_id) {
                s.subs.swap_remove(i);
                if i < s.subs.len() {
                    let moved = s.subs[i].id;
                    s.index.insert(moved, i);
                }
            } else {
                let Some(gi) = s.groups.iter().position(|g| g.members.iter().any(|c| c.id == conn_id)) else {
                    return false;
                };
                let g = &mut s.groups[gi];
                g.members.retain(|c| c.id != conn_id);
                if g.members.is_empty() {
                    s.groups.swap_remove(gi);
                }
            }
            s.last_active_ms = now_ms();
            let empty = s.count() == 0;
            if empty {
                self.interest(topic, false);
            }
            empty
        };
        // With recovery on, the sweeper removes idle topics after the TTL instead.
        if empty && self.recovery.is_none() {
            self.remove_if_idle(topic);
        }
        true
    }

    fn remove_if_idle(&self, topic: &str) {
        let mut map = self.map.write();
        if let Some(t) = map.get(topic) {
            let s = t.state.lock();
            if s.count() == 0 && s.ring.is_empty() {
                drop(s);
                map.remove(topic);
            }
        }
    }

    /// Drops recovery entries past their TTL, and topics left with nothing.
    pub fn expire(&self, now_ms: u64) {
        let Some(lim) = self.recovery else { return };
        let cutoff = now_ms.saturating_sub(lim.ttl_ms);
        for (name, t) in self.all() {
            if t.expire(cutoff, &self.ring_bytes) {
                self.remove_if_idle(&name);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{OP_TEXT, HEADER_ROOM};

    fn msg(offset: u64, at: u64) -> Arc<OutMsg> {
        let mut v = vec![0; HEADER_ROOM];
        v.extend_from_slice(format!("{{\"o\":{offset}}}").as_bytes());
        Arc::new(OutMsg::new(v, OP_TEXT, None, offset, at))
    }

    fn offsets(t: &Topic) -> Vec<u64> {
        t.snapshot(|_, _, _, it| it.map(|m| m.offset).collect())
    }

    fn mirrored<'a>(epoch: u32, offset: u64, from: &'a Arc<str>, outranks_me: bool, linked: &'a dyn Fn(&str) -> bool) -> Mirrored<'a> {
        Mirrored { epoch, offset, from, outranks_me, linked }
    }

    const NONE_LINKED: &dyn Fn(&str) -> bool = &|_| false;

    const LIM: RecoveryLimits = RecoveryLimits { max_messages: 100, ttl_ms: 60_000, max_bytes: 1 << 20 };

    #[test]
    fn a_mirror_follows_its_owner_and_a_joining_worker_takes_the_history_behind_live_traffic() {
        let total = AtomicUsize::new(0);
        let t = Topic::new(Arc::from("t"));
        let owner: Arc<str> = Arc::from("mesh-1-9.sock");
        // Live traffic from the owner arrives first (offsets 5, 6), then its ring (1..=6)
        // while 5 and 6 are still in the publish queue.
        let mut queued = vec![];
        for o in [5, 6] {
            let took = t.next_mirrored(mirrored(77, o, &owner, false, NONE_LINKED), &total, || msg(o, o), &mut |m| queued.push(m));
            assert_eq!(took, Took::Taken);
        }
        let took = t.next_mirrored(mirrored(77, 6, &owner, false, NONE_LINKED), &total, || msg(6, 6), &mut |_| panic!("a repeat"));
        assert_eq!(took, Took::Ignored);
        t.merge(77, 6, Some(&owner), (1..=6).map(|o| msg(o, o)).collect(), &LIM, &total);
        assert_eq!(offsets(&t), vec![1, 2, 3, 4]);
        t.push(&queued, Some((&LIM, &total)), &[]);
        assert_eq!(offsets(&t), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(t.owner(), Owner::Peer(owner.clone()));
        // The mirror becomes the owner: it goes on from the owner's offsets, same epoch.
        let mut out = None;
        t.next(|seq, _| msg(seq, 7), |m, epoch| out = Some((m, epoch)));
        let (m, epoch) = out.unwrap();
        assert_eq!((m.offset, epoch), (7, 77));
        assert_eq!(t.owner(), Owner::Me);
    }

    #[test]
    fn another_epoch_replaces_an_older_history_only() {
        let total = AtomicUsize::new(0);
        let t = Topic::new(Arc::from("t"));
        let peer: Arc<str> = Arc::from("p");
        t.merge(5, 3, None, (1..=3).map(|o| msg(o, 100 + o)).collect(), &LIM, &total);
        assert_eq!(offsets(&t), vec![1, 2, 3]);
        // Older than what it has: kept out.
        t.merge(6, 9, None, vec![msg(9, 50)], &LIM, &total);
        assert_eq!(offsets(&t), vec![1, 2, 3]);
        // Newer: taken, the old epoch's entries go (and their bytes with them).
        t.merge(6, 9, Some(&peer), vec![msg(8, 200), msg(9, 201)], &LIM, &total);
        assert_eq!(offsets(&t), vec![8, 9]);
        assert_eq!(total.load(Relaxed), msg(8, 0).size() + msg(9, 0).size());
        // This worker owns it: a split-brain stamp from a peer that loses the election is refused.
        let mut out = None;
        t.next(|seq, _| msg(seq, 300), |m, _| out = Some(m));
        t.push(&[out.unwrap()], Some((&LIM, &total)), &[]);
        assert_eq!(t.next_mirrored(mirrored(1, 1, &peer, false, NONE_LINKED), &total, || msg(1, 1), &mut |_| panic!()), Took::Ignored);
        assert_eq!(t.next_mirrored(mirrored(1, 1, &peer, true, NONE_LINKED), &total, || msg(1, 1), &mut |_| {}), Took::Taken);
    }

    #[test]
    fn a_new_owners_publication_waits_for_the_old_owners_last_while_its_link_is_open() {
        let total = AtomicUsize::new(0);
        let t = Topic::new(Arc::from("t"));
        let (old, new): (Arc<str>, Arc<str>) = (Arc::from("old"), Arc::from("new"));
        let linked: &dyn Fn(&str) -> bool = &|p| p == "old";
        let mut out: Vec<u64> = vec![];
        for o in 1..=3 {
            t.next_mirrored(mirrored(9, o, &old, false, linked), &total, || msg(o, o), &mut |m| out.push(m.offset));
        }
        // The new owner's 5 and 6 come before the old owner's 4: held.
        for o in [5, 6] {
            let took = t.next_mirrored(mirrored(9, o, &new, false, linked), &total, || msg(o, o), &mut |m| out.push(m.offset));
            assert_eq!(took, Took::Held);
        }
        assert_eq!(out, vec![1, 2, 3]);
        t.next_mirrored(mirrored(9, 4, &old, false, linked), &total, || msg(4, 4), &mut |m| out.push(m.offset));
        assert_eq!(out, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(t.owner(), Owner::Peer(new.clone()));
        // A gap the old owner cannot fill any more (its link closed) is let through at once...
        let gone: &dyn Fn(&str) -> bool = &|_| false;
        t.next_mirrored(mirrored(9, 8, &old, false, gone), &total, || msg(8, 8), &mut |m| out.push(m.offset));
        assert_eq!(out.last(), Some(&8));
        // ...and what is held when the link closes goes then.
        let took = t.next_mirrored(mirrored(9, 10, &new, false, linked), &total, || msg(10, 10), &mut |m| out.push(m.offset));
        assert_eq!(took, Took::Held);
        t.flush_held(&mut |m| out.push(m.offset));
        assert_eq!(out.last(), Some(&10));
        // From the owner it already follows, a gap is not waited for.
        let took = t.next_mirrored(mirrored(9, 12, &new, false, linked), &total, || msg(12, 12), &mut |m| out.push(m.offset));
        assert_eq!((took, out.last()), (Took::Taken, Some(&12)));
    }
}
