//! Recovery across workers. With recovery on, one worker stamps each topic (its owner), so a
//! topic has one epoch and one run of offsets in the whole cluster, and every worker keeps a
//! copy of every ring: a client that reconnects to any worker recovers there.
//!
//! - A publication made on another worker goes to the owner (`SEQUENCE`), which stamps it and
//!   sends it, stamped, to every peer (`STAMPED`); the worker that made it keeps it until it
//!   sees it stamped, and hands it to the next owner if the owner dies first; if only the
//!   link was cut, it sends it again on the re-link (handoff.rs).
//! - The owner delivers a publication to its own clients only after the mesh has written it to
//!   every peer (a gate in the publish queue): if the owner dies, what its clients saw is
//!   already in the survivors' socket buffers.
//! - Owner: whoever stamped the topic last, while it lives; else the highest of
//!   hash(topic, slot) among this worker and its synced peers (a worker joining takes over no
//!   topic that has an owner).
//! - A worker joining the mesh gets every peer's rings (`SNAPSHOT`, then `SYNCED`) and accepts
//!   clients once every peer has sent it theirs, or after a grace period.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rand_core::{OsRng, RngCore};

pub use super::handoff::Handed;
pub use super::handoff::Handoff;
use super::handoff::{Handoffs, Stamped};
use super::peer::Peer;
use super::wire::{self, Stamp};

/// How long a worker joining the mesh waits for every peer's state before it serves anyway.
pub const SYNC_GRACE: Duration = Duration::from_secs(3);

pub struct Sequencer {
    /// The last gate given out; held while a stamped frame is queued on every peer.
    gate: Mutex<u64>,
    /// Per owner (peer name), what was handed to it and not yet seen stamped.
    pub handoffs: Handoffs,
    /// As an owner: the hand-offs stamped, so one sent again after a cut is stamped once.
    pub stamped: Stamped,
    /// Publication ids: a random tag for this process in the high 24 bits, a counter below.
    next_id: AtomicU64,
    /// Publications made before the worker was synced, to publish once it is.
    early: Mutex<Vec<Handed>>,
    ready: AtomicBool,
    started: Instant,
    pub stats: SeqStats,
}

#[derive(Default)]
pub struct SeqStats {
    pub stamped_for_peers: AtomicU64,
    pub handed_to_owner: AtomicU64,
    pub rehanded: AtomicU64,
    pub mirrored: AtomicU64,
    pub snapshot_bytes_in: AtomicU64,
    pub conflicts: AtomicU64,
}

