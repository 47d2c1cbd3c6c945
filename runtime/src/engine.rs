//! The engine's shared state and the operations Python (and the connections) perform on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Map, Value};

use crate::auth::acl::TopicAcl;
use crate::auth::jwt::JwtVerifier;
use crate::config::{Config, EncryptionPolicy};
use crate::connection::Conn;
use crate::crypto::session;
use crate::crypto::sign::Signer;
use crate::deliver::{self, deliver_one};
use crate::drain::{Event, Inbound};
use crate::metrics::Metrics;
use crate::outbound::{Outbound, PushMany};
use crate::protocol::envelope::{self, Envelope};
use crate::protocol::frame::{self, HEADER_ROOM};
use crate::protocol::outgoing::{Mode, OutMsg};
use crate::protocol::time::{now_ms, rfc3339, write_rfc3339, write_u64};
use crate::pubsub::fanout::{PubQueue, Target};
use crate::pubsub::topics::{RecoveryLimits, Topic, Topics};
use crate::subscriptions::PendingSub;

pub const MAX_TOPIC_LEN: usize = 256;
/// Bytes of publications and sends waiting for the engine thread before the publisher helps.
const PUBLISH_QUEUE_BYTES: usize = 8 << 20;

/// After this many connections went away, the next sweep gives the allocator's free memory back
/// to the system (see `background::trim_heap`).
const TRIM_AFTER_GONE: usize = 256;

pub struct Engine {
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub inbound: Arc<Inbound>,
    pub topics: Topics,
    /// Publications and sends from the application, on their way to the engine thread.
    pub pubq: PubQueue,
    pub verifier: Option<JwtVerifier>,
    pub signer: Option<Signer>,
    /// TLS on the client port, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    conns: RwLock<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    pub(crate) config_acl: TopicAcl,
    pub(crate) next_req: AtomicU64,
    pub(crate) pending: Mutex<HashMap<u64, PendingSub>>,
    /// Pattern-matched topics the application is asked about: request id to (connection, topic).
    pub(crate) checks: Arc<crate::subscriptions::Checks>,
    /// Connections counted against `max_connections`: in the handshake or registered.
    slots: AtomicUsize,
    /// Connections gone since the heap was last trimmed (`keepalive_sweep`).
    gone_since_trim: AtomicUsize,
    // ---- presence, dedup, per-user limits (pubsub/presence*.rs, pubsub/dedup.rs, limits/) ----
    pub presence: crate::pubsub::presence::Presence<Arc<Conn>>,
    pub dedup_publish: crate::pubsub::dedup::Dedup,
    pub dedup_inbound: crate::pubsub::dedup::Dedup,
    pub user_slots: crate::limits::users::UserSlots,
    /// The cluster mesh, when this engine is one worker of several.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// The Redis bridge, when this host is one of several.
    pub bridge: Option<Arc<crate::bridge::Bridge>>,
    /// This engine, for tasks it starts itself (set when its thread starts).
    pub(crate) this: std::sync::OnceLock<(std::sync::Weak<Engine>, tokio::runtime::Handle)>,
    /// `server_ready`'s payload up to the connection id: the same for every connection.
    ready_head: std::sync::OnceLock<Vec<u8>>,
}

