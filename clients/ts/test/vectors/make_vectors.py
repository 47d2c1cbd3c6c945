"""Writes test/vectors/vectors.json: E2E, zlib and msgpack frames made by our Python client
(clients/python, wse_client) for the TypeScript client's unit tests to check byte for byte.

Run from the repository root with the Python client installed with its extras:
    python clients/ts/test/vectors/make_vectors.py
"""

from __future__ import annotations

import base64
import json
import pathlib
import zlib

import msgpack
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wse_client import _crypto

HERE = pathlib.Path(__file__).parent


def b64u(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


def session_from(scalar: int) -> _crypto.Session:
    s = _crypto.Session()
    s._private = ec.derive_private_key(scalar, ec.SECP256R1())
    return s


def main() -> None:
    client_d = 0x1F2E3D4C5B6A798800112233445566778899AABBCCDDEEFF0102030405060708
    server_d = 0x7A6B5C4D3E2F10012345678987654321FEDCBA98765432100F1E2D3C4B5A6978
    client = session_from(client_d)
    server = session_from(server_d)
    nums = client._private.private_numbers()
    client.complete(server.public_key_b64)
    server.complete(client.public_key_b64)
    prefix = bytes.fromhex("a1b2c3d4")
    frames = []
    plains = ['{"c":"U","t":"pub","p":{"i":0}}', '{"t":"echo","p":{"text":"héllo ✓"}}']
    for gen in (0, 1, 2):
        if gen:
            server.rotate(gen)
            client.rotate(gen)
        for sealer in (server._send,):
            sealer._prefix = prefix
            sealer._counter = 7
        for text in plains:
            frames.append({"generation": gen, "key": server._send.key.hex(), "plaintext": text,
                           "frame": server.encrypt(text.encode()).hex()})
    env = {"c": "U", "t": "pub", "tp": "prices", "e": "5f3a9c01", "o": 42, "seq": 42,
           "p": {"sym": "EURUSD", "bid": 1.0842, "qty": 1000000, "tags": ["fx", "spot"], "ok": True, "none": None}}
    text = json.dumps(env, separators=(",", ":"), ensure_ascii=False)
    out = {
        "client_jwk": {"kty": "EC", "crv": "P-256", "x": b64u(nums.public_numbers.x), "y": b64u(nums.public_numbers.y), "d": b64u(client_d)},
        "client_public_b64": client.public_key_b64,
        "server_public_b64": server.public_key_b64,
        "session_key": frames[0]["key"],
        "nonce_prefix": prefix.hex(),
        "nonce_counter": 7,
        "sealed": frames,
        "envelope": env,
        "zlib_frame": (b"C:" + zlib.compress(text.encode())).hex(),
        "raw_zlib_frame": zlib.compress(text.encode(), 9).hex(),
        "msgpack_frame": (b"M:" + msgpack.packb(env)).hex(),
    }
    (HERE / "vectors.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
