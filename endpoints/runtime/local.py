"""Replicas as processes on this host.

A replica runs ``python -m endpoints.runtime.replica --replica-id …``: the replica id on
its command line is how ``discover`` finds it again after the worker that started it is
gone (replicas live in their own session, so they outlive a worker restart). Its output
goes to one log file per replica, opened in append mode so that ``rotate_log`` can copy and
truncate it in place while it runs.

With ``start_mode="zygote"`` the process is forked from the pre-warmed interpreter of its
environment (``zygote``) and carries the same command line as its title; when no zygote
can be reached it is launched as above, so starting never fails because of a zygote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from .base import Placement, ReplicaSpec

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "endpoints.runtime.replica"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

# Only what a model server needs; never the product's secrets (SECRET_KEY, DATABASE_URL,
# REDIS_URL, tokens) or the caller's credentials.
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "HF_HOME", "HF_HUB_OFFLINE")


def base_environment() -> dict[str, str]:
    """What every replica and zygote gets, whatever its model."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.update(
        {
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            # Replicas score; they never need to reach a tracking server.
            "MLFLOW_TRACKING_URI": "file:///nonexistent-tracking-disabled",
        }
    )
    return env


def replica_environment(spec: ReplicaSpec) -> dict[str, str]:
    env = base_environment()
    env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(spec.request_timeout_seconds))
    env.update(spec.extra_env)
    return env


def replica_command(spec: ReplicaSpec) -> list[str]:
    return [
        spec.python,
        "-m",
        LAUNCHER_MODULE,
        "--replica-id",
        spec.replica_id,
        "--model-path",
        spec.model_path,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--server",
        spec.server,
    ]


