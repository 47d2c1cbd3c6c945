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
    /// Sockets accepted but not yet upgraded (slowloris bound).
    pub max_pending_handshakes: usize,
    pub handshake_timeout_ms: u64,
    pub max_request_bytes: usize,
    /// Allowed `Origin` values; empty allows any (and requests without Origin).
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
    /// Python authorizes each subscription (a `sub_request` event) before the engine acks it.
    pub subscribe_hook: bool,
    pub server_version: String,
    pub jwt: Option<JwtConfig>,
    /// How long a stopping server waits for its connections to close after their close frame.
    pub drain_timeout_ms: u64,
    /// A listening socket already bound (by a cluster supervisor), used instead of binding.
    pub listen_fd: Option<i32>,
    /// Join a cluster's mesh of workers on this host (see `mesh`).
    pub mesh: Option<crate::mesh::MeshConfig>,
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
            max_pending_handshakes: 512,
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
            subscribe_hook: false,
            server_version: env!("CARGO_PKG_VERSION").into(),
            jwt: None,
            drain_timeout_ms: 3_000,
            listen_fd: None,
            mesh: None,
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
        Ok(())
    }
}
