//! The engine's shared state and the operations Python (and the connections) perform on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Map, Value};

use crate::auth::acl::TopicAcl;
use crate::auth::jwt::JwtVerifier;
use crate::config::Config;
use crate::connection::Conn;
use crate::drain::{Event, Inbound};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::protocol::envelope::{self, Envelope};
use crate::protocol::frame::{self, frame_in_place, HEADER_ROOM};
use crate::protocol::time::now_ms;
use crate::pubsub::fanout::{PubQueue, Target};
use crate::pubsub::topics::{Topic, Topics};

pub const MAX_TOPIC_LEN: usize = 256;
/// Bytes of publications and sends waiting for the engine thread before the publisher helps.
const PUBLISH_QUEUE_BYTES: usize = 8 << 20;

struct PendingSub {
    conn: u64,
    denied: Vec<(String, String)>,
}

pub struct Engine {
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub inbound: Inbound,
    pub topics: Topics,
    /// Publications and sends from the application, on their way to the engine thread.
    pub pubq: PubQueue,
    pub verifier: Option<JwtVerifier>,
    conns: RwLock<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    config_acl: TopicAcl,
    next_req: AtomicU64,
    pending: Mutex<HashMap<u64, PendingSub>>,
    /// Connections counted against `max_connections`: in the handshake or registered.
    slots: AtomicUsize,
    /// The cluster mesh, when this engine is one worker of several.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
}

