"""Typed settings for the engine. Every field has a working default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import orjson

Algorithm = Literal["HS256", "RS256", "ES256"]


@dataclass(frozen=True, kw_only=True)
class JWTConfig:
    """How tokens are checked during the handshake (in Rust, before Python sees the connection)."""

    secret: str | None = None
    """HS256 shared secret, at least 32 bytes."""
    public_key: str | None = None
    """PEM public key for RS256 or ES256."""
    algorithms: tuple[Algorithm, ...] = ("HS256",)
    kid: str | None = None
    previous_secret: str | None = None
    """The key being rotated out: still accepted until you remove it."""
    previous_public_key: str | None = None
    previous_kid: str | None = None
    issuer: str | None = None
    audience: tuple[str, ...] | None = None
    leeway_secs: int = 30
    max_token_bytes: int = 8192
    cookie_name: str = "access_token"
    query_param: bool = False
    """Also accept ``?token=`` (browsers cannot set headers on a WebSocket)."""
    claims: tuple[str, ...] = ()
    """Claims passed to Python on connect besides ``sub``; empty passes all."""
    topics_claim: str = "wse_topics"
    """Claim with ``{"allow": [...], "deny": [...]}`` topic globs for this user."""
    required: bool = True
    """Refuse connections without a token (else they connect anonymously)."""
    expire_connections: bool = True
    """Close a connection (4401, reason ``expired``) when its token's ``exp`` plus the leeway
    passes, unless the client sent a fresh token first (``auth_refresh``)."""
    required_claims: tuple[str, ...] = ("sub",)
    """Claims every token must carry (present, not null, not ``""``), besides ``exp`` (always
    required); a token without one is refused with close 4401, label ``missing_claim``."""


@dataclass(frozen=True, kw_only=True)
class WSEConfig:
    """Engine settings. Sizes are bytes, times milliseconds."""

    host: str = "127.0.0.1"
    port: int = 5006
    path: str = "/wse"
    backlog: int = 1024
    uds: str | None = None
    """Listen on this Unix domain socket path instead of ``host:port`` (behind a local reverse
    proxy; a stale socket file is replaced). Connections over it report the address ``0.0.0.0:0``."""
    reuse_port: bool = True
    io_threads: int = 1
    """Tokio threads; 1 runs the engine on a single dedicated thread (best per core)."""
    max_connections: int = 10_000
    max_connections_per_ip: int = 0
    """Open connections (handshakes included) from one source address (IPv6: one /64), per
    worker; past it a new socket is answered HTTP 429 before the upgrade and counted in
    ``wse_connections_rejected_total{reason="max_connections_per_ip"}``. 0 (the default): no
    bound, since behind a reverse proxy or a NAT every client has the same address and a load
    test opens thousands from one host. Not applied over ``uds``."""
    max_pending_handshakes: int = 512
    """Sockets accepted but not yet upgraded; past it a new socket is answered 503."""
    max_pending_handshakes_per_ip: int = 256
    """Of those, from one source address (IPv6: one /64); 0 for no bound per address."""
    handshake_timeout_ms: int = 5_000
    max_request_bytes: int = 16 * 1024
    allowed_origins: tuple[str, ...] = ()
    """Allowed ``Origin`` values, e.g. ``("https://app.example.com",)``: a browser handshake from
    any other origin is refused with HTTP 403 (cross-site WebSocket hijacking: another site's page
    opening a socket with your users' cookies). Compared without case, a trailing ``/`` ignored;
    ``"*"`` allows any, ``"null"`` must be listed to be allowed. Empty (the default) allows any.
    Requests without ``Origin`` are allowed: browsers always send it, so they come from clients
    that are not browsers and carry no victim's cookies. Set it whenever tokens come in a cookie."""
    max_message_bytes: int = 1 << 20
    ping_interval_ms: int = 25_000
    idle_timeout_ms: int = 60_000
    max_outbound_bytes: int = 16 << 20
    """Per-connection outbound queue budget."""
    slow_consumer: Literal["drop", "close"] = "close"
    slow_consumer_close_code: int = 4008
    max_frames_per_write: int = 256
    inbound_queue: int = 65_536
    """Data events waiting for Python before the engine stops reading sockets."""
    inbound_queue_bytes: int = 64 << 20
    text_frames: bool = False
    """Send JSON in text frames (the v2 protocol default is binary)."""
    envelopes: bool = True
    """Speak the WSE v2 protocol. False: every message reaches ``on_raw`` untouched and the
    engine sends nothing unasked (no ``server_ready``, no JSON pings): a plain WebSocket server."""
    topics_allow: tuple[str, ...] = ()
    topics_deny: tuple[str, ...] = ()
    max_topics_per_connection: int = 1_000
    """Topics a client may hold; a ``subscription_update`` that would pass it is refused whole."""
    max_topics_per_message: int = 1_000
    """Topics one ``subscription_update`` may name; more and it is refused whole, before parsing."""
    drain_batch: int = 1024
    """Events taken from the engine per drain call (one GIL acquire)."""
    jwt: JWTConfig | None = None
    server_version: str = "0.1.0"
    compression: bool = True
    """zlib (``C:`` frames) for messages over ``compression_threshold`` bytes, to clients that
    accept it (``?compression=true`` or ``features.compression`` in ``client_hello``)."""
    compression_threshold: int = 1024
    compression_level: int = 6
    compact_envelope: bool = False
    """Send the compact envelope (no ``id``, ``ts``: about 76 bytes less per message) to every
    client that does not ask for the full one (``?envelope=full`` or ``features.envelope`` in
    ``client_hello``). Off (default): the full envelope, which the published ``wse-client``
    expects, unless a client asks for compact (``?envelope=compact``)."""
    permessage_deflate: bool = False
    """permessage-deflate (RFC 7692) for clients that offer it (browsers, websockets, Node ``ws``).
    The server compresses each message on its own (``server_no_context_takeover``), so a
    publication is compressed once per window size and shared by its subscribers."""
    deflate_threshold: int = 64
    """Messages shorter than this many bytes go out uncompressed, as do those that compression
    does not shrink. 0 compresses every message (some clients' test suites expect that)."""
    deflate_level: int = 6
    deflate_client_context_takeover: bool = False
    """Let clients keep their compression window between messages (better ratio for what they
    send, at 32 KiB or more of server memory per connection for its lifetime). Off: the server
    answers ``client_no_context_takeover`` and holds no window between messages. Inbound
    compressed messages are capped by ``max_message_bytes`` after inflation (close 1009)."""
    msgpack: bool = True
    """Clients may ask for msgpack (``M:`` frames) with ``?format=msgpack``."""
    encryption: Literal["off", "optional", "required"] = "optional"
    """E2E encryption (ECDH P-256, AES-GCM-256). ``optional``: clients that send a key in
    ``client_hello`` get it. ``required``: application traffic waits for the key exchange."""
    key_rotation_ms: int = 3_600_000
    """Re-key encrypted connections this often (clients that announce ``key_rotation``); 0: never."""
    key_rotation_grace_ms: int = 30_000
    batch_keys: bool = True
    """Encrypted fan-out sealed once per publication: a topic's publications to several
    encrypted subscribers are sealed under the topic's key (replaced whenever a subscriber
    leaves), which each subscriber that announces ``batch_keys`` gets sealed under its own (then
    the shared ``G:`` frames). Off: every frame is sealed per connection, as for clients that do
    not announce it."""
    key_exchange_timeout_ms: int = 10_000
    """With ``encryption="required"``: close (4403) connections still without a key by then."""
    recovery: bool = False
    """Keep recent publications per topic, so reconnecting subscribers get what they missed."""
    recovery_buffer: int = 256
    """Publications kept per topic."""
    recovery_ttl_ms: int = 300_000
    recovery_max_bytes: int = 64 << 20
    """Memory for all recovery buffers together."""
    redis_url: str | None = None
    """Join other hosts through Redis (``redis://host:6379``) or a Redis Cluster (its seed
    URLs, comma-separated): publications cross to the hosts with subscribers, and with
    ``recovery`` Redis gives each topic one epoch and offset run for the whole deployment.
    ``wse run --redis URL`` sets it. See README "Several hosts"."""
    redis_prefix: str = "wse"
    """Prefix of every Redis key and channel (deployments sharing a Redis differ by it)."""
    redis_buffer: int = 10_000
    """Publications held for Redis while it is unreachable; past it they are dropped (counted)."""
    redis_stream_len: int = 0
    """History kept per topic in Redis (stream ``MAXLEN ~``); 0: ``recovery_buffer``."""
    redis_presence_ttl_ms: int = 10_000
    """With ``presence`` and Redis: a worker renews its presence in Redis every second; one
    that stops renewing (its host died) is gone from the other hosts' presence after this
    (its users leave there unless connected elsewhere). At least 2000."""
    signing_key: str | None = None
    """HMAC-SHA256 key (32+ bytes): the server's envelopes carry ``sig``; signed client
    messages are verified (``INVALID_SIGNATURE`` when they do not)."""
    require_signatures: bool = False
    """Refuse unsigned application messages (needs ``signing_key``)."""
    tls_cert_file: str | None = None
    """PEM certificate chain: serve ``wss://`` on the client port (with ``tls_key_file``)."""
    tls_key_file: str | None = None

    # ---- limits on what clients send ----
    rate_limit_capacity: float = 100_000.0
    """Token bucket per connection: messages a client may send in a burst (0 turns the limit off).
    The default matches the published engine's; set it lower for public endpoints."""
    rate_limit_refill: float = 10_000.0
    """Messages per second the bucket refills."""
    rate_limit_warn_at: float = 0.2
    """``rate_limit_warning`` goes out once when this fraction of the bucket is left."""
    rate_limit_close_after: int = 500
    """Refused messages in a row before the connection is closed (0: never)."""
    rate_limit_close_code: int = 4429
    max_connections_per_user: int = 0
    """Connections one user (token ``sub``) may hold at once; 0 for no limit. Over it: close 4429."""

    # ---- presence and dedup ----
    presence: bool = False
    """Track which users are in each topic: ``on_presence`` events, ``presence()``, and
    ``presence_join``/``presence_leave``/``presence_update`` to clients that ask."""
    presence_max_data_bytes: int = 4096
    """Largest presence ``data`` (serialized JSON) a user may carry."""
    dedup_window: int = 50_000
    """Idempotency keys and client message ids remembered (0 turns dedup off)..."""
    dedup_window_ms: int = 300_000
    """...and for how long at most."""
    dedup_inbound: bool = True
    """Drop a client message whose ``id`` the same user already sent within the window."""

    # ---- handlers (Python side) ----
    handler_timeout_ms: int = 30_000
    """An async handler running longer is cancelled and counts as a failure (0: no timeout);
    a sync handler running longer counts as a failure once it returns."""
    breaker_failures: int = 5
    """Failures in a row that open a message type's circuit breaker (0: no breaker)."""
    breaker_reset_ms: int = 10_000
    """How long an open breaker refuses before it lets probe messages through."""
    breaker_probes: int = 1
    """Probe messages that must succeed, while half-open, to close the breaker."""

    def replace(self, **changes: object) -> WSEConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def engine_json(self, *, subscribe_hook: bool = False) -> str:
        """The settings the Rust engine reads."""
        data = dataclasses.asdict(self)
        for python_only in ("drain_batch", "handler_timeout_ms", "breaker_failures", "breaker_reset_ms", "breaker_probes"):
            data.pop(python_only)
        data["subscribe_hook"] = subscribe_hook
        return orjson.dumps(data).decode()
