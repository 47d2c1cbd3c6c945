//! Subscriptions: what clients ask for in `subscription_update` (ACL, the application's hook,
//! the per-connection limit, queue groups, recovery points) and what the server decides itself,
//! answered with one ack per request.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::connection::Conn;
use crate::drain::{Event, Inbound};
use crate::engine::{Engine, MAX_TOPIC_LEN};
use crate::metrics::Metrics;
use crate::pubsub::patterns::is_pattern;
use crate::pubsub::topics::{AskHook, Recovery};

pub(crate) struct PendingSub {
    conn: u64,
    denied: Vec<(String, String)>,
    recover: HashMap<String, (u32, u64)>,
    group: Option<String>,
    /// The client asked for presence events of these topics.
    presence: bool,
}

pub const MAX_GROUP_LEN: usize = 64;

/// Request ids of pattern checks have this bit set (subscription requests never do).
const CHECK: u64 = 1 << 62;

/// Topics a client's pattern matched that the application's hook is deciding for it
/// (`gate.rs`): asked with a `sub_request` event naming the concrete topic, answered through
/// `complete_subscription` like a subscription request.
#[derive(Default)]
pub struct Checks {
    asked: Mutex<HashMap<u64, (u64, Arc<str>)>>,
    next: AtomicU64,
}

impl Checks {
    /// The fan-out's ask hook: registers the question and queues it for Python (never dropped).
    pub fn hook(self: &Arc<Self>, inbound: Arc<Inbound>, metrics: Arc<Metrics>) -> AskHook {
        let checks = self.clone();
        Box::new(move |c: &Arc<Conn>, topic: &str| {
            let req = CHECK | checks.next.fetch_add(1, Relaxed);
            checks.asked.lock().insert(req, (c.id, Arc::from(topic)));
            Metrics::inc(&metrics.pattern_checks);
            inbound.push_lifecycle(Event::SubRequest { conn: c.id, req, topics: vec![topic.to_string()] });
        })
    }
}

/// A requested topic and, if asked, where its subscriber stopped (epoch, offset).
type Wanted = (String, Option<(u32, u64)>);

impl Engine {
    /// Subscribes on the server's authority (no ACL); returns the topics joined. With a
    /// `group`, the connection joins that queue group of each topic.
    pub fn subscribe(&self, conn_id: u64, topics: &[String], group: Option<&str>) -> Vec<String> {
        let Some(c) = self.get(conn_id) else { return vec![] };
        topics.iter().filter(|t| self.join(&c, t, None, group, false).is_some()).cloned().collect()
    }

    /// Adds `c` to `topic` (or to one of its queue groups), replaying what it missed if it
    /// said where it stopped.
    /// `checked`: the client asked (a pattern's topics are then decided per topic, see gate.rs).
    fn join(&self, c: &Arc<Conn>, topic: &str, recover: Option<(u32, u64)>, group: Option<&str>, checked: bool) -> Option<Recovery> {
        let mut mine = c.topics.lock();
        // `unregister` forgets the connection before it empties its topics under this lock: a
        // connection already forgotten joins nothing (else it would stay in the topic).
        self.get(c.id)?;
        let (added, rec) = self.topics.subscribe(topic, c, recover, group, checked);
        if added {
            mine.insert(Arc::from(topic));
            Metrics::inc(&self.metrics.subscriptions);
            // Under the connection's topic lock, so an unregister racing with this sees both.
            self.presence_joined(c, topic);
        }
        if recover.is_some() {
            let m = &self.metrics;
            Metrics::inc(&m.recovery_requests);
            Metrics::inc(if rec.recovered { &m.recovery_recovered } else { &m.recovery_missed });
            Metrics::add(&m.recovered_messages, rec.count as u64);
        }
        Some(rec)
    }

    pub fn unsubscribe(&self, conn_id: u64, topics: &[String]) -> Vec<String> {
        match self.get(conn_id) {
            Some(c) => self.leave(&c, topics),
            None => vec![],
        }
    }

    /// Removes `c` from `topics`; returns those it was in.
    fn leave(&self, c: &Conn, topics: &[String]) -> Vec<String> {
        let mut out = vec![];
        let mut mine = c.topics.lock();
        for t in topics {
            if mine.remove(t.as_str()) && self.topics.unsubscribe(t, c.id) {
                Metrics::dec(&self.metrics.subscriptions);
                self.presence_left(c, t);
                out.push(t.clone());
            }
        }
        if out.iter().any(|t| is_pattern(t)) && !mine.iter().any(|t| is_pattern(t)) {
            // Its last pattern gone, the connection's verdicts go too (a new one asks again).
            c.gate.forget();
        }
        out
    }

    pub fn topics_of(&self, conn_id: u64) -> Vec<String> {
        self.get(conn_id).map(|c| c.topics.lock().iter().map(|t| t.to_string()).collect()).unwrap_or_default()
    }