/// FNV-1a of the topic and the slot: the same in every process.
pub fn rank(topic: &str, slot: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes().iter().chain(slot.to_le_bytes().iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the low bits up so nearby slots do not rank alike.
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequencer {
    pub fn new() -> Self {
        let tag = (OsRng.next_u32() as u64 & 0xff_ffff).max(1);
        Self {
            gate: Mutex::new(0),
            handoffs: Handoffs::default(),
            stamped: Stamped::default(),
            next_id: AtomicU64::new(tag << 40),
            early: Mutex::default(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            stats: SeqStats::default(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// Marks the worker synced when `synced_peers` covers the other workers or the grace is
    /// over; returns the publications held until then (once).
    pub fn check_ready(&self, synced_peers: usize, others: usize) -> Option<Vec<Handed>> {
        if self.is_ready() || (synced_peers < others && self.started.elapsed() < SYNC_GRACE) {
            return None;
        }
        let mut early = self.early.lock();
        if self.ready.swap(true, Relaxed) {
            return None;
        }
        Some(std::mem::take(&mut *early))
    }

    /// Holds a publication made before the worker is synced; false if it became synced
    /// meanwhile (publish it now).
    pub fn hold(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> bool {
        let mut early = self.early.lock();
        if self.is_ready() {
            return false;
        }
        early.push(Handed { id: 0, topic: topic.into(), category: category.into(), msg_type: msg_type.into(), payload: Bytes::copy_from_slice(payload) });
        true
    }

    /// Sends a stamped publication to every peer; returns the gate the local delivery waits on.
    pub fn stamp_out(&self, peers: &[Arc<Peer>], origin: u64, sent_ns: u64, topic: &str, st: &Stamp, body: &[u8]) -> u64 {
        let mut g = self.gate.lock();
        if peers.is_empty() {
            return 0;
        }
        *g += 1;
        let mut f = BytesMut::new();
        wire::stamped(&mut f, origin, sent_ns, topic, st, body);
        for p in peers {
            p.push_gated(&f, *g);
        }
        self.stats.stamped_for_peers.fetch_add(1, Relaxed);
        *g
    }

    /// Hands a publication to its owner (by socket name): sent on its link, or kept for its
    /// re-link while the link is cut; either way kept until its stamped copy comes back.
    pub fn hand_to(&self, owner: &Arc<str>, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> Handoff {
        let id = self.next_id.fetch_add(1, Relaxed);
        let h = Handed { id, topic: topic.into(), category: category.into(), msg_type: msg_type.into(), payload: Bytes::copy_from_slice(payload) };
        let r = self.handoffs.hand(owner, h);
        if r != Handoff::Refused {
            self.stats.handed_to_owner.fetch_add(1, Relaxed);
        }
        r
    }

    /// `owner` stamped publication `origin`: this worker's hand-offs up to it are done.
    pub fn came_back(&self, owner: &str, origin: u64) {
        if origin == 0 || origin >> 40 != self.next_id.load(Relaxed) >> 40 {
            return;
        }
        self.handoffs.came_back(owner, origin);
    }

    /// The peer is gone: what it was given and did not stamp, in order, for the next owner.
    pub fn orphaned(&self, owner: &str) -> Vec<Handed> {
        let v = self.handoffs.orphaned(owner);
        self.stats.rehanded.fetch_add(v.len() as u64, Relaxed);
        v
    }

    /// Cut owners given up (dead, or not back within the grace): their hand-offs, in order.
    pub fn expired_cuts(&self, alive: impl Fn(&str) -> bool) -> Vec<Handed> {
        let v = self.handoffs.expire_cuts(alive);
        self.stats.rehanded.fetch_add(v.len() as u64, Relaxed);
        v
    }

    /// The peer among `peers` (synced ones) that should stamp `topic`, or `None` for this worker.
    pub fn elect<'a>(topic: &str, me: u32, peers: &'a [Arc<Peer>]) -> Option<&'a Arc<Peer>> {
        let mine = rank(topic, me);
        peers
            .iter()
            .filter(|p| p.synced.load(Relaxed))
            .map(|p| (rank(topic, p.slot), p))
            .filter(|(r, _)| *r > mine)
            .max_by_key(|(r, _)| *r)
            .map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(slot: u32) -> Arc<Peer> {
        let p = Arc::new(Peer::new(format!("mesh-{slot}-1.sock"), slot));
        p.synced.store(true, Relaxed);
        p
    }

    #[test]
    fn election_is_the_same_from_every_worker_and_spreads_topics() {
        let ps: Vec<Arc<Peer>> = (0..4).map(peer).collect();
        let mut per_slot = [0usize; 4];
        for i in 0..400 {
            let t = format!("topic.{i}");
            let mut winners = vec![];
            for me in 0..4u32 {
                let others: Vec<Arc<Peer>> = ps.iter().filter(|p| p.slot != me).cloned().collect();
                winners.push(Sequencer::elect(&t, me, &others).map_or(me, |p| p.slot));
            }
            assert!(winners.windows(2).all(|w| w[0] == w[1]), "{t}: {winners:?}");
            per_slot[winners[0] as usize] += 1;
        }
        assert!(per_slot.iter().all(|&n| n > 60), "{per_slot:?}");
        // A peer that has not sent its state is not elected.
        let unsynced = Arc::new(Peer::new("mesh-1-2.sock".into(), 1));
        assert!(Sequencer::elect("x", 0, &[unsynced]).is_none());
    }

    #[test]
    fn hand_offs_are_kept_until_stamped_and_given_back_if_the_owner_dies() {
        let s = Sequencer::new();
        let owner = peer(1);
        s.handoffs.linked(&owner);
        for i in 0..3 {
            assert_eq!(s.hand_to(&owner.name, "t", "U", "m", &[b'0' + i]), Handoff::Sent);
        }
        let ids: Vec<u64> = s.handoffs.ids(&owner.name);
        s.came_back(&owner.name, ids[0]);
        // Another process's ids (another tag) are not ours.
        s.came_back(&owner.name, ids[2] ^ (1 << 50));
        let left = s.orphaned(&owner.name);
        assert_eq!(left.iter().map(|h| h.payload.to_vec()).collect::<Vec<_>>(), vec![b"1".to_vec(), b"2".to_vec()]);
        assert!(s.orphaned(&owner.name).is_empty());
    }

    #[test]
    fn gates_wait_for_every_peer_and_early_publications_wait_for_sync() {
        let s = Sequencer::new();
        let (a, b) = (peer(1), peer(2));
        let st = Stamp { epoch: 1, offset: 1, at_ms: 0 };
        assert_eq!(s.stamp_out(&[], 0, 0, "t", &st, b"{}"), 0, "alone: no gate");
        let g = s.stamp_out(&[a.clone(), b.clone()], 0, 0, "t", &st, b"{}");
        assert_eq!((a.gate_open(), b.gate_open()), (0, 0));
        a.written(g);
        assert_eq!((a.gate_open(), b.gate_open()), (u64::MAX, 0));

        assert!(s.hold("t", "U", "m", b"1"));
        assert!(s.check_ready(0, 1).is_none(), "a peer is missing and the grace is not over");
        let early = s.check_ready(1, 1).expect("synced");
        assert_eq!(early.len(), 1);
        assert!(!s.hold("t", "U", "m", b"2"));
        assert!(s.check_ready(1, 1).is_none());
    }
}
