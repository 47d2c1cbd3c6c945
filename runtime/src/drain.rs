//! Drain mode: events for Python wait in one queue; Python takes them in batches when an
//! eventfd says there are some. Lifecycle events are never dropped; data events that find the
//! queue full make their reader wait (so the socket stops being read: TCP backpressure).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub enum Event {
    Connect { conn: u64, user: Option<String>, claims: Option<Bytes>, addr: String },
    Disconnect { conn: u64, code: u16 },
    /// A JSON application message.
    Msg { conn: u64, data: Bytes },
    /// A text message that is not JSON.
    Raw { conn: u64, data: Bytes },
    /// A binary message that is not JSON.
    Bin { conn: u64, data: Bytes },
    /// Topics waiting for the Python authorization hook.
    SubRequest { conn: u64, req: u64, topics: Vec<String> },
    /// A user joined or left a topic, or changed their data (`change`: 0 join, 1 leave, 2 update);
    /// `conn` is the connection that caused it (0: the application).
    Presence { conn: u64, change: u8, topic: String, user: String, data: Bytes },
}

impl Event {
    fn data_len(&self) -> Option<usize> {
        match self {
            Event::Msg { data, .. } | Event::Raw { data, .. } | Event::Bin { data, .. } => Some(data.len()),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    data_events: usize,
    data_bytes: usize,
    /// Python was (or is about to be) woken for what is queued: no other wake-up needed.
    woken: bool,
    /// A late wake-up (`LAZY_LIFECYCLE`) is armed for what is queued.
    late: bool,
}

/// How long connects and disconnects may wait for Python when it has no hook for them
/// (`set_lazy_lifecycle`): the events of every connection opened or closed meanwhile then reach
/// it in one drain instead of one thread hop each. Any other event wakes Python at once and
/// takes them along, in order.
pub const LAZY_LIFECYCLE: std::time::Duration = std::time::Duration::from_millis(2);

pub struct Inbound {
    q: Mutex<Queue>,
    space: Notify,
    /// Wakes the flusher, which signals Python once the engine thread has run its ready tasks.
    flush: Notify,
    /// Signal Python at once instead (no engine thread running: tests, shutdown).
    immediate: std::sync::atomic::AtomicBool,
    /// Connects and disconnects wake Python late (`LAZY_LIFECYCLE`): it has no hook for them.
    lazy_lifecycle: std::sync::atomic::AtomicBool,
    /// Wakes the flusher's late side.
    late: Notify,
    fd: OwnedFd,
    cap: usize,
    cap_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Inbound {
    pub fn new(cap: usize, cap_bytes: usize, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor or -1; we own it from here on.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            q: Mutex::new(Queue::default()),
            space: Notify::new(),
            flush: Notify::new(),
            immediate: std::sync::atomic::AtomicBool::new(true),
            lazy_lifecycle: std::sync::atomic::AtomicBool::new(false),
            late: Notify::new(),
            fd,
            cap,
            cap_bytes,
            metrics,
        })
    }

    /// The descriptor Python's event loop watches.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local u64 to our own eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear_signal(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Connects and disconnects may reach Python up to `LAZY_LIFECYCLE` late, batched (true
    /// when the application has no connect or disconnect hook), or wake it at once (false).
    pub fn set_lazy_lifecycle(&self, lazy: bool) {
        self.lazy_lifecycle.store(lazy, std::sync::atomic::Ordering::Relaxed);
    }

    fn push_locked(&self, q: &mut Queue, ev: Event) {
        let late = matches!(ev, Event::Connect { .. } | Event::Disconnect { .. })
            && self.lazy_lifecycle.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(n) = ev.data_len() {
            q.data_events += 1;
            q.data_bytes += n;
        }
        q.events.push_back(ev);
        self.metrics.inbound_queue_depth.store(q.events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if q.woken {
            return;
        }
        let immediate = self.immediate.load(std::sync::atomic::Ordering::Relaxed);
        if !late || immediate {
            q.woken = true;
            if immediate {
                self.signal();
            } else {
                // NOTE: on one core, waking Python for every first event makes the two threads
                // take turns per message; let the other readers push theirs first.
                self.flush.notify_one();
            }
        } else if !q.late {
            q.late = true;
            self.late.notify_one();
        }
    }

    /// Runs on the engine thread: after each first event, yields so the other ready readers
    /// run, then wakes Python once for all of them.
    pub async fn run_flusher(&self) {
        self.immediate.store(false, std::sync::atomic::Ordering::Relaxed);
        struct Restore<'a>(&'a Inbound);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.immediate.store(true, std::sync::atomic::Ordering::Relaxed);
                self.0.signal();
            }
        }
        let _restore = Restore(self);
        let soon = async {
            loop {
                self.flush.notified().await;
                tokio::task::yield_now().await;
                self.signal();
            }
        };
        let late = async {
            loop {
                self.late.notified().await;
                tokio::time::sleep(LAZY_LIFECYCLE).await;
                self.signal();
            }
        };
        tokio::join!(soon, late);
    }

    /// Connect, disconnect and hook requests: always queued.
    pub fn push_lifecycle(&self, ev: Event) {
        let mut q = self.q.lock();
        self.push_locked(&mut q, ev);
    }

    /// Is there room for a data event of `n` bytes? (One always fits an empty queue.)
    fn admits(&self, q: &Queue, n: usize) -> bool {
        (q.data_events < self.cap && q.data_bytes + n <= self.cap_bytes) || q.data_events == 0
    }

    /// A data event: waits while the queue is full.
    pub async fn push_data(&self, ev: Event) {
        let n = ev.data_len().unwrap_or(0);
        {
            // Fast path: room now, no waiter registration.
            let mut q = self.q.lock();
            if self.admits(&q, n) {
                self.push_locked(&mut q, ev);
                return;
            }
        }
        let mut waited: Option<Instant> = None;
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.q.lock();
                if self.admits(&q, n) {
                    self.push_locked(&mut q, ev);
                    if let Some(t) = waited {
                        Metrics::add(&self.metrics.backpressure_ns, t.elapsed().as_nanos() as u64);
                    }
                    return;
                }
            }
            if waited.is_none() {
                waited = Some(Instant::now());
                Metrics::inc(&self.metrics.backpressure_waits);
            }
            notified.await;
        }
    }

    /// A data event from a caller that must not wait (an external connection's feeder on the
    /// Python thread): queued if there is room, else handed back.
    pub fn try_push_data(&self, ev: Event) -> Result<(), Event> {
        let n = ev.data_len().unwrap_or(0);
        let mut q = self.q.lock();
        if self.admits(&q, n) {
            self.push_locked(&mut q, ev);
            Ok(())
        } else {
            Err(ev)
        }
    }

    /// Takes up to `max` events, oldest first.
    pub fn take(&self, max: usize) -> Vec<Event> {
        self.clear_signal();
        let out: Vec<Event>;
        {
            let mut q = self.q.lock();
            let n = q.events.len().min(max);
            out = q.events.drain(..n).collect();
            for ev in &out {
                if let Some(len) = ev.data_len() {
                    q.data_events -= 1;
                    q.data_bytes -= len;
                }
            }
            if q.events.is_empty() {
                q.woken = false;
                q.late = false;
            } else {
                self.signal();
            }
            self.metrics.inbound_queue_depth.store(q.events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Metrics::inc(&self.metrics.drain_calls);
        Metrics::add(&self.metrics.drain_events, out.len() as u64);
        self.metrics.drain_batch(out.len());
        self.space.notify_waiters();
        out
    }

    pub fn len(&self) -> usize {
        self.q.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.lock().events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u64) -> Event {
        Event::Msg { conn: i, data: Bytes::from_static(b"{}") }
    }

    #[tokio::test]
    async fn lifecycle_never_blocks_and_data_waits_for_space() {
        let m = Arc::new(Metrics::default());
        let q = Arc::new(Inbound::new(2, 1 << 20, m.clone()).unwrap());
        q.push_data(msg(1)).await;
        q.push_data(msg(2)).await;
        q.push_lifecycle(Event::Disconnect { conn: 9, code: 1000 });
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push_data(msg(3)).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(q.take(2).len(), 2);
        waiter.await.unwrap();
        let rest = q.take(10);
        assert!(matches!(rest[0], Event::Disconnect { conn: 9, .. }));
        assert!(matches!(rest[1], Event::Msg { conn: 3, .. }));
        assert_eq!(m.backpressure_waits.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn eventfd_signals_on_first_event() {
        let q = Inbound::new(8, 1 << 20, Arc::new(Metrics::default())).unwrap();
        let mut v: u64 = 0;
        let r = unsafe { libc::read(q.fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(r, -1, "no signal while empty");
        q.push_lifecycle(Event::Disconnect { conn: 1, code: 1000 });
        let r = unsafe { libc::read(q.fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(r, 8);
    }

    fn signalled(q: &Inbound) -> bool {
        let mut v: u64 = 0;
        unsafe { libc::read(q.fd(), (&mut v as *mut u64).cast(), 8) == 8 }
    }

    fn connect(conn: u64) -> Event {
        Event::Connect { conn, user: None, claims: None, addr: "127.0.0.1:1".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn lazy_lifecycle_wakes_python_late_once_or_with_the_next_message() {
        let q = Arc::new(Inbound::new(64, 1 << 20, Arc::new(Metrics::default())).unwrap());
        q.set_lazy_lifecycle(true);
        let flusher = tokio::spawn({
            let q = q.clone();
            async move { q.run_flusher().await }
        });
        tokio::task::yield_now().await;
        // Connects and disconnects alone: one late wake-up for all of them.
        q.push_lifecycle(connect(1));
        q.push_lifecycle(connect(2));
        q.push_lifecycle(Event::Disconnect { conn: 1, code: 1000 });
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(!signalled(&q), "not at once");
        tokio::time::sleep(LAZY_LIFECYCLE).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(signalled(&q), "after LAZY_LIFECYCLE");
        assert_eq!(q.take(64).len(), 3);
        // A message behind a connect wakes Python at once, and the connect comes first.
        q.push_lifecycle(connect(3));
        q.push_data(msg(3)).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(signalled(&q), "a message wakes at once");
        let got = q.take(64);
        assert!(matches!(got[0], Event::Connect { conn: 3, .. }) && matches!(got[1], Event::Msg { conn: 3, .. }));
        // Off: every connect wakes at once, as before.
        q.set_lazy_lifecycle(false);
        q.push_lifecycle(connect(4));
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(signalled(&q));
        flusher.abort();
    }
}
