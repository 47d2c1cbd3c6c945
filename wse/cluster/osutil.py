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


SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_AD_OFF = -0x1000
_SKF_AD_CPU = 36
# Classic BPF opcodes.
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K
_BPF_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def steer_by_cpu(sock: socket.socket, groups: int) -> None:
    """Attaches a classic BPF program to the socket's SO_REUSEPORT group that picks the socket
    at index (receiving CPU mod ``groups``): with the slots' sockets created in CPU order and
    each slot's worker pinned to its CPU, a connection goes to the worker on the CPU that
    processed its packets. The kernel falls back to its hash if the index is out of range."""
    prog = (_SockFilter * 3)(
        _SockFilter(_BPF_LD_W_ABS, 0, 0, (_SKF_AD_OFF + _SKF_AD_CPU) & 0xFFFFFFFF),
        _SockFilter(_BPF_ALU_MOD_K, 0, 0, groups),
        _SockFilter(_BPF_RET_A, 0, 0, 0),
    )
    fprog = _SockFprog(3, ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.setsockopt(sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                         ctypes.byref(fprog), ctypes.sizeof(fprog))
    if rc != 0:
        raise OSError(ctypes.get_errno(), "setsockopt(SO_ATTACH_REUSEPORT_CBPF) failed")
