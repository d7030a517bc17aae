"""Running the product's processes on this machine: ``make run``, ``make bench`` and the
integration tests start Redis, the web server and Celery the same way through this module.

Everything listens on loopback only. Errors are ``StackError`` subclasses; the caller
decides how to report them (a management command exits, a test fails).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import redis

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class StackError(Exception):
    """A process of the stack did not start or did not come up."""


class WaitTimeout(StackError):
    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:.0f}s waiting for {what}")
        self.what = what
        self.timeout = timeout


class ProcessExited(StackError):
    def __init__(self, process: ManagedProcess) -> None:
        code = process.process.returncode if process.process else None
        super().__init__(f"{process.name} exited with code {code}")
        self.process = process


def free_port() -> int:
    """A TCP port nothing listens on at the moment (on loopback)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); ``WaitTimeout`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(what, timeout)
        time.sleep(interval)


def http_status(url: str, *, timeout: float = 2) -> int | None:
    """The status a GET of ``url`` answers with (redirects followed), ``None`` when nothing
    answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.ResponseError):
        return False
    finally:
        client.close()


class ManagedProcess:
    """A child process with its output in ``<log_dir>/<name>.log`` (or on this process's
    console when ``log_dir`` is None).

    With ``new_session`` (the default) it runs in a session of its own, so stopping it
    signals its whole process group: the web server's or Celery's workers never outlive it.
    Without, it shares this process's terminal, so Ctrl-C reaches it directly and only it
    is signalled (its group is also this process's).
    """

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_dir: Path | None,
        env: dict[str, str] | None = None,
        *,
        cwd: Path = PROJECT_ROOT,
        new_session: bool = True,
        unset: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log" if log_dir is not None else None
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
        self.cwd = cwd
        self.new_session = new_session
        self.process: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        # The child holds a descriptor of the log of its own: this process closes its copy.
        sink = open(self.log_path, "ab") if self.log_path else nullcontext()  # noqa: SIM115
        with sink as log:
            self.process = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=self.new_session,
            )
        return self

    def send_signal(self, sig: int) -> None:
        if self.alive:
            if self.new_session:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        stop_all([self], sig=sig, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process (and its group; replicas have sessions of their own)."""
        if self.alive:
            self.send_signal(signal.SIGKILL)
            self.process.wait()

    def wait_until(
        self, predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2
    ) -> T:
        """``wait_for`` that gives up with ``ProcessExited`` as soon as the process exits."""

        def check() -> T:
            value = predicate()
            if not value and not self.alive:
                raise ProcessExited(self)
            return value

        return wait_for(check, timeout=timeout, what=what, interval=interval)

    def output(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def stop_all(
    processes: Iterable[ManagedProcess], *, sig: int = signal.SIGTERM, timeout: float = 20
) -> None:
    """Signal every process at once, give them ``timeout`` seconds together to exit, then
    kill what is left."""
    running = [p for p in processes if p.alive]
    for process in running:
        process.send_signal(sig)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def redis_command(port: int, data_dir: Path, password: str = "") -> list[str]:
    """redis-server on loopback without persistence, working in ``data_dir`` (created);
    with ``password``, clients must authenticate (it is kept in a 0600 configuration file
    in ``data_dir``, never on the command line, which any local process can read)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config: list[str] = []
    if password:
        path = data_dir / "redis-auth.conf"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {password}\n")
        config = [str(path)]
    return [
        *("redis-server", *config, "--bind", LOOPBACK, "--port", str(port)),
        *("--save", "", "--appendonly", "no", "--dir", str(data_dir)),
    ]


def start_redis(
    url: str, data_dir: Path, log_dir: Path | None, *, timeout: float, **kwargs
) -> ManagedProcess:
    """Start redis-server on the port of ``url`` and wait until it answers there
    (``kwargs`` go to ``ManagedProcess``)."""
    parsed = urlparse(url)
    command = redis_command(parsed.port or 6379, data_dir, parsed.password or "")
    server = ManagedProcess("redis", command, log_dir, **kwargs).start()
    try:
        server.wait_until(lambda: redis_answers(url), timeout=timeout, what="redis-server")
    except StackError:
        server.stop()
        raise
    return server
