"""Replicas as processes on this host: ``python -m endpoints.runtime.replica --replica-id
…``, launched, or forked from its environment's zygote (``zygote_pool``) with the same
command line as its title, in the sandbox unless ``SERVING_SANDBOX=off``. The replica id
on the command line is how ``discover`` finds a replica again after a worker restart
(replicas live in their own session); its log is opened in append mode, so ``rotate_log``
can copy and truncate it in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from . import cgroups, confine, gpus, sandbox, seccomp
from .base import Placement, ReplicaSpec, listening_socket, ping
from .zygote_pool import (
    NotPlaced,
    Zygotes,
    ZygoteSite,
    ZygoteUnavailable,
    _answers,
    arguments,
    discover_zygotes,
    socket_path,
    stop_zygote,
)

log = logging.getLogger(__name__)

# Tests and tools find the zygote helpers here too.
__all__ = [
    "LocalRuntime",
    "arguments",
    "base_environment",
    "discover_zygotes",
    "replica_command",
    "replica_environment",
    "socket_path",
    "stop_zygote",
    "wait_until",
]

LAUNCHER_MODULE = "endpoints.runtime.replica"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
# How long a sandboxed replica may take to be exec'd by bwrap (not to load its model).
START_IN_SANDBOX_SECONDS = 10.0

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
    env.update(gpus.visible_devices(spec.limits.gpu_devices))
    if sandboxed_mode(spec.sandbox) == "bwrap":
        env = sandbox.environment(env)
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
        self._launched: list[subprocess.Popen[bytes]] = []
        # {replica id: how its limits are held} of the replicas this object started.
        self._enforced: dict[str, str] = {}

    def start(self, spec: ReplicaSpec) -> int:
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        sandboxed = sandboxed_mode(spec.sandbox) == "bwrap"
        enforced = enforce(spec, sandboxed=sandboxed)
        self._enforced[spec.replica_id] = enforced.backend
        cmd, env = replica_command(spec), {**replica_environment(spec), **enforced.env}
        # A zygote's view holds no GPU: a replica given some starts in a view of its own.
        if spec.start_mode == "zygote" and spec.zygote_dir and not spec.limits.gpu_devices:
            message = {
                "op": "start",
                "argv": cmd,
                "env": env,
                "cwd": sandbox.TMP if sandboxed else str(PROJECT_ROOT),
                "log_path": spec.log_path,
                "model_path": spec.model_path,
                # The child binds its port, then leaves the host's network.
                "own_network": sandboxed and spec.network == sandbox.NETWORK_NONE,
                "tmp_mb": spec.limits.tmp_mb,
                # The child waits until it is in its group (``placed``) to go on.
                "hold": enforced.where is not None,
            }
            where = ZygoteSite(
                python=spec.python,
                zygote_dir=Path(spec.zygote_dir),
                models_root=spec.models_root or str(Path(spec.model_path).parent),
                sandboxed=sandboxed,
                keyed=bool(spec.models_root),
            )
            placed = enforced.join if enforced.where is not None else None
            try:
                return self.zygotes.start_replica(where, message, spec.log_path, placed=placed)
            except NotPlaced as exc:
                self.release(spec.replica_id)
                raise OSError(f"the replica could not be put in its limits: {exc}") from exc
            except ZygoteUnavailable as exc:
                log.warning("runtime: launching %s without a zygote: %s", spec.replica_id, exc)
        if sandboxed:
            return self._launch_confined(cmd, env, spec, enforced)
        return _launch(cmd, env, spec.log_path, enforced)

    def _launch_confined(
        self, cmd: list[str], env: dict[str, str], spec: ReplicaSpec, enforced: cgroups.Enforcement
    ) -> int:
        self._launched = [p for p in self._launched if p.poll() is None]
        process, pid = launch_confined(cmd, env, spec, enforced=enforced)
        self._launched.append(process)
        return pid

    def enforcement(self, replica_id: str) -> str:
        """How the limits of a replica this object started are held (``cgroups``: "cgroup
        v2", "cgroup v1", "rlimits"; "" when it has none)."""
        return self._enforced.get(replica_id, "")

    def stop_reason(self, replica_id: str) -> str:
        """Why a replica that is gone stopped, when its limits say so ("out of memory
        (limit 4096 MiB)"); "" otherwise."""
        return cgroups.stop_reason(cgroups.hierarchy(cgroups.parent_group()), replica_id)

    def release(self, replica_id: str) -> None:
        """Remove the group of a replica that is gone (what is left in it is killed)."""
        where = cgroups.hierarchy(cgroups.parent_group())
        if where is not None:
            cgroups.remove(where, replica_id)

    def release_groups(self, keep: set[str]) -> int:
        """Remove the empty groups this installation's replicas left, but ``keep``'s."""
        where = cgroups.hierarchy(cgroups.parent_group())
        return cgroups.sweep(where, keep) if where is not None else 0

    def release_all_groups(self) -> None:
        """As the product stops: every empty group of this installation, then its own."""
        where = cgroups.hierarchy(cgroups.parent_group())
        if where is not None:
            cgroups.sweep(where, set(), older_than=0)
            cgroups.remove_parent(where)

    def warm_zygote(
        self, python: str, zygote_dir: str, models_root: str = "", sandboxing: str = ""
    ) -> bool:
        """Start warming the zygote of ``python`` now, without waiting for it."""
        return self.zygotes.warm(_placement(python, zygote_dir, models_root, sandboxing))

    def zygote_answers(self, python: str, zygote_dir: str, models_root: str = "") -> bool:
        return _answers(_placement(python, zygote_dir, models_root, "").path)

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
        """(Its group goes with it, also when it had exited already.)"""
        process = self._process(pid, replica_id)
        if process is not None:
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
        self.release(replica_id)

    def terminate(self, pid: int, replica_id: str) -> None:
        process = self._process(pid, replica_id)
        if process is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)

    def kill(self, pid: int, replica_id: str) -> None:
        """(Its group goes with it, also when it had exited already.)"""
        process = self._process(pid, replica_id)
        if process is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
            psutil.wait_procs([process], timeout=5)
            _reap(pid)
        self.release(replica_id)

    def is_alive(self, pid: int, replica_id: str) -> bool:
        return self._process(pid, replica_id) is not None

    def probe(self, host: str, port: int, *, timeout: float = 2.0) -> bool:
        return ping(host, port, timeout=timeout)

    def discover(self, within: str = "") -> dict[str, int]:
        found: dict[str, int] = {}
        for process in psutil.process_iter(["pid", "name", "cmdline", "status"]):
            info = process.info
            cmdline = arguments(info.get("cmdline") or [])
            if info.get("status") == psutil.STATUS_ZOMBIE or LAUNCHER_MODULE not in cmdline:
                continue
            if info.get("name") in sandbox.LAUNCHERS:
                continue  # the sandbox's launcher, not the replica it runs
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


