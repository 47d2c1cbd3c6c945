//! Rate limit on what a client sends: a token bucket per connection, checked when a data
//! message is read (before it is classified), with a warning before the limit, `RATE_LIMITED`
//! (with `retry_after`) at the limit, and a close if the client keeps going.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;

use crate::config::Config;
use crate::connection::Conn;
use crate::engine::Engine;
use crate::metrics::Metrics;

/// A token bucket: `capacity` tokens, refilled continuously at `refill` tokens per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(capacity: f64, refill: f64, now_ms: u64) -> Self {
        Self { capacity, refill, tokens: capacity, last_ms: now_ms }
    }

    fn refill_to(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + dt * self.refill).min(self.capacity);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        self.refill_to(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn remaining(&self) -> f64 {
        self.tokens
    }

    /// Seconds until one token is there again.
    pub fn retry_after(&self) -> f64 {
        if self.refill <= 0.0 {
            return f64::INFINITY;
        }
        ((1.0 - self.tokens).max(0.0) / self.refill).max(0.001)
    }
}

/// What the reader should do with a message it just read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Pass it on.
    Pass,
    /// Pass it on, and warn the client: only `remaining` tokens are left.
    PassWarn { remaining: f64 },
    /// Refuse it; the first refusal of a run tells the client when to retry.
    Refuse { first: bool, retry_after: f64 },
    /// Refused too many times in a row: close the connection.
    Close,
}

/// A connection's limiter: the bucket, the warning latch and the run of refusals.
#[derive(Debug, Clone)]
pub struct RateState {
    bucket: TokenBucket,
    warn_below: f64,
    warned: bool,
    refused_run: u64,
    close_after: u64,
}

impl RateState {
    /// `warn_at` is the fraction of the capacity left when the warning goes out;
    /// `close_after` refusals in a row close the connection (0: never).
    pub fn new(capacity: f64, refill: f64, warn_at: f64, close_after: u64, now_ms: u64) -> Self {
        Self {
            bucket: TokenBucket::new(capacity, refill, now_ms),
            warn_below: capacity * warn_at,
            warned: false,
            refused_run: 0,
            close_after,
        }
    }

    pub fn check(&mut self, now_ms: u64) -> Verdict {
        if self.bucket.take(now_ms) {
            self.refused_run = 0;
            let left = self.bucket.remaining();
            if left >= self.warn_below {
                self.warned = false;
            } else if !self.warned {
                self.warned = true;
                return Verdict::PassWarn { remaining: left };
            }
            return Verdict::Pass;
        }
        self.refused_run += 1;
        if self.close_after > 0 && self.refused_run > self.close_after {
            return Verdict::Close;
        }
        Verdict::Refuse { first: self.refused_run == 1, retry_after: self.bucket.retry_after() }
    }
}

/// A new connection's limiter, or None when the limit is off.
pub fn for_connection(cfg: &Config, now_ms: u64) -> Option<Mutex<RateState>> {
    (cfg.rate_limit_capacity > 0.0).then(|| {
        Mutex::new(RateState::new(
            cfg.rate_limit_capacity,
            cfg.rate_limit_refill,
            cfg.rate_limit_warn_at,
            cfg.rate_limit_close_after,
            now_ms,
        ))
    })
}

/// The reader's hook: true if the message may go on. Tells the client about warnings and
/// refusals (envelope mode only), and closes with `rate_limit_close_code` past the limit.
pub fn admit(engine: &Engine, conn: &Arc<Conn>) -> bool {
    let cfg = &engine.cfg;
    let Some(rate) = conn.rate.as_ref() else { return true };
    let verdict = rate.lock().check(crate::protocol::time::now_ms());
    match verdict {
        Verdict::Pass => true,
        Verdict::PassWarn { remaining } => {
            Metrics::inc(&engine.metrics.rate_limit_warnings);
            if cfg.envelopes {
                engine.send_system(
                    conn,
                    "rate_limit_warning",
                    json!({
                        "limit": cfg.rate_limit_capacity,
                        "remaining": remaining.floor() as u64,
                        "refill_per_sec": cfg.rate_limit_refill,
                        "message": "rate limit nearly reached",
                    }),
                );
            }
            true
        }
        Verdict::Refuse { first, retry_after } => {
            Metrics::inc(&engine.metrics.rate_limited);
            if first && cfg.envelopes {
                let retry_after = (retry_after * 1000.0).ceil() / 1000.0;
                engine.send_system(
                    conn,
                    "error",
                    json!({
                        "code": "RATE_LIMITED",
                        "message": "rate limit exceeded: messages are dropped until retry_after seconds have passed",
                        "retry_after": retry_after,
                    }),
                );
            }
            false
        }
        Verdict::Close => {
            Metrics::inc(&engine.metrics.rate_limited);
            if conn.out.close(cfg.rate_limit_close_code, "rate limited") {
                Metrics::inc(&engine.metrics.rate_limit_closes);
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_over_time_up_to_capacity() {
        let mut b = TokenBucket::new(3.0, 10.0, 0);
        assert!(b.take(0) && b.take(0) && b.take(0));
        assert!(!b.take(0));
        assert!((b.retry_after() - 0.1).abs() < 1e-9);
        assert!(!b.take(50), "half a token after 50 ms");
        assert!(b.take(100));
        assert!(!b.take(100));
        b.take(100_000);
        assert!(b.remaining() <= 3.0);
    }

    #[test]
    fn warns_once_per_dip_then_refuses_then_closes() {
        // 10 tokens, warn when under 2 left, close after 3 refusals in a row.
        let mut r = RateState::new(10.0, 1.0, 0.2, 3, 0);
        let verdicts: Vec<Verdict> = (0..15).map(|_| r.check(0)).collect();
        assert!(verdicts[..8].iter().all(|v| *v == Verdict::Pass));
        assert_eq!(verdicts[8], Verdict::PassWarn { remaining: 1.0 });
        assert_eq!(verdicts[9], Verdict::Pass);
        assert!(matches!(verdicts[10], Verdict::Refuse { first: true, retry_after } if (retry_after - 1.0).abs() < 1e-9));
        assert!(matches!(verdicts[11], Verdict::Refuse { first: false, .. }));
        assert!(matches!(verdicts[12], Verdict::Refuse { first: false, .. }));
        assert_eq!(verdicts[13], Verdict::Close);
    }

    #[test]
    fn an_accepted_message_ends_the_run_and_refill_rearms_the_warning() {
        let mut r = RateState::new(5.0, 1.0, 0.2, 2, 0);
        for _ in 0..5 {
            r.check(0);
        }
        assert!(matches!(r.check(0), Verdict::Refuse { first: true, .. }));
        assert!(matches!(r.check(0), Verdict::Refuse { first: false, .. }));
        // One token back after a second: the run of refusals starts over.
        assert_eq!(r.check(1000), Verdict::Pass);
        assert!(matches!(r.check(1000), Verdict::Refuse { first: true, .. }));
        // Full again after a long pause: the next dip warns again.
        for _ in 0..4 {
            assert_eq!(r.check(60_000), Verdict::Pass);
        }
        assert_eq!(r.check(60_000), Verdict::PassWarn { remaining: 0.0 });
    }

    #[test]
    fn never_closes_when_close_after_is_zero() {
        let mut r = RateState::new(1.0, 0.0, 0.2, 0, 0);
        r.check(0);
        for _ in 0..1000 {
            assert!(matches!(r.check(0), Verdict::Refuse { .. }));
        }
    }
}
