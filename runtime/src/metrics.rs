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
    handshakes_ok,
    handshake_timeouts,
    handshake_bad_request,
    handshake_bad_path,
    handshake_bad_origin,
    auth_missing,
    auth_failed,
    auth_expired,
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
    #[inline]
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Relaxed);
    }
}
