//! The engine's side of the bridge: publications arriving from Redis, and a subscription's
//! position (and, to recover, its history) read from Redis before the subscriber joins.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::{link, scripts, wire, Bridge, Change};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::protocol::envelope::Envelope;
use crate::protocol::frame::HEADER_ROOM;
use crate::protocol::outgoing::OutMsg;
use crate::protocol::time::now_ms;
use crate::pubsub::fanout::Target;
use crate::pubsub::patterns::is_pattern;

/// How long a subscription waits for Redis (its subscription, then its position) at most.
const PREPARE_WAIT: Duration = Duration::from_secs(2);

impl Engine {
    /// A message on one of this worker's Redis subscriptions.
    pub(crate) fn redis_in(&self, b: &Bridge, channel: &[u8], msg: &[u8], via_pattern: bool) {
        let parsed = std::str::from_utf8(channel).ok().and_then(|c| wire::topic_of(&b.prefix, c)).zip(wire::parse(msg));
        let Some((topic, m)) = parsed else {
            b.stats.malformed.fetch_add(1, Relaxed);
            return;
        };
        if m.epoch != 0 && !b.catching.lock().is_empty() {
            let mut c = b.catching.lock();
            if let Some(held) = c.get_mut(topic) {
                held.push((channel.to_vec(), msg.to_vec(), via_pattern));
                return;
            }
        }
        b.stats.received.fetch_add(1, Relaxed);
        b.stats.received_bytes.fetch_add(msg.len() as u64, Relaxed);
        if m.epoch == 0 {
            // Unstamped (no recovery): the host that made it delivered it itself, mesh included.
            if m.host == b.host {
                b.stats.own.fetch_add(1, Relaxed);
                return;
            }
            // A topic this worker subscribes to exactly arrives on its own channel too.
            if via_pattern && b.is_confirmed(topic) {
                return;
            }
            self.publish_local(topic, m.category, m.msg_type, m.payload);
            return;
        }
        let lag = now_ms().saturating_sub(m.at_ms);
        b.stats.lag_ms_sum.fetch_add(lag, Relaxed);
        b.stats.lag_count.fetch_add(1, Relaxed);
        b.stats.lag_ms_max.fetch_max(lag, Relaxed);
        let t = self.topics.get_or_create(topic);
        let mut help = false;
        // Made here while Redis was unreachable: delivered then, kept now.
        let keep = m.early && m.host == b.host;
        let taken = t.take_stamped(
            m.epoch,
            m.offset,
            self.topics.ring_total(),
            || self.redis_msg(topic, &m),
            |msg| help = self.pubq.push(if keep { Target::Keep(t.clone()) } else { Target::Topic(t.clone()) }, msg),
        );
        if taken {
            Metrics::inc(&self.metrics.publishes);
        }
        if help {
            self.pubq.run_batch(&self.topics, &self.metrics);
        }
    }

    /// Delivers a publication to this worker's subscribers of `topic` (pattern subscribers
    /// included) outside the topic's offsets: not kept for recovery, no offset in the envelope.
    /// With recovery over Redis, a publication made while Redis is unreachable.
    pub(crate) fn publish_unstamped(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        let t = self.topics.get_or_create(topic);
        let env = Envelope { category, msg_type, seq: 0, topic: Some(topic), stamp: None, cid: None, payload };
        let mut v = env.encode(HEADER_ROOM);
        if let Some(s) = &self.signer {
            s.sign(&mut v, HEADER_ROOM);
        }
        let msg = Arc::new(OutMsg::new(v, self.opcode(), self.cfg.zip(), 0, now_ms()));
        Metrics::inc(&self.metrics.publishes);
        if self.pubq.push(Target::Topic(t.clone()), msg) {
            self.pubq.run_batch(&self.topics, &self.metrics);
        }
        t.subscriber_count()
    }

    /// The envelope of a publication Redis stamped, built as `publish_to` builds one.
    fn redis_msg(&self, topic: &str, m: &wire::Message<'_>) -> Arc<OutMsg> {
        let env = Envelope {
            category: m.category,
            msg_type: m.msg_type,
            seq: m.offset,
            topic: Some(topic),
            stamp: Some((m.epoch, m.offset)),
            cid: None,
            payload: m.payload,
        };
        let mut v = env.encode(HEADER_ROOM);
        if let Some(s) = &self.signer {
            s.sign(&mut v, HEADER_ROOM);
        }
        Arc::new(OutMsg::new(v, self.opcode(), self.cfg.zip(), m.offset, m.at_ms))
    }

    /// Before a subscriber joins `topic` (with recovery): holds the topic subscribed on Redis,
    /// then reads where it stands and, if the subscriber gave a point, the history after it,
    /// into the topic's ring. The caller joins it next and then calls `redis_unpin`. False if
    /// Redis could not say (the join then answers from this worker's ring alone).
    pub(crate) async fn redis_prepare(&self, b: &Bridge, topic: &str, point: Option<(u32, u64)>) -> bool {
        if is_pattern(topic) || !b.stamps {
            return true;
        }
        b.change(Change::Pin(topic.to_string(), true));
        let deadline = Instant::now() + PREPARE_WAIT;
        let ok = self.redis_position(b, topic, point, deadline).await;
        b.stats.positions.fetch_add(1, Relaxed);
        if !ok {
            b.stats.position_failures.fetch_add(1, Relaxed);
        }
        ok
    }

    pub(crate) fn redis_unpin(&self, b: &Bridge, topic: &str) {
        if !is_pattern(topic) && b.stamps {
            b.change(Change::Pin(topic.to_string(), false));
        }
    }

