//! A topic whose offsets Redis assigns (the bridge with recovery, bridge/): every host takes the
//! same epoch and offsets from Redis, so a subscriber can recover on any worker of any host.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::Topic;
use crate::protocol::outgoing::OutMsg;

impl Topic {
    /// The epoch and the last offset taken.
    pub fn taken(&self) -> (u32, u64) {
        let s = self.state.lock();
        (s.epoch, s.seq)
    }

    /// Takes a publication Redis stamped: the next one is handed to `emit` under the lock; a
    /// repeat is ignored; after a gap (this worker was not subscribed meanwhile) or in another
    /// epoch the ring starts over from it, so the ring never claims what it does not hold.
    pub fn take_stamped(&self, epoch: u32, offset: u64, total: &AtomicUsize, build: impl FnOnce() -> Arc<OutMsg>, emit: impl FnOnce(Arc<OutMsg>)) -> bool {
        let mut s = self.state.lock();
        if epoch == s.epoch && offset <= s.seq {
            return false;
        }
        if epoch != s.epoch || offset != s.seq + 1 {
            s.reset(epoch, offset.saturating_sub(1), total);
            s.held.clear();
        }
        s.seq = offset;
        emit(build());
        true
    }

    /// Where Redis says the topic stands (`epoch`, last offset `head`) and its history after a
    /// subscriber's point (`entries`, in offset order), read after this worker's subscription
    /// took effect. Entries after what this worker has taken are handed to `emit` as if live
    /// (the same ones arriving live later are repeats); older ones that join up with the ring's
    /// front go in front of it, for replay.
    pub fn merge_stamped(
        &self,
        epoch: u32,
        head: u64,
        entries: Vec<Arc<OutMsg>>,
        total: &AtomicUsize,
        emit: &mut dyn FnMut(Arc<OutMsg>),
    ) {
        let mut s = self.state.lock();
        if epoch != s.epoch || (s.seq == 0 && s.ring.is_empty()) {
            let before = entries.first().map_or(head, |m| m.offset.saturating_sub(1));
            s.reset(epoch, before, total);
            s.held.clear();
        }
        let front = s.ring.front().map_or(s.pushed + 1, |(m, _)| m.offset);
        let mut older = vec![];
        for m in entries {
            if m.offset > s.seq {
                s.seq = m.offset;
                emit(m);
            } else if m.offset < front {
                older.push(m);
            }
        }
        if older.last().is_some_and(|m| m.offset + 1 == front) {
            for m in older.into_iter().rev() {
                let n = m.size();
                s.ring_bytes += n;
                total.fetch_add(n, Relaxed);
                s.ring.push_front((m, n));
            }
        }
        // Nothing published since the last entry Redis still has: the offsets go on from `head`.
        if s.seq < head && s.ring.is_empty() {
            s.seq = head;
            s.pushed = head;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::RecoveryLimits;
    use crate::protocol::frame::{HEADER_ROOM, OP_TEXT};

    fn msg(offset: u64) -> Arc<OutMsg> {
        let mut v = vec![0; HEADER_ROOM];
        v.extend_from_slice(b"{}");
        Arc::new(OutMsg::new(v, OP_TEXT, None, offset, 1))
    }

    #[test]
    fn stamps_are_taken_once_in_order_and_a_gap_or_new_epoch_starts_over() {
        let t = Topic::new("t".into());
        let total = AtomicUsize::new(0);
        let mut out = vec![];
        for o in [1, 2, 2, 3] {
            t.take_stamped(7, o, &total, || msg(o), |m| out.push(m.offset));
        }
        assert_eq!(out, vec![1, 2, 3], "a repeat is ignored");
        assert!(t.take_stamped(7, 6, &total, || msg(6), |m| out.push(m.offset)), "after a gap it goes on");
        assert_eq!(t.taken(), (7, 6));
        assert!(t.take_stamped(9, 1, &total, || msg(1), |m| out.push(m.offset)), "another epoch starts over");
        assert_eq!(t.taken(), (9, 1));
    }

    #[test]
    fn history_after_what_was_taken_is_delivered_and_older_history_goes_in_front() {
        let t = Topic::new("t".into());
        let total = AtomicUsize::new(0);
        let lim = RecoveryLimits { max_messages: 100, ttl_ms: 60_000, max_bytes: 1 << 20 };
        // Live 5 arrived first (and was pushed to the ring); the history 3..6 comes after.
        t.take_stamped(7, 5, &total, || msg(5), |_| {});
        t.push(&[msg(5)], Some((&lim, &total)), &[], &|_, _| crate::gate::Decision::Allow, &mut Vec::new());
        let mut live = vec![];
        t.merge_stamped(7, 6, (3..=6).map(msg).collect(), &total, &mut |m| live.push(m.offset));
        assert_eq!(live, vec![6], "only what was not taken goes out as live");
        let ring: Vec<u64> = t.state.lock().ring.iter().map(|(m, _)| m.offset).collect();
        assert_eq!(ring, vec![3, 4, 5], "older entries joining the front are kept for replay");
    }
}
