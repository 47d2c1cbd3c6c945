"""E2E encryption of the wire protocol: ECDH P-256, HKDF-SHA256, AES-256-GCM.

Frames are ``E:`` + 12-byte nonce + ciphertext + 16-byte tag; the plaintext is the JSON text of
one envelope. Nonces are 4 random bytes followed by a 64-bit counter, so they never repeat under
one key (the counter restarts, with a new random prefix, whenever the key changes).

Batch keys: a topic's publications to several encrypted subscribers come sealed once under the
topic's key (new whenever a subscriber left). Its key arrives first, as a ``batch_key`` system
message inside an ``E:`` frame (``{"id": 16 hex digits, "key": base64 of 32 bytes}``), then
``G:`` frames: ``G:`` + the 8-byte key id + 12-byte nonce + ciphertext + tag, the id being the
additional authenticated data. A ``G:`` frame whose nonce is not past the last one opened under
its key is a replay.

Needs the ``cryptography`` package (the ``crypto`` extra); importing this module without it
works, creating a :class:`Session` raises :class:`~wse_client.errors.MissingDependency`.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any
from .errors import EncryptionError, MissingDependency

SESSION_INFO = b"wse-encryption/aes-gcm-key"
ROTATE_INFO = b"wse-encryption/rotate/"
NONCE_LEN = 12
TAG_LEN = 16
BATCH_ID_LEN = 8
BATCH_KEYS_KEPT = 16

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    HAVE_CRYPTO = True
except ImportError:  # pragma: no cover - exercised by the no-extras import test
    HAVE_CRYPTO = False


def require_crypto() -> None:
    if not HAVE_CRYPTO:
        raise MissingDependency(
            "encryption needs the 'cryptography' package: pip install 'wse-engine-client[crypto]'"
        )


def hkdf(ikm: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with no salt, 32 bytes of output."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(ikm)


def rotated_key(key: bytes, generation: int) -> bytes:
    """The key after a ``key_rotation`` to ``generation``."""
    return hkdf(key, ROTATE_INFO + str(generation).encode())


class _Sealer:
    """AES-GCM under one key, with a never-repeating nonce."""

    __slots__ = ("key", "_aead", "_prefix", "_counter")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._aead = AESGCM(key)
        self._prefix = os.urandom(4)
        self._counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        nonce = self._prefix + struct.pack(">Q", self._counter)
        self._counter += 1
        return nonce + self._aead.encrypt(nonce, plaintext, None)

    def open(self, data: bytes) -> bytes:
        return self._aead.decrypt(data[:NONCE_LEN], data[NONCE_LEN:], None)


class Session:
    """One connection's key exchange and the keys that follow it."""

    def __init__(self) -> None:
        require_crypto()
        self._private = ec.generate_private_key(ec.SECP256R1())
        self._send: _Sealer | None = None
        self._recv: _Sealer | None = None
        self._previous: _Sealer | None = None
        self.generation = 0
        # Batch keys by id, oldest first: each with its cipher and the last nonce opened.
        self._batch: dict[bytes, list[Any]] = {}

    @property
    def public_key_b64(self) -> str:
        """Our public key for ``client_hello``: base64 of the 65-byte uncompressed point."""
        raw = self._private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return base64.b64encode(raw).decode("ascii")

    @property
    def ready(self) -> bool:
        return self._send is not None

    def complete(self, server_public_b64: str) -> None:
        """Derives the session key from the server's public key (from ``server_hello``)."""
        try:
            raw = base64.b64decode(server_public_b64, validate=True)
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except (ValueError, TypeError) as exc:
            raise EncryptionError(f"the server's encryption_public_key is not a P-256 point: {exc}") from None
        key = hkdf(self._private.exchange(ec.ECDH(), peer), SESSION_INFO)
        self._send = self._recv = _Sealer(key)

    def rotate(self, generation: int) -> None:
        """Switches to the next key (after a ``key_rotation`` from the server), both directions."""
        if self._recv is None:
            raise EncryptionError("key_rotation before the key exchange")
        nxt = _Sealer(rotated_key(self._recv.key, generation))
        self._previous = self._recv
        self._send = self._recv = nxt
        self.generation = generation

    def encrypt(self, plaintext: bytes) -> bytes:
        """An ``E:`` frame."""
        assert self._send is not None
        return b"E:" + self._send.seal(plaintext)

    def decrypt(self, frame: bytes) -> bytes:
        """The plaintext of an ``E:`` frame (``frame`` without the prefix)."""
        if self._recv is None:
            raise EncryptionError("an encrypted frame arrived before the key exchange")
        if len(frame) < NONCE_LEN + TAG_LEN:
            raise EncryptionError("encrypted frame too short")
        try:
            return self._recv.open(frame)
        except InvalidTag:
            if self._previous is not None:
                try:
                    return self._previous.open(frame)
                except InvalidTag:
                    pass
            raise EncryptionError("encrypted frame failed authentication") from None

    def take_batch_key(self, p: Any) -> None:
        """Keeps a batch key from a ``batch_key`` message (one that arrived inside an ``E:`` frame)."""
        try:
            kid = bytes.fromhex(p["id"])
            key = base64.b64decode(p["key"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise EncryptionError(f"malformed batch_key: {exc!r}") from None
        if len(kid) != BATCH_ID_LEN or len(key) != 32:
            raise EncryptionError("malformed batch_key: wrong id or key length")
        self._batch.pop(kid, None)
        self._batch[kid] = [AESGCM(key), -1]
        while len(self._batch) > BATCH_KEYS_KEPT:
            del self._batch[next(iter(self._batch))]

    def open_shared(self, frame: bytes) -> bytes:
        """The plaintext of a ``G:`` frame (``frame`` without the prefix)."""
        if len(frame) < BATCH_ID_LEN + NONCE_LEN + TAG_LEN:
            raise EncryptionError("shared encrypted frame too short")
        kid = bytes(frame[:BATCH_ID_LEN])
        entry = self._batch.get(kid)
        if entry is None:
            raise EncryptionError("shared encrypted frame under a batch key never received")
        nonce = bytes(frame[BATCH_ID_LEN : BATCH_ID_LEN + NONCE_LEN])
        counter = int.from_bytes(nonce[4:], "big")
        if counter <= entry[1]:
            raise EncryptionError("shared encrypted frame replayed")
        try:
            plain: bytes = entry[0].decrypt(nonce, bytes(frame[BATCH_ID_LEN + NONCE_LEN :]), kid)
        except InvalidTag:
            raise EncryptionError("shared encrypted frame failed authentication") from None
        entry[1] = counter
        return plain
