"""The demo's web side: static files, the engine's URL (/config.json) and tokens (/token).

A real application would hand out tokens after its own login; this one signs an HS256 JWT for
whatever ``sub`` the page asks for, with the engine's secret, so keep it on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mimetypes
import pathlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(secret: str, sub: str, exp_in: int = 300) -> str:
    """An HS256 JWT for ``sub`` expiring ``exp_in`` seconds from now."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": sub, "exp": int(time.time()) + exp_in}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


class WebServer:
    """Serves ``roots`` (URL prefix to directory), ``/config.json`` and ``/token`` on a thread."""

    def __init__(self, roots: dict[str, pathlib.Path], secret: str, engine_url: str, host: str = "127.0.0.1", port: int = 0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                if url.path.endswith("/token"):
                    sub = q.get("sub", ["visitor"])[0][:64]
                    exp_in = max(1, min(int(q.get("exp_in", ["300"])[0]), 86_400))
                    return self._send(200, sign_token(outer.secret, sub, exp_in).encode(), "text/plain")
                if url.path.endswith("/config.json"):
                    return self._send(200, json.dumps({"engine": outer.engine_url}).encode(), "application/json")
                for prefix, root in outer.roots.items():
                    if url.path.startswith(prefix):
                        rel = url.path[len(prefix):].lstrip("/") or "index.html"
                        f = (root / rel).resolve()
                        if root.resolve() in f.parents and f.is_file():
                            kind = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
                            return self._send(200, f.read_bytes(), kind)
                self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        self.roots = roots
        self.secret = secret
        self.engine_url = engine_url
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