class LocalRuntime:
    def __init__(self) -> None:
        self.zygotes = Zygotes(base_environment(), str(PROJECT_ROOT))

    def start(self, spec: ReplicaSpec) -> int:
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        cmd, env = replica_command(spec), replica_environment(spec)
        if spec.start_mode == "zygote" and spec.zygote_dir:
            message = {
                "op": "start",
                "argv": cmd,
                "env": env,
                "cwd": str(PROJECT_ROOT),
                "log_path": spec.log_path,
            }
            try:
                return self.zygotes.start_replica(spec.python, Path(spec.zygote_dir), message)
            except ZygoteUnavailable as exc:
                log.warning("runtime: launching %s without a zygote: %s", spec.replica_id, exc)
        return _launch(cmd, env, spec.log_path)

    def warm_zygote(self, python: str, zygote_dir: str) -> bool:
        """Start warming the zygote of ``python`` now, without waiting for it."""
        return self.zygotes.warm(python, Path(zygote_dir))

    def zygote_answers(self, python: str, zygote_dir: str) -> bool:
        return _answers(socket_path(Path(zygote_dir), python))

    def take_zygote_starts(self) -> list[str]:
        """The interpreters whose zygote was (re)started since the last call."""
        started, self.zygotes.started = self.zygotes.started, []
        return started

    def discover_zygotes(self, within: str = "") -> dict[str, int]:
        """{socket path: pid} of the zygotes (``discover`` lists replicas only)."""
        return discover_zygotes(within)

    def stop_zygotes(self, within: str) -> int:
        """Stop the zygotes under ``within``; the replicas they forked keep running."""
        found = discover_zygotes(within)
        for path in found:
            stop_zygote(Path(path))
        return len(found)

    def stop(self, pid: int, replica_id: str, *, grace_seconds: float) -> None:
        process = self._process(pid, replica_id)
        if process is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
            # A stopped (SIGSTOP) process cannot act on SIGTERM until it is continued.
            process.send_signal(signal.SIGCONT)
        _, alive = psutil.wait_procs([process], timeout=grace_seconds)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        _reap(pid)

    def terminate(self, pid: int, replica_id: str) -> None:
        process = self._process(pid, replica_id)
        if process is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)

    def kill(self, pid: int, replica_id: str) -> None:
        process = self._process(pid, replica_id)
        if process is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
        psutil.wait_procs([process], timeout=5)
        _reap(pid)

    def is_alive(self, pid: int, replica_id: str) -> bool:
        return self._process(pid, replica_id) is not None

    def probe(self, host: str, port: int, *, timeout: float = 2.0) -> bool:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def discover(self, within: str = "") -> dict[str, int]:
        found: dict[str, int] = {}
        for process in psutil.process_iter(["pid", "cmdline", "status"]):
            info = process.info
            cmdline = arguments(info.get("cmdline") or [])
            if info.get("status") == psutil.STATUS_ZOMBIE or LAUNCHER_MODULE not in cmdline:
                continue
            if within and not any(within in arg for arg in cmdline):
                continue
            with contextlib.suppress(ValueError, IndexError):
                found[cmdline[cmdline.index("--replica-id") + 1]] = info["pid"]
        return found

    def placement(self, replica_id: str) -> Placement | None:
        return None  # where the spec said: this host

    def lost_nodes(self) -> set[str]:
        return set()  # replicas run on this host, which is not lost while this code runs

    def port_is_free(self, host: str, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
        return True

    def read_log(self, log_path: str, *, max_bytes: int) -> str:
        """The last ``max_bytes`` of a replica's output, the rotated part included."""
        chunks: list[bytes] = []
        remaining = max_bytes
        for path in (Path(log_path), Path(log_path + ".1")):
            if remaining <= 0 or not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - remaining))
                data = f.read()
            chunks.insert(0, data)
            remaining -= len(data)
        text = b"".join(chunks).decode("utf-8", errors="replace")
        # Drop a partial first line when the output was cut.
        if sum(len(c) for c in chunks) >= max_bytes and "\n" in text:
            text = text.split("\n", 1)[1]
        return text

    def rotate_log(self, log_path: str, *, max_bytes: int) -> bool:
        path = Path(log_path)
        try:
            if path.stat().st_size <= max_bytes:
                return False
        except FileNotFoundError:
            return False
        shutil.copyfile(path, log_path + ".1")
        # The replica writes with O_APPEND, so after truncation it continues at offset 0.
        os.truncate(path, 0)
        return True

    @staticmethod
    def _process(pid: int, replica_id: str) -> psutil.Process | None:
        """The live process ``pid`` if it is still replica ``replica_id`` (pids are reused)."""
        _reap(pid)
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = arguments(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if replica_id not in cmdline:
            return None
        return process


def arguments(cmdline: list[str]) -> list[str]:
    """A process's arguments, whether it was launched with them or a zygote's child carries
    them as its title: one string (split here) followed by the empty rest of the area."""
    parts = [part for part in cmdline if part]
    if len(parts) == 1 and " " in parts[0]:
        return parts[0].split(" ")
    return parts


def _launch(cmd: list[str], env: dict[str, str], log_path: str) -> int:
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(PROJECT_ROOT),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    return process.pid


def _reap(pid: int) -> None:
    """Collect an exited child so it does not linger as a zombie (no-op for non-children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(predicate, *, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- zygotes: pre-warmed interpreters that fork replicas (the process is ``zygote``) ----------

ZYGOTE_MODULE = "endpoints.runtime.zygote"
# Marks a zygote's command line: ``discover`` never takes one for a replica, and
# ``discover_zygotes`` finds them.
MARKER = "--zygote"
# One BLAS/OpenMP thread: a thread pool started before fork would not exist in the child.
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Room in the zygote's command line for a child's process title. With SPT_NOENV the title
# is written over the argv strings only, so /proc/<pid>/environ of a forked replica still
# shows the short environment the zygote started with (nothing secret), not a title.
TITLE_ROOM = ("--title-room", " " * 4096)
TITLE_IN_ARGV_ONLY = {"SPT_NOENV": "1"}
# A Unix socket path longer than this cannot be bound (sun_path is 108 bytes).
MAX_SOCKET_PATH = 100
MAX_REQUEST_BYTES = 1024 * 1024
PING_TIMEOUT_SECONDS = 2.0
START_TIMEOUT_SECONDS = 10.0
WARM_UP_TIMEOUT_SECONDS = 60.0


class ZygoteUnavailable(Exception):
    """No zygote could take the request: the caller starts the replica itself."""


def socket_path(zygote_dir: Path, python: str) -> Path:
    """One zygote per interpreter (the product's own, or a per-model environment's)."""
    return zygote_dir / f"{hashlib.sha256(python.encode()).hexdigest()[:12]}.sock"


def request(path: Path, message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Send one request; raises ConnectionError (nobody listens) or TimeoutError (hung)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(str(exc)) from exc
        conn.sendall(json.dumps(message).encode() + b"\n")
        answer = conn.makefile("rb").readline()
    if not answer:
        raise ConnectionError("the zygote closed the connection")
    return json.loads(answer)


class Zygotes:
    """The zygotes this process uses, started on demand and recreated when dead or hung."""

    def __init__(self, base_env: dict[str, str], cwd: str) -> None:
        # The environment a zygote starts with: what every replica gets, nothing secret.
        self.base_env = base_env
        self.cwd = cwd
        # Interpreters whose zygote this object (re)started: the caller reports them.
        self.started: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def start_replica(self, python: str, zygote_dir: Path, message: dict[str, Any]) -> int:
        path = socket_path(zygote_dir, python)
        if len(str(path)) > MAX_SOCKET_PATH:
            raise ZygoteUnavailable(f"the socket path {path} is too long")
        try:
            return _started_pid(request(path, message, timeout=START_TIMEOUT_SECONDS))
        except (OSError, ValueError):
            pass  # dead, hung or never started: (re)start it below
        self._ensure(python, path)
        try:
            return _started_pid(request(path, message, timeout=START_TIMEOUT_SECONDS))
        except (OSError, ValueError) as exc:
            raise ZygoteUnavailable(f"the zygote did not start the replica: {exc}") from exc

    def warm(self, python: str, zygote_dir: Path) -> bool:
        """Start the zygote of ``python`` unless one answers or is warming up; returns at
        once (True when it started one), so the first replica does not wait for imports."""
        path = socket_path(zygote_dir, python)
        if len(str(path)) > MAX_SOCKET_PATH or _answers(path):
            return False
        return self._ensure(python, path, wait=False)

    def _ensure(self, python: str, path: Path, *, wait: bool = True) -> bool:
        """Make a zygote answer at ``path`` (one process at a time decides, under a lock);
        True when this call started it. One that neither answers nor is still warming up
        (dead, or hung) is replaced."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = False
            if not _answers(path) and _warming(path) is None:
                stop_zygote(path)
                self._launch(python, path)
                self.started.append(python)
                started = True
            if wait and not _wait_for_zygote(path):
                stop_zygote(path)
                raise ZygoteUnavailable(f"the zygote for {python} did not come up")
        return started

    def _launch(self, python: str, path: Path) -> None:
        self._reap()
        with open(path.with_suffix(".log"), "ab") as log:
            process = subprocess.Popen(
                [python, "-m", ZYGOTE_MODULE, MARKER, "--socket", str(path), *TITLE_ROOM],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**self.base_env, **SINGLE_THREADED, **TITLE_IN_ARGV_ONLY},
                start_new_session=True,
                close_fds=True,
            )
        self._processes.append(process)

    def _reap(self) -> None:
        """Collect zygotes of ours that exited, so none lingers as a zombie."""
        self._processes = [p for p in self._processes if p.poll() is None]


