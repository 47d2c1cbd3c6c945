//! Publications handed to their topic's owner (`SEQUENCE`), kept until they come back stamped,
//! and what becomes of them when the owner's link closes.
//!
//! - The owner died: what it did not stamp goes to the topics' next owners (`orphaned`).
//! - The link was cut while the owner lives (its process is still there): the owner keeps its
//!   topics. Hand-offs made meanwhile wait here, and on the re-link every hand-off not yet seen
//!   stamped is sent again, in order; the owner stamps each id once (`Stamped::first_time`), so
//!   those that reached it before the cut are not stamped twice. A cut owner that does not come
//!   back within `CUT_GRACE`, or whose process ends, is then treated as dead.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::peer::Peer;
use super::wire;

/// How long a cut owner that still lives keeps its topics before it is treated as dead.
pub const CUT_GRACE: Duration = Duration::from_secs(5);

/// A publication handed to an owner, kept until it comes back stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub id: u64,
    pub topic: String,
    pub category: String,
    pub msg_type: String,
    pub payload: Bytes,
}

impl Handed {
    fn frame(&self) -> Option<Bytes> {
        wire::sequence(self.id, &self.topic, &self.category, &self.msg_type, &self.payload)
    }
}

/// One owner's hand-offs and its link.
#[derive(Default)]
struct Owed {
    items: VecDeque<Handed>,
    /// The owner's link, while it is open.
    to: Option<Arc<Peer>>,
    /// Since when the owner's link is cut while its process lives.
    cut: Option<Instant>,
}

/// What became of a hand-off.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Queued on the owner's link.
    Sent,
    /// Kept for the owner's re-link (its link is cut).
    Kept,
    /// The owner is neither linked nor waited for, or the frame cannot be built: not kept.
    Refused,
}

#[derive(Default)]
pub struct Handoffs {
    owed: Mutex<HashMap<Arc<str>, Owed>>,
}

impl Handoffs {
    /// Hands `h` to `owner` (by socket name); the frame is queued under the same lock that
    /// keeps the list, so a closing link's list is complete when it is taken.
    pub fn hand(&self, owner: &Arc<str>, h: Handed) -> Handoff {
        let Some(f) = h.frame() else { return Handoff::Refused };
        let mut owed = self.owed.lock();
        let Some(o) = owed.get_mut(owner) else { return Handoff::Refused };
        let r = match &o.to {
            Some(p) => {
                p.push_control(&f);
                Handoff::Sent
            }
            None if o.cut.is_some() => Handoff::Kept,
            None => return Handoff::Refused,
        };
        o.items.push_back(h);
        r
    }

    /// A link to `p` opened: hand-offs go to it from now on, and those it has not stamped
    /// (kept over a cut, or sent before it) are sent again, in order. Returns how many.
    pub fn linked(&self, p: &Arc<Peer>) -> usize {
        let mut owed = self.owed.lock();
        let o = owed.entry(p.name.clone()).or_default();
        o.to = Some(p.clone());
        o.cut = None;
        for h in &o.items {
            if let Some(f) = h.frame() {
                p.push_control(&f);
            }
        }
        o.items.len()
    }

    /// `p`'s link closed while its process lives: its hand-offs wait for the re-link.
    pub fn cut(&self, p: &Peer) {
        let mut owed = self.owed.lock();
        if let Some(o) = owed.get_mut(&p.name) {
            if o.to.as_ref().is_some_and(|q| std::ptr::eq(&**q, p)) {
                o.to = None;
                o.cut = Some(Instant::now());
            }
        }
    }

    /// True while `owner`'s link is cut and its return is waited for.
    pub fn is_cut(&self, owner: &str) -> bool {
        self.owed.lock().get(owner).is_some_and(|o| o.to.is_none() && o.cut.is_some())
    }

    /// `owner` is gone: what it was given and did not stamp, in order, for the next owner.
    pub fn orphaned(&self, owner: &str) -> Vec<Handed> {
        self.owed.lock().remove(owner).map(|o| Vec::from(o.items)).unwrap_or_default()
    }

    /// Cut owners that died or did not come back within `CUT_GRACE`: given up, with what
    /// they were given and did not stamp, in order.
    pub fn expire_cuts(&self, alive: impl Fn(&str) -> bool) -> Vec<Handed> {
        let mut owed = self.owed.lock();
        let gone: Vec<Arc<str>> = owed
            .iter()
            .filter(|(n, o)| o.to.is_none() && o.cut.is_some_and(|t| t.elapsed() >= CUT_GRACE || !alive(n)))
            .map(|(n, _)| n.clone())
            .collect();
        gone.iter().filter_map(|n| owed.remove(n)).flat_map(|o| o.items).collect()
    }

