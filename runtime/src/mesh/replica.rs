//! The engine's side of recovery across workers (see sequencer.rs): routing a publication to
//! its topic's owner, stamping for peers, mirroring what peers stamp, and the rings a worker
//! sends and takes when a link opens.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::peer::Peer;
use super::handoff;
use super::sequencer::{rank, Handoff, Sequencer};
use super::wire::{self, Stamp};
use super::Mesh;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::protocol::frame::HEADER_ROOM;
use crate::protocol::outgoing::OutMsg;
use crate::pubsub::fanout::Target;
use crate::pubsub::topics::{Mirrored, Owner, Took, Topic};

/// A snapshot frame carries about this many bytes of entries.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// How long a new link's snapshot waits for publications stamped before it to reach the rings.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

impl Engine {
    /// A publication in a cluster with recovery: stamped here if this worker owns the topic,
    /// else handed to the owner; held while the worker is still syncing.
    pub(crate) fn publish_sequenced(&self, m: &Mesh, seq: &Sequencer, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        if !seq.is_ready() && seq.hold(topic, category, msg_type, payload) {
            Metrics::inc(&self.metrics.publishes);
            return self.topics.subscriber_count(topic);
        }
        let t = self.topics.get_or_create(topic);
        if let Some((owner, slot)) = self.owner_of(m, seq, &t, topic) {
            match seq.hand_to(&owner, topic, category, msg_type, payload) {
                Handoff::Sent | Handoff::Kept => {
                    if let Some(slot) = slot {
                        m.stats.sent(slot, payload.len());
                    }
                    Metrics::inc(&self.metrics.publishes);
                    return t.subscriber_count();
                }
                // The owner's link closed meanwhile (and it is not waited for): stamped here.
                Handoff::Refused => {}
            }
        }
        self.publish_to(&t, topic, category, msg_type, payload, 0)
    }

    /// The worker that stamps `topic` (its socket name, and its slot while linked), or `None`
    /// for this one. An owner whose link is cut while it lives stays the owner.
    fn owner_of(&self, m: &Mesh, seq: &Sequencer, t: &Topic, topic: &str) -> Option<(Arc<str>, Option<u32>)> {
        let owner = t.owner();
        m.with_live(|live| {
            let elect = || Sequencer::elect(topic, m.cfg.slot, live).map(|p| (p.name.clone(), Some(p.slot)));
            match owner {
                Owner::Me => None,
                Owner::Peer(name) => match live.iter().find(|p| p.name == name) {
                    Some(p) => Some((p.name.clone(), Some(p.slot))),
                    None if seq.handoffs.is_cut(&name) => Some((name, None)),
                    None => elect(),
                },
                Owner::Unknown => elect(),
            }
        })
    }

    /// Called under the topic's lock as this worker stamps a publication: sends it to every
    /// peer and returns the gate its local delivery waits on (0: no cluster recovery).
    pub(crate) fn stamp_out(&self, topic: &str, msg: &OutMsg, epoch: u32, origin: u64) -> u64 {
        let Some(m) = &self.mesh else { return 0 };
        let Some(seq) = &m.seq else { return 0 };
        let st = Stamp { epoch, offset: msg.offset, at_ms: msg.at_ms };
        m.with_live(|peers| {
            let g = seq.stamp_out(peers, origin, super::stats::now_ns(), topic, &st, msg.body());
            for p in peers {
                m.stats.sent(p.slot, msg.body().len());
            }
            g
        })
    }

    /// A publication a peer stamped: this worker's copy of the ring, and its subscribers.
    pub(crate) fn mirror(&self, m: &Mesh, from: &Peer, origin: u64, topic: &str, st: &Stamp, body: &[u8]) {
        let Some(seq) = &m.seq else { return };
        let t = self.topics.get_or_create(topic);
        let name = &from.name;
        let outranks = rank(topic, from.slot) > rank(topic, m.cfg.slot);
        let (op, zip) = (self.opcode(), self.cfg.zip());
        let mut help = false;
        let linked = |p: &str| m.is_linked(p);
        let from_synced = from.synced.load(Relaxed);
        let mirrored = Mirrored { epoch: st.epoch, offset: st.offset, from: name, outranks_me: outranks, linked: &linked, from_synced };
        let took = t.next_mirrored(
            mirrored,
            self.topics.ring_total(),
            || Arc::new(OutMsg::new(framed(body), op, zip, st.offset, st.at_ms)),
            &mut |msg| help |= self.pubq.push(Target::Topic(t.clone()), msg),
        );
        match took {
            Took::Taken => {
                seq.stats.mirrored.fetch_add(1, Relaxed);
            }
            Took::Held => {}
            Took::Ignored => {
                seq.stats.conflicts.fetch_add(u64::from(st.epoch != 0 && t.owner() == Owner::Me), Relaxed);
            }
        }
        seq.came_back(&from.name, origin);
        if help {
            self.pubq.run_batch(&self.topics, &self.metrics);
        }
    }

    /// A peer handed this worker a publication to stamp.
    /// One sent again after a cut link re-opened is stamped only if it was not before.
    pub(crate) fn stamp_for(&self, id: u64, topic: &str, category: &str, msg_type: &str, payload: &[u8]) {
        if let Some(seq) = self.mesh.as_ref().and_then(|m| m.seq.as_ref()) {
            if !seq.stamped.first_time(id) {
                return;
            }
        }
        let t = self.topics.get_or_create(topic);
        self.publish_to(&t, topic, category, msg_type, payload, id);
    }