    /// Answers a `sub_request` after the Python hook decided.
    pub fn complete_subscription(&self, req: u64, allowed: &[String], denied: Vec<(String, String)>) -> bool {
        if req & CHECK != 0 {
            return self.complete_check(req, allowed);
        }
        let Some(mut p) = self.pending.lock().remove(&req) else { return false };
        let Some(c) = self.get(p.conn) else { return false };
        let mut failed = std::mem::take(&mut p.denied);
        Metrics::add(&self.metrics.subscriptions_denied, denied.len() as u64);
        failed.extend(denied);
        let wanted: Vec<Wanted> = allowed.iter().map(|t| (t.clone(), p.recover.remove(t))).collect();
        self.join_and_ack(&c, wanted, p.group, failed, p.presence);
        true
    }

    /// Joins the topics and acks. With Redis stamping publications, each topic's position
    /// (and what the subscriber missed) is read from Redis first, on the engine's runtime.
    fn join_and_ack(&self, c: &Arc<Conn>, wanted: Vec<Wanted>, group: Option<String>, failed: Vec<(String, String)>, presence: bool) {
        let via_redis = self.bridge.clone().filter(|b| b.stamps && group.is_none());
        if let (Some(b), Some((me, rt))) = (via_redis, self.this.get()) {
            if let Some(engine) = me.upgrade() {
                let c = c.clone();
                rt.spawn(async move {
                    let prep = wanted.iter().map(|(t, r)| engine.redis_prepare(&b, t, *r));
                    futures_util::future::join_all(prep).await;
                    engine.join_now(&c, &wanted, None, failed, presence);
                    for (t, _) in &wanted {
                        engine.redis_unpin(&b, t);
                    }
                });
                return;
            }
        }
        self.join_now(c, &wanted, group.as_deref(), failed, presence);
    }

    fn join_now(&self, c: &Arc<Conn>, wanted: &[Wanted], group: Option<&str>, mut failed: Vec<(String, String)>, presence: bool) {
        let ok = self.join_within_limit(c, wanted, group, &mut failed);
        let joined: Vec<String> = ok.iter().map(|(t, _, _)| t.clone()).collect();
        self.ack(c, "subscribe", ok, failed);
        if presence {
            self.presence_watch(c, &joined);
        }
    }

    /// The application decided a pattern-matched topic for a connection: what was held for it
    /// goes out (or is dropped), and the connection's stream goes on.
    fn complete_check(&self, req: u64, allowed: &[String]) -> bool {
        let Some((conn, topic)) = self.checks.asked.lock().remove(&req) else { return false };
        let ok = allowed.iter().any(|t| **t == *topic);
        if !ok {
            Metrics::inc(&self.metrics.pattern_denied);
        }
        let Some(c) = self.get(conn) else { return false };
        // The gate's lock orders this with the fan-out: a delivery that finds the connection
        // held waits behind what is held, one that finds it released comes after the release.
        let r = c.gate.decided(&c, &topic, ok);
        Metrics::add(&self.metrics.deliveries, r.queued as u64);
        r.count(&self.metrics);
        true
    }

    fn join_within_limit(
        &self,
        c: &Arc<Conn>,
        topics: &[Wanted],
        group: Option<&str>,
        failed: &mut Vec<(String, String)>,
    ) -> Vec<(String, Option<Recovery>, bool)> {
        let mut ok = vec![];
        for (t, recover) in topics {
            let full = {
                let mine = c.topics.lock();
                mine.len() >= self.cfg.max_topics_per_connection && !mine.contains(t.as_str())
            };
            if full {
                failed.push((t.clone(), "topic limit reached".into()));
                continue;
            }
            if group.is_some() && is_pattern(t) {
                failed.push((t.clone(), "queue groups take exact topics, not patterns".into()));
                continue;
            }
            let rec = self.join(c, t, *recover, group, true);
            ok.push((t.clone(), rec, recover.is_some()));
        }
        ok
    }

    fn ack(&self, c: &Conn, action: &str, ok: Vec<(String, Option<Recovery>, bool)>, failed: Vec<(String, String)>) {
        let failed_topics: Vec<&String> = failed.iter().map(|(t, _)| t).collect();
        let errors: Map<String, Value> = failed.iter().map(|(t, r)| (t.clone(), Value::from(r.as_str()))).collect();
        let mut p = json!({
            "action": action,
            "success": failed.is_empty(),
            "success_topics": ok.iter().map(|(t, _, _)| t).collect::<Vec<_>>(),
            "failed_topics": failed_topics,
            "errors": errors,
            "topics": c.topics.lock().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        });
        if self.cfg.recovery && action == "subscribe" {
            // Where each topic stands, so the client can ask for what it misses next time.
            let rec: Map<String, Value> = ok
                .iter()
                .filter_map(|(t, r, asked)| {
                    let r = (*r).filter(|_| !is_pattern(t))?;
                    let mut v = json!({"epoch": format!("{:08x}", r.epoch), "offset": r.offset});
                    if *asked {
                        v["recovered"] = Value::from(r.recovered);
                        v["count"] = Value::from(r.count);
                    }
                    Some((t.clone(), v))
                })
                .collect();
            p["recovery"] = Value::Object(rec);
        }
        self.send_system(c, "subscription_update", p);
    }

