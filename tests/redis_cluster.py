"""A real Redis Cluster for the tests: 3 primaries and 3 replicas from Debian's redis-server,
joined by `redis-cli --cluster create` (.ci/redis-cluster.sh installs them), with the
failovers and node stops the cluster tests inflict on it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING = (
    None
    if REDIS_SERVER and REDIS_CLI
    else "redis-server and redis-cli are not installed (.ci/redis-cluster.sh installs "
    "Debian's redis-server and redis-tools)"
)
NODES = 6
# A primary that stops answering is failed over after this long: small, so the tests are quick.
NODE_TIMEOUT_MS = 2000


def _free_port_pair() -> int:
    """A port P with P + 10000 (its cluster bus) free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            port = port % 20000 + 20000
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@dataclass
class RedisClusterNodes:
    base: Path
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisClusterNodes:
        while len(self.ports) < NODES:
            port = _free_port_pair()
            if port not in self.ports:
                self.ports.append(port)
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [REDIS_CLI or "redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in self.ports]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def start_node(self, port: int) -> None:
        folder = self.base / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "cluster-enabled": "yes",
            "cluster-config-file": f"nodes-{port}.conf",
            "cluster-node-timeout": str(NODE_TIMEOUT_MS),
            "appendonly": "yes",
            "save": "",
            "dir": str(folder),
            "logfile": str(folder / "log"),
        }
        args = [a for name, value in options.items() for a in (f"--{name}", value)]
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER or "redis-server", *args], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client(port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, single_connection_client=True)

    def info(self, port: int) -> dict[str, str]:
        with self.client(port) as c:
            text = c.execute_command("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self, timeout_s: float = 60) -> None:
        """Until every running node says cluster_state:ok and agrees who serves every slot."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                running = [p for p in self.ports if self.procs[p].poll() is None]
                if all(self.info(p)["cluster_state"] == "ok" for p in running):
                    owners = {tuple(sorted(self.slot_owners(p).items())) for p in running}
                    if len(owners) == 1:
                        return
            except (redis.RedisError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not become ok")
            time.sleep(0.1)

    def slot_owners(self, port: int) -> dict[int, int]:
        """First slot of each range -> port of its primary, as one node sees them."""
        with self.client(port) as c:
            ranges = c.execute_command("CLUSTER", "SLOTS")
        return {int(r[0]): int(r[2][1]) for r in ranges}

    def primary_of(self, key: str) -> int:
        slot = key_slot(key.encode())
        running = next(p for p in self.ports if self.procs[p].poll() is None)
        with self.client(running) as c:
            ranges = c.execute_command("CLUSTER", "SLOTS")
        return next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))

    def primaries(self) -> set[int]:
        running = next(p for p in self.ports if self.procs[p].poll() is None)
        return set(self.slot_owners(running).values())

    def replica_of(self, primary: int) -> int:
        with self.client(primary) as c:
            node_id = c.execute_command("CLUSTER", "MYID").decode()
        for port in self.ports:
            if port == primary or self.procs[port].poll() is not None:
                continue
            if self.role(port) == "slave" and self._master_id(port) == node_id:
                return port
        raise LookupError(f"no replica of {primary}")

    def _master_id(self, port: int) -> str:
        with self.client(port) as c:
            for line in c.execute_command("CLUSTER", "NODES").decode().splitlines():
                parts = line.split()
                if "myself" in parts[2]:
                    return parts[3]
        return ""

    def failover(self, primary: int) -> int:
        """A coordinated failover (CLUSTER FAILOVER on the replica: it takes over once it has
        every write), as an operator does before stopping a primary. Returns the new primary."""
        replica = self.replica_of(primary)
        deadline = time.monotonic() + 30
        while self.role(replica) != "master":
            if time.monotonic() > deadline:
                raise TimeoutError("the failover did not happen")
            self.wait_synced(replica)
            with self.client(replica) as c:
                c.execute_command("CLUSTER", "FAILOVER")  # times out by itself if it cannot
            retry_at = time.monotonic() + 5
            while self.role(replica) != "master" and time.monotonic() < retry_at:
                time.sleep(0.05)
        self.wait_ok()
        return replica

    @contextlib.contextmanager
    def replica_cut_off(self, primary: int) -> Iterator[int]:
        """The primary keeps serving clients while its replica cannot follow (a network
        partition between the two): its replication link is dropped and the primary refuses
        the replica's resync (an ACL denying the replication commands). TCP buffers would
        hand a merely frozen replica everything. Yields the replica; mended at exit if the
        primary still runs."""
        replica = self.replica_of(primary)
        with self.client(primary) as c:
            c.execute_command("ACL", "SETUSER", "default", "-psync", "-sync", "-replconf")
            c.execute_command("CLIENT", "KILL", "TYPE", "replica")
        try:
            yield replica
        finally:
            if self.procs[primary].poll() is None:
                with self.client(primary) as c:
                    c.execute_command("ACL", "SETUSER", "default", "+@all")

    def wait_promoted(self, replica: int, timeout_s: float = 30) -> None:
        """Until the replica has taken over its failed primary's slots (no CLUSTER FAILOVER:
        the others saw the primary fail and elected it)."""
        deadline = time.monotonic() + timeout_s
        while self.role(replica) != "master":
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {replica} was not promoted")
            time.sleep(0.05)
        self.wait_ok()

    def wait_synced(self, replica: int, timeout_s: float = 30) -> None:
        """Until the replica's link to its primary is up (a failover needs it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.client(replica) as c:
                if c.info("replication").get("master_link_status") == "up":
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {replica} is not in sync")
            time.sleep(0.05)

    def role(self, port: int) -> str:
        with self.client(port) as c:
            return c.execute_command("ROLE")[0].decode()

    def stop_node(self, port: int) -> None:
        """SIGKILL: the node dies as on a machine loss."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def flush(self) -> None:
        for port in self.primaries():
            with self.client(port) as c:
                c.flushall()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
