//! Handing publications from Python to the engine's thread. `publish` and `send` only frame the
//! message and append it to one queue; the engine thread takes the whole queue at once and
//! gives each subscriber all of its frames from the batch under one lock, with one wake-up.
//! A burst of N publications to S subscribers thus costs S lock round trips, not N x S.
//!
//! Order: everything the application sends goes through this one FIFO, and a batch is taken
//! and pushed under `work`, so a connection receives publications and direct sends in the
//! order the application made them.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::topics::{Fanout, Topic};
use crate::connection::Conn;
use crate::metrics::Metrics;

pub enum Target {
    Topic(Arc<Topic>),
    Conn(Arc<Conn>),
}

struct Queue {
    items: Vec<(Target, Bytes)>,
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
}

impl PubQueue {
    pub fn new(cap_bytes: usize) -> Self {
        Self { q: Mutex::new(Queue { items: Vec::new(), bytes: 0, since: None }), work: Mutex::new(()), wake: Notify::new(), cap_bytes }
    }

    /// Queues a frame. Returns true when the queue is over its byte bound: the caller should
    /// then run a batch itself (the publisher pays for its own backlog instead of growing it).
    pub fn push(&self, target: Target, frame: Bytes) -> bool {
        let mut q = self.q.lock();
        q.bytes += frame.len();
        q.items.push((target, frame));
        if q.items.len() == 1 {
            q.since = Some(std::time::Instant::now());
            self.wake.notify_one();
        }
        q.bytes > self.cap_bytes
    }

    /// Waits until something is queued.
    pub async fn ready(&self) {
        self.wake.notified().await
    }

    /// Takes everything queued and hands it to the subscribers' outbound queues.
    pub fn run_batch(&self, metrics: &Metrics) {
        let _work = self.work.lock();
        let (items, since) = {
            let mut q = self.q.lock();
            q.bytes = 0;
            (std::mem::take(&mut q.items), q.since.take())
        };
        let mut total = Fanout::default();
        let mut i = 0;
        let mut frames: Vec<Bytes> = Vec::new();
        while i < items.len() {
            match &items[i].0 {
                Target::Topic(t) => {
                    // A run of publications to the same topic goes to each subscriber in one push.
                    frames.clear();
                    let mut j = i;
                    while j < items.len() {
                        match &items[j].0 {
                            Target::Topic(u) if Arc::ptr_eq(t, u) => frames.push(items[j].1.clone()),
                            _ => break,
                        }
                        j += 1;
                    }
                    let f = t.push_frames(&frames);
                    total.delivered += f.delivered;
                    total.dropped += f.dropped;
                    total.overflowed += f.overflowed;
                    i = j;
                }
                Target::Conn(c) => {
                    c.out.push(items[i].1.clone()).count(metrics);
                    i += 1;
                }
            }
        }
        Metrics::add(&metrics.deliveries, total.delivered as u64);
        Metrics::add(&metrics.messages_out, total.delivered as u64);
        Metrics::add(&metrics.slow_consumer_drops, total.dropped as u64);
        Metrics::add(&metrics.slow_consumer_closes, total.overflowed as u64);
        if let Some(t) = since {
            metrics.publish_queue(t.elapsed().as_nanos() as u64);
        }
    }
}
