//! Engine settings. They cross the Python boundary once, as one dict, when the server is built.

use std::time::Duration;

use serde::Deserialize;

/// What to do with a subscriber whose outbound queue is over its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Drop the new frame and count it; the connection stays open.
    Drop,
    /// Close the connection with `slow_consumer_close_code`.
    Close,
}

/// E2E encryption of the WSE protocol (ECDH P-256 + AES-GCM-256, `E:` frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionPolicy {
    /// Key exchange refused; everything in plaintext.
    Off,
    /// Clients that send a public key in `client_hello` get an encrypted connection.
    Optional,
    /// Application traffic waits for the key exchange; plaintext application messages are refused.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret (at least 32 bytes).
    pub secret: Option<String>,
    /// PEM public key for RS256 / ES256.
    pub public_key: Option<String>,
    /// Accepted algorithms: any of "HS256", "RS256", "ES256".
    pub algorithms: Vec<String>,
    /// Key id of the current key; a token naming another kid is refused unless it is the previous key's.
    pub kid: Option<String>,
    /// Previous key (rotation): tried when the current key does not verify.
    pub previous_secret: Option<String>,
    pub previous_public_key: Option<String>,
    pub previous_kid: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    pub leeway_secs: u64,
    pub max_token_bytes: usize,
    /// Cookie that carries the token.
    pub cookie_name: String,
    /// Accept `?token=` in the URL (for browsers, which cannot set headers on WebSocket).
    pub query_param: bool,
    /// Claims handed to Python on connect (besides `sub`). Empty means all of them.
    pub claims: Vec<String>,
    /// Claim holding `{allow: [...], deny: [...]}` topic globs.
    pub topics_claim: String,
    /// Refuse connections without a token (otherwise they connect anonymously).
    pub required: bool,
    /// Close a connection (4401, reason `expired`) when its token's `exp` (plus the leeway)
    /// passes, unless the client sent a fresh token with `auth_refresh` before then.
    pub expire_connections: bool,
    /// Claims a token must carry (present, not null, not an empty string), besides `exp`
    /// (always required). A token without one is refused with `missing_claim`.
    pub required_claims: Vec<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            public_key: None,
            algorithms: vec!["HS256".into()],
            kid: None,
            previous_secret: None,
            previous_public_key: None,
            previous_kid: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            max_token_bytes: 8192,
            cookie_name: "access_token".into(),
            query_param: false,
            claims: Vec::new(),
            topics_claim: "wse_topics".into(),
            required: true,
            expire_connections: true,
            required_claims: vec!["sub".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub backlog: i32,
    pub reuse_port: bool,
    /// Tokio worker threads; 1 runs a current-thread runtime on one dedicated thread.
    pub io_threads: usize,
    pub max_connections: usize,
    /// Open connections (handshakes included) from one source address (IPv6: one /64), per
    /// worker; past it a new socket is answered 429 (0: no bound, the default).
    pub max_connections_per_ip: usize,
    /// Sockets accepted but not yet upgraded (slowloris bound).
    pub max_pending_handshakes: usize,
    /// Of those, from one source address (IPv6: one /64) at most (0: no bound per address).
    pub max_pending_handshakes_per_ip: usize,
    pub handshake_timeout_ms: u64,
    pub max_request_bytes: usize,
    /// Allowed `Origin` values (against cross-site WebSocket hijacking); empty allows any.
    /// Requests without an `Origin` header (clients that are not browsers) are allowed.
    pub allowed_origins: Vec<String>,
    pub max_message_bytes: usize,
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_outbound_bytes: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub slow_consumer_close_code: u16,
    /// Frames gathered into one vectored write, at most.
    pub max_frames_per_write: usize,
    /// Data events queued for Python before sockets stop being read.
    pub inbound_queue: usize,
    pub inbound_queue_bytes: usize,
    /// Server messages go out as text frames (default binary, as the v2 protocol does).
    pub text_frames: bool,
    /// Speak the WSE v2 envelope protocol (server_ready, subscriptions, JSON pings). When false
    /// every message goes to Python as raw text or binary and the engine sends nothing unasked.
    pub envelopes: bool,
    /// Topic ACL globs (`*`, `?`) applied to every subscription.
    pub topics_allow: Vec<String>,
    pub topics_deny: Vec<String>,
    pub max_topics_per_connection: usize,
    /// Topics one `subscription_update` may name; more and it is refused whole, unparsed.
    pub max_topics_per_message: usize,
    /// Python authorizes each subscription (a `sub_request` event) before the engine acks it.
    pub subscribe_hook: bool,
    pub server_version: String,
    pub jwt: Option<JwtConfig>,
    /// zlib (`C:` frames) for outgoing messages over `compression_threshold` bytes.
    pub compression: bool,
    pub compression_threshold: usize,
    pub compression_level: u32,
    /// Send every connection the compact envelope (no `id`, `ts`) unless it asks for the full
    /// one (`?envelope=full`, `client_hello.features.envelope`). Off: full unless asked.
    pub compact_envelope: bool,
    /// permessage-deflate (RFC 7692) for clients that offer it (browsers do).
    pub permessage_deflate: bool,
    /// Messages shorter than this go out uncompressed (compressing them gains nothing), as do
    /// those compression does not shrink; 0 compresses every message.
    pub deflate_threshold: usize,
    pub deflate_level: u32,
    /// Let clients keep their compression context between messages (better ratio for what they
    /// send, but a 32 KiB window per connection, kept while it lives); false answers
    /// `client_no_context_takeover`.
    pub deflate_client_context_takeover: bool,
    /// Clients may ask for msgpack with `?format=msgpack`.
    pub msgpack: bool,
    pub encryption: EncryptionPolicy,
    /// Re-key encrypted connections this often (0: never); clients must announce `key_rotation`.
    pub key_rotation_ms: u64,
    /// How long the previous key still opens inbound frames after a rotation.
    pub key_rotation_grace_ms: u64,
    /// Encrypted fan-out under topic keys and shared `G:` frames, for clients that announce
    /// `batch_keys` (`crypto/batch.rs`); off: every frame sealed per connection.
    pub batch_keys: bool,
    /// With `encryption: required`, close (4403) connections that have not exchanged keys by then.
    pub key_exchange_timeout_ms: u64,
    /// Per-topic rings of recent publications, replayed to subscribers that reconnect.
    pub recovery: bool,
    pub recovery_buffer: usize,
    pub recovery_ttl_ms: u64,
    pub recovery_max_bytes: usize,
    /// HMAC-SHA256 key (at least 32 bytes): envelopes the server sends carry `sig`, and signed
    /// client messages are verified.
    pub signing_key: Option<String>,
    /// Refuse application messages without a valid `sig` (needs `signing_key`).
    pub require_signatures: bool,
    /// PEM certificate chain and private key: serve `wss://` (TLS) on the client port.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    // ---- client limits (limits/) ----
    /// Token bucket per connection on the messages a client sends: burst size (0: no limit).
    pub rate_limit_capacity: f64,
    /// Tokens (messages) per second refilled.
    pub rate_limit_refill: f64,
    /// `rate_limit_warning` goes out when this fraction of the bucket is left.
    pub rate_limit_warn_at: f64,
    /// Refused messages in a row before the connection is closed (0: never closed).
    pub rate_limit_close_after: u64,
    pub rate_limit_close_code: u16,
    /// Connections one user (`sub`) may hold at once (0: no limit).
    pub max_connections_per_user: usize,
    // ---- presence and dedup (pubsub/) ----
    /// Track which users are in each topic and tell the application and watchers.
    pub presence: bool,
    pub presence_max_data_bytes: usize,
    /// Ids remembered for dedup (0: off), and for how long at most.
    pub dedup_window: usize,
    pub dedup_window_ms: u64,
    /// Drop a client message whose `id` the same user sent within the window.
    pub dedup_inbound: bool,
    /// How long a stopping server waits for its connections to close after their close frame.
    pub drain_timeout_ms: u64,
    /// A listening socket already bound (by a cluster supervisor), used instead of binding.
    pub listen_fd: Option<i32>,
    /// Listen on this Unix domain socket path instead of `host:port` (behind a local proxy).
    pub uds: Option<String>,
    /// Join a cluster's mesh of workers on this host (see `mesh`).
    pub mesh: Option<crate::mesh::MeshConfig>,
    /// Redis (or a Redis Cluster: comma-separated seed URLs) joining several hosts into one
    /// engine (see `bridge`); None: this host alone.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// Publications held for Redis while it is unreachable; past it they are dropped.
    pub redis_buffer: usize,
    /// Entries kept in each topic's Redis stream (`MAXLEN ~`); 0: `recovery_buffer`.
    pub redis_stream_len: usize,
    /// This host's id (the supervisor gives its workers one); None: a random one.
    pub redis_host: Option<String>,
    /// With presence: how long a worker's presence outlives its last renewal in Redis (it
    /// renews every second); a host that dies is gone from the others' presence after it.
    pub redis_presence_ttl_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5006,
            path: "/wse".into(),
            backlog: 1024,
            reuse_port: true,
            io_threads: 1,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_pending_handshakes: 512,
            max_pending_handshakes_per_ip: 256,
            handshake_timeout_ms: 5_000,
            max_request_bytes: 16 * 1024,
            allowed_origins: Vec::new(),
            max_message_bytes: 1 << 20,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            max_outbound_bytes: 16 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            slow_consumer_close_code: 4008,
            max_frames_per_write: 256,
            inbound_queue: 65_536,
            inbound_queue_bytes: 64 << 20,
            text_frames: false,
            envelopes: true,
            topics_allow: Vec::new(),
            topics_deny: Vec::new(),
            max_topics_per_connection: 1_000,
            max_topics_per_message: 1_000,
            subscribe_hook: false,
            server_version: env!("CARGO_PKG_VERSION").into(),
            jwt: None,
            compression: true,
            compression_threshold: 1024,
            compression_level: 6,
            compact_envelope: false,
            permessage_deflate: false,
            deflate_threshold: 64,
            deflate_level: 6,
            deflate_client_context_takeover: false,
            msgpack: true,
            encryption: EncryptionPolicy::Optional,
            key_rotation_ms: 3_600_000,
            key_rotation_grace_ms: 30_000,
            batch_keys: true,
            key_exchange_timeout_ms: 10_000,
            recovery: false,
            recovery_buffer: 256,
            recovery_ttl_ms: 300_000,
            recovery_max_bytes: 64 << 20,
            signing_key: None,
            require_signatures: false,
            tls_cert_file: None,
            tls_key_file: None,
            rate_limit_capacity: 100_000.0,
            rate_limit_refill: 10_000.0,
            rate_limit_warn_at: 0.2,
            rate_limit_close_after: 500,
            rate_limit_close_code: 4429,
            max_connections_per_user: 0,
            presence: false,
            presence_max_data_bytes: 4096,
            dedup_window: 50_000,
            dedup_window_ms: 300_000,
            dedup_inbound: true,
            drain_timeout_ms: 3_000,
            listen_fd: None,
            uds: None,
            mesh: None,
            redis_url: None,
            redis_prefix: "wse".into(),
            redis_buffer: 10_000,
            redis_stream_len: 0,
            redis_presence_ttl_ms: 10_000,
            redis_host: None,
        }
    }
}