    /// Refuses a whole `subscription_update` with one error naming the limit it passed.
    pub(crate) fn refuse_topics(&self, c: &Conn, count: usize, limit: &str, max: usize) {
        Metrics::inc(&self.metrics.subscriptions_refused_whole);
        let message = match limit {
            "max_topics_per_message" => format!("subscription_update names {count} topics; at most {max} per message"),
            _ => format!("subscription_update would hold {count} topics; at most {max} per connection"),
        };
        self.send_system(
            c,
            "error",
            json!({"code": "TOO_MANY_TOPICS", "message": message, "limit": limit, "max": max, "count": count}),
        );
    }

    pub(crate) fn client_subscription(&self, c: &Arc<Conn>, p: &Value) {
        let action = p.get("action").and_then(|a| a.as_str()).unwrap_or("subscribe");
        let Some(list) = p.get("topics").and_then(|t| t.as_array()) else {
            self.send_error(c, "INVALID_MESSAGE", "subscription_update needs a 'topics' list");
            return;
        };
        // The message was counted before it was parsed (`classify`); this holds for any path.
        let max = self.cfg.max_topics_per_message;
        if list.len() > max {
            return self.refuse_topics(c, list.len(), "max_topics_per_message", max);
        }
        let mut valid = vec![];
        let mut failed: Vec<(String, String)> = vec![];
        for t in list {
            match t.as_str() {
                Some(s) if !s.is_empty() && s.len() <= MAX_TOPIC_LEN => valid.push(s.to_string()),
                Some(s) if s.len() > MAX_TOPIC_LEN => failed.push((
                    // Named by its first bytes only: the ack stays bounded whatever was sent.
                    format!("{}...", &s[..floor_boundary(s, MAX_TOPIC_LEN)]),
                    "invalid topic".into(),
                )),
                _ => failed.push((t.as_str().unwrap_or("").to_string(), "invalid topic".into())),
            }
        }
        match action {
            "unsubscribe" => {
                let left = self.leave(c, &valid);
                drop(left);
                self.ack(c, "unsubscribe", valid.into_iter().map(|t| (t, None, false)).collect(), failed);
            }
            "subscribe" => {
                // The whole request must fit beside what the connection holds.
                let holding = {
                    let mine = c.topics.lock();
                    let fresh: HashSet<&str> = valid.iter().map(String::as_str).filter(|t| !mine.contains(*t)).collect();
                    mine.len() + fresh.len()
                };
                let max = self.cfg.max_topics_per_connection;
                if holding > max {
                    return self.refuse_topics(c, holding, "max_topics_per_connection", max);
                }
                let group = match p.get("group") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(g)) if !g.is_empty() && g.len() <= MAX_GROUP_LEN => Some(g.clone()),
                    Some(_) => {
                        return self.send_error(c, "INVALID_MESSAGE", "group must be a string of 1 to 64 bytes");
                    }
                };
                let recover = self.recovery_points(p);
                let mut allowed = vec![];
                for t in valid {
                    let ok = self.config_acl.permits(&t) && c.acl.as_ref().is_none_or(|a| a.permits(&t));
                    if ok {
                        allowed.push(t);
                    } else {
                        Metrics::inc(&self.metrics.subscriptions_denied);
                        failed.push((t, "not allowed".into()));
                    }
                }
                let presence = p.get("presence").and_then(Value::as_bool).unwrap_or(false);
                if self.cfg.subscribe_hook && !allowed.is_empty() {
                    let req = self.next_req.fetch_add(1, Relaxed);
                    let recover = allowed.iter().filter_map(|t| recover.get(t).map(|r| (t.clone(), *r))).collect();
                    self.pending.lock().insert(req, PendingSub { conn: c.id, denied: failed, recover, group, presence });
                    self.inbound.push_lifecycle(Event::SubRequest { conn: c.id, req, topics: allowed });
                    return;
                }
                let wanted: Vec<Wanted> = allowed.into_iter().map(|t| {
                    let r = recover.get(&t).copied();
                    (t, r)
                }).collect();
                self.join_and_ack(c, wanted, group, failed, presence);
            }
            other => self.send_error(c, "INVALID_MESSAGE", &format!("unknown subscription action {other:?}")),
        }
    }

    /// `recover: true` with `recovery: {topic: {epoch, offset}}`: where the client stopped, per topic.
    fn recovery_points(&self, p: &Value) -> HashMap<String, (u32, u64)> {
        let mut out = HashMap::new();
        if !self.cfg.recovery || !p.get("recover").and_then(|v| v.as_bool()).unwrap_or(false) {
            return out;
        }
        let Some(map) = p.get("recovery").and_then(|r| r.as_object()) else { return out };
        for (topic, v) in map {
            let epoch = v.get("epoch").and_then(|e| match e {
                Value::String(s) => u32::from_str_radix(s, 16).ok(),
                Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                _ => None,
            });
            let offset = v.get("offset").and_then(|o| o.as_u64());
            if let (Some(e), Some(o)) = (epoch, offset) {
                out.insert(topic.clone(), (e, o));
            }
        }
        out
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
