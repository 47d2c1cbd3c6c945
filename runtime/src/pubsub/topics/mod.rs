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
use crate::crypto::batch::BatchKey;
use crate::deliver::{deliver, Batch};
use crate::gate::{Admit, Decision};
use crate::outbound::PushMany;
use crate::protocol::outgoing::OutMsg;
use crate::protocol::time::now_ms;

mod mirror;
mod redis;
#[cfg(test)]
mod tests;

pub use mirror::{Mirrored, Took};

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
    /// The key its publications are sealed under for batch-key subscribers (`crypto/batch.rs`),
    /// with how many connections hold it; dropped when one leaves, so the next batch has a new one.
    seal_key: Option<(Arc<BatchKey>, usize)>,
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
            seal_key: None,
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

/// Where the topic stands after `msgs`, and the ring. A publication outside the topic's
/// offsets (offset 0: delivered while Redis was unreachable, stamped later) changes neither.
fn record(s: &mut TopicState, msgs: &[Arc<OutMsg>], ring: Option<(&RecoveryLimits, &AtomicUsize)>) {
    if let Some(last) = msgs.iter().rev().find(|m| m.offset > 0) {
        s.pushed = last.offset;
        s.last_active_ms = last.at_ms;
    }
    if let Some((lim, total)) = ring {
        for m in msgs.iter().filter(|m| m.offset > 0) {
            // Counted once, here: encodings built later for replays are not re-counted.
            let n = m.size();
            s.ring_bytes += n;
            total.fetch_add(n, Relaxed);
            s.ring.push_back((m.clone(), n));
        }
        // Over the count, or over the global budget: this topic gives up its oldest.
        while s.ring.len() > lim.max_messages || (total.load(Relaxed) > lim.max_bytes && !s.ring.is_empty()) {
            evict_front(s, total);
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

    /// Queues publications (in order) on every current subscriber, one lock and one wake-up
    /// each, and keeps them for recovery.
    /// `also`: pattern subscribers of the topic (those subscribed to it as well get it once),
    /// with whether the topic is checked for them; `judge` decides a checked one the first
    /// time, and those whose answer must be asked of the application are added to `ask`.
    pub fn push(
        &self,
        msgs: &[Arc<OutMsg>],
        ring: Option<(&RecoveryLimits, &AtomicUsize)>,
        also: &[(Arc<Conn>, bool)],
        judge: &dyn Fn(&Conn, &str) -> Decision,
        ask: &mut Vec<Arc<Conn>>,
    ) -> PushMany {
        let mut s = self.state.lock();
        let mut f = PushMany::default();
        let batch = Batch::shared(msgs, s.subs.len() + also.len()).with_key(s.seal_key.as_ref().map(|(k, _)| k.clone()));
        for c in &s.subs {
            f.add(deliver(c, &batch));
        }
        for (c, checked) in also {
            if s.index.contains_key(&c.id) {
                continue;
            }
            if *checked {
                let (admit, held) = c.gate.admit(c, &self.name, msgs, || judge(c, &self.name));
                f.add(held);
                match admit {
                    Admit::Deliver => {}
                    Admit::Skip | Admit::Held => continue,
                    Admit::Ask => {
                        ask.push(c.clone());
                        continue;
                    }
                }
            }
            f.add(deliver(c, &batch));
        }
        if !s.groups.is_empty() {
            s.push_groups(msgs, &mut f);
        }
        if let Some((key, had, given)) = batch.key_outcome() {
            let before = match &s.seal_key {
                Some((k, n)) if Arc::ptr_eq(k, &key) => *n,
                _ => 0,
            };
            // A connection that held the key and was not among this batch's recipients (it
            // left, or is held back): the next batch gets a new key.
            s.seal_key = if had < before || key.worn() { None } else { Some((key, had + given)) };
        }
        record(&mut s, msgs, ring);
        f
    }

    /// Keeps publications for recovery without delivering them (this host's subscribers had
    /// them already: bridge/, a publication made while Redis was unreachable).
    pub fn keep(&self, msgs: &[Arc<OutMsg>], ring: Option<(&RecoveryLimits, &AtomicUsize)>) {
        record(&mut self.state.lock(), msgs, ring);
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

fn evict_front(s: &mut TopicState, total: &AtomicUsize) {
    if let Some((_, n)) = s.ring.pop_front() {
        s.ring_bytes -= n;
        total.fetch_sub(n, Relaxed);
    }
}

/// Told when a topic gains its first subscriber (true) or loses its last (false), under the
/// topic's lock, so a topic's calls arrive in the order its changes happened.
pub type InterestHook = Box<dyn Fn(&str, bool) + Send + Sync>;

/// Asks the application whether a connection may have a topic its pattern matched; the answer
/// comes back through `Gate::decided`.
pub type AskHook = Box<dyn Fn(&Arc<Conn>, &str) + Send + Sync>;

pub struct Topics {
    map: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    pub patterns: Patterns,
    /// The server's topic ACL, applied to every topic a pattern matches.
    acl: TopicAcl,
    recovery: Option<RecoveryLimits>,
    ring_bytes: AtomicUsize,
    /// Told of interest changes: the cluster mesh, the Redis bridge.
    on_interest: RwLock<Vec<InterestHook>>,
    on_ask: std::sync::OnceLock<AskHook>,
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
            on_ask: Default::default(),
        }
    }

    /// Sets the hook that asks the application about pattern-matched topics; without one,
    /// the topic ACLs alone decide them. False if one was set already.
    pub fn set_ask_hook(&self, hook: AskHook) -> bool {
        self.on_ask.set(hook).is_ok()
    }

    /// A pattern subscriber's first publication of `topic`: the topic ACLs (the server's and the
    /// connection's), then the application if it has a hook.
    fn judge(&self, c: &Conn, topic: &str) -> Decision {
        if !self.acl.permits(topic) || !c.acl.as_ref().is_none_or(|a| a.permits(topic)) {
            Decision::Deny
        } else if self.on_ask.get().is_some() {
            Decision::Ask
        } else {
            Decision::Allow
        }
    }

    /// Adds an interest hook (the cluster mesh and the Redis bridge each set one).
    pub fn set_interest_hook(&self, hook: InterestHook) -> bool {
        self.on_interest.write().push(hook);
        true
    }

    fn interest(&self, topic: &str, present: bool) {
        for h in self.on_interest.read().iter() {
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
    /// `checked`: a client's own subscription (a pattern's topics are then decided per topic).
    pub fn subscribe(&self, topic: &str, conn: &Arc<Conn>, recover: Option<(u32, u64)>, group: Option<&str>, checked: bool) -> (bool, Recovery) {
        if is_pattern(topic) {
            let (added, first) = self.patterns.add(topic, conn, checked);
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
        let also = self.patterns.subscribers(&t.name);
        let mut ask = Vec::new();
        let judge = |c: &Conn, topic: &str| self.judge(c, topic);
        let f = t.push(msgs, self.recovery.as_ref().map(|l| (l, &self.ring_bytes)), &also, &judge, &mut ask);
        if let Some(hook) = self.on_ask.get() {
            for c in &ask {
                hook(c, &t.name);
            }
        }
        if !also.is_empty() && self.recovery.is_none() && t.subscriber_count() == 0 {
            self.remove_if_idle(&t.name);
        }
        f
    }

    /// Keeps publications in the topic's ring without delivering them.
    pub fn keep(&self, t: &Topic, msgs: &[Arc<OutMsg>]) {
        t.keep(msgs, self.recovery.as_ref().map(|l| (l, &self.ring_bytes)));
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
            // Whoever left may hold the topic's batch key: later publications get a new one.
            s.seal_key = None;
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
