"""What every peer server does, whatever its framework: the benchmark's small protocol.

The load generator (``wse-loadgen``) speaks the WSE v2 envelope. Each peer under ``bench/peers/``
answers just enough of it for every scenario, with the same message shapes as the WSE app
(``bench/peers/wse_app.py``) and the reference (``bench/peers/ref_server.py``):

- on connect: the JWT (HS256, ``Authorization: Bearer`` or the ``access_token`` cookie) is
  verified when the server was given a secret (a bad token is refused), then
  ``{"c":"WSE","t":"server_ready",...}`` is sent;
- ``subscription_update`` (subscribe/unsubscribe ``topics``): done, and acknowledged with
  ``success_topics``;
- ``bench.publish`` ``{topic, count, start, size, frame_bytes}``: ``count`` messages (sequences
  ``start`` .. ``start + count - 1``) of about ``size``
  bytes of JSON ``{"s": seq, "d": "xx.."}`` in the envelope ``{c,t,seq,tp,p}`` (serialised once,
  sent to every subscriber; with ``frame_bytes``, each whole frame padded to exactly that many
  bytes), then ``bench.done`` to the requester;
- ``bench.users`` ``{prefix, users, count, size}``: per-user sends (the many-topics scenario):
  ``count`` messages to each topic ``prefix + i`` for i < ``users``, then ``bench.done``;
- ``count``: counted (the inbound scenario's trivial handler); ``bench.stats`` answers
  ``{"received": N}``;
- ``echo``: the payload is sent back (the latency scenario).

The framework-specific part of a peer is its transport: how it accepts, reads and writes.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.cookies import SimpleCookie
from typing import Any

import orjson

dumps = orjson.dumps
loads = orjson.loads


def pad_for(size: int) -> str:
    """Padding so that ``{"s":N,"d":"<pad>"}`` is about ``size`` bytes (N up to 5 digits)."""
    return "x" * max(0, size - len('{"s":12345,"d":""}'))


def tick(topic: str, s: int, size: int, frame_bytes: int = 0) -> bytes:
    """Publication ``s`` of a fan-out round in the minimal envelope ``{c,t,seq,tp,p:{s,d}}``: its
    payload about ``size`` bytes, or the whole frame exactly ``frame_bytes`` bytes when given (the
    same-bytes variant: every server sends as many bytes as wse does)."""
    def make(d: str) -> bytes:
        return dumps({"c": "U", "t": "tick", "seq": s + 1, "tp": topic, "p": {"s": s, "d": d}})

    if not frame_bytes:
        return make(pad_for(size))
    return make("x" * max(0, frame_bytes - len(make(""))))


def peer_args(description: str, servers: tuple[str, ...] = ()) -> argparse.Namespace:
    """The peers' options (``servers``: a file that serves several, the one to run first)."""
    ap = argparse.ArgumentParser(description=description)
    if servers:
        ap.add_argument("server", choices=servers)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jwt-secret", default=None, help="verify an HS256 token on every connection")
    ap.add_argument("--deflate", action="store_true", help="permessage-deflate on (the fanout_deflate scenario)")
    return ap.parse_args()


def announce(name: str, host: str, port: int) -> None:
    """The line the harness waits for."""
    print(f"{name}: serving ws://{host}:{port}/wse pid {os.getpid()}", flush=True)


def announce_when_listening(name: str, host: str, port: int) -> None:
    """Announce from a thread once the port accepts (servers that own the main thread)."""
    import socket
    import threading
    import time

    def wait() -> None:
        for _ in range(600):
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        announce(name, host, port)

    threading.Thread(target=wait, daemon=True).start()