    /// `owner` stamped hand-off `id` of this process: those up to it are done.
    pub fn came_back(&self, owner: &str, id: u64) {
        if let Some(o) = self.owed.lock().get_mut(owner) {
            while o.items.front().is_some_and(|x| x.id <= id) {
                o.items.pop_front();
            }
        }
    }

    #[cfg(test)]
    pub fn ids(&self, owner: &str) -> Vec<u64> {
        self.owed.lock().get(owner).map(|o| o.items.iter().map(|h| h.id).collect()).unwrap_or_default()
    }
}

/// The owner's side: the last hand-off id stamped per origin process (the id's high 24 bits),
/// so a hand-off sent again after a cut is stamped once.
#[derive(Default)]
pub struct Stamped {
    last: Mutex<HashMap<u64, u64>>,
}

impl Stamped {
    /// True the first time `id` is seen (ids of one origin reach an owner in increasing order).
    pub fn first_time(&self, id: u64) -> bool {
        let mut last = self.last.lock();
        let l = last.entry(id >> 40).or_insert(0);
        if id <= *l {
            return false;
        }
        *l = id;
        true
    }
}

/// Whether the worker behind a mesh socket name (`mesh-<slot>-<pid>.sock`) still runs: the
/// mesh is on one host, so its process can be looked at. A zombie or a name without a pid
/// counts as dead.
pub fn alive(name: &str) -> bool {
    let Some(pid) = name.strip_suffix(".sock").and_then(|n| n.rsplit('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(s) => s.rfind(')').and_then(|i| s[i + 1..].trim_start().chars().next()).is_some_and(|c| c != 'Z' && c != 'X'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(id: u64) -> Handed {
        Handed { id, topic: "t".into(), category: "U".into(), msg_type: "m".into(), payload: Bytes::from_static(b"{}") }
    }

    fn sequence_ids(p: &Peer) -> Vec<u64> {
        let mut b = p.take_now();
        let mut ids = vec![];
        while let Some((f, _)) = wire::take(&mut b).unwrap() {
            if let wire::Frame::Sequence { id, .. } = f {
                ids.push(id);
            }
        }
        ids
    }

    #[test]
    fn a_cut_owner_gets_what_it_did_not_stamp_again_on_the_relink_in_order() {
        let hs = Handoffs::default();
        let name: Arc<str> = Arc::from("mesh-1-1.sock");
        assert_eq!(hs.hand(&name, h(1)), Handoff::Refused, "an owner never linked");
        let p = Arc::new(Peer::new(name.to_string(), 1));
        hs.linked(&p);
        assert_eq!(hs.hand(&name, h(1)), Handoff::Sent);
        assert_eq!(hs.hand(&name, h(2)), Handoff::Sent);
        assert_eq!(sequence_ids(&p), vec![1, 2]);
        hs.came_back(&name, 1);
        hs.cut(&p);
        assert!(hs.is_cut(&name));
        assert_eq!(hs.hand(&name, h(3)), Handoff::Kept);
        assert!(sequence_ids(&p).is_empty(), "nothing goes to a closed link");
        assert!(hs.expire_cuts(|_| true).is_empty(), "alive and within the grace");
        let q = Arc::new(Peer::new(name.to_string(), 1));
        assert_eq!(hs.linked(&q), 2);
        assert_eq!(sequence_ids(&q), vec![2, 3]);
        assert!(!hs.is_cut(&name));
        // A cut owner whose process ended is given up, with its hand-offs.
        hs.cut(&q);
        assert_eq!(hs.expire_cuts(|_| false).iter().map(|h| h.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(hs.hand(&name, h(4)), Handoff::Refused);
    }

    #[test]
    fn an_owner_stamps_each_id_of_an_origin_once() {
        let s = Stamped::default();
        let (a, b) = (1u64 << 40, 2u64 << 40);
        assert!(s.first_time(a + 1) && s.first_time(a + 2) && s.first_time(b + 1));
        assert!(!s.first_time(a + 2) && !s.first_time(a + 1));
        assert!(s.first_time(a + 3));
    }

    #[test]
    fn liveness_reads_the_pid_in_the_socket_name() {
        assert!(alive(&format!("mesh-0-{}.sock", std::process::id())));
        assert!(!alive("mesh-0-notapid.sock"));
        assert!(!alive(&format!("mesh-0-{}.sock", u32::MAX)));
    }
}
