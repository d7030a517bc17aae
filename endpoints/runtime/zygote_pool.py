"""Zygotes seen from the runtime: starting them, asking them to fork a replica, finding
and stopping them (the zygote process itself is ``zygote``).

A zygote is keyed by its interpreter and, when given, the directory whose models it may
fork replicas of (its sandbox holds that directory read-only). Sandboxed, it runs under
``bwrap`` (``sandbox.zygote_command``) and each replica it forks confines itself before
loading its model. A replica's output goes to a descriptor the runtime opens and passes
along with the request (``SCM_RIGHTS``): neither the zygote nor the replica can open a log.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from . import sandbox


def arguments(cmdline: list[str]) -> list[str]:
    """A process's arguments, whether it was launched with them or a zygote's child carries
    them as its title: one string (split here) followed by the empty rest of the area."""
    parts = [part for part in cmdline if part]
    if len(parts) == 1 and " " in parts[0]:
        return parts[0].split(" ")
    return parts


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
# What a replica held at its start (``"hold": true``) is told once it is in its group.
GO, STOP = b"go\n", b"stop\n"
PING_TIMEOUT_SECONDS = 2.0
START_TIMEOUT_SECONDS = 10.0
WARM_UP_TIMEOUT_SECONDS = 60.0


class ZygoteUnavailable(Exception):
    """No zygote could take the request: the caller starts the replica itself."""


class NotPlaced(Exception):
    """A forked replica could not be put in its limits; it was told to stop (it exits
    without running its model)."""


def socket_path(zygote_dir: Path, python: str, models_root: str = "") -> Path:
    """One zygote per interpreter (the product's own, or a per-model environment's) and
    models directory (a sandboxed zygote holds only that one in view)."""
    key = python if not models_root else f"{python}\0{models_root}"
    return zygote_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.sock"


def request(
    path: Path,
    message: dict[str, Any],
    *,
    timeout: float,
    fds: list[int] | None = None,
    then: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Send one request (with ``fds`` passed along); raises ConnectionError (nobody
    listens) or TimeoutError (hung). ``then``: called with a successful answer before
    the replica it names may go on (``GO``); when it raises, the replica is told to stop
    and NotPlaced is raised."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(str(exc)) from exc
        data = json.dumps(message).encode() + b"\n"
        if fds:
            socket.send_fds(conn, [data], fds)
        else:
            conn.sendall(data)
        answer = conn.makefile("rb").readline()
        if not answer:
            raise ConnectionError("the zygote closed the connection")
        decoded = json.loads(answer)
        if then is not None and decoded.get("ok"):
            try:
                then(decoded)
            except Exception as exc:
                conn.sendall(STOP)
                raise NotPlaced(str(exc)) from exc
            conn.sendall(GO)
    return decoded


@dataclass(frozen=True)
class ZygoteSite:
    """Which zygote: its interpreter, where its socket lives, the models it may serve
    (``models_root``, "" for any: unsandboxed) and whether it is sandboxed."""

    python: str
    zygote_dir: Path
    # The models a sandboxed zygote holds in view.
    models_root: str = ""
    sandboxed: bool = False
    # Whether ``models_root`` was given (the socket is keyed by it) or guessed.
    keyed: bool = False

    @property
    def path(self) -> Path:
        return socket_path(self.zygote_dir, self.python, self.models_root if self.keyed else "")


class Zygotes:
    """The zygotes this process uses, started on demand and recreated when dead or hung."""

    def __init__(self, base_env: dict[str, str], cwd: str) -> None:
        # The environment a zygote starts with: what every replica gets, nothing secret.
        self.base_env = base_env
        self.cwd = cwd
        # Interpreters whose zygote this object (re)started: the caller reports them.
        self.started: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def start_replica(
        self,
        where: ZygoteSite,
        message: dict[str, Any],
        log_path: str,
        *,
        placed: Callable[[int], None] | None = None,
    ) -> int:
        """The pid of the replica the zygote forked; ``placed`` is called with it before
        the replica goes on (it waits when the message says ``hold``)."""
        path = where.path
        if len(str(path)) > MAX_SOCKET_PATH:
            raise ZygoteUnavailable(f"the socket path {path} is too long")
        then = (lambda answer: placed(int(answer["pid"]))) if placed is not None else None
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            try:
                return _started_pid(
                    request(path, message, timeout=START_TIMEOUT_SECONDS, fds=[log], then=then)
                )
            except (OSError, ValueError):
                pass  # dead, hung or never started: (re)start it below
            self._ensure(where)
            try:
                return _started_pid(
                    request(path, message, timeout=START_TIMEOUT_SECONDS, fds=[log], then=then)
                )
            except (OSError, ValueError) as exc:
                raise ZygoteUnavailable(f"the zygote did not start the replica: {exc}") from exc
        finally:
            os.close(log)

    def warm(self, where: ZygoteSite) -> bool:
        """Start the zygote of ``python`` unless one answers or is warming up; returns at
        once (True when it started one), so the first replica does not wait for imports."""
        path = where.path
        if len(str(path)) > MAX_SOCKET_PATH or _answers(path):
            return False
        return self._ensure(where, wait=False)

    def _ensure(self, where: ZygoteSite, *, wait: bool = True) -> bool:
        """Make a zygote answer at ``path`` (one process at a time decides, under a lock);
        True when this call started it. One that neither answers nor is still warming up
        (dead, or hung) is replaced."""
        path = where.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = False
            if not _answers(path) and _warming(path) is None:
                stop_zygote(path)
                self._launch(where)
                self.started.append(where.python)
                started = True
            if wait and not _wait_for_zygote(path):
                stop_zygote(path)
                raise ZygoteUnavailable(f"the zygote for {where.python} did not come up")
        return started

    def _launch(self, where: ZygoteSite) -> None:
        self._reap()
        path = where.path
        cmd = [where.python, "-m", ZYGOTE_MODULE, MARKER, "--socket", str(path)]
        env = {**self.base_env, **SINGLE_THREADED, **TITLE_IN_ARGV_ONLY}
        if where.sandboxed:
            Path(where.models_root).mkdir(parents=True, exist_ok=True)
            uid = sandbox.sandbox_uid()
            root, own = os.path.realpath(where.models_root), os.path.realpath(where.zygote_dir)
            cmd += ["--watch-pid", str(os.getpid()), "--models-root", root]
            cmd += ["--confine", "--hide", root, "--hide", own]
            cmd += ["--sandbox-uid", str(uid if uid is not None else -1)]
            cmd = sandbox.zygote_command(
                [*cmd, *TITLE_ROOM],
                python=where.python,
                models_root=where.models_root,
                zygote_dir=str(where.zygote_dir),
            )
            env = sandbox.environment(env)
        else:
            cmd += list(TITLE_ROOM)
        with open(path.with_suffix(".log"), "ab") as log:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
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
    whose socket lies under it (this installation's data directory). A sandboxed zygote
    still being set up is its ``bwrap`` process until the interpreter runs."""
    found: dict[str, int] = {}
    launchers: dict[str, int] = {}
    for process in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        cmdline = arguments(process.info.get("cmdline") or [])
        if process.info.get("status") == psutil.STATUS_ZOMBIE or MARKER not in cmdline:
            continue
        with contextlib.suppress(ValueError, IndexError):
            path = cmdline[cmdline.index("--socket") + 1]
            if ZYGOTE_MODULE in cmdline and within in path:
                into = launchers if process.info.get("name") in sandbox.LAUNCHERS else found
                into[path] = process.info["pid"]
    return {**launchers, **found}


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
