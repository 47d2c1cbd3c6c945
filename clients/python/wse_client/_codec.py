"""Encoding and decoding of wire frames: JSON text or bytes, ``C:`` zlib, ``M:`` msgpack, ``E:``.

JSON uses ``orjson`` when it is installed (the ``fast`` extra) and the standard library otherwise;
msgpack needs the ``msgpack`` extra.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

from .errors import MissingDependency, WSEError

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    loads: Callable[[bytes | str], Any] = orjson.loads
except ImportError:  # pragma: no cover - exercised by the no-extras import test
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode("utf-8")

    loads = json.loads

try:
    import msgpack as _msgpack  # type: ignore[import-untyped]

    HAVE_MSGPACK = True
except ImportError:  # pragma: no cover - exercised by the no-extras import test
    HAVE_MSGPACK = False

MAX_INFLATE = 16 * 1024 * 1024
"""Largest decompressed ``C:`` frame accepted (a bound against zlib bombs)."""


class FrameError(WSEError):
    """A frame that could not be decoded."""


def require_msgpack() -> None:
    if not HAVE_MSGPACK:
        raise MissingDependency("msgpack needs the 'msgpack' package: pip install 'wse-engine-client[msgpack]'")


def inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_INFLATE)
    except zlib.error as exc:
        raise FrameError(f"bad zlib frame: {exc}") from None
    if d.unconsumed_tail:
        raise FrameError(f"zlib frame inflates beyond {MAX_INFLATE} bytes")
    return out


def _json_bytes(data: bytes | str) -> Any:
    if isinstance(data, str):
        if data.startswith(("WSE{", "S{", "U{")):
            data = data[data.index("{") :]
    elif data.startswith((b"WSE{", b"S{", b"U{")):
        data = data[data.index(b"{") :]
    try:
        return loads(data)
    except ValueError as exc:
        raise FrameError(f"not JSON: {exc}") from None


def decode(data: bytes | str, decrypt: Callable[[bytes], bytes] | None) -> Any:
    """One received frame to a Python object (normally an envelope dict).

    ``decrypt`` opens ``E:`` frames (``None``: encryption is not set up, such frames are errors).
    """
    if isinstance(data, str):
        return _json_bytes(data)
    head = data[:2]
    if head == b"E:":
        if decrypt is None:
            raise FrameError("encrypted frame but encryption is not set up")
        return decode(decrypt(data[2:]), None)
    if head == b"C:":
        return _json_bytes(inflate(data[2:]))
    if head == b"M:":
        require_msgpack()
        try:
            return _msgpack.unpackb(data[2:], raw=False, strict_map_key=False)
        except Exception as exc:
            raise FrameError(f"bad msgpack frame: {exc}") from None
    if data[:1] == b"\x78":
        return _json_bytes(inflate(data))
    return _json_bytes(data)
