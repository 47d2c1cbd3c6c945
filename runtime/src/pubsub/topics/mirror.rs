//! A topic in a cluster with recovery (mesh/sequencer.rs): taking publications its owner
//! stamped on another worker, holding them across a dead owner's gap, and the ring a worker
//! sends to a peer joining the mesh and takes from one.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::{evict_front, Owner, RecoveryLimits, Topic, TopicState};
use crate::protocol::outgoing::OutMsg;

impl Topic {
    /// Takes a publication its owner stamped (a mirror): hands it to `emit` under the lock if
    /// it is the next one, and ignores one already taken. Another epoch starts the ring over.
    /// One that comes after a gap from a new owner while the previous owner's link is still
    /// open is held: the previous owner's last publications may still be on that link (with
    /// three workers or more), and they go first. One that comes after a gap on a link whose
    /// state (its ring) has not arrived yet is held too: the gap is a cut link's, and that ring
    /// fills it (`merge`).
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
            let waits_for_ring = !m.from_synced;
            let prev_linked = matches!(&s.owner, Owner::Peer(prev) if **prev != **m.from && (m.linked)(prev));
            if waits_for_ring || prev_linked {
                let msg = build();
                s.held.push((m.offset, m.from.clone(), msg));
                return Took::Held;
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

    /// `from` sent its whole state: a gap before what it sent live that its ring did not fill
    /// will not fill. What waited goes, and subscribers see the jump in offsets (a client
    /// reports it as a gap, and recovering from the last offset it has answers
    /// `recovered: false`).
    pub fn flush_held_from(&self, from: &str, emit: &mut dyn FnMut(Arc<OutMsg>)) {
        let mut s = self.state.lock();
        if s.held.iter().any(|(_, f, _)| **f == *from) {
            release_held(&mut s, emit, true);
        }
    }

    /// The topic's ring for a peer: `f(epoch, pushed, stamped here, entries)` under the lock.
    pub fn snapshot<R>(&self, f: impl FnOnce(u32, u64, bool, &mut dyn Iterator<Item = &Arc<OutMsg>>) -> R) -> R {
        let s = self.state.lock();
        f(s.epoch, s.pushed, s.owner == Owner::Me, &mut s.ring.iter().map(|(m, _)| m))
    }

    /// Takes part of a peer's ring (a worker joining the mesh, or a link re-opened after a
    /// cut): with no history of its own, or the same epoch, it keeps what it lacks; another
    /// epoch replaces its own only if that is newer. `owner` names the peer when the peer stamps
    /// the topic. Entries newer than anything this worker took go to `emit` (its subscribers,
    /// then the ring, in order) when the topic has subscribers or publications on their way:
    /// that is what a cut link lost; held publications that now follow go after them.
    #[allow(clippy::too_many_arguments)]
    pub fn merge(
        &self,
        epoch: u32,
        pushed: u64,
        owner: Option<&Arc<str>>,
        entries: Vec<Arc<OutMsg>>,
        lim: &RecoveryLimits,
        total: &AtomicUsize,
        emit: &mut dyn FnMut(Arc<OutMsg>),
    ) {
        let mut s = self.state.lock();
        let live = s.count() > 0 || s.seq != s.pushed || !s.held.is_empty();
        let mine_newest = s.ring.back().map_or(0, |(m, _)| m.at_ms);
        let theirs_newest = entries.last().map_or(0, |m| m.at_ms);
        let fresh = s.seq == 0 && s.ring.is_empty();
        if epoch != s.epoch {
            if !fresh && theirs_newest <= mine_newest {
                return;
            }
            let before = entries.first().map_or(pushed, |m| m.offset.saturating_sub(1));
            s.reset(epoch, before, total);
            s.held.clear();
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
            } else if m.offset > s.pushed && m.offset > s.seq && live {
                s.seq = m.offset;
                emit(m);
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
        if !s.held.is_empty() {
            release_held(&mut s, emit, false);
        }
        // A peer whose ring has expired still knows where the offsets stand.
        if !live && s.ring.is_empty() && s.seq < pushed {
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
    /// `from` has sent its whole state on this link (`SYNCED`).
    pub from_synced: bool,
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