impl Config {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Checks settings that would otherwise fail later, or silently.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("path must start with '/': {:?}", self.path));
        }
        if self.max_frames_per_write == 0 || self.inbound_queue == 0 || self.io_threads == 0 {
            return Err("max_frames_per_write, inbound_queue and io_threads must be positive".into());
        }
        if self.max_message_bytes < 125 {
            return Err("max_message_bytes must be at least 125".into());
        }
        if !(1000..5000).contains(&self.slow_consumer_close_code) {
            return Err("slow_consumer_close_code must be in 1000..5000".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file go together".into());
        }
        if self.require_signatures && self.signing_key.is_none() {
            return Err("require_signatures needs a signing_key".into());
        }
        if self.compression_level > 9 {
            return Err("compression_level must be 0..=9".into());
        }
        if self.deflate_level > 9 {
            return Err("deflate_level must be 0..=9".into());
        }
        if self.recovery && (self.recovery_buffer == 0 || self.recovery_max_bytes == 0) {
            return Err("recovery_buffer and recovery_max_bytes must be positive".into());
        }
        if !(1000..5000).contains(&self.rate_limit_close_code) {
            return Err("rate_limit_close_code must be in 1000..5000".into());
        }
        if !(self.rate_limit_capacity >= 0.0 && self.rate_limit_refill >= 0.0) {
            return Err("rate_limit_capacity and rate_limit_refill must not be negative".into());
        }
        if !(0.0..=1.0).contains(&self.rate_limit_warn_at) {
            return Err("rate_limit_warn_at must be between 0 and 1".into());
        }
        Ok(())
    }

    /// permessage-deflate as configured, `None` when off.
    pub fn deflate_settings(&self) -> Option<crate::protocol::deflate::Settings> {
        self.permessage_deflate.then_some(crate::protocol::deflate::Settings {
            client_context_takeover: self.deflate_client_context_takeover,
            threshold: self.deflate_threshold,
            level: self.deflate_level as u8,
        })
    }

    pub fn zip(&self) -> Option<crate::protocol::outgoing::Zip> {
        self.compression.then_some(crate::protocol::outgoing::Zip {
            threshold: self.compression_threshold,
            level: self.compression_level,
        })
    }
}
