//! A connection's token after the handshake: it expires with the token (`exp` plus the leeway,
//! close 4401 `expired`) unless the client sends a fresh one first:
//! `{"c":"WSE","t":"auth_refresh","p":{"token":"..."}}`. The new token is verified like a
//! handshake's, must name the same user (`sub`), and moves the deadline; the client hears
//! `auth_refresh` with `success` either way and a refused refresh leaves the connection as it was.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::auth::jwt::AuthError;
use crate::connection::Conn;
use crate::engine::Engine;
use crate::metrics::Metrics;

/// The user a token names (`sub`, a string or a number), as the handshake reads it.
pub fn subject(claims: &Map<String, Value>) -> Option<String> {
    match claims.get("sub") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// When a connection on a token with these claims must end (ms since the epoch; 0: never):
/// `exp` plus the leeway. `None` for `exp` (a verified token always has one) means never.
pub fn deadline_ms(claims: &Map<String, Value>, leeway_secs: u64) -> u64 {
    claims
        .get("exp")
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f > 0.0).map(|f| f as u64)))
        .map_or(0, |exp| exp.saturating_add(leeway_secs).saturating_mul(1000))
}

impl Engine {
    /// The deadline for a new connection's token (0 when expiry is off or JWT is not configured).
    pub fn token_deadline(&self, claims: &Map<String, Value>) -> u64 {
        match &self.cfg.jwt {
            Some(j) if j.expire_connections => deadline_ms(claims, j.leeway_secs),
            _ => 0,
        }
    }

    /// Closes the connection when its token has expired; true when it did (sweep).
    pub fn expire_token(&self, c: &Arc<Conn>, now: u64) -> bool {
        let deadline = c.token_expires_ms.load(Relaxed);
        if deadline == 0 || now < deadline {
            return false;
        }
        // The same message and code as a handshake refused for an expired token.
        if !c.out.is_closing() {
            let e = AuthError::Expired;
            self.send_error(c, e.code(), &e.message());
            if c.out.close(4401, e.reason()) {
                Metrics::inc(&self.metrics.token_expired_closes);
            }
        }
        true
    }

    /// `auth_refresh` from a client: verifies the new token and moves the deadline.
    pub(crate) fn client_auth_refresh(&self, c: &Arc<Conn>, p: &Value) {
        match self.refresh(c, p) {
            Ok(deadline) => {
                Metrics::inc(&self.metrics.token_refreshes);
                let expires_at = if deadline == 0 { Value::Null } else { Value::from(deadline) };
                self.send_system(c, "auth_refresh", json!({"success": true, "expires_at": expires_at}));
            }
            Err((code, reason, message)) => {
                Metrics::inc(&self.metrics.token_refresh_failures);
                self.send_system(
                    c,
                    "auth_refresh",
                    json!({"success": false, "code": code, "reason": reason, "message": message}),
                );
            }
        }
    }

