"""The engine's log records, handed to Python's ``logging`` under the ``wse`` logger.

The Rust engine never takes the GIL to log: its records wait in a bounded queue in Rust, and
a daemon thread here (``wse-engine-log``) blocks in ``_runtime.log_take`` without the GIL,
then logs each record through ``logging.getLogger(name)``: ``wse.engine`` (the engine),
``wse.mesh`` (the cluster's links), ``wse.access`` (one debug line per refused handshake).

Levels: the engine records only what the most verbose of those loggers would emit (read from
their effective levels when the engine starts and about once a second after), so a disabled
level costs the engine one atomic load and nothing reaches Python.
"""

from __future__ import annotations

import atexit
import logging
import threading

from . import _runtime

LOGGERS = ("wse", "wse.engine", "wse.mesh", "wse.access")
_WAKE_MS = 1000

_lock = threading.Lock()
_thread: threading.Thread | None = None
_closed = False
_level: int | None = None


def sync_level() -> None:
    """Tells the engine the most verbose level any ``wse`` logger emits now."""
    global _level
    lowest = min(logging.getLogger(n).getEffectiveLevel() for n in LOGGERS)
    if lowest == logging.NOTSET:  # only the root logger's level is NOTSET-free; stay safe
        lowest = logging.WARNING
    if lowest != _level:
        _level = lowest
        _runtime.log_level(lowest)


def start() -> None:
    """Starts handing engine records to ``logging`` (once per process; later calls refresh the level)."""
    global _thread
    sync_level()
    with _lock:
        if _thread is not None or _closed:
            return
        _thread = threading.Thread(target=_pump, name="wse-engine-log", daemon=True)
        _thread.start()
        atexit.register(_stop)


def _pump() -> None:
    engine = logging.getLogger("wse.engine")
    while not _closed:
        records, dropped = _runtime.log_take(_WAKE_MS)
        if _closed:
            return
        if dropped:
            engine.warning("%d engine log records dropped: Python took them too slowly", dropped)
        for level, name, message in records:
            logger = logging.getLogger(name)
            if logger.isEnabledFor(level):
                logger.log(level, "%s", message)
        sync_level()


def _stop() -> None:
    global _closed
    _closed = True
    _runtime.log_close()
    if _thread is not None:
        _thread.join(timeout=2 * _WAKE_MS / 1000)
