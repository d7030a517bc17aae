"""Replicas as processes on this host.

A replica runs ``python -m endpoints.runtime.replica --replica-id …``: the replica id on
its command line is how ``discover`` finds it again after the worker that started it is
gone (replicas live in their own session, so they outlive a worker restart). Its output
goes to one log file per replica, opened in append mode so that ``rotate_log`` can copy and
truncate it in place while it runs.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from .base import ReplicaSpec

LAUNCHER_MODULE = "endpoints.runtime.replica"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

# Only what a model server needs; never the product's secrets (SECRET_KEY, DATABASE_URL,
# REDIS_URL, tokens) or the caller's credentials.
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "HF_HOME", "HF_HUB_OFFLINE")


def replica_environment(spec: ReplicaSpec) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.update(
        {
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(int(spec.request_timeout_seconds)),
            # Replicas score; they never need to reach a tracking server.
            "MLFLOW_TRACKING_URI": "file:///nonexistent-tracking-disabled",
        }
    )
    env.update(spec.extra_env)
    return env


class LocalRuntime:
    def start(self, spec: ReplicaSpec) -> int:
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
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
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(PROJECT_ROOT),
                env=replica_environment(spec),
                start_new_session=True,
                close_fds=True,
            )
        return process.pid

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
            cmdline = info.get("cmdline") or []
            if info.get("status") == psutil.STATUS_ZOMBIE or LAUNCHER_MODULE not in cmdline:
                continue
            if within and not any(within in arg for arg in cmdline):
                continue
            with contextlib.suppress(ValueError, IndexError):
                found[cmdline[cmdline.index("--replica-id") + 1]] = info["pid"]
        return found

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
            cmdline = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if replica_id not in cmdline:
            return None
        return process


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
