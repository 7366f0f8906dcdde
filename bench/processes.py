"""Starting a service and waiting for something: one way, instead of a polling loop per
place. Nothing here is bench-specific; the tests may use it too.

    service = start("ingest", env)           # `queueflow ingest` on a free port, /healthz 200
    wait_until(lambda: backlog() == 0, 60)   # polls, returns the predicate's true value
    service.stop()
"""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import psutil

from queueflow.embedded import free_port

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, *, interval_s: float = 0.05, what: str = ""
) -> T:
    """Call `predicate` every `interval_s` until it returns something true, and return that.
    TimeoutError (naming `what`) after `timeout_s`; what the predicate raises propagates."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", "condition")
            raise TimeoutError(f"{name}: not so within {timeout_s} s")
        time.sleep(interval_s)


@dataclass
class Service:
    """A process started by `start` and the loopback URL it answers on."""

    proc: subprocess.Popen
    url: str
    port: int

    @functools.cached_property
    def process(self) -> psutil.Process:
        """The same process for psutil's figures (CPU times, RSS)."""
        return psutil.Process(self.proc.pid)

    def answers(self, path: str | None) -> bool:
        """GET `path` answers 200 (path None: the port accepts a connection). RuntimeError
        once the process has exited: it never will."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.url}: exited with {self.proc.returncode}")
        with contextlib.suppress(OSError, httpx.HTTPError):
            if path is None:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            return httpx.get(f"{self.url}{path}", timeout=1).status_code == 200
        return False

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait (SIGKILL when it outlasts `timeout_s`); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start(
    command: str | Sequence[str],
    env: Mapping[str, str],
    *,
    ready: str | None = "/healthz",
    port: int | None = None,
    timeout_s: float = 30,
    **popen: Any,
) -> Service:
    """Start `queueflow <command>` on a free loopback port (or `command` as a whole argv, which
    must listen on `port`) with exactly `env`, and return once GET `ready` answers 200
    (ready=None: once the port accepts connections). `popen` goes to subprocess.Popen
    (stdout, cwd). A process that exits or is not ready in time is stopped and raises."""
    port = port or free_port()
    if isinstance(command, str):
        name, argv = command, [sys.executable, "-m", "queueflow", command, "--host", "127.0.0.1"]
        argv += ["--port", str(port)]
    else:
        argv = list(command)
        name = " ".join(argv)
    service = Service(
        subprocess.Popen(argv, env=dict(env), **popen), f"http://127.0.0.1:{port}", port
    )
    try:
        wait_until(lambda: service.answers(ready), timeout_s, what=f"{name} ready on {service.url}")
    except BaseException:
        service.stop(5)
        raise
    return service


@contextlib.contextmanager
def running(
    command: str | Sequence[str], env: Mapping[str, str], **kwargs: Any
) -> Iterator[Service]:
    """`start`, and `stop` at exit."""
    service = start(command, env, **kwargs)
    try:
        yield service
    finally:
        service.stop()