def _started_pid(answer: dict[str, Any]) -> int:
    if not answer.get("ok"):
        raise ValueError(answer.get("error") or "the zygote refused")
    return int(answer["pid"])


def _warming(path: Path) -> int | None:
    """The pid of a zygote for ``path`` still within its warm-up time, if one runs."""
    for pid in discover_zygotes(str(path)).values():
        with contextlib.suppress(psutil.NoSuchProcess):
            if time.time() - psutil.Process(pid).create_time() < WARM_UP_TIMEOUT_SECONDS:
                return pid
    return None


def _wait_for_zygote(path: Path) -> bool:
    """Wait until the zygote answers; False once no zygote for ``path`` is warming up."""
    while not _answers(path):
        if _warming(path) is None:
            return _answers(path)
        time.sleep(0.05)
    return True


def _answers(path: Path) -> bool:
    try:
        return bool(request(path, {"op": "ping"}, timeout=PING_TIMEOUT_SECONDS).get("ok"))
    except (OSError, ValueError):
        return False


def discover_zygotes(within: str = "") -> dict[str, int]:
    """Every zygote process on this host: {socket path: pid}; with ``within``, only those
    whose socket lies under it (this installation's data directory)."""
    found: dict[str, int] = {}
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = arguments(process.info.get("cmdline") or [])
        if process.info.get("status") == psutil.STATUS_ZOMBIE or MARKER not in cmdline:
            continue
        with contextlib.suppress(ValueError, IndexError):
            path = cmdline[cmdline.index("--socket") + 1]
            if ZYGOTE_MODULE in cmdline and within in path:
                found[path] = process.info["pid"]
    return found


def stop_zygote(path: Path) -> None:
    """Stop the zygote serving ``path`` (its replicas keep running) and remove its socket."""
    for _, pid in discover_zygotes(str(path)).items():
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.kill()
            psutil.wait_procs([process], timeout=5)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    path.unlink(missing_ok=True)
