//! Handing publications from Python to the engine's thread. `publish` and `send` only frame the
//! message and append it to one queue; the engine thread takes the whole queue at once and
//! gives each subscriber all of its frames from the batch under one lock, with one wake-up.
//! A burst of N publications to S subscribers thus costs S lock round trips, not N x S.
//!
//! Order: everything the application sends goes through this one FIFO, and a batch is taken
//! and pushed under `work`, so a connection receives publications and direct sends in the
//! order the application made them.
//!
//! Gates: in a cluster with recovery, a publication its topic's owner stamped waits here until
//! the mesh has written it to every peer, so nothing reaches this worker's clients that the
//! other workers' rings could lack if this worker died the next instant. A gated item holds
//! back everything queued after it, which keeps the order above.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::topics::{Topic, Topics};
use crate::connection::Conn;
use crate::deliver::deliver_one;
use crate::metrics::Metrics;
use crate::outbound::PushMany;
use crate::protocol::outgoing::OutMsg;

pub enum Target {
    Topic(Arc<Topic>),
    Conn(Arc<Conn>),
    /// Into the topic's ring only (its subscribers here had it already).
    Keep(Arc<Topic>),
}

/// How far the mesh has written its gated frames to every peer (gates up to it may pass).
pub type Released = Box<dyn Fn() -> u64 + Send + Sync>;

struct Queue {
    /// Each item with its gate (0: none).
    items: Vec<(Target, Arc<OutMsg>, u64)>,
    bytes: usize,
    /// When the oldest queued item was queued (for the publish-to-queue histogram).
    since: Option<std::time::Instant>,
}

pub struct PubQueue {
    q: Mutex<Queue>,
    /// Held while a batch is taken and pushed, so two batches never interleave.
    work: Mutex<()>,
    wake: Notify,
    cap_bytes: usize,
    released: OnceLock<Released>,
    /// Items queued and items handed on, since the start (a mesh peer's snapshot waits for the
    /// ones queued before it).
    queued: AtomicU64,
    done: AtomicU64,
}

impl PubQueue {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            q: Mutex::new(Queue { items: Vec::new(), bytes: 0, since: None }),
            work: Mutex::new(()),
            wake: Notify::new(),
            cap_bytes,
            released: OnceLock::new(),
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    /// Sets where gates are read from (the mesh); false if set already.
    pub fn set_released(&self, f: Released) -> bool {
        self.released.set(f).is_ok()
    }

    /// Queues a frame. Returns true when the queue is over its byte bound: the caller should
    /// then run a batch itself (the publisher pays for its own backlog instead of growing it).
    pub fn push(&self, target: Target, msg: Arc<OutMsg>) -> bool {
        self.push_gated(target, msg, 0)
    }

    /// Queues a frame that waits until the mesh has released `gate`.
    pub fn push_gated(&self, target: Target, msg: Arc<OutMsg>, gate: u64) -> bool {
        let mut q = self.q.lock();
        q.bytes += msg.body().len();
        q.items.push((target, msg, gate));
        self.queued.fetch_add(1, Relaxed);
        if q.items.len() == 1 {
            q.since = Some(std::time::Instant::now());
            self.wake.notify_one();
        }
        q.bytes > self.cap_bytes
    }

    /// Waits until something is queued (or a gate may have opened).
    pub async fn ready(&self) {
        self.wake.notified().await
    }

    /// The mesh wrote more: gated items may go.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Items queued so far; `handed_on(n)` turns true once the first `n` have been handed on.
    pub fn queued(&self) -> u64 {
        self.queued.load(Relaxed)
    }

    pub fn handed_on(&self, n: u64) -> bool {
        self.done.load(Relaxed) >= n
    }

    /// Takes everything queued and hands it to the subscribers' outbound queues.
    pub fn run_batch(&self, topics: &Topics, metrics: &Metrics) {
        let _work = self.work.lock();
        let (mut items, mut since) = {
            let mut q = self.q.lock();
            q.bytes = 0;
            (std::mem::take(&mut q.items), q.since.take())
        };
        if let Some(released) = self.released.get() {
            // The first item whose gate is still shut holds back the rest, in order.
            let open = released();
            if let Some(k) = items.iter().position(|(_, _, g)| *g > open) {
                let rest: Vec<_> = items.drain(k..).collect();
                let mut q = self.q.lock();
                q.bytes += rest.iter().map(|(_, m, _)| m.body().len()).sum::<usize>();
                q.items.splice(0..0, rest);
                q.since = Some(since.take().unwrap_or_else(std::time::Instant::now));
            }
        }
        let handed = items.len() as u64;
        let mut total = PushMany::default();
        let mut i = 0;
        let mut msgs: Vec<Arc<OutMsg>> = Vec::new();
        while i < items.len() {
            match &items[i].0 {
                Target::Topic(t) => {
                    // A run of publications to the same topic goes to each subscriber in one push.
                    msgs.clear();
                    let mut j = i;
                    while j < items.len() {
                        match &items[j].0 {
                            Target::Topic(u) if Arc::ptr_eq(t, u) => msgs.push(items[j].1.clone()),
                            _ => break,
                        }
                        j += 1;
                    }
                    let f = topics.push(t, &msgs);
                    Metrics::add(&metrics.deliveries, f.queued as u64);
                    total.add(f);
                    i = j;
                }
                Target::Conn(c) => {
                    total.add(deliver_one(c, items[i].1.clone()));
                    i += 1;
                }
                Target::Keep(t) => {
                    topics.keep(t, std::slice::from_ref(&items[i].1));
                    i += 1;
                }
            }
        }
        total.count(metrics);
        self.done.fetch_add(handed, Relaxed);
        if let Some(t) = since {
            metrics.publish_queue(t.elapsed().as_nanos() as u64);
        }
    }
}
