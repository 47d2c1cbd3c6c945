//! Handing publications from Python to the engine's thread. `publish` and `send` only frame the
//! message and append it to one queue; the engine thread takes the whole queue at once and
//! gives each subscriber all of its frames from the batch under one lock, with one wake-up.
//! A burst of N publications to S subscribers thus costs S lock round trips, not N x S.
//!
//! Order: everything the application sends goes through this one FIFO, and a batch is taken
//! and pushed under `work`, so a connection receives publications and direct sends in the
//! order the application made them.

use std::sync::Arc;

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
}

struct Queue {
    items: Vec<(Target, Arc<OutMsg>)>,
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
    pub fn push(&self, target: Target, msg: Arc<OutMsg>) -> bool {
        let mut q = self.q.lock();
        q.bytes += msg.body().len();
        q.items.push((target, msg));
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
    pub fn run_batch(&self, topics: &Topics, metrics: &Metrics) {
        let _work = self.work.lock();
        let (items, since) = {
            let mut q = self.q.lock();
            q.bytes = 0;
            (std::mem::take(&mut q.items), q.since.take())
        };
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
            }
        }
        total.count(metrics);
        if let Some(t) = since {
            metrics.publish_queue(t.elapsed().as_nanos() as u64);
        }
    }
}
