//! One linked peer: what it has subscribers for, and the bytes waiting to be written to it.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

pub struct Peer {
    pub name: String,
    pub slot: u32,
    interest: RwLock<HashSet<Arc<str>>>,
    out: Mutex<BytesMut>,
    wake: Notify,
}

impl Peer {
    pub fn new(name: String, slot: u32) -> Self {
        Self { name, slot, interest: RwLock::new(HashSet::new()), out: Mutex::new(BytesMut::new()), wake: Notify::new() }
    }

    pub fn wants(&self, topic: &str) -> bool {
        self.interest.read().contains(topic)
    }

    pub fn interest_count(&self) -> usize {
        self.interest.read().len()
    }

    pub fn set_interest(&self, topic: String, present: bool) {
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
        if frame.is_empty() {
            return;
        }
        let mut out = self.out.lock();
        let was_empty = out.is_empty();
        out.extend_from_slice(frame);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Waits for queued bytes and takes them all.
    pub async fn take(&self) -> BytesMut {
        loop {
            {
                let mut out = self.out.lock();
                if !out.is_empty() {
                    return out.split();
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
