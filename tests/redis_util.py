"""Real Redis for the tests: a ``redis-server`` (Debian's package) on a free loopback port, and a
Redis Cluster of three masters with one replica each, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time


def redis_server() -> str:
    path = shutil.which("redis-server")
    assert path, "redis-server is missing: tests/run_all.sh installs it (Debian package 'redis-server')"
    return path


def free_port() -> int:
    """A free loopback port whose +10000 (a cluster node's bus port) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                       capture_output=True, text=True, timeout=timeout)
    return r.stdout.strip()


class RedisServer:
    """One ``redis-server`` on 127.0.0.1; ``kill`` and ``start`` again keep the port."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="wse-redis-")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait_up()

    def wait_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while cli(self.port, "PING") != "PONG":
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters and three replicas (``--cluster-replicas 1``) on free loopback ports."""

    def __init__(self) -> None:
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                                  "--cluster-replica-validity-factor", "0",
                                  "--cluster-config-file", "nodes.conf") for _ in range(6)]
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        r = subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "1", "--cluster-yes"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout} {r.stderr}")
        self.wait_ok()

    @property
    def url(self) -> str:
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes[:3])

    def wait_ok(self, timeout: float = 30.0, skip: int | None = None) -> None:
        """Until every live node says the cluster is ok and every replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [cli(n.port, "CLUSTER", "INFO") for i, n in enumerate(self.nodes) if i != skip and n.proc
                     and n.proc.poll() is None]
            links = [cli(n.port, "INFO", "replication") for i, n in enumerate(self.nodes) if i != skip and n.proc
                     and n.proc.poll() is None]
            synced = all("role:master" in r or "master_link_status:up" in r for r in links)
            if infos and all("cluster_state:ok" in i for i in infos) and synced:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster never became ok: {infos}")
            time.sleep(0.1)

    def master_of(self, key: str) -> int:
        """The index of the node serving ``key``'s slot now (as a live node sees it)."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        slot = int(cli(live[0].port, "CLUSTER", "KEYSLOT", key))
        for line in cli(live[0].port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and _has_slot(parts[8:], slot):
                port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise RuntimeError(f"no master serves slot {slot}")

    def fail_over(self, key: str, timeout: float = 30.0) -> int:
        """Kills the master serving ``key`` and waits until its replica serves the slot."""
        victim = self.master_of(key)
        self.nodes[victim].kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.master_of(key) != victim:
                    break
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("no replica took over")
            time.sleep(0.1)
        self.wait_ok(timeout, skip=victim)
        return victim

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def _has_slot(ranges: list[str], slot: int) -> bool:
    for r in ranges:
        if r.startswith("["):
            continue
        lo, _, hi = r.partition("-")
        if int(lo) <= slot <= int(hi or lo):
            return True
    return False


def redis_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
