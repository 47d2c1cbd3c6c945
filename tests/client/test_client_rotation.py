"""Key rotation and nonces, against a small server written here to the wire rules our engine
implements (docs/PROTOCOL.md, "Encryption"): after the key exchange the server may send
``key_rotation {generation: N}`` under the current key and use
HKDF-SHA256(current key, no salt, "wse-encryption/rotate/N") from its next frame on; the client
must switch its own sending to the new key."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.server import ServerConnection, serve

from wse_client import connect


def hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(ikm)


class RotatingServer:
    def __init__(self) -> None:
        self.client_nonces: list[bytes] = []
        self.frames_by_generation: dict[int, int] = {}
        self.hello: dict[str, Any] = {}
        self.plain_after_exchange = 0

    async def handle(self, ws: ServerConnection) -> None:
        await ws.send(orjson.dumps({"c": "WSE", "t": "server_ready", "p": {"details": {"features": {"encryption": True}}}}).decode())
        hello = orjson.loads(await ws.recv())
        assert hello["t"] == "client_hello"
        self.hello = hello["p"]
        priv = ec.generate_private_key(ec.SECP256R1())
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), base64.b64decode(hello["p"]["encryption_public_key"]))
        keys = [hkdf(priv.exchange(ec.ECDH(), peer), b"wse-encryption/aes-gcm-key")]
        pub = base64.b64encode(priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)).decode()
        await ws.send(orjson.dumps({"c": "WSE", "t": "server_hello", "p": {"encryption_public_key": pub, "features": {"encryption": True}}}).decode())

        async def send(env: dict[str, Any]) -> None:
            nonce = os.urandom(12)
            await ws.send(b"E:" + nonce + AESGCM(keys[-1]).encrypt(nonce, orjson.dumps(env), None))

        async for frame in ws:
            if isinstance(frame, str):
                self.plain_after_exchange += 1
                continue
            assert frame[:2] == b"E:"
            nonce, body = frame[2:14], frame[14:]
            self.client_nonces.append(nonce)
            for gen in range(len(keys) - 1, -1, -1):  # newest first; older ones during the grace time
                try:
                    msg = orjson.loads(AESGCM(keys[gen]).decrypt(nonce, body, None))
                    break
                except InvalidTag:
                    continue
            else:
                raise AssertionError("a client frame decrypted under no key")
            self.frames_by_generation[gen] = self.frames_by_generation.get(gen, 0) + 1
            if msg["t"] == "echo":
                await send({"c": "U", "t": "echo", "p": {**msg["p"], "gen": gen}})
            elif msg["t"] == "rotate":
                n = len(keys)
                await send({"c": "WSE", "t": "key_rotation", "p": {"generation": n}})
                keys.append(hkdf(keys[-1], b"wse-encryption/rotate/" + str(n).encode()))


def test_key_rotation_and_unique_nonces() -> None:
    srv = RotatingServer()

    async def main() -> None:
        async with serve(srv.handle, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/wse", encryption=True) as client:
                assert client.encrypted
                assert srv.hello["features"]["key_rotation"] is True
                seen = []
                for step in range(3):
                    for i in range(50):
                        await client.send("echo", {"i": i})
                        ev = await client.recv(5)
                        assert ev.payload == {"i": i, "gen": step}  # the server read us under key `step`
                        seen.append(ev.payload["gen"])
                    await client.send("rotate", {})
                    await asyncio.sleep(0.1)
                assert srv.frames_by_generation == {0: 51, 1: 51, 2: 51}
                assert client.stats["bad_frames"] == 0

        assert srv.plain_after_exchange == 0
        assert len(set(srv.client_nonces)) == len(srv.client_nonces) == 153

    asyncio.run(main())


def test_key_rotation_off_is_advertised() -> None:
    srv = RotatingServer()

    async def main() -> None:
        async with serve(srv.handle, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/wse", encryption=True, key_rotation=False) as client:
                await client.send("echo", {"x": 1})
                assert (await client.recv(5)).payload == {"x": 1, "gen": 0}
        assert srv.hello["features"]["key_rotation"] is False

    asyncio.run(main())
