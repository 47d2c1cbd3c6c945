//! Engine counters: plain atomics, read by `stats()` and exported by Python.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters and gauges; names match the keys of `stats()`.
        #[derive(Default)]
        pub struct Metrics { $(pub $name: AtomicU64,)* }

        impl Metrics {
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Relaxed)),)*]
            }
        }
    };
}

counters!(
    connections_accepted,
    connections_active,
    connections_rejected_limit,
    connections_rejected_pending,
    connections_rejected_pending_ip,
    connections_rejected_ip,
    handshakes_ok,
    handshake_timeouts,
    handshake_bad_request,
    handshake_bad_path,
    handshake_bad_origin,
    auth_missing,
    auth_failed,
    auth_expired,
    token_refreshes,
    token_refresh_failures,
    token_expired_closes,
    messages_in,
    bytes_in,
    messages_out,
    bytes_out,
    frames_out,
    write_syscalls,
    publishes,
    deliveries,
    slow_consumer_drops,
    slow_consumer_closes,
    protocol_errors,
    oversized_messages,
    invalid_utf8,
    abrupt_disconnects,
    idle_closes,
    drain_calls,
    drain_events,
    inbound_queue_depth,
    backpressure_ns,
    backpressure_waits,
    subscriptions,
    subscriptions_denied,
    subscriptions_refused_whole,
    pattern_checks,
    pattern_denied,
    key_exchanges,
    key_exchange_failures,
    key_rotations,
    key_exchange_timeouts,
    decrypt_failures,
    replays_refused,
    plaintext_refused,
    decompress_refused,
    msgpack_errors,
    recovery_requests,
    recovery_recovered,
    recovery_missed,
    recovered_messages,
    compressed_out,
    deflate_connections,
    deflate_compressions,
    deflated_out,
    msgpack_out,
    sealed_out,
    sealed_in,
    signature_failures,
    tls_failures,
    rate_limited,
    rate_limit_warnings,
    rate_limit_closes,
    connections_rejected_user,
    dedup_publish_dropped,
    dedup_inbound_dropped,
    presence_events,
    presence_refused,
    // Drain batch sizes (events per `drain` call), one counter per bucket: <=1, <=4, ... >1024.
    drain_batch_le_1,
    drain_batch_le_4,
    drain_batch_le_16,
    drain_batch_le_64,
    drain_batch_le_256,
    drain_batch_le_1024,
    drain_batch_gt_1024,
    // Publish to the subscribers' queues: the oldest publication of each fan-out batch, by bucket.
    publish_queue_le_50us,
    publish_queue_le_100us,
    publish_queue_le_250us,
    publish_queue_le_500us,
    publish_queue_le_1ms,
    publish_queue_le_2500us,
    publish_queue_le_10ms,
    publish_queue_le_100ms,
    publish_queue_gt_100ms,
    publish_queue_ns,
);

impl Metrics {
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    /// Counts one drain batch of `n` events in its size bucket.
    pub fn drain_batch(&self, n: usize) {
        let c = match n {
            0..=1 => &self.drain_batch_le_1,
            2..=4 => &self.drain_batch_le_4,
            5..=16 => &self.drain_batch_le_16,
            17..=64 => &self.drain_batch_le_64,
            65..=256 => &self.drain_batch_le_256,
            257..=1024 => &self.drain_batch_le_1024,
            _ => &self.drain_batch_gt_1024,
        };
        Self::inc(c);
    }

    /// Counts how long a fan-out batch's oldest publication waited, in its bucket.
    pub fn publish_queue(&self, ns: u64) {
        let c = match ns {
            0..=50_000 => &self.publish_queue_le_50us,
            50_001..=100_000 => &self.publish_queue_le_100us,
            100_001..=250_000 => &self.publish_queue_le_250us,
            250_001..=500_000 => &self.publish_queue_le_500us,
            500_001..=1_000_000 => &self.publish_queue_le_1ms,
            1_000_001..=2_500_000 => &self.publish_queue_le_2500us,
            2_500_001..=10_000_000 => &self.publish_queue_le_10ms,
            10_000_001..=100_000_000 => &self.publish_queue_le_100ms,
            _ => &self.publish_queue_gt_100ms,
        };
        Self::inc(c);
        Self::add(&self.publish_queue_ns, ns);
    }

    #[inline]
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Relaxed);
    }
}
