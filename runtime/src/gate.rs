//! What a connection's pattern subscriptions may deliver: a verdict per concrete topic, decided
//! once (topic ACLs, then the application's hook) and cached, and the hold on the connection's
//! deliveries while the hook decides a topic.
//!
//! The rule (docs/PROTOCOL.md, "Pattern subscriptions and authorization"): the first
//! publication of a topic that a client's pattern matches, on a topic not yet decided for that
//! connection, asks the hook and holds that connection's stream: it and everything delivered
//! to the connection after it wait, in order, until the answer. Then the held publications of
//! an allowed topic are delivered, those of a denied one dropped, and the rest delivered in
//! the order they came. Other connections never wait. What is held counts against the
//! connection's outbound budget (`max_outbound_bytes`, then the slow-consumer policy).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::connection::Conn;
use crate::deliver::{deliver_now, Batch};
use crate::outbound::{Push, PushMany};
use crate::protocol::outgoing::OutMsg;

/// Verdicts a connection keeps at most; past it the decided ones are forgotten (and asked again).
pub const MAX_VERDICTS: usize = 4096;

/// What a pattern subscription may do with a topic, as decided for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// The application's hook decides; until it answers, the connection is held.
    Ask,
}

/// What the fan-out does with one pattern subscriber for a run of publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Allowed: deliver as to any subscriber.
    Deliver,
    /// Denied: nothing for this connection.
    Skip,
    /// Held, the topic waits for an answer already asked.
    Held,
    /// Held, and the hook must be asked now (the first publication of this topic).
    Ask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Denied,
    Pending,
}

#[derive(Default)]
struct Inner {
    verdicts: HashMap<Arc<str>, Verdict>,
    /// Held deliveries in order, each with the topic whose verdict it waits for (None: one
    /// the connection may have; it waits only for what is ahead of it).
    held: VecDeque<(Arc<OutMsg>, Option<Arc<str>>)>,
    held_bytes: usize,
}

/// One connection's gate. Boxed state: most connections never subscribe to a pattern.
#[derive(Default)]
pub struct Gate {
    holding: AtomicBool,
    inner: Mutex<Option<Box<Inner>>>,
}

impl Gate {
    /// Is the connection's stream held? (Lock-free; `hold` re-checks under the lock.)
    #[inline]
    pub fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Decides a run of publications of `topic` for a pattern subscriber: from the cache, or
    /// by `decide` the first time. Held publications are kept here, in order.
    pub fn admit(&self, conn: &Conn, topic: &Arc<str>, msgs: &[Arc<OutMsg>], decide: impl FnOnce() -> Decision) -> (Admit, PushMany) {
        let mut g = self.inner.lock();
        let inner = g.get_or_insert_with(Box::default);
        let verdict = match inner.verdicts.get(topic) {
            Some(v) => *v,
            None => {
                if inner.verdicts.len() >= MAX_VERDICTS {
                    inner.verdicts.retain(|_, v| *v == Verdict::Pending);
                }
                let v = match decide() {
                    Decision::Allow => Verdict::Allowed,
                    Decision::Deny => Verdict::Denied,
                    Decision::Ask => {
                        inner.verdicts.insert(topic.clone(), Verdict::Pending);
                        self.holding.store(true, Ordering::Release);
                        let r = hold(conn, inner, msgs, Some(topic));
                        return (Admit::Ask, r);
                    }
                };
                inner.verdicts.insert(topic.clone(), v);
                v
            }
        };
        match verdict {
            Verdict::Allowed => (Admit::Deliver, PushMany::default()),
            Verdict::Denied => (Admit::Skip, PushMany::default()),
            Verdict::Pending => (Admit::Held, hold(conn, inner, msgs, Some(topic))),
        }
    }

    /// While the stream is held, keeps `msgs` behind what is held (they are counted as queued
    /// now). `None` when it is not held: the caller queues them itself.
    pub fn hold_behind(&self, conn: &Conn, msgs: &[Arc<OutMsg>]) -> Option<PushMany> {
        let mut g = self.inner.lock();
        if !self.is_holding() {
            return None;
        }
        let inner = g.as_mut()?;
        Some(hold(conn, inner, msgs, None))
    }

    /// The hook answered for `topic`: records it and delivers what no longer waits, in order.
    /// Returns what was queued (for the counters).
    pub fn decided(&self, conn: &Conn, topic: &str, allowed: bool) -> PushMany {
        let mut g = self.inner.lock();
        let Some(inner) = g.as_mut() else { return PushMany::default() };
        match inner.verdicts.get_mut(topic) {
            Some(v) if *v == Verdict::Pending => *v = if allowed { Verdict::Allowed } else { Verdict::Denied },
            _ => return PushMany::default(),
        }
        let mut out = PushMany::default();
        while let Some((m, waits)) = inner.held.front() {
            let go = match waits {
                None => true,
                Some(t) => match inner.verdicts.get(t) {
                    Some(Verdict::Allowed) => true,
                    Some(Verdict::Denied) | None => false,
                    Some(Verdict::Pending) => break,
                },
            };
            let (m, waits) = (m.clone(), waits.is_some());
            inner.held_bytes -= m.body().len();
            inner.held.pop_front();
            if go {
                let r = deliver_now(conn, &Batch::new(std::slice::from_ref(&m)));
                if waits {
                    // Those held for a verdict are counted when they go; the others were
                    // counted when they were held.
                    out.add(r);
                } else {
                    out.dropped += r.dropped;
                    out.overflowed += r.overflowed;
                }
            }
        }
        if inner.held.is_empty() {
            self.holding.store(false, Ordering::Release);
        }
        out
    }

    /// Forgets decided verdicts (the connection left its last pattern); pending ones stay.
    pub fn forget(&self) {
        if let Some(inner) = self.inner.lock().as_mut() {
            inner.verdicts.retain(|_, v| *v == Verdict::Pending);
        }
    }

    /// Verdicts cached and messages held (for tests).
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize) {
        self.inner.lock().as_ref().map_or((0, 0), |i| (i.verdicts.len(), i.held.len()))
    }
}

/// Keeps `msgs` in the held queue within the connection's outbound budget; past it the
/// slow-consumer policy applies (close: everything held is dropped and the connection closes).
fn hold(conn: &Conn, inner: &mut Inner, msgs: &[Arc<OutMsg>], waits: Option<&Arc<str>>) -> PushMany {
    let mut r = PushMany::default();
    if conn.out.is_closing() {
        return r;
    }
    let queued = conn.out.queued_bytes();
    for m in msgs {
        let n = m.body().len();
        if inner.held_bytes + queued + n > conn.out.max_bytes() {
            match conn.out.overflow() {
                Push::Dropped => {
                    r.dropped += 1;
                    continue;
                }
                Push::Overflow => {
                    r.overflowed += 1;
                    inner.held.clear();
                    inner.held_bytes = 0;
                }
                _ => {}
            }
            return r;
        }
        inner.held_bytes += n;
        inner.held.push_back((m.clone(), waits.cloned()));
        if waits.is_none() {
            r.queued += 1;
        }
    }
    r
}