impl Engine {
    pub fn new(cfg: Config) -> Result<Self, String> {
        cfg.validate()?;
        let verifier = match &cfg.jwt {
            Some(j) => Some(JwtVerifier::new(j)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let inbound = Inbound::new(cfg.inbound_queue, cfg.inbound_queue_bytes, metrics.clone())
            .map_err(|e| format!("eventfd: {e}"))?;
        let config_acl = TopicAcl { allow: cfg.topics_allow.clone(), deny: cfg.topics_deny.clone() };
        let topics = Topics::default();
        let mesh = crate::mesh::attach(&cfg, &topics)?;
        Ok(Self {
            cfg: Arc::new(cfg),
            metrics,
            inbound,
            topics,
            pubq: PubQueue::new(PUBLISH_QUEUE_BYTES),
            verifier,
            conns: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            config_acl,
            next_req: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            slots: AtomicUsize::new(0),
            mesh,
        })
    }

    pub fn opcode(&self) -> u8 {
        if self.cfg.text_frames {
            frame::OP_TEXT
        } else {
            frame::OP_BINARY
        }
    }

    /// Takes a connection slot at accept time, so handshakes in progress count too.
    pub fn try_reserve_slot(&self) -> bool {
        if self.slots.fetch_add(1, Relaxed) >= self.cfg.max_connections {
            self.slots.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    pub fn release_slot(&self) {
        self.slots.fetch_sub(1, Relaxed);
    }

    /// Connections in the handshake or registered.
    pub fn slot_count(&self) -> usize {
        self.slots.load(Relaxed)
    }

    pub fn conn_count(&self) -> usize {
        self.conns.read().len()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.conns.read().get(&id).cloned()
    }

    /// Registers an authenticated connection and tells Python (the `connect` event).
    pub fn register(&self, user_id: Option<String>, claims: Option<Map<String, Value>>, addr: String) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let acl = claims
            .as_ref()
            .and_then(|c| self.cfg.jwt.as_ref().and_then(|j| c.get(&j.topics_claim)))
            .and_then(TopicAcl::from_claim);
        let now = now_ms();
        let conn = Arc::new(Conn {
            id,
            user_id: user_id.clone(),
            acl,
            out: Arc::new(Outbound::new(
                self.cfg.max_outbound_bytes,
                self.cfg.slow_consumer,
                self.cfg.slow_consumer_close_code,
            )),
            topics: Mutex::new(Default::default()),
            seq: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(now),
            last_ping_ms: AtomicU64::new(now),
        });
        self.conns.write().insert(id, conn.clone());
        Metrics::inc(&self.metrics.connections_active);
        let claims = claims.map(|c| {
            let wanted = self.cfg.jwt.as_ref().map(|j| &j.claims).filter(|w| !w.is_empty());
            let c: Map<String, Value> = match wanted {
                Some(w) => c.into_iter().filter(|(k, _)| k == "sub" || w.contains(k)).collect(),
                None => c,
            };
            Bytes::from(serde_json::to_vec(&c).unwrap_or_default())
        });
        self.inbound.push_lifecycle(Event::Connect { conn: id, user: user_id, claims, addr });
        conn
    }

    /// Forgets a finished connection and tells Python (the `disconnect` event), after its data.
    pub fn unregister(&self, conn: &Arc<Conn>, code: u16) {
        if self.conns.write().remove(&conn.id).is_none() {
            return;
        }
        let topics: Vec<Arc<str>> = conn.topics.lock().drain().collect();
        for t in topics {
            if self.topics.unsubscribe(&t, conn.id) {
                Metrics::dec(&self.metrics.subscriptions);
            }
        }
        Metrics::dec(&self.metrics.connections_active);
        self.inbound.push_lifecycle(Event::Disconnect { conn: conn.id, code });
    }

    /// An envelope for one connection, with its own `seq`.
    pub fn envelope_frame(&self, conn: &Conn, category: &str, msg_type: &str, payload: &[u8], opcode: u8) -> Bytes {
        let seq = conn.next_seq();
        let v = Envelope { category, msg_type, seq, topic: None, payload }.encode(HEADER_ROOM);
        frame_in_place(opcode, v)
    }

    fn send_system(&self, conn: &Conn, msg_type: &str, payload: Value) {
        self.send_system_as(conn, msg_type, payload, self.opcode());
    }

    fn send_system_as(&self, conn: &Conn, msg_type: &str, payload: Value, opcode: u8) {
        let p = serde_json::to_vec(&payload).unwrap_or_default();
        let f = self.envelope_frame(conn, envelope::CAT_SYSTEM, msg_type, &p, opcode);
        self.push(conn, f);
    }

    fn push(&self, conn: &Conn, f: Bytes) -> bool {
        conn.out.push(f).count(&self.metrics)
    }

    pub fn send_error(&self, conn: &Conn, code: &str, message: &str) {
        self.send_system(conn, "error", json!({"code": code, "message": message}));
    }

    /// `server_ready`: the first message after a successful upgrade.
    pub fn send_ready(&self, conn: &Conn) {
        let p = json!({
            "message": "connection established",
            "details": {
                "version": self.cfg.server_version,
                "protocol_version": 2,
                "features": features(),
                "connection_id": conn.id.to_string(),
                "server_time": crate::protocol::time::rfc3339(now_ms()),
                "user_id": conn.user_id,
            }
        });
        self.send_system(conn, "server_ready", p);
    }

    // ---- operations from Python -------------------------------------------------------------

    /// Queues a frame for the engine thread, running a batch here if the queue is over its bound.
    fn enqueue(&self, target: Target, frame: Bytes) {
        if self.pubq.push(target, frame) {
            self.pubq.run_batch(&self.metrics);
        }
    }

    /// Sends one envelope to one connection; false if it is gone or closing.
    pub fn send(&self, conn_id: u64, category: &str, msg_type: &str, payload: &[u8]) -> bool {
        let Some(c) = self.get(conn_id) else { return false };
        if c.out.is_closing() {
            return false;
        }
        let f = self.envelope_frame(&c, category, msg_type, payload, self.opcode());
        self.enqueue(Target::Conn(c), f);
        true
    }

    /// Sends bytes as they are, in one text or binary message.
    pub fn send_raw(&self, conn_id: u64, data: &[u8], text: bool) -> bool {
        let Some(c) = self.get(conn_id) else { return false };
        if c.out.is_closing() {
            return false;
        }
        let f = frame::build(if text { frame::OP_TEXT } else { frame::OP_BINARY }, data);
        self.enqueue(Target::Conn(c), f);
        true
    }

    /// Publishes to `topic` here and, in a cluster, to the workers with subscribers for it;
    /// returns how many subscribers it has in this process.
    pub fn publish(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        let n = self.publish_local(topic, category, msg_type, payload);
        if let Some(m) = &self.mesh {
            m.forward(topic, category, msg_type, payload);
        }
        n
    }

    /// Publishes to this process's subscribers only (publications arriving from the mesh).
    pub fn publish_local(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        match self.topics.get(topic) {
            Some(t) => self.publish_to(&t, topic, category, msg_type, payload),
            None => {
                Metrics::inc(&self.metrics.publishes);
                0
            }
        }
    }

    /// Publishes to a topic already looked up (the caller may release the GIL around this).
    pub fn publish_to(&self, t: &Arc<Topic>, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        let op = self.opcode();
        let mut help = false;
        let n = t.next(
            |seq| {
                let v = Envelope { category, msg_type, seq, topic: Some(topic), payload }.encode(HEADER_ROOM);
                frame_in_place(op, v)
            },
            |frame| help = self.pubq.push(Target::Topic(t.clone()), frame),
        );
        Metrics::inc(&self.metrics.publishes);
        if help {
            self.pubq.run_batch(&self.metrics);
        }
        n
    }

    /// Subscribes on the server's authority (no ACL); returns the topics newly joined.
    pub fn subscribe(&self, conn_id: u64, topics: &[String]) -> Vec<String> {
        let Some(c) = self.get(conn_id) else { return vec![] };
        topics.iter().filter(|t| self.join(&c, t)).cloned().collect()
    }

    fn join(&self, c: &Arc<Conn>, topic: &str) -> bool {
        let mut mine = c.topics.lock();
        if mine.contains(topic) {
            return true;
        }
        if self.topics.subscribe(topic, c) {
            mine.insert(Arc::from(topic));
            Metrics::inc(&self.metrics.subscriptions);
        }
        true
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
                out.push(t.clone());
            }
        }
        out
    }

    pub fn disconnect(&self, conn_id: u64, code: u16, reason: &str) -> bool {
        match self.get(conn_id) {
            Some(c) => c.out.close(code, reason),
            None => false,
        }
    }

    pub fn close_all(&self, code: u16, reason: &str) {
        let all: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
        for c in all {
            c.out.close(code, reason);
        }
    }

    pub fn topics_of(&self, conn_id: u64) -> Vec<String> {
        self.get(conn_id).map(|c| c.topics.lock().iter().map(|t| t.to_string()).collect()).unwrap_or_default()
    }

    /// Answers a `sub_request` after the Python hook decided.
    pub fn complete_subscription(&self, req: u64, allowed: &[String], denied: Vec<(String, String)>) -> bool {
        let Some(p) = self.pending.lock().remove(&req) else { return false };
        let Some(c) = self.get(p.conn) else { return false };
        let mut failed = p.denied;
        Metrics::add(&self.metrics.subscriptions_denied, denied.len() as u64);
        failed.extend(denied);
        let ok = self.join_within_limit(&c, allowed, &mut failed);
        self.ack(&c, "subscribe", ok, failed);
        true
    }

    fn join_within_limit(&self, c: &Arc<Conn>, topics: &[String], failed: &mut Vec<(String, String)>) -> Vec<String> {
        let mut ok = vec![];
        for t in topics {
            let full = {
                let mine = c.topics.lock();
                mine.len() >= self.cfg.max_topics_per_connection && !mine.contains(t.as_str())
            };
            if full {
                failed.push((t.clone(), "topic limit reached".into()));
                continue;
            }
            self.join(c, t);
            ok.push(t.clone());
        }
        ok
    }

    fn ack(&self, c: &Conn, action: &str, ok: Vec<String>, failed: Vec<(String, String)>) {
        let failed_topics: Vec<&String> = failed.iter().map(|(t, _)| t).collect();
        let errors: Map<String, Value> = failed.iter().map(|(t, r)| (t.clone(), Value::from(r.as_str()))).collect();
        self.send_system(
            c,
            "subscription_update",
            json!({
                "action": action,
                "success": failed.is_empty(),
                "success_topics": ok,
                "failed_topics": failed_topics,
                "errors": errors,
                "topics": c.topics.lock().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            }),
        );
    }

    // ---- system messages from clients ----------------------------------------------------------

    pub fn on_system(&self, c: &Arc<Conn>, msg_type: &str, p: Value) {
        match msg_type {
            "subscription_update" => self.client_subscription(c, &p),
            "ping" => {
                let now = now_ms();
                let client_ts = p.get("timestamp").cloned().unwrap_or(Value::Null);
                let latency = client_ts.as_u64().map(|t| now.saturating_sub(t));
                // NOTE: keepalive goes in text frames: the v2 clients count only text frames as
                // liveness, and look for `"t":"PONG"` near the start of the frame.
                self.send_system_as(
                    c,
                    "PONG",
                    json!({"client_timestamp": client_ts, "server_timestamp": now, "latency": latency}),
                    frame::OP_TEXT,
                );
            }
            "client_hello" => {
                let cfg = &self.cfg;
                self.send_system(
                    c,
                    "server_hello",
                    json!({
                        "server_version": cfg.server_version,
                        "protocol_version": 2,
                        "features": features(),
                        "limits": {
                            "max_message_size": cfg.max_message_bytes,
                        },
                        "ping_interval": cfg.ping_interval_ms,
                        "connection_id": c.id.to_string(),
                        "server_time": crate::protocol::time::rfc3339(now_ms()),
                    }),
                );
            }
            _ => {} // PONG replies: the read itself refreshed the idle timer.
        }
    }

    fn client_subscription(&self, c: &Arc<Conn>, p: &Value) {
        let action = p.get("action").and_then(|a| a.as_str()).unwrap_or("subscribe");
        let Some(list) = p.get("topics").and_then(|t| t.as_array()) else {
            self.send_error(c, "INVALID_MESSAGE", "subscription_update needs a 'topics' list");
            return;
        };
        let mut valid = vec![];
        let mut failed: Vec<(String, String)> = vec![];
        for t in list {
            match t.as_str() {
                Some(s) if !s.is_empty() && s.len() <= MAX_TOPIC_LEN => valid.push(s.to_string()),
                _ => failed.push((t.as_str().unwrap_or("").to_string(), "invalid topic".into())),
            }
        }
        match action {
            "unsubscribe" => {
                self.leave(c, &valid);
                self.ack(c, "unsubscribe", valid, failed);
            }
            "subscribe" => {
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
                if self.cfg.subscribe_hook && !allowed.is_empty() {
                    let req = self.next_req.fetch_add(1, Relaxed);
                    self.pending.lock().insert(req, PendingSub { conn: c.id, denied: failed });
                    self.inbound.push_lifecycle(Event::SubRequest { conn: c.id, req, topics: allowed });
                    return;
                }
                let ok = self.join_within_limit(c, &allowed, &mut failed);
                self.ack(c, "subscribe", ok, failed);
            }
            other => self.send_error(c, "INVALID_MESSAGE", &format!("unknown subscription action {other:?}")),
        }
    }

    // ---- keepalive -------------------------------------------------------------------------------

    /// Pings quiet connections and closes those silent past the idle timeout.
    pub fn keepalive_sweep(&self) {
        let now = now_ms();
        let all: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
        let ping_frame = frame::build(frame::OP_PING, b"");
        for c in all {
            let quiet = now.saturating_sub(c.last_rx_ms.load(Relaxed));
            if self.cfg.idle_timeout_ms > 0 && quiet >= self.cfg.idle_timeout_ms {
                if c.out.close(1000, "idle timeout") {
                    Metrics::inc(&self.metrics.idle_closes);
                }
                continue;
            }
            let since_ping = now.saturating_sub(c.last_ping_ms.load(Relaxed));
            if self.cfg.ping_interval_ms > 0 && quiet >= self.cfg.ping_interval_ms && since_ping >= self.cfg.ping_interval_ms {
                c.last_ping_ms.store(now, Relaxed);
                c.out.push_control(ping_frame.clone());
                if self.cfg.envelopes {
                    self.send_system_as(&c, "ping", json!({"server_time": now}), frame::OP_TEXT);
                }
            }
        }
    }
}

fn features() -> Value {
    json!({
        "compression": false,
        "encryption": false,
        "msgpack": false,
        "batching": false,
        "subscriptions": true,
        "recovery": false,
        "presence": false,
    })
}
