"""A zygote: a pre-warmed interpreter per environment that forks replicas
(``python -m endpoints.runtime.zygote --zygote --socket <path>``, started by
``zygote_pool``). It imports MLflow, pandas and scikit-learn once, then forks a replica for
each start request on its Unix socket (0600), so a replica only loads its model and shares
the imported pages copy-on-write. A forked replica looks like a launched one (its own
session, log, environment and the launcher's command line as its title); replicas outlive
their zygote. docs/provisioning.md ("Pre-warmed starts") has the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from . import confine, replica
from .base import listening_socket
from .zygote_pool import GO, MARKER, MAX_REQUEST_BYTES, TITLE_ROOM, arguments

# Imported before the first fork; a module missing from an environment is skipped.
WARM_MODULES = (
    "numpy",
    "pandas",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.pyfunc.scoring_server",
    "sklearn",
    "mlflow.sklearn",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    # MLflow loads scikit-learn models saved with skops through it; importing it walks
    # every scikit-learn estimator (seconds).
    "skops.io",
    "uvicorn",
    "endpoints.runtime.replica_app",
)
# How long a client may take to send its request.
READ_TIMEOUT_SECONDS = 2.0
# How often the zygote checks that it is still wanted (its parent and its socket).
WATCH_SECONDS = 1.0
# How long a forked replica waits to be put in its limits before it gives up.
HOLD_TIMEOUT_SECONDS = 30.0


# --- the zygote process ----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="Fork replicas from a pre-warmed interpreter.")
    parser.add_argument(MARKER, action="store_true", help="marks the process as a zygote")
    parser.add_argument("--socket", required=True)
    # Blank room a child's process title is written over (see ``zygote_pool.TITLE_ROOM``).
    parser.add_argument(TITLE_ROOM[0], default="")
    # Sandboxed (``sandbox.zygote_command``): the process whose exit makes us unwanted (our
    # parent is bwrap), and how each child confines itself.
    parser.add_argument("--watch-pid", type=int, default=0)
    parser.add_argument("--models-root", default="")
    parser.add_argument("--confine", action="store_true")
    parser.add_argument("--hide", action="append", default=[])
    parser.add_argument("--sandbox-uid", type=int, default=-1)
    args = parser.parse_args()
    path = Path(args.socket)
    global CONFINEMENT
    if args.confine:
        CONFINEMENT = Confinement(
            models_root=args.models_root,
            hidden=args.hide,
            uid=args.sandbox_uid if args.sandbox_uid >= 0 else None,
        )
        confine.become_subreaper()
    started = time.monotonic()
    warmed = _warm_up()
    print(
        f"zygote {os.getpid()}: imported {', '.join(warmed)} in {time.monotonic() - started:.2f} s"
    )
    listener = _listen(path)
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGCHLD, _reap_children)
    signal.signal(signal.SIGTERM, _exit)
    print(f"zygote {os.getpid()}: listening on {path}", flush=True)
    try:
        _serve(listener, path, inode, args.watch_pid or os.getppid())
    finally:
        if _still_ours(path, inode):
            path.unlink(missing_ok=True)


def _warm_up() -> list[str]:
    import importlib

    import setproctitle

    warmed = []
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"zygote: not preloading {name}: {exc}", flush=True)
        else:
            warmed.append(name)
    _prime_caches()
    # Claim the argv and environment area now, while the environment is still the one the
    # interpreter started with; a child then sets its title over it.
    setproctitle.getproctitle()
    return warmed


def _prime_caches() -> None:
    """Work every model load repeats, done once: MLflow maps every installed package to
    its modules to compare them with the model's requirements (seconds on this product's
    environment). The map depends only on the environment, which a zygote never changes."""
    with contextlib.suppress(Exception):  # a private helper of MLflow: optional
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created 0600 (not chmod-ed after bind): no moment where another user could connect.
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    listener.settimeout(WATCH_SECONDS)
    return listener


def _serve(listener: socket.socket, path: Path, inode: int, parent: int) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if not _parent_alive(parent) or not _still_ours(path, inode):
                print(f"zygote {os.getpid()}: no longer wanted, exiting", flush=True)
                return
            continue
        with conn:
            conn.settimeout(READ_TIMEOUT_SECONDS)
            try:
                _handle(listener, conn)
            except (OSError, ValueError) as exc:
                print(f"zygote: a request failed: {exc}", flush=True)


def _parent_alive(parent: int) -> bool:
    if CONFINEMENT is None:
        return os.getppid() == parent
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _still_ours(path: Path, inode: int) -> bool:
    """Exit once the worker that started us is gone (a restarted worker warms a fresh
    zygote, with its code) or our socket was removed or taken over."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _handle(listener: socket.socket, conn: socket.socket) -> None:
    """One JSON line in, one back. ``{"op": "ping"}`` answers ``{"ok": true, "pid": …}``;
    ``{"op": "start", "argv": […], "env": {…}, "cwd": …, "log_path": …}`` (the log's
    descriptor passed along) answers ``{"ok": true, "pid": <replica pid>}`` or
    ``{"ok": false, "error": …}``."""
    line, fds = _read_line(conn)
    try:
        message = json.loads(line or b"{}")
        if message.get("op") == "ping":
            answer: dict[str, Any] = {"ok": True, "pid": os.getpid()}
        elif message.get("op") == "start":
            answer = _fork_replica(listener, conn, message, fds[0] if fds else None)
        else:
            answer = {"ok": False, "error": f"unknown request {message.get('op')!r}"}
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(json.dumps(answer).encode() + b"\n")


