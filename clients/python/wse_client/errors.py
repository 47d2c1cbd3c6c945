"""Exceptions raised by the client."""

from __future__ import annotations


class WSEError(Exception):
    """Base class of every error this package raises."""


class MissingDependency(WSEError, ImportError):
    """An optional feature was asked for without its extra installed (``crypto``, ``msgpack``)."""


class ConnectionLost(WSEError, ConnectionError):
    """The connection is gone and will not come back (closed, or reconnecting gave up)."""


class AuthError(WSEError):
    """The server refused the token (close code 4401 or an ``AUTH_*`` error)."""


class EncryptionError(WSEError):
    """The key exchange failed, the server cannot encrypt, or a frame did not decrypt."""


class RequestError(WSEError):
    """The server answered a :meth:`~wse_client.WSEClient.request` with an ``error`` envelope."""

    def __init__(self, code: str, message: str, payload: object = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.payload = payload


class QueueOverflow(WSEError):
    """The receive queue was full under the ``"error"`` overflow policy."""