impl Engine {
    pub fn new(cfg: Config) -> Result<Self, String> {
        cfg.validate()?;
        let verifier = match &cfg.jwt {
            Some(j) => Some(JwtVerifier::new(j)?),
            None => None,
        };
        let signer = cfg.signing_key.as_deref().map(|k| Signer::new(k.as_bytes())).transpose()?;
        let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
            (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k)?),
            _ => None,
        };
        let metrics = Arc::new(Metrics::default());
        let inbound = Arc::new(
            Inbound::new(cfg.inbound_queue, cfg.inbound_queue_bytes, metrics.clone()).map_err(|e| format!("eventfd: {e}"))?,
        );
        let recovery = cfg.recovery.then_some(RecoveryLimits {
            max_messages: cfg.recovery_buffer,
            ttl_ms: cfg.recovery_ttl_ms,
            max_bytes: cfg.recovery_max_bytes,
        });
        let config_acl = TopicAcl { allow: cfg.topics_allow.clone(), deny: cfg.topics_deny.clone() };
        let topics = Topics::new(recovery, config_acl.clone());
        let checks = Arc::new(crate::subscriptions::Checks::default());
        if cfg.subscribe_hook {
            topics.set_ask_hook(checks.hook(inbound.clone(), metrics.clone()));
        }
        let presence = crate::pubsub::presence::Presence::new(cfg.presence_max_data_bytes);
        let dedup_publish = crate::pubsub::dedup::Dedup::new(cfg.dedup_window, cfg.dedup_window_ms);
        let dedup_inbound = crate::pubsub::dedup::Dedup::new(cfg.dedup_window, cfg.dedup_window_ms);
        let bridge = crate::bridge::attach(&cfg, &topics)?;
        // With Redis stamping every publication, the mesh carries no recovery of its own.
        let mesh = if bridge.as_ref().is_some_and(|b| b.stamps) {
            crate::mesh::attach(&Config { recovery: false, ..cfg.clone() }, &topics)?
        } else {
            crate::mesh::attach(&cfg, &topics)?
        };
        let pubq = PubQueue::new(PUBLISH_QUEUE_BYTES);
        if let Some(m) = mesh.as_ref().filter(|m| m.seq.is_some()) {
            let m = m.clone();
            pubq.set_released(Box::new(move || m.released()));
        }
        Ok(Self {
            presence,
            dedup_publish,
            dedup_inbound,
            user_slots: Default::default(),
            cfg: Arc::new(cfg),
            metrics,
            inbound,
            topics,
            pubq,
            verifier,
            signer,
            tls,
            conns: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            config_acl,
            next_req: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            checks,
            slots: AtomicUsize::new(0),
            gone_since_trim: AtomicUsize::new(0),
            mesh,
            bridge,
            this: std::sync::OnceLock::new(),
            ready_head: std::sync::OnceLock::new(),
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
    pub fn register(&self, user_id: Option<String>, claims: Option<Map<String, Value>>, addr: String, enc: crate::handshake::Encodings) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let acl = claims
            .as_ref()
            .and_then(|c| self.cfg.jwt.as_ref().and_then(|j| c.get(&j.topics_claim)))
            .and_then(TopicAcl::from_claim);
        let now = now_ms();
        let mode = match (self.cfg.encryption, enc.msgpack) {
            (EncryptionPolicy::Required, _) => Mode::AwaitKey,
            (_, true) => Mode::Msgpack,
            _ => Mode::Json,
        };
        let conn = Arc::new(Conn {
            id,
            user_id: user_id.clone(),
            acl,
            out: Arc::new(Outbound::new(
                self.cfg.max_outbound_bytes,
                self.cfg.slow_consumer,
                self.cfg.slow_consumer_close_code,
                mode,
            )),
            topics: Mutex::new(Default::default()),
            seq: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(now),
            last_ping_ms: AtomicU64::new(now),
            crypto: Mutex::new(Default::default()),
            rotation: AtomicBool::new(false),
            batch_keys: AtomicBool::new(false),
            zip: AtomicBool::new(enc.compression),
            compact: AtomicBool::new(enc.compact),
            created_ms: now,
            token_expires_ms: AtomicU64::new(claims.as_ref().map_or(0, |c| self.token_deadline(c))),
            rate: crate::limits::rate::for_connection(&self.cfg, now),
            deflate: enc.deflate,
            gate: Default::default(),
        });
        self.conns.write().insert(id, conn.clone());
        Metrics::inc(&self.metrics.connections_active);
        if conn.deflate.is_some() {
            Metrics::inc(&self.metrics.deflate_connections);
        }
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
    /// Takes `conn` out of every topic (and pattern). A connection that is closing does this
    /// at once, before its close handshake's linger, so publications stop counting it;
    /// `unregister` does it again for whatever joined meanwhile.
    pub fn leave_all(&self, conn: &Arc<Conn>) {
        let topics: Vec<Arc<str>> = conn.topics.lock().drain().collect();
        for t in topics {
            if self.topics.unsubscribe(&t, conn.id) {
                Metrics::dec(&self.metrics.subscriptions);
            }
            self.presence_left(conn, &t);
        }
    }

    pub fn unregister(&self, conn: &Arc<Conn>, code: u16) {
        if self.conns.write().remove(&conn.id).is_none() {
            return;
        }
        self.leave_all(conn);
        self.user_gone(conn);
        self.gone_since_trim.fetch_add(1, Relaxed);
        Metrics::dec(&self.metrics.connections_active);
        self.inbound.push_lifecycle(Event::Disconnect { conn: conn.id, code });
    }

    /// An envelope for one connection, with its own `seq`, in every encoding it may need.
    pub fn envelope_msg(&self, conn: &Conn, category: &str, msg_type: &str, payload: &[u8], opcode: u8) -> Arc<OutMsg> {
        self.envelope_with_cid(conn, category, msg_type, payload, opcode, None)
    }

    fn envelope_with_cid(
        &self,
        conn: &Conn,
        category: &str,
        msg_type: &str,
        payload: &[u8],
        opcode: u8,
        cid: Option<&str>,
    ) -> Arc<OutMsg> {
        let seq = conn.next_seq();
        let mut v = Envelope { category, msg_type, seq, topic: None, stamp: None, cid, payload }.encode(HEADER_ROOM);
        if let Some(s) = &self.signer {
            s.sign(&mut v, HEADER_ROOM);
        }
        Arc::new(OutMsg::new(v, opcode, self.cfg.zip(), 0, 0))
    }

    pub(crate) fn send_system(&self, conn: &Conn, msg_type: &str, payload: Value) {
        self.send_system_as(conn, msg_type, payload, self.opcode());
    }

    /// A system message: in the connection's encoding, or in plaintext while it waits for its
    /// key exchange (errors, acks and `server_hello` must reach a client that has no key yet).
    fn send_system_as(&self, conn: &Conn, msg_type: &str, payload: Value, opcode: u8) {
        let p = serde_json::to_vec(&payload).unwrap_or_default();
        self.send_system_json(conn, msg_type, &p, opcode);
    }

    /// `send_system_as` with the payload already serialized.
    fn send_system_json(&self, conn: &Conn, msg_type: &str, p: &[u8], opcode: u8) {
        let msg = self.envelope_msg(conn, envelope::CAT_SYSTEM, msg_type, p, opcode);
        if conn.out.mode() == Mode::AwaitKey {
            // Refused if the exchange completed meanwhile: then it goes sealed like the rest.
            if let Ok(p) = conn.out.push(msg.frame_for(Mode::Json), Some(Mode::AwaitKey)) {
                p.count(&self.metrics);
                return;
            }
        }
        self.count(deliver_one(conn, msg));
    }

    fn count(&self, r: PushMany) -> bool {
        r.count(&self.metrics);
        r.queued > 0
    }

    pub fn send_error(&self, conn: &Conn, code: &str, message: &str) {
        self.send_system(conn, "error", json!({"code": code, "message": message}));
    }

    /// `server_ready`: the first message after a successful upgrade.
    /// Written out rather than built as a `Value`: it runs once per connection, and all but
    /// four fields are the same for every connection.
    pub fn send_ready(&self, conn: &Conn) {
        let head = self.ready_head.get_or_init(|| {
            let mut v = br#"{"message":"connection established","details":{"version":"#.to_vec();
            let _ = serde_json::to_writer(&mut v, &self.cfg.server_version);
            v.extend_from_slice(br#","protocol_version":2,"features":"#);
            let _ = serde_json::to_writer(&mut v, &self.features());
            v.extend_from_slice(br#","connection_id":""#);
            v
        });
        let mut p = Vec::with_capacity(head.len() + 128);
        p.extend_from_slice(head);
        write_u64(&mut p, conn.id);
        p.extend_from_slice(br#"","server_time":""#);
        write_rfc3339(&mut p, now_ms());
        p.extend_from_slice(br#"","user_id":"#);
        let _ = serde_json::to_writer(&mut p, &conn.user_id);
        p.extend_from_slice(br#","token_expires_at":"#);
        match conn.token_expires_ms.load(Relaxed) {
            0 => p.extend_from_slice(b"null"),
            t => write_u64(&mut p, t),
        }
        p.extend_from_slice(b"}}");
        self.send_system_json(conn, "server_ready", &p, self.opcode());
    }

    // ---- operations from Python -------------------------------------------------------------

    /// Queues a frame for the engine thread, running a batch here if the queue is over its bound.
    fn enqueue(&self, target: Target, msg: Arc<OutMsg>) {
        if self.pubq.push(target, msg) {
            self.pubq.run_batch(&self.topics, &self.metrics);
        }
    }

    /// Sends one envelope to one connection; false if it is gone or closing.
    pub fn send(&self, conn_id: u64, category: &str, msg_type: &str, payload: &[u8], cid: Option<&str>) -> bool {
        let Some(c) = self.get(conn_id) else { return false };
        if c.out.is_closing() {
            return false;
        }
        let msg = self.envelope_with_cid(&c, category, msg_type, payload, self.opcode(), cid);
        self.enqueue(Target::Conn(c), msg);
        true
    }

    /// Sends bytes as they are, in one text or binary message.
    pub fn send_raw(&self, conn_id: u64, data: &[u8], text: bool) -> bool {
        let Some(c) = self.get(conn_id) else { return false };
        if c.out.is_closing() {
            return false;
        }
        let mut v = Vec::with_capacity(HEADER_ROOM + data.len());
        v.resize(HEADER_ROOM, 0);
        v.extend_from_slice(data);
        let msg = OutMsg::raw(v, if text { frame::OP_TEXT } else { frame::OP_BINARY });
        self.enqueue(Target::Conn(c), Arc::new(msg));
        true
    }

    /// Publishes to `topic` here and, in a cluster, to the workers with subscribers for it;
    /// returns how many subscribers it has in this process. In a cluster with recovery, the
    /// topic's owner stamps it (mesh/sequencer.rs).
    pub fn publish(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        if let Some(b) = &self.bridge {
            if b.stamps && b.up.load(std::sync::atomic::Ordering::Relaxed) {
                // Redis stamps it; every worker, this one too, delivers it when it comes back.
                b.send(topic, false, category, msg_type, payload);
                Metrics::inc(&self.metrics.publishes);
                return self.topics.subscriber_count(topic);
            }
            if b.stamps {
                // Redis is unreachable: this host's subscribers get it now, outside the
                // offsets; stamped when Redis is back, it reaches the other hosts, and the
                // rings here (bridge/inbound.rs).
                b.send(topic, true, category, msg_type, payload);
                if let Some(m) = &self.mesh {
                    m.forward(topic, category, msg_type, payload);
                }
                return self.publish_unstamped(topic, category, msg_type, payload);
            }
            b.send(topic, false, category, msg_type, payload);
        }
        if let Some(m) = &self.mesh {
            if let Some(seq) = &m.seq {
                return self.publish_sequenced(m, seq, topic, category, msg_type, payload);
            }
            let n = self.publish_local(topic, category, msg_type, payload);
            m.forward(topic, category, msg_type, payload);
            return n;
        }
        self.publish_local(topic, category, msg_type, payload)
    }

    /// Publishes to this process's subscribers only (publications arriving from the mesh).
    pub fn publish_local(&self, topic: &str, category: &str, msg_type: &str, payload: &[u8]) -> usize {
        if self.bridge.as_ref().is_some_and(|b| b.stamps) {
            // Offsets are Redis's: what arrives unstamped is delivered outside them.
            return self.publish_unstamped(topic, category, msg_type, payload);
        }
        // With recovery on, a topic keeps what is published while nobody listens; without,
        // one with no subscriber is made only for pattern subscribers.
        let t = if self.cfg.recovery || self.topics.patterns.matches(topic) {
            Some(self.topics.get_or_create(topic))
        } else {
            self.topics.get(topic)
        };
        match t {
            Some(t) => self.publish_to(&t, topic, category, msg_type, payload, 0),
            None => {
                Metrics::inc(&self.metrics.publishes);
                0
            }
        }
    }

    /// Stamps and queues a publication to a topic already looked up. `origin` is a peer's
    /// publication id when this worker stamps it for that peer (0: made here). In a cluster
    /// with recovery it goes to every peer first, and to this worker's subscribers once written.
    pub(crate) fn publish_to(&self, t: &Arc<Topic>, topic: &str, category: &str, msg_type: &str, payload: &[u8], origin: u64) -> usize {
        let op = self.opcode();
        let zip = self.cfg.zip();
        let recovery = self.cfg.recovery;
        let mut help = false;
        let n = t.next(
            |seq, epoch| {
                let stamp = recovery.then_some((epoch, seq));
                let mut v = Envelope { category, msg_type, seq, topic: Some(topic), stamp, cid: None, payload }.encode(HEADER_ROOM);
                if let Some(s) = &self.signer {
                    s.sign(&mut v, HEADER_ROOM);
                }
                Arc::new(OutMsg::new(v, op, zip, seq, now_ms()))
            },
            |msg, epoch| {
                let gate = self.stamp_out(topic, &msg, epoch, origin);
                help = self.pubq.push_gated(Target::Topic(t.clone()), msg, gate);
            },
        );
        if origin == 0 {
            Metrics::inc(&self.metrics.publishes);
        }
        if help {
            self.pubq.run_batch(&self.topics, &self.metrics);
        }
        n
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
            "client_hello" => self.client_hello(c, &p),
            "presence_update" => self.client_presence_update(c, &p),
            "auth_refresh" => self.client_auth_refresh(c, &p),
            _ => {} // PONG replies: the read itself refreshed the idle timer.
        }
    }

    /// `client_hello`: answers `server_hello`, and with a public key in it, switches the
    /// connection to E2E encryption.
    fn client_hello(&self, c: &Arc<Conn>, p: &Value) {
        let cfg = &self.cfg;
        let mut hello = json!({
            "server_version": cfg.server_version,
            "protocol_version": 2,
            "features": self.features(),
            "limits": {
                "max_message_size": cfg.max_message_bytes,
                "rate_limit_capacity": cfg.rate_limit_capacity,
                "rate_limit_refill": cfg.rate_limit_refill,
            },
            "ping_interval": cfg.ping_interval_ms,
            "connection_id": c.id.to_string(),
            "server_time": rfc3339(now_ms()),
        });
        if cfg.compression && p.pointer("/features/compression").and_then(|v| v.as_bool()) == Some(true) {
            c.zip.store(true, Relaxed);
        }
        match p.pointer("/features/envelope").and_then(|v| v.as_str()) {
            Some("compact") => c.compact.store(true, Relaxed),
            Some("full") => c.compact.store(false, Relaxed),
            _ => {}
        }
        let key = p.get("encryption_public_key").and_then(|k| k.as_str());
        let Some(key) = key.filter(|_| cfg.encryption != EncryptionPolicy::Off) else {
            return self.send_system(c, "server_hello", hello);
        };
        if deliver::keyed_at(c).is_some() {
            return self.send_error(c, "KEY_EXCHANGE_FAILED", "encryption is already established");
        }
        let ex = match session::respond(key) {
            Ok(ex) => ex,
            Err(e) => {
                Metrics::inc(&self.metrics.key_exchange_failures);
                return self.send_error(c, "KEY_EXCHANGE_FAILED", e.as_str());
            }
        };
        let rotation = p.pointer("/features/key_rotation").and_then(|v| v.as_bool()).unwrap_or(false);
        c.rotation.store(rotation && cfg.key_rotation_ms > 0, Relaxed);
        let batch_keys = p.pointer("/features/batch_keys").and_then(|v| v.as_bool()).unwrap_or(false);
        c.batch_keys.store(batch_keys && cfg.batch_keys, Relaxed);
        hello["encryption_public_key"] = Value::from(ex.server_public_b64);
        hello["key_rotation_ms"] = Value::from(if rotation { cfg.key_rotation_ms } else { 0 });
        let body = serde_json::to_vec(&hello).unwrap_or_default();
        // server_hello itself goes in plaintext (JSON): the client has no key until it reads it.
        let msg = self.envelope_msg(c, envelope::CAT_SYSTEM, "server_hello", &body, self.opcode());
        if deliver::start_encryption(c, ex.session, msg.frame_for(Mode::Json)) {
            Metrics::inc(&self.metrics.key_exchanges);
        }
    }


    // ---- keepalive -------------------------------------------------------------------------------

    /// Pings quiet connections, closes those silent past the idle timeout, re-keys encrypted
    /// ones when their key is due, closes those that never did a required key exchange, and
    /// expires recovery rings.
    pub fn keepalive_sweep(&self) {
        if self.gone_since_trim.load(Relaxed) >= TRIM_AFTER_GONE {
            self.gone_since_trim.store(0, Relaxed);
            crate::background::trim_heap();
        }
        let now = now_ms();
        let cfg = &self.cfg;
        let all: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
        let ping_frame = frame::build(frame::OP_PING, b"");
        for c in all {
            if self.expire_token(&c, now) {
                continue;
            }
            let quiet = now.saturating_sub(c.last_rx_ms.load(Relaxed));
            if cfg.idle_timeout_ms > 0 && quiet >= cfg.idle_timeout_ms {
                if c.out.close(1000, "idle timeout") {
                    Metrics::inc(&self.metrics.idle_closes);
                }
                continue;
            }
            match c.out.mode() {
                Mode::AwaitKey if now.saturating_sub(c.created_ms) >= cfg.key_exchange_timeout_ms => {
                    if c.out.close(4403, "encryption required") {
                        Metrics::inc(&self.metrics.key_exchange_timeouts);
                    }
                    continue;
                }
                Mode::Sealed
                    if c.rotation.load(Relaxed)
                        && deliver::keyed_at(&c).is_some_and(|t| now.saturating_sub(t) >= cfg.key_rotation_ms) =>
                {
                    let rotated = deliver::rotate_key(&c, now, cfg.key_rotation_grace_ms, |generation| {
                        let p = serde_json::to_vec(&json!({"generation": generation})).unwrap_or_default();
                        self.envelope_msg(&c, envelope::CAT_SYSTEM, "key_rotation", &p, self.opcode())
                    });
                    if rotated.is_some() {
                        Metrics::inc(&self.metrics.key_rotations);
                    }
                }
                _ => {}
            }
            let since_ping = now.saturating_sub(c.last_ping_ms.load(Relaxed));
            if cfg.ping_interval_ms > 0 && quiet >= cfg.ping_interval_ms && since_ping >= cfg.ping_interval_ms {
                c.last_ping_ms.store(now, Relaxed);
                let r = c.out.push_control(ping_frame.clone());
                if r != crate::outbound::Push::Queued {
                    let _ = r.count(&self.metrics);
                }
                if cfg.envelopes {
                    self.send_system_as(&c, "ping", json!({"server_time": now}), frame::OP_TEXT);
                }
            }
        }
        self.topics.expire(now);
    }

    fn features(&self) -> Value {
        let cfg = &self.cfg;
        json!({
            "compression": cfg.compression,
            "encryption": cfg.encryption != EncryptionPolicy::Off,
            "encryption_required": cfg.encryption == EncryptionPolicy::Required,
            "key_rotation": cfg.encryption != EncryptionPolicy::Off && cfg.key_rotation_ms > 0,
            "batch_keys": cfg.encryption != EncryptionPolicy::Off && cfg.batch_keys,
            "msgpack": cfg.msgpack,
            "batching": false,
            "compact_envelope": true,
            "envelope": if cfg.compact_envelope { "compact" } else { "full" },
            "subscriptions": true,
            "recovery": cfg.recovery,
            "presence": cfg.presence,
            "token_refresh": self.verifier.is_some(),
        })
    }
}