def enforce(spec: ReplicaSpec, *, sandboxed: bool, parent: str = "") -> cgroups.Enforcement:
    """The replica's limits made ready to hold it before it starts (``cgroups.prepare``)."""
    return cgroups.prepare(
        spec.replica_id,
        spec.limits,
        parent=parent or cgroups.parent_group(),
        # Sandboxed by a product that is not root, a replica has a user namespace of its
        # own: the only case where a process limit counts its processes alone.
        own_user_namespace=sandboxed and sandbox.sandbox_uid() is None,
    )


def _launch(
    cmd: list[str], env: dict[str, str], log_path: str, enforced: cgroups.Enforcement
) -> int:
    return start_logged(cmd, env, log_path, cwd=str(PROJECT_ROOT), join=enforced.joiner()).pid


def launch_confined(
    cmd: list[str],
    env: dict[str, str],
    spec: ReplicaSpec,
    *,
    enforced: cgroups.Enforcement,
    die_with_parent: bool = False,
) -> tuple[subprocess.Popen, int]:
    """A fresh replica under ``bwrap``: the bwrap process, and the replica's own pid
    (signals go to it, bwrap does not pass them on). With no network of its own, the port
    is bound here and the replica inherits the socket. bwrap joins the replica's group
    before it runs, so everything it starts is in it. ``die_with_parent``: killed with
    the thread that calls this (the replica then runs under bwrap's own init)."""
    listener = filter_fd = None
    try:
        if spec.network == sandbox.NETWORK_NONE:
            listener = listening_socket(spec.host, spec.port)
            filter_fd = seccomp.program_fd()
            cmd = [*cmd, "--listen-fd", str(listener.fileno())]
        confined = sandbox.process_command(
            cmd,
            python=spec.python,
            model_path=spec.model_path,
            network=spec.network,
            die_with_parent=die_with_parent,
            seccomp_fd=filter_fd,
            tmp_mb=spec.limits.tmp_mb,
            devices=gpus.device_nodes(spec.limits.gpu_devices),
        )
        process = start_logged(
            confined,
            env,
            spec.log_path,
            cwd="/",
            pass_fds=() if listener is None else (listener.fileno(), filter_fd),
            death_signal=die_with_parent,
            join=enforced.joiner(),
        )
    finally:
        if listener is not None:
            listener.close()  # the replica holds the port now
        if filter_fd is not None:
            os.close(filter_fd)

    def replica() -> int | None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if arguments(child.cmdline())[: len(cmd)] == cmd:
                        return child.pid
        return None

    found: list[int] = []
    wait_until(
        lambda: bool(found.append(replica() or 0) or found[-1]) or process.poll() is not None,
        timeout=START_IN_SANDBOX_SECONDS,
        interval=0.01,
    )
    if not found or not found[-1]:
        with contextlib.suppress(OSError):
            process.kill()
        raise OSError(f"the sandbox did not start the replica (exit code {process.poll()})")
    return process, found[-1]


def start_logged(
    cmd: list[str],
    env: dict[str, str],
    log_path: str,
    *,
    cwd: str,
    pass_fds: tuple[int, ...] = (),
    death_signal: bool = False,
    join: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """``cmd`` in a session of its own, its output appended to ``log_path``;
    ``death_signal``: SIGKILL when the thread that started it ends; ``join``: run in the
    child before it execs (it joins the replica's group: nothing of ``cmd`` runs outside)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            preexec_fn=_before_exec(death_signal, join),
        )


def _before_exec(death_signal: bool, join: Callable[[], None] | None) -> Callable[[], None] | None:
    """What the child does between fork and exec: only system calls (the worker may run
    other threads at fork time, whose locks the child must not need)."""
    if not death_signal and join is None:
        return None

    def run() -> None:
        if join is not None:
            join()
        if death_signal:
            _kill_with_parent()

    return run


def _kill_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends."""
    confine.prctl(confine.PR_SET_PDEATHSIG, signal.SIGKILL)


def sandboxed_mode(requested: str) -> str:
    """The sandbox a replica gets: the one asked for, else the host's default."""
    return requested or sandbox.mode()


def _placement(python: str, zygote_dir: str, models_root: str, sandboxing: str) -> ZygoteSite:
    sandboxed = sandboxed_mode(sandboxing) == "bwrap"
    root = models_root or str(Path(zygote_dir).parent / "models")
    return ZygoteSite(python, Path(zygote_dir), root, sandboxed, keyed=bool(models_root))


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