def token_from(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> str | None:
    """The token from ``Authorization: Bearer`` or the ``access_token`` cookie."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    cookie = None
    for k, v in items:
        k = k.lower() if isinstance(k, str) else k.decode().lower()
        v = v if isinstance(v, str) else v.decode()
        if k == "authorization" and v[:7].lower() == "bearer ":
            return v[7:].strip()
        if k == "cookie":
            cookie = v
    if cookie:
        c: SimpleCookie = SimpleCookie()
        c.load(cookie)
        if "access_token" in c:
            return c["access_token"].value
    return None


class Auth:
    """HS256 verification with PyJWT (``exp`` required), or nothing when no secret is given."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        if secret:
            import jwt

            self._decode = jwt.decode

    def check(self, headers: Any) -> str | None:
        """The user id (``sub``) or ``""`` with auth off; None when the token is refused."""
        if not self.secret:
            return ""
        tok = token_from(headers)
        if not tok:
            return None
        try:
            claims = self._decode(tok, self.secret, algorithms=["HS256"], options={"require": ["exp"]})
        except Exception:
            return None
        return str(claims.get("sub", ""))


def server_ready(user: str) -> bytes:
    return dumps({"c": "WSE", "t": "server_ready", "p": {"user_id": user}})


class Hub:
    """Topic subscriptions and the scenario handlers, over any transport; connections are any
    hashable object the transport uses. ``track=False``: the transport keeps the subscriptions
    itself (uWS's pub/sub), the hub only acknowledges them."""

    def __init__(self, track: bool = True) -> None:
        self.track = track
        self.topics: dict[str, dict[Any, None]] = {}
        self.received = 0

    def handle(self, conn: Any, data: bytes | str) -> tuple[str, Any, bytes | None]:
        """One inbound message: (type, payload, the reply to send or None). ``count``, ``echo``,
        ``subscription_update`` and ``bench.stats`` are done here; the publishing ones
        (``bench.publish``, ``bench.users``) are the transport's."""
        m = parse(data)
        if m is None:
            return "", None, None
        t, p = m
        if t == "count":
            self.received += 1
        elif t == "echo":
            return t, p, self.echo(p)
        elif t == "subscription_update":
            return t, p, self.subscribe(conn, p)
        elif t == "bench.stats":
            return t, p, self.stats()
        return t, p, None

    def drop(self, conn: Any) -> None:
        for subs in self.topics.values():
            subs.pop(conn, None)

    def subscribe(self, conn: Any, p: dict[str, Any]) -> bytes:
        topics = [str(t) for t in p.get("topics", [])]
        action = p.get("action", "subscribe")
        for t in topics if self.track else ():
            if action == "unsubscribe":
                self.topics.get(t, {}).pop(conn, None)
            else:
                self.topics.setdefault(t, {})[conn] = None
        return self.ack(action, topics)

    @staticmethod
    def ack(action: str, topics: list[str]) -> bytes:
        return dumps({"c": "WSE", "t": "subscription_update",
                      "p": {"action": action, "success": True, "success_topics": topics, "failed_topics": []}})

    def frames(self, p: dict[str, Any]) -> tuple[str, list[bytes]]:
        """The publications a ``bench.publish`` asks for, each serialised once."""
        topic = str(p.get("topic", "bench"))
        count, start = int(p.get("count", 1000)), int(p.get("start", 0))
        size, fb = int(p.get("size", 60)), int(p.get("frame_bytes", 0))
        return topic, [tick(topic, s, size, fb) for s in range(start, start + count)]

    @staticmethod
    def user_sends(p: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
        """(topic, frame) of every per-user send a ``bench.users`` asks for, message by message."""
        prefix = str(p.get("prefix", "u."))
        topics = [f"{prefix}{u}" for u in range(int(p.get("users", 0)))]
        size, fb = int(p.get("size", 60)), int(p.get("frame_bytes", 0))
        for s in range(int(p.get("count", 1))):
            for t in topics:
                yield t, tick(t, s, size, fb)

    @staticmethod
    def done(count: int) -> bytes:
        return dumps({"c": "U", "t": "bench.done", "p": {"published": count}})

    def stats(self) -> bytes:
        return dumps({"c": "U", "t": "bench.stats", "p": {"received": self.received}})

    @staticmethod
    def echo(p: Any) -> bytes:
        return dumps({"c": "U", "t": "echo", "p": p})


def parse(data: bytes | str) -> tuple[str, Any] | None:
    """(type, payload) of an inbound message, or None if it is not a JSON object."""
    try:
        m = loads(data)
    except Exception:
        return None
    if not isinstance(m, dict):
        return None
    return str(m.get("t") or m.get("type") or ""), m.get("p") or m.get("payload") or {}


def stop_on_signals(stop: Callable[[], None]) -> None:
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop())
