"""A test-side client for the encodings: E2E encryption (written from the protocol with the
`cryptography` package, independently of the engine's Rust), zlib and msgpack frames."""

from __future__ import annotations

import asyncio
import base64
import os
import zlib
from typing import Any

import msgpack
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import envelope

INFO = b"wse-encryption/aes-gcm-key"


def hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(ikm)


def decode_frame(data: str | bytes, key: bytes | None = None) -> dict[str, Any]:
    """One server frame to its envelope: JSON text or binary, ``C:``, ``M:`` or ``E:``."""
    if isinstance(data, str):
        return orjson.loads(data)  # type: ignore[no-any-return]
    if data[:2] == b"E:":
        assert key is not None, "encrypted frame without a key"
        return orjson.loads(AESGCM(key).decrypt(data[2:14], data[14:], None))  # type: ignore[no-any-return]
    if data[:2] == b"C:":
        return orjson.loads(zlib.decompress(data[2:]))  # type: ignore[no-any-return]
    if data[:2] == b"M:":
        return msgpack.unpackb(data[2:], raw=False)  # type: ignore[no-any-return]
    return orjson.loads(data)  # type: ignore[no-any-return]


class E2EClient:
    """A WebSocket client that does the key exchange and speaks `E:` frames.

    ``frames`` keeps every raw frame received after ``server_hello``, to check that none was
    plaintext. ``key`` follows the server's ``key_rotation`` announcements.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.key: bytes | None = None
        # Batch keys by id (``batch_keys=True``), each with the last nonce counter opened.
        self.batch: dict[bytes, list[Any]] = {}
        self.key_frames: list[bytes] = []
        self.previous_key: bytes | None = None
        self.generation = 0
        self.frames: list[str | bytes] = []
        self._counter = 0
        self._prefix = os.urandom(4)

    @classmethod
    async def open(cls, url: str, *, rotation: bool = False, public_key: str | None = None, batch_keys: bool = False,
                   **kw: Any) -> tuple[E2EClient, dict[str, Any]]:
        ws = await connect(url, max_size=None, **kw)
        c = cls(ws)
        ready = decode_frame(await asyncio.wait_for(ws.recv(), 5))
        assert ready["t"] == "server_ready", ready
        priv = ec.generate_private_key(ec.SECP256R1())
        pub = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        features = {"compression": False, "encryption": True, "key_rotation": rotation, "batch_keys": batch_keys}
        hello = {"client_version": "test", "protocol_version": 2, "features": features,
                 "encryption_public_key": public_key or base64.b64encode(pub).decode()}
        await ws.send(envelope("client_hello", hello, c="WSE"))
        while True:
            msg = decode_frame(await asyncio.wait_for(ws.recv(), 5))
            if msg["t"] in ("server_hello", "error"):
                break
        if msg["t"] == "server_hello" and msg["p"].get("encryption_public_key"):
            server = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), base64.b64decode(msg["p"]["encryption_public_key"])
            )
            c.key = hkdf(priv.exchange(ec.ECDH(), server), INFO)
        return c, msg

    def seal(self, plain: bytes, key: bytes | None = None) -> bytes:
        self._counter += 1
        iv = self._prefix + self._counter.to_bytes(8, "big")
        k = key or self.key
        assert k is not None
        return b"E:" + iv + AESGCM(k).encrypt(iv, plain, None)

    async def send(self, t: str, p: Any = None, c: str | None = None) -> bytes:
        frame = self.seal(envelope(t, p, c))
        await self.ws.send(frame)
        return frame

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next envelope; `key_rotation` is applied (and returned) as it arrives."""
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        self.frames.append(data)
        if isinstance(data, bytes) and data[:2] == b"G:":
            return self.open_shared(data)
        msg = decode_frame(data, self.key)
        if msg["t"] == "batch_key":
            assert isinstance(data, bytes) and data[:2] == b"E:", "a batch key must come sealed"
            self.batch[bytes.fromhex(msg["p"]["id"])] = [base64.b64decode(msg["p"]["key"]), 0]
            self.key_frames.append(data)
        if msg["t"] == "key_rotation":
            gen = msg["p"]["generation"]
            assert self.key is not None
            self.previous_key, self.key = self.key, hkdf(self.key, b"wse-encryption/rotate/" + str(gen).encode())
            self.generation = gen
        return msg

    def open_shared(self, data: bytes) -> dict[str, Any]:
        """A ``G:`` frame: key id (8 bytes, authenticated), nonce, ciphertext and tag, under a
        batch key received earlier; its nonce counter must be past the last one opened."""
        kid, nonce, sealed = data[2:10], data[10:22], data[22:]
        assert kid in self.batch, "G: frame before its batch key"
        key, last = self.batch[kid]
        counter = int.from_bytes(nonce[4:], "big")
        assert counter > last, f"nonce {counter} not past {last}"
        self.batch[kid][1] = counter
        return orjson.loads(AESGCM(key).decrypt(nonce, sealed, kid))  # type: ignore[no-any-return]

    async def recv_type(self, t: str, timeout: float = 5.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if msg["t"] == t:
                return msg

    async def close(self) -> None:
        await self.ws.close()