    /// After a reconnect (recovery on): reads `topic`'s stream after what this worker took and
    /// delivers what it missed, in order, then what arrived live meanwhile. A history that no
    /// longer reaches back (trimmed, or Redis lost it: a new epoch) is counted; subscribers see
    /// the jump or the new epoch and their clients report the gap.
    pub(crate) async fn redis_catch_up(&self, b: &Bridge, l: &mut link::Link, topic: &str) {
        let before = self.topics.get(topic).map(|t| t.taken());
        let from = before.filter(|(_, seq)| *seq > 0).map_or(-1, |(_, seq)| seq as i64);
        b.stats.catch_ups.fetch_add(1, Relaxed);
        match tokio::time::timeout(PREPARE_WAIT, read_position(b, l, topic, from)).await {
            Ok(Ok(v)) => match position(&v) {
                Some((epoch, head, entries)) => {
                    let first = self.take_position(b, topic, epoch, head, entries);
                    if let Some((e, seq)) = before.filter(|(_, seq)| *seq > 0) {
                        if e != epoch || (head > seq && first > seq + 1) {
                            b.stats.catch_up_gaps.fetch_add(1, Relaxed);
                        }
                    }
                }
                None => {
                    b.stats.malformed.fetch_add(1, Relaxed);
                }
            },
            _ => {
                b.stats.position_failures.fetch_add(1, Relaxed);
            }
        }
        let held = b.catching.lock().remove(topic).unwrap_or_default();
        for (ch, msg, via) in held {
            self.redis_in(b, &ch, &msg, via);
        }
        self.pubq.run_batch(&self.topics, &self.metrics);
    }

    async fn redis_position(&self, b: &Bridge, topic: &str, point: Option<(u32, u64)>, deadline: Instant) -> bool {
        // Live publications first: the history read after the subscription took effect
        // overlaps them, never leaves a gap before them.
        loop {
            let wake = b.confirmed_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if b.is_confirmed(topic) {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), wake).await.is_err() {
                return false;
            }
        }
        let Some(mut l) = b.link.lock().clone() else { return false };
        let from = point.map_or(-1, |(_, o)| o as i64);
        let r = tokio::time::timeout_at(deadline.into(), read_position(b, &mut l, topic, from)).await;
        let Ok(Ok(v)) = r else { return false };
        let Some((epoch, head, entries)) = position(&v) else {
            b.stats.malformed.fetch_add(1, Relaxed);
            return false;
        };
        self.take_position(b, topic, epoch, head, entries);
        // Into the ring now, so the join that follows replays them.
        self.pubq.run_batch(&self.topics, &self.metrics);
        true
    }
}

impl Engine {
    /// Where Redis says `topic` stands and its history after a point, into the topic (see
    /// `Topic::merge_stamped`); returns the first entry's offset (`head + 1` if none).
    fn take_position(&self, b: &Bridge, topic: &str, epoch: u32, head: u64, entries: Vec<&[u8]>) -> u64 {
        let mut msgs = Vec::with_capacity(entries.len());
        // Offsets this host delivered before Redis stamped them: kept, not delivered again.
        let mut early = std::collections::HashSet::new();
        for raw in entries {
            match wire::parse(raw) {
                Some(m) if m.epoch == epoch => {
                    if m.early && m.host == b.host {
                        early.insert(m.offset);
                    }
                    msgs.push(self.redis_msg(topic, &m));
                }
                _ => {
                    b.stats.malformed.fetch_add(1, Relaxed);
                }
            }
        }
        let first = msgs.first().map_or(head + 1, |m| m.offset);
        let t = self.topics.get_or_create(topic);
        t.merge_stamped(epoch, head, msgs, self.topics.ring_total(), &mut |msg| {
            let to = if early.contains(&msg.offset) { Target::Keep(t.clone()) } else { Target::Topic(t.clone()) };
            self.pubq.push(to, msg);
        });
        first
    }
}

/// Runs the position script: `topic`'s epoch (created if it has none), last offset and the
/// history after offset `from` (-1: none).
async fn read_position(b: &Bridge, l: &mut link::Link, topic: &str, from: i64) -> redis::RedisResult<Value> {
    scripts::query(l, |by_sha| {
        let mut c = scripts::POSITION.head(by_sha, 2);
        c.arg(wire::meta_key(&b.prefix, topic))
            .arg(wire::stream_key(&b.prefix, topic))
            .arg(link::new_epoch())
            .arg(from)
            .arg(b.ttl_ms);
        c
    })
    .await
}

/// `{epoch, head, [[id, [field, value, ...]], ...]}` from the position script.
fn position(v: &Value) -> Option<(u32, u64, Vec<&[u8]>)> {
    let Value::Array(parts) = v else { return None };
    let [e, o, r] = &parts[..] else { return None };
    let num = |v: &Value| -> Option<u64> {
        match v {
            Value::BulkString(s) => std::str::from_utf8(s).ok()?.parse().ok(),
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    };
    let epoch = u32::try_from(num(e)?).ok()?;
    let head = num(o)?;
    let mut out = vec![];
    if let Value::Array(entries) = r {
        for en in entries {
            let Value::Array(pair) = en else { return None };
            let [_, fields] = &pair[..] else { return None };
            let Value::Array(fields) = fields else { return None };
            if let [Value::BulkString(_), Value::BulkString(m)] = &fields[..] {
                out.push(m.as_slice());
            }
        }
    }
    Some((epoch, head, out))
}
