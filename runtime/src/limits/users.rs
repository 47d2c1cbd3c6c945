//! Connections per user: counted from registration to unregistration, so that a user can be
//! held to `max_connections_per_user` and presence knows when a user's last connection is gone.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::protocol::{envelope, frame};

/// Close code for a user over `max_connections_per_user` (clients back off and retry on it).
pub const TOO_MANY_CONNECTIONS_CODE: u16 = 4429;

#[derive(Default)]
pub struct UserSlots {
    counts: Mutex<HashMap<String, usize>>,
}

impl UserSlots {
    /// Counts one more connection for `user` unless it already has `max` (0: no limit).
    pub fn try_acquire(&self, user: &str, max: usize) -> bool {
        let mut m = self.counts.lock();
        let n = m.entry(user.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// One connection of `user` is gone; true if it was the last.
    pub fn release(&self, user: &str) -> bool {
        let mut m = self.counts.lock();
        match m.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                m.remove(user);
                true
            }
            None => true,
        }
    }

    pub fn count(&self, user: &str) -> usize {
        self.counts.lock().get(user).copied().unwrap_or(0)
    }

    pub fn users(&self) -> usize {
        self.counts.lock().len()
    }
}

/// The listener's hook after a successful handshake: true if this user may have one more
/// connection. Otherwise the client gets `TOO_MANY_CONNECTIONS` and close 4429.
/// `head` is the upgrade's answer, not written yet: a refusal sends it first.
pub async fn admit<S: AsyncRead + AsyncWrite + Unpin>(engine: &Engine, user: Option<&str>, stream: &mut S, head: &[u8]) -> bool {
    let Some(user) = user else { return true };
    if engine.user_slots.try_acquire(user, engine.cfg.max_connections_per_user) {
        return true;
    }
    Metrics::inc(&engine.metrics.connections_rejected_user);
    log::debug!(target: "wse.access", "user {user:?} refused: closed 4429, over max_connections_per_user");
    let mut out = head.to_vec();
    if engine.cfg.envelopes {
        let msg = format!("at most {} connections per user", engine.cfg.max_connections_per_user);
        out.extend_from_slice(&frame::build(engine.opcode(), &envelope::error("TOO_MANY_CONNECTIONS", &msg, 1)));
    }
    out.extend_from_slice(&frame::close_frame(TOO_MANY_CONNECTIONS_CODE, "too many connections"));
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), stream.read(&mut sink)).await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_user_and_enforces_the_limit() {
        let s = UserSlots::default();
        assert!(s.try_acquire("a", 2));
        assert!(s.try_acquire("a", 2));
        assert!(!s.try_acquire("a", 2));
        assert!(s.try_acquire("b", 2));
        assert_eq!(s.count("a"), 2);
        assert!(!s.release("a"));
        assert!(s.try_acquire("a", 2));
        assert!(!s.release("a"));
        assert!(s.release("a"), "the last connection");
        assert_eq!(s.count("a"), 0);
        assert_eq!(s.users(), 1);
    }

    #[test]
    fn zero_means_no_limit() {
        let s = UserSlots::default();
        for _ in 0..100 {
            assert!(s.try_acquire("a", 0));
        }
        assert_eq!(s.count("a"), 100);
    }
}