    /// Part of a peer's ring, sent as the link opened.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take_snapshot(&self, m: &Mesh, from: &Peer, topic: &str, epoch: u32, pushed: u64, owner: bool, entries: Vec<(Stamp, Bytes)>) {
        let (Some(seq), Some(lim)) = (&m.seq, self.topics.recovery()) else { return };
        let (op, zip) = (self.opcode(), self.cfg.zip());
        let bytes: usize = entries.iter().map(|(_, b)| b.len()).sum();
        seq.stats.snapshot_bytes_in.fetch_add(bytes as u64, Relaxed);
        let msgs: Vec<Arc<OutMsg>> =
            entries.into_iter().map(|(st, b)| Arc::new(OutMsg::new(framed(&b), op, zip, st.offset, st.at_ms))).collect();
        let lim = *lim;
        let t = self.topics.get_or_create(topic);
        let mut help = false;
        t.merge(epoch, pushed, owner.then_some(&from.name), msgs, &lim, self.topics.ring_total(), &mut |msg| {
            help |= self.pubq.push(Target::Topic(t.clone()), msg);
        });
        if help {
            self.pubq.run_batch(&self.topics, &self.metrics);
        }
    }

    /// A peer sent its whole state: a gap before its live publications that its rings did not
    /// fill is let through (subscribers see the jump in offsets).
    pub(crate) fn synced_from(&self, m: &Mesh, from: &Peer) {
        if m.seq.is_none() {
            return;
        }
        for (_, t) in self.topics.all() {
            t.flush_held_from(&from.name, &mut |msg| {
                self.pubq.push(Target::Topic(t.clone()), msg);
            });
        }
        self.pubq.wake();
    }

    /// Sends a new peer every ring, then `SYNCED`. Publications stamped before the peer was
    /// linked reach the rings first; those after reach it live (it drops the repeats).
    pub(crate) async fn send_state(&self, peer: &Peer) {
        let queued = self.pubq.queued();
        let until = Instant::now() + SNAPSHOT_WAIT;
        while !self.pubq.handed_on(queued) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for (name, t) in self.topics.all() {
            t.snapshot(|epoch, pushed, owner, entries| {
                let mut f = BytesMut::new();
                let mut chunk: Vec<(u64, u64, &[u8])> = vec![];
                let mut size = 0;
                let mut any = false;
                for m in entries {
                    size += m.body().len();
                    chunk.push((m.offset, m.at_ms, m.body()));
                    if size >= SNAPSHOT_CHUNK {
                        wire::snapshot(&mut f, &name, epoch, pushed, owner, &chunk);
                        peer.push_control(&f);
                        f.clear();
                        chunk.clear();
                        size = 0;
                        any = true;
                    }
                }
                // A topic never published has nothing to tell.
                if !chunk.is_empty() || (!any && pushed > 0) {
                    wire::snapshot(&mut f, &name, epoch, pushed, owner, &chunk);
                    peer.push_control(&f);
                }
            });
        }
        let mut f = BytesMut::new();
        wire::synced(&mut f);
        peer.push_control(&f);
    }

    /// A peer sent its whole state, or time passed: once synced, the worker publishes what
    /// it held and serves clients.
    pub(crate) fn check_synced(&self, m: &Mesh) {
        let Some(seq) = &m.seq else { return };
        let others = m.cfg.workers.saturating_sub(1) as usize;
        if let Some(early) = seq.check_ready(m.synced_count(), others) {
            for h in early {
                self.publish(&h.topic, &h.category, &h.msg_type, &h.payload);
            }
        }
    }

    /// A peer's link closed: its gates no longer hold anything back. If the peer died (`cut`
    /// false), what was handed to it and not stamped goes to the topics' next owners; if only
    /// the link was cut, that waits for the re-link (`handoff.rs`).
    pub(crate) fn peer_gone(&self, m: &Mesh, peer: &Peer, cut: bool) {
        if let Some(seq) = &m.seq {
            // Its last publications are all applied now: what waited for them goes.
            for (_, t) in self.topics.all() {
                t.flush_held(&mut |msg| {
                    self.pubq.push(Target::Topic(t.clone()), msg);
                });
            }
            if !cut {
                for h in seq.orphaned(&peer.name) {
                    self.publish(&h.topic, &h.category, &h.msg_type, &h.payload);
                }
            }
        }
        self.pubq.wake();
    }

    /// Cut links whose peer died or did not come back in time: their hand-offs go to the
    /// topics' next owners (called every mesh scan).
    pub(crate) fn check_cuts(&self, m: &Mesh) {
        let Some(seq) = &m.seq else { return };
        for h in seq.expired_cuts(handoff::alive) {
            self.publish(&h.topic, &h.category, &h.msg_type, &h.payload);
        }
    }
}

/// A JSON envelope behind `HEADER_ROOM` free bytes, as `OutMsg::new` takes it.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_ROOM + body.len());
    v.resize(HEADER_ROOM, 0);
    v.extend_from_slice(body);
    v
}
