"""Process plumbing for the cluster: parent-death signal, CPU pinning, listening sockets."""

from __future__ import annotations

import ctypes
import os
import signal
import socket

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Asks the kernel to send ``sig`` when the parent dies; exits now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl: we would then have been re-parented already.
    if os.getppid() != parent_pid:
        os._exit(1)


def usable_cpus() -> list[int]:
    """The CPUs in this process's affinity mask, in order."""
    return sorted(os.sched_getaffinity(0))


def pin_to(cpu: int) -> None:
    """Pins this process (and the threads it starts later) to one CPU."""
    os.sched_setaffinity(0, {cpu})


def reuseport_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT, for one worker slot.

    The supervisor keeps it across the slot's worker restarts, so connections that arrive while
    a worker restarts wait in its backlog instead of being reset.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((host, port))
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    return s


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
