//! Where presence meets the engine: the hooks `Engine::join`, `Engine::leave` and
//! `Engine::unregister` call, the client's `presence_update`, and delivery of each change to
//! Python (a lifecycle event: never dropped) and to the topic's watchers (system envelopes).
//! In a cluster the same delivery serves changes that peers report (mesh/presence.rs).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::connection::Conn;
use crate::drain::Event;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::pubsub::presence::{Notice, UpdateError};

impl Engine {
    /// `c` was added to `topic`.
    pub(crate) fn presence_joined(&self, c: &Arc<Conn>, topic: &str) {
        // A pattern is not a place users are in.
        if !self.cfg.presence || crate::pubsub::patterns::is_pattern(topic) {
            return;
        }
        if let Some(n) = c.user_id.as_deref().and_then(|u| self.presence.join(topic, u)) {
            self.announce(c.id, n);
        }
    }

    /// `c` was removed from `topic` (unsubscribed or gone).
    pub(crate) fn presence_left(&self, c: &Conn, topic: &str) {
        if !self.cfg.presence || crate::pubsub::patterns::is_pattern(topic) {
            return;
        }
        self.presence.unwatch(topic, c.id);
        if let Some(n) = c.user_id.as_deref().and_then(|u| self.presence.leave(topic, u)) {
            self.announce(c.id, n);
        }
    }

    /// `c` is unregistered: release its user's connection slot; the last one takes the user's
    /// presence data with it.
    pub(crate) fn user_gone(&self, c: &Conn) {
        if let Some(u) = c.user_id.as_deref() {
            if self.user_slots.release(u) && self.cfg.presence {
                self.presence.forget(u);
            }
        }
    }

    /// `c` asked for presence events of `topics` (which it has just joined): it gets each
    /// topic's members now (`presence_state`) and every change from here on.
    pub(crate) fn presence_watch(&self, c: &Arc<Conn>, topics: &[String]) {
        if !self.cfg.presence {
            return;
        }
        for t in topics {
            self.presence.watch(t, c.id, c.clone());
            let mut users = Map::new();
            let mut conns = 0;
            for (user, data, n) in self.presence.members(t) {
                conns += n as usize;
                users.insert(user.to_string(), json!({"data": &*data, "connections": n}));
            }
            let count = json!({"users": users.len(), "connections": conns});
            self.send_system(c, "presence_state", json!({"topic": t, "users": users, "count": count}));
        }
    }

    /// Sets a user's presence data; every topic they are in hears of it. Returns how many.
    pub fn update_presence(&self, user: &str, data: Value, origin: u64) -> Result<usize, String> {
        if !self.cfg.presence {
            return Err("presence is not enabled (WSEConfig.presence)".into());
        }
        let slot = self.cfg.mesh.as_ref().map_or(0, |m| m.slot);
        match self.presence.update(user, data, crate::mesh::presence::stamp(slot)) {
            Ok(notices) => {
                let n = notices.len();
                for notice in notices {
                    self.announce(origin, notice);
                }
                Ok(n)
            }
            Err(e @ UpdateError::TooLarge { .. }) => {
                Metrics::inc(&self.metrics.presence_refused);
                Err(e.to_string())
            }
        }
    }

    /// A client's `{"t":"presence_update","p":{"data":...}}`: its user's new data.
    pub(crate) fn client_presence_update(&self, c: &Arc<Conn>, p: &Value) {
        if !self.cfg.presence {
            return self.send_error(c, "PRESENCE_DISABLED", "presence is not enabled on this server");
        }
        let Some(user) = c.user_id.as_deref() else {
            return self.send_error(c, "INVALID_MESSAGE", "presence needs an authenticated user");
        };
        let data = p.get("data").cloned().unwrap_or(Value::Null);
        if let Err(e) = self.update_presence(user, data, c.id) {
            self.send_error(c, "PRESENCE_DATA_TOO_LARGE", &e);
        }
    }

    /// Tells Python, then the topic's watchers.
    pub(crate) fn announce(&self, origin: u64, n: Notice<Arc<Conn>>) {
        Metrics::inc(&self.metrics.presence_events);
        let data = Bytes::from(serde_json::to_vec(&*n.data).unwrap_or_default());
        self.inbound.push_lifecycle(Event::Presence {
            conn: origin,
            change: n.change.code(),
            topic: n.topic.to_string(),
            user: n.user.to_string(),
            data,
        });
        if n.watchers.is_empty() {
            return;
        }
        let p = json!({"topic": &*n.topic, "user_id": &*n.user, "data": &*n.data});
        for w in &n.watchers {
            if !w.out.is_closing() {
                self.send_system(w, n.change.msg_type(), p.clone());
            }
        }
    }
}
