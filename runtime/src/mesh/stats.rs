//! The mesh's counters: messages and bytes per peer slot and direction, drops, and how long a
//! publication takes from `publish()` on one worker to the publish queue of another.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::{json, Value};

/// Upper bounds of the transit histogram's buckets, in nanoseconds.
pub const TRANSIT_BUCKETS_NS: [u64; 12] =
    [25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 100_000_000, 1_000_000_000];

#[derive(Default)]
struct PerSlot {
    msgs_out: AtomicU64,
    bytes_out: AtomicU64,
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
}

pub struct MeshStats {
    slots: Vec<PerSlot>,
    dropped: AtomicU64,
    links_opened: AtomicU64,
    transit: [AtomicU64; TRANSIT_BUCKETS_NS.len() + 1],
    transit_sum_ns: AtomicU64,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl MeshStats {
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers).map(|_| PerSlot::default()).collect(),
            dropped: AtomicU64::new(0),
            links_opened: AtomicU64::new(0),
            transit: Default::default(),
            transit_sum_ns: AtomicU64::new(0),
        }
    }

    pub fn sent(&self, slot: u32, bytes: usize) {
        if let Some(s) = self.slots.get(slot as usize) {
            s.msgs_out.fetch_add(1, Relaxed);
            s.bytes_out.fetch_add(bytes as u64, Relaxed);
        }
    }

    pub fn received(&self, slot: u32, bytes: usize) {
        if let Some(s) = self.slots.get(slot as usize) {
            s.msgs_in.fetch_add(1, Relaxed);
            s.bytes_in.fetch_add(bytes as u64, Relaxed);
        }
    }

    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    pub fn link_opened(&self) {
        self.links_opened.fetch_add(1, Relaxed);
    }

    pub fn transit(&self, sent_ns: u64) {
        let d = now_ns().saturating_sub(sent_ns);
        let i = TRANSIT_BUCKETS_NS.iter().position(|&b| d <= b).unwrap_or(TRANSIT_BUCKETS_NS.len());
        self.transit[i].fetch_add(1, Relaxed);
        self.transit_sum_ns.fetch_add(d, Relaxed);
    }

    pub fn to_json(&self, me: u32, peers: Vec<Value>) -> Value {
        let per_peer: Vec<Value> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != me)
            .map(|(i, s)| {
                json!({
                    "slot": i,
                    "messages_out": s.msgs_out.load(Relaxed),
                    "bytes_out": s.bytes_out.load(Relaxed),
                    "messages_in": s.msgs_in.load(Relaxed),
                    "bytes_in": s.bytes_in.load(Relaxed),
                })
            })
            .collect();
        json!({
            "slot": me,
            "peers": peers,
            "per_peer": per_peer,
            "dropped": self.dropped.load(Relaxed),
            "links_opened": self.links_opened.load(Relaxed),
            "transit_buckets_ns": TRANSIT_BUCKETS_NS.to_vec(),
            "transit_counts": self.transit.iter().map(|c| c.load(Relaxed)).collect::<Vec<_>>(),
            "transit_sum_ns": self.transit_sum_ns.load(Relaxed),
        })
    }
}