def _read_line(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The request line and the descriptors passed with it (the replica's log)."""
    # recv, not makefile: a file object would keep the connection open in the child.
    data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
    while data and not data.endswith(b"\n") and len(data) < MAX_REQUEST_BYTES:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data, list(fds)


@dataclass(frozen=True)
class Confinement:
    """How a sandboxed zygote's children confine themselves (``confine.confine_child``)."""

    models_root: str
    hidden: list[str]
    uid: int | None


CONFINEMENT: Confinement | None = None


def _fork_replica(
    listener: socket.socket, conn: socket.socket, message: dict[str, Any], log: int | None
) -> dict[str, Any]:
    # A thread running at fork time would be missing in the child, with its locks held.
    if threading.active_count() != 1:
        return {"ok": False, "error": f"{threading.active_count()} threads run in the zygote"}
    if CONFINEMENT is not None:
        model = os.path.realpath(message.get("model_path") or "")
        if log is None or not model.startswith(CONFINEMENT.models_root.rstrip("/") + "/"):
            return {"ok": False, "error": "not a model of this zygote, or no log descriptor"}
    sys.stdout.flush()
    sys.stderr.flush()
    if CONFINEMENT is not None:
        return _fork_confined(listener, conn, message, log)
    pid = os.fork()
    if pid == 0:
        _child(listener, conn, message, log)  # never returns
    return {"ok": True, "pid": pid}


def _fork_confined(
    listener: socket.socket, conn: socket.socket, message: dict[str, Any], log: int
) -> dict[str, Any]:
    """Fork through a short-lived intermediate that enters new mount and process
    namespaces: the replica is process 1 of its own namespace (it sees no other process)
    and this zygote, a subreaper, adopts and reaps it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:
            confine.new_namespaces()
            replica_pid = os.fork()
            if replica_pid == 0:
                os.close(write_end)
                _child(listener, conn, message, log)  # never returns
            os.write(write_end, str(replica_pid).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        replica_pid = answer.read()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if not replica_pid:
        return {"ok": False, "error": "the replica could not enter its sandbox"}
    return {"ok": True, "pid": int(replica_pid)}


def _child(
    listener: socket.socket, conn: socket.socket, message: dict[str, Any], log: int | None
) -> None:
    code = 1
    try:
        os.setsid()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        listener.close()
        _redirect_output(message["log_path"], log)
        if message.get("hold"):
            _await_placement(conn)
        conn.close()
        argv = [str(arg) for arg in message["argv"]]
        args = replica.parse_args(argv[3:])
        sock = None
        if CONFINEMENT is not None:
            own_network = bool(message.get("own_network"))
            if own_network:  # bound on the host's network, served from its own
                sock = listening_socket(args.host, args.port)
            confine.close_inherited(sock.fileno() if sock is not None else None)
            model = os.path.realpath(message["model_path"])
            confine.confine_child(
                model,
                CONFINEMENT.hidden,
                CONFINEMENT.uid,
                own_network=own_network,
                tmp_mb=int(message.get("tmp_mb") or 0),
            )
        os.environ.clear()
        os.environ.update(message["env"])
        os.chdir(message["cwd"])
        _reseed()
        _take_title(argv, message["env"])
        replica.serve(args, sock)
        code = 0
    except BaseException:  # the child must never return into the zygote's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _await_placement(conn: socket.socket) -> None:
    """Wait until the runtime has put this process in its limits (its cgroup): nothing of
    the model runs before. Anything but ``GO`` (a refusal, the runtime gone) ends it."""
    conn.settimeout(HOLD_TIMEOUT_SECONDS)
    said = b""
    with contextlib.suppress(OSError):
        while not said.endswith(b"\n") and len(said) < len(GO):
            chunk = conn.recv(len(GO) - len(said))
            if not chunk:
                break
            said += chunk
    if said != GO:
        print("replica: not placed in its limits; stopping before the model loads", flush=True)
        os._exit(1)


def _redirect_output(log_path: str, passed: int | None) -> None:
    if passed is not None:
        log = os.dup(passed)
    else:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def _reseed() -> None:
    """Every child would otherwise draw the same random numbers as its siblings."""
    import random

    random.seed()
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed()


def _take_title(argv: list[str], env: dict[str, str]) -> None:
    """Carry the launcher's command line, or become a launched replica (exec) if that fails:
    the runtime finds replicas by their command line."""
    import setproctitle

    setproctitle.setproctitle(" ".join(argv))
    if arguments(psutil.Process().cmdline()) != argv:
        print("the process title could not be set: starting the launcher instead", flush=True)
        os.execve(argv[0], argv, env)  # noqa: S606 (the launcher's own argv, no shell)


def _reap_children(signum: int, frame: object) -> None:
    """Collect exited replicas at once: none stays a zombie while the zygote lives."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
