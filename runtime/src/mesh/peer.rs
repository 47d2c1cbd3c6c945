//! One linked peer: what it has subscribers for, and the bytes waiting to be written to it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::auth::acl::glob_match;
use crate::pubsub::patterns::is_pattern;

pub struct Peer {
    pub name: Arc<str>,
    pub slot: u32,
    interest: RwLock<HashSet<Arc<str>>>,
    /// Pattern subscriptions the peer has subscribers for.
    patterns: RwLock<Vec<Arc<str>>>,
    out: Mutex<BytesMut>,
    wake: Notify,
    /// The last gate queued to this peer (set under `out`'s lock) and the last written.
    gate_queued: AtomicU64,
    gate_written: AtomicU64,
    /// The peer sent its whole recovery state (with recovery on).
    pub synced: AtomicBool,
    /// Ends the link from this side while both workers live (an operator's or a test's cut).
    pub cut: Notify,
}

impl Peer {
    pub fn new(name: String, slot: u32) -> Self {
        Self {
            name: Arc::from(name),
            slot,
            interest: RwLock::new(HashSet::new()),
            patterns: RwLock::new(Vec::new()),
            out: Mutex::new(BytesMut::new()),
            wake: Notify::new(),
            gate_queued: AtomicU64::new(0),
            gate_written: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            cut: Notify::new(),
        }
    }

    /// Queues a frame that carries `gate` (never dropped: mirrors depend on it).
    pub fn push_gated(&self, frame: &[u8], gate: u64) {
        self.append(frame, Some(gate));
    }

    /// Appends to the queue (waking the writer if it was empty), under its lock.
    fn append(&self, frame: &[u8], gate: Option<u64>) {
        let mut out = self.out.lock();
        let was_empty = out.is_empty();
        out.extend_from_slice(frame);
        if let Some(g) = gate {
            self.gate_queued.store(g, Relaxed);
        }
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// The gates this peer still holds shut: every gate up to the result is written
    /// (`u64::MAX`: nothing gated is waiting).
    pub fn gate_open(&self) -> u64 {
        let written = self.gate_written.load(Relaxed);
        if written >= self.gate_queued.load(Relaxed) {
            u64::MAX
        } else {
            written
        }
    }

    /// The writer wrote everything taken with `gate`.
    pub fn written(&self, gate: u64) {
        self.gate_written.fetch_max(gate, Relaxed);
    }

    pub fn wants(&self, topic: &str) -> bool {
        if self.interest.read().contains(topic) {
            return true;
        }
        let p = self.patterns.read();
        !p.is_empty() && p.iter().any(|g| glob_match(g, topic))
    }

    pub fn interest_count(&self) -> usize {
        self.interest.read().len() + self.patterns.read().len()
    }

    pub fn set_interest(&self, topic: String, present: bool) {
        if is_pattern(&topic) {
            let mut p = self.patterns.write();
            p.retain(|g| **g != *topic);
            if present {
                p.push(Arc::from(topic));
            }
            return;
        }
        let mut i = self.interest.write();
        if present {
            i.insert(Arc::from(topic));
        } else {
            i.remove(topic.as_str());
        }
    }

    /// Queues a publication; false (and nothing queued) if the peer is `cap` bytes behind.
    pub fn push(&self, frame: &[u8], cap: usize) -> bool {
        let mut out = self.out.lock();
        if out.len() + frame.len() > cap {
            return false;
        }
        let was_empty = out.is_empty();
        out.extend_from_slice(frame);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Queues interest changes: never dropped (they are small and the routing depends on them).
    pub fn push_control(&self, frame: &[u8]) {
        if !frame.is_empty() {
            self.append(frame, None);
        }
    }

    /// Waits for queued bytes and takes them all, with the last gate among them.
    pub async fn take(&self) -> (BytesMut, u64) {
        loop {
            {
                let mut out = self.out.lock();
                if !out.is_empty() {
                    return (out.split(), self.gate_queued.load(Relaxed));
                }
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
impl Peer {
    /// Takes what is queued without waiting (tests).
    pub fn take_now(&self) -> BytesMut {
        self.out.lock().split()
    }
}
