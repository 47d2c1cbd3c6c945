//! Recovery rings as a mirror keeps them: following an owner, taking a joining worker's
//! history, epochs, and a new owner's publications across a gap.

use super::*;
use crate::protocol::frame::{OP_TEXT, HEADER_ROOM};

fn msg(offset: u64, at: u64) -> Arc<OutMsg> {
    let mut v = vec![0; HEADER_ROOM];
    v.extend_from_slice(format!("{{\"o\":{offset}}}").as_bytes());
    Arc::new(OutMsg::new(v, OP_TEXT, None, offset, at))
}

fn offsets(t: &Topic) -> Vec<u64> {
    t.snapshot(|_, _, _, it| it.map(|m| m.offset).collect())
}

fn mirrored<'a>(epoch: u32, offset: u64, from: &'a Arc<str>, outranks_me: bool, linked: &'a dyn Fn(&str) -> bool) -> Mirrored<'a> {
    Mirrored { epoch, offset, from, outranks_me, linked, from_synced: true }
}

const NONE_LINKED: &dyn Fn(&str) -> bool = &|_| false;

const LIM: RecoveryLimits = RecoveryLimits { max_messages: 100, ttl_ms: 60_000, max_bytes: 1 << 20 };

#[test]
fn a_mirror_follows_its_owner_and_a_joining_worker_takes_the_history_behind_live_traffic() {
    let total = AtomicUsize::new(0);
    let t = Topic::new(Arc::from("t"));
    let owner: Arc<str> = Arc::from("mesh-1-9.sock");
    // Live traffic from the owner arrives first (offsets 5, 6), then its ring (1..=6)
    // while 5 and 6 are still in the publish queue.
    let mut queued = vec![];
    for o in [5, 6] {
        let took = t.next_mirrored(mirrored(77, o, &owner, false, NONE_LINKED), &total, || msg(o, o), &mut |m| queued.push(m));
        assert_eq!(took, Took::Taken);
    }
    let took = t.next_mirrored(mirrored(77, 6, &owner, false, NONE_LINKED), &total, || msg(6, 6), &mut |_| panic!("a repeat"));
    assert_eq!(took, Took::Ignored);
    t.merge(77, 6, Some(&owner), (1..=6).map(|o| msg(o, o)).collect(), &LIM, &total, &mut |_| {});
    assert_eq!(offsets(&t), vec![1, 2, 3, 4]);
    t.push(&queued, Some((&LIM, &total)), &[], &|_, _| crate::gate::Decision::Allow, &mut Vec::new());
    assert_eq!(offsets(&t), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(t.owner(), Owner::Peer(owner.clone()));
    // The mirror becomes the owner: it goes on from the owner's offsets, same epoch.
    let mut out = None;
    t.next(|seq, _| msg(seq, 7), |m, epoch| out = Some((m, epoch)));
    let (m, epoch) = out.unwrap();
    assert_eq!((m.offset, epoch), (7, 77));
    assert_eq!(t.owner(), Owner::Me);
}

#[test]
fn another_epoch_replaces_an_older_history_only() {
    let total = AtomicUsize::new(0);
    let t = Topic::new(Arc::from("t"));
    let peer: Arc<str> = Arc::from("p");
    t.merge(5, 3, None, (1..=3).map(|o| msg(o, 100 + o)).collect(), &LIM, &total, &mut |_| {});
    assert_eq!(offsets(&t), vec![1, 2, 3]);
    // Older than what it has: kept out.
    t.merge(6, 9, None, vec![msg(9, 50)], &LIM, &total, &mut |_| {});
    assert_eq!(offsets(&t), vec![1, 2, 3]);
    // Newer: taken, the old epoch's entries go (and their bytes with them).
    t.merge(6, 9, Some(&peer), vec![msg(8, 200), msg(9, 201)], &LIM, &total, &mut |_| {});
    assert_eq!(offsets(&t), vec![8, 9]);
    assert_eq!(total.load(Relaxed), msg(8, 0).size() + msg(9, 0).size());
    // This worker owns it: a split-brain stamp from a peer that loses the election is refused.
    let mut out = None;
    t.next(|seq, _| msg(seq, 300), |m, _| out = Some(m));
    t.push(&[out.unwrap()], Some((&LIM, &total)), &[], &|_, _| crate::gate::Decision::Allow, &mut Vec::new());
    assert_eq!(t.next_mirrored(mirrored(1, 1, &peer, false, NONE_LINKED), &total, || msg(1, 1), &mut |_| panic!()), Took::Ignored);
    assert_eq!(t.next_mirrored(mirrored(1, 1, &peer, true, NONE_LINKED), &total, || msg(1, 1), &mut |_| {}), Took::Taken);
}

#[test]
fn a_new_owners_publication_waits_for_the_old_owners_last_while_its_link_is_open() {
    let total = AtomicUsize::new(0);
    let t = Topic::new(Arc::from("t"));
    let (old, new): (Arc<str>, Arc<str>) = (Arc::from("old"), Arc::from("new"));
    let linked: &dyn Fn(&str) -> bool = &|p| p == "old";
    let mut out: Vec<u64> = vec![];
    for o in 1..=3 {
        t.next_mirrored(mirrored(9, o, &old, false, linked), &total, || msg(o, o), &mut |m| out.push(m.offset));
    }
    // The new owner's 5 and 6 come before the old owner's 4: held.
    for o in [5, 6] {
        let took = t.next_mirrored(mirrored(9, o, &new, false, linked), &total, || msg(o, o), &mut |m| out.push(m.offset));
        assert_eq!(took, Took::Held);
    }
    assert_eq!(out, vec![1, 2, 3]);
    t.next_mirrored(mirrored(9, 4, &old, false, linked), &total, || msg(4, 4), &mut |m| out.push(m.offset));
    assert_eq!(out, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(t.owner(), Owner::Peer(new.clone()));
    // A gap the old owner cannot fill any more (its link closed) is let through at once...
    let gone: &dyn Fn(&str) -> bool = &|_| false;
    t.next_mirrored(mirrored(9, 8, &old, false, gone), &total, || msg(8, 8), &mut |m| out.push(m.offset));
    assert_eq!(out.last(), Some(&8));
    // ...and what is held when the link closes goes then.
    let took = t.next_mirrored(mirrored(9, 10, &new, false, linked), &total, || msg(10, 10), &mut |m| out.push(m.offset));
    assert_eq!(took, Took::Held);
    t.flush_held(&mut |m| out.push(m.offset));
    assert_eq!(out.last(), Some(&10));
    // From the owner it already follows, a gap is not waited for.
    let took = t.next_mirrored(mirrored(9, 12, &new, false, linked), &total, || msg(12, 12), &mut |m| out.push(m.offset));
    assert_eq!((took, out.last()), (Took::Taken, Some(&12)));
}

#[test]
fn after_a_cut_link_the_owners_ring_fills_the_gap_before_what_came_live() {
    let total = AtomicUsize::new(0);
    let t = Topic::new(Arc::from("t"));
    let owner: Arc<str> = Arc::from("mesh-0-9.sock");
    let mut out: Vec<u64> = vec![];
    let on = |o: u64, synced: bool| Mirrored { epoch: 3, offset: o, from: &owner, outranks_me: true, linked: NONE_LINKED, from_synced: synced };
    for o in 1..=3 {
        assert_eq!(t.next_mirrored(on(o, true), &total, || msg(o, o), &mut |m| out.push(m.offset)), Took::Taken);
    }
    // The link is cut; 4..=6 are stamped meanwhile. On the re-link, 7 and 8 come live before
    // the owner's ring: held, since the new link has not sent its state yet.
    for o in [7, 8] {
        assert_eq!(t.next_mirrored(on(o, false), &total, || msg(o, o), &mut |m| out.push(m.offset)), Took::Held);
    }
    assert_eq!(out, vec![1, 2, 3]);
    // The ring fills the gap: what was missed, then what was held, once each and in order.
    t.merge(3, 8, Some(&owner), (2..=8).map(|o| msg(o, o)).collect(), &LIM, &total, &mut |m| out.push(m.offset));
    assert_eq!(out, (1..=8).collect::<Vec<_>>());
    t.flush_held_from(&owner, &mut |m| out.push(m.offset));
    assert_eq!(out.len(), 8);
    // A ring that no longer reaches back: what it has goes, with the jump in offsets that
    // clients report as a gap, and what was held goes once the owner has sent its whole state.
    assert_eq!(t.next_mirrored(on(20, false), &total, || msg(20, 20), &mut |m| out.push(m.offset)), Took::Held);
    t.merge(3, 20, Some(&owner), vec![msg(15, 15), msg(16, 16)], &LIM, &total, &mut |m| out.push(m.offset));
    assert_eq!(&out[8..], &[15, 16]);
    t.flush_held_from(&owner, &mut |m| out.push(m.offset));
    assert_eq!(&out[8..], &[15, 16, 20]);
    // From a synced link, a gap is not waited for.
    assert_eq!(t.next_mirrored(on(22, true), &total, || msg(22, 22), &mut |m| out.push(m.offset)), Took::Taken);
}

/// Batch keys: the topic keeps its key while its recipients stay, and takes a new one after a
/// subscriber leaves, or when one that held the key (here a pattern subscriber) is not among a
/// batch's recipients.
#[test]
fn the_batch_key_changes_when_a_holder_is_gone() {
    use crate::crypto::session::Session;
    use std::sync::atomic::Ordering::Relaxed;
    let engine = crate::engine::Engine::new(crate::config::Config::default()).unwrap();
    let sealed = |n: u8| {
        let c = engine.register(None, None, format!("127.0.0.1:{n}"), Default::default());
        assert!(crate::deliver::start_encryption(&c, Session::from_key([n; 32]), bytes::Bytes::from_static(b"hello")));
        c.batch_keys.store(true, Relaxed);
        c
    };
    let (a, b, p) = (sealed(1), sealed(2), sealed(3));
    let t = Topic::new(Arc::from("t"));
    t.add(&a, None, None, || {});
    t.add(&b, None, None, || {});
    let key = |t: &Topic| t.state.lock().seal_key.as_ref().map(|(k, n)| (k.serial(), *n));
    let allow = |_: &Conn, _: &str| crate::gate::Decision::Allow;
    let push = |also: &[(Arc<Conn>, bool)]| t.push(&[msg(0, 0), msg(0, 0)], None, also, &allow, &mut Vec::new());
    let with_p = [(p.clone(), false)];
    assert_eq!(push(&with_p).sealed, 6);
    let (first, holders) = key(&t).unwrap();
    assert_eq!(holders, 3);
    assert_eq!(push(&with_p).sealed, 6);
    assert_eq!(key(&t), Some((first, 3)), "the same key while the same connections receive");
    // The pattern subscriber is not among the recipients: this batch still went under the old
    // key (to a and b only), the next one gets a new key.
    assert_eq!(push(&[]).sealed, 4);
    assert_eq!(key(&t), None);
    push(&[]);
    let (second, holders) = key(&t).unwrap();
    assert!(second != first && holders == 2);
    // (A subscriber that unsubscribes drops the key at once: tests/test_encryption.py.)
}