    fn refresh(&self, c: &Conn, p: &Value) -> Result<u64, (&'static str, &'static str, String)> {
        let Some(verifier) = &self.verifier else {
            return Err(("AUTH_REFRESH_UNSUPPORTED", "disabled", "this server does not use tokens".into()));
        };
        let Some(token) = p.get("token").and_then(|t| t.as_str()) else {
            let e = AuthError::Missing;
            return Err((e.code(), e.reason(), "auth_refresh needs p.token, a string".into()));
        };
        let claims = verifier.verify(token).map_err(|e| (e.code(), e.reason(), e.message()))?;
        if subject(&claims) != c.user_id {
            return Err(("AUTH_FAILED", "subject", "the new token names another user than the connection's".into()));
        }
        let deadline = self.token_deadline(&claims);
        c.token_expires_ms.store(deadline, Relaxed);
        Ok(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, JwtConfig};
    use crate::external::{Externals, Opened, OutFrame, Request, TakeEnd};
    use bytes::Bytes;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use tokio::runtime::Handle;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now_s() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(sub: &str, exp: u64) -> String {
        encode(&Header::default(), &json!({"sub": sub, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn engine(expire: bool) -> Arc<Engine> {
        let jwt = JwtConfig { secret: Some(SECRET.into()), leeway_secs: 0, expire_connections: expire, ..JwtConfig::default() };
        Arc::new(Engine::new(Config { jwt: Some(jwt), ..Config::default() }).unwrap())
    }

    fn open(e: &Arc<Engine>, hub: &Arc<Externals>, tok: &str) -> u64 {
        let auth = format!("Bearer {tok}");
        let req = Request { authorization: Some(&auth), ..Request::default() };
        match hub.open(e, &Handle::current(), &req, "1.2.3.4:5".into()) {
            Opened::Conn(id) => id,
            _ => panic!("refused"),
        }
    }

    fn drain(hub: &Externals, e: &Engine, id: u64) -> (Vec<Value>, TakeEnd) {
        let mut out: Vec<OutFrame> = vec![];
        loop {
            e.pubq.run_batch(&e.topics, &e.metrics);
            match hub.take(e, id, 8, &mut out) {
                TakeEnd::More => continue,
                end => return (out.iter().map(|f| serde_json::from_slice(&f.1).unwrap()).collect(), end),
            }
        }
    }

    fn refresh(hub: &Externals, e: &Arc<Engine>, id: u64, tok: &str) -> Value {
        let msg = json!({"c": "WSE", "t": "auth_refresh", "p": {"token": tok}}).to_string();
        hub.feed(e, id, Bytes::from(msg), true).unwrap();
        let (out, _) = drain(hub, e, id);
        out.into_iter().find(|m| m["t"] == "auth_refresh").expect("an auth_refresh reply")["p"].clone()
    }

    #[test]
    fn deadline_is_exp_plus_leeway() {
        let c: Map<String, Value> = serde_json::from_value(json!({"exp": 100})).unwrap();
        assert_eq!(deadline_ms(&c, 30), 130_000);
        let none: Map<String, Value> = serde_json::from_value(json!({"sub": "u"})).unwrap();
        assert_eq!(deadline_ms(&none, 30), 0);
    }

    #[tokio::test]
    async fn expired_token_closes_with_4401_unless_refreshed() {
        let e = engine(true);
        let hub = Arc::new(Externals::new().unwrap());
        let exp = now_s() + 60;
        let id = open(&e, &hub, &token("ann", exp));
        let (out, _) = drain(&hub, &e, id);
        assert_eq!(out[0]["p"]["details"]["token_expires_at"], exp * 1000);
        assert_eq!(out[0]["p"]["details"]["features"]["token_refresh"], true);
        let c = e.get(id).unwrap();
        // Before the deadline nothing happens; a refresh moves it.
        assert!(!e.expire_token(&c, exp * 1000 - 1));
        let later = exp + 3600;
        let r = refresh(&hub, &e, id, &token("ann", later));
        assert_eq!((r["success"].clone(), r["expires_at"].clone()), (json!(true), json!(later * 1000)));
        assert!(!e.expire_token(&c, exp * 1000 + 5), "the refreshed token is still valid");
        // Past the new deadline: the error, then close 4401.
        assert!(e.expire_token(&c, later * 1000));
        let (out, end) = drain(&hub, &e, id);
        assert_eq!(out.last().unwrap()["p"]["code"], "AUTH_FAILED");
        assert_eq!(end, TakeEnd::Close(4401, "expired".into()));
        let snap: std::collections::HashMap<_, _> = e.metrics.snapshot().into_iter().collect();
        assert_eq!((snap["token_refreshes"], snap["token_expired_closes"]), (1, 1));
    }

    #[tokio::test]
    async fn refused_refreshes_change_nothing() {
        let e = engine(true);
        let hub = Arc::new(Externals::new().unwrap());
        let exp = now_s() + 60;
        let id = open(&e, &hub, &token("ann", exp));
        drain(&hub, &e, id);
        let other = refresh(&hub, &e, id, &token("bob", exp + 600));
        assert_eq!((other["success"].clone(), other["reason"].clone()), (json!(false), json!("subject")));
        let expired = refresh(&hub, &e, id, &token("ann", now_s() - 5));
        assert_eq!((expired["code"].clone(), expired["reason"].clone()), (json!("AUTH_FAILED"), json!("expired")));
        let forged = refresh(&hub, &e, id, "x.y.z");
        assert_eq!(forged["reason"], "malformed");
        let missing = json!({"c": "WSE", "t": "auth_refresh", "p": {}}).to_string();
        hub.feed(&e, id, Bytes::from(missing), true).unwrap();
        let (out, _) = drain(&hub, &e, id);
        assert_eq!(out[0]["p"]["code"], "AUTH_REQUIRED");
        assert_eq!(e.get(id).unwrap().token_expires_ms.load(Relaxed), exp * 1000, "deadline unchanged");
        let snap: std::collections::HashMap<_, _> = e.metrics.snapshot().into_iter().collect();
        assert_eq!(snap["token_refresh_failures"], 4);
    }

    #[tokio::test]
    async fn expiry_can_be_turned_off() {
        let e = engine(false);
        let hub = Arc::new(Externals::new().unwrap());
        let id = open(&e, &hub, &token("ann", now_s() + 60));
        let (out, _) = drain(&hub, &e, id);
        assert!(out[0]["p"]["details"]["token_expires_at"].is_null());
        assert!(!e.expire_token(&e.get(id).unwrap(), u64::MAX));
    }
}
