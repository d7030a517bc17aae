"""A replica on a Ray node: the body of the detached, named actor ``ray`` places. It
downloads the model into the node's own cache (no shared disk), binds the port, starts the
same replica the local runtime starts, in the same sandbox, and dies with it
(``PR_SET_PDEATHSIG``); its log is read back through the actor. Nothing here imports Django
or Ray: the class is plain, ``ray`` makes it an actor (docs/deploy.md, docs/security.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import cgroups, sandbox
from .base import ReplicaSpec
from .local import (
    LocalRuntime,
    enforce,
    launch_confined,
    replica_command,
    replica_environment,
    sandboxed_mode,
    start_logged,
)

# Where a node keeps its downloaded models and replica logs (per installation namespace).
NODE_DIR_ENV = "SERVING_RAY_NODE_DIR"

# The local runtime's log reading and rotation are plain file operations: reused as-is.
_files = object.__new__(LocalRuntime)


def node_dir(namespace: str) -> Path:
    root = os.environ.get(NODE_DIR_ENV) or str(Path(tempfile.gettempdir()) / "serving-ui-ray")
    return Path(root) / namespace


class ReplicaSupervisor:
    """One replica on this node. States: starting → running → exited (or failed)."""

    def __init__(self, spec: dict[str, Any], namespace: str, node: str, host: str) -> None:
        self.spec = ReplicaSpec(**spec)
        self.root = node_dir(namespace)
        # This installation's replica groups on the node (its namespace names it).
        self.cgroup_parent = f"{cgroups.DEFAULT_PARENT}/{namespace}"
        self.enforced = cgroups.Enforcement(self.spec.replica_id)
        self.reason = ""
        self.log_path = self.root / "logs" / f"{self.spec.replica_id}.log"
        self.node, self.host = node, host
        self.state = "starting"
        self.process: subprocess.Popen[bytes] | None = None
        # The replica's own process: bwrap's child when sandboxed (bwrap passes no signal on).
        self.replica_pid = 0
        self.stopping = False
        self._lock = threading.Lock()

    # --- called by the runtime -------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Where the replica will listen; the model loads after this returns."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        port = self.spec.port if _port_is_free(self.host, self.spec.port) else _free_port(self.host)
        self.port = port
        threading.Thread(target=self._run, name="replica", daemon=True).start()
        return {
            **self.info(),
            # How this node will hold the replica's limits.
            "limits": cgroups.backend_for(self.spec.limits, self.cgroup_parent),
        }

    def status(self) -> str:
        """Its state: "exited" only once its group told why it stopped (``stop_reason``)."""
        with self._lock:
            return self.state

    def terminate(self) -> None:
        """SIGTERM: the replica stops accepting and finishes the requests in flight."""
        with self._lock:
            self.stopping = True
            if self.process is None:
                self.state = "exited"
            elif self.process.poll() is None and self.replica_pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.replica_pid, signal.SIGTERM)

    def kill(self) -> None:
        with self._lock:
            self.stopping = True
            if self.process is not None and self.process.poll() is None:
                if self.replica_pid > 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.replica_pid, signal.SIGKILL)
                self.process.kill()
            self.state = "exited"

    def read_log(self, max_bytes: int) -> str:
        return _files.read_log(str(self.log_path), max_bytes=max_bytes)

    def rotate_log(self, max_bytes: int) -> bool:
        return _files.rotate_log(str(self.log_path), max_bytes=max_bytes)

    def spec_log_path(self) -> tuple[str, str]:
        """Where the worker keeps this replica's log once it is gone, and the log."""
        return self.spec.log_path, self.read_log(256 * 1024)

    def stop_reason(self) -> str:
        """Why the replica stopped, when its limits say so (read as it exited)."""
        return self.reason

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": self.host, "port": self.port, "node": self.node}

    # --- on the node -----------------------------------------------------------------------

    def _say(self, line: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def _run(self) -> None:
        """Download, launch and wait; runs as long as the replica (the death signal of a
        child fires when the thread that started it ends, so this thread outlives it)."""
        spec = self.spec
        self._say(f"replica {spec.replica_id} placed on node {self.node} ({self.host}:{self.port})")
        try:
            model = self._download()
        except Exception as exc:  # any registry or storage failure fails this replica
            self._say(f"could not download the model {spec.model_uri}: {exc}")
            with self._lock:
                self.state = "failed"
            return
        local = ReplicaSpec(
            **{
                **spec.__dict__,
                "model_path": str(model),
                "host": self.host,
                "port": self.port,
                "python": sys.executable,
                "log_path": str(self.log_path),
            }
        )
        env, cmd = replica_environment(local), replica_command(local)
        with self._lock:
            if self.stopping:
                self.state = "exited"
                return
            try:
                self.process, self.replica_pid = self._launch(cmd, env, local)
            except OSError as exc:
                self._say(f"could not start the replica: {exc}")
                self.state = "failed"
                return
            self.state = "running"
        self.process.wait()
        self._release()
        with self._lock:
            self.state = "exited"

    def _release(self) -> None:
        """Why the replica stopped (what its group recorded), then its group removed."""
        where = self.enforced.where
        if where is not None:
            self.reason = cgroups.stop_reason(where, self.spec.replica_id)
            cgroups.remove(where, self.spec.replica_id)

    def _launch(
        self, cmd: list[str], env: dict[str, str], local: ReplicaSpec
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Started as the local runtime starts a fresh replica, with the same limits held
        on this node, killed with this actor."""
        sandboxed = sandboxed_mode(local.sandbox) == "bwrap"
        if sandboxed and not sandbox.bwrap():
            raise OSError(
                f"bubblewrap (bwrap) is not installed on node {self.node}: install it "
                "there (Debian: bubblewrap), or run models unconfined with SERVING_SANDBOX=off"
            )
        self.enforced = enforce(local, sandboxed=sandboxed, parent=self.cgroup_parent)
        env = {**env, **self.enforced.env}
        if sandboxed:
            return launch_confined(cmd, env, local, enforced=self.enforced, die_with_parent=True)
        process = start_logged(
            cmd,
            env,
            local.log_path,
            cwd=str(self.root),
            death_signal=True,
            join=self.enforced.joiner(),
        )
        return process, process.pid

    def _download(self) -> Path:
        """The model's files on this node: downloaded once per version, under a lock."""
        spec = self.spec
        if not spec.model_uri:
            return Path(spec.model_path)
        target = self.root / "models" / _safe(spec.model_uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(str(target) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (target / "MLmodel").exists():
                self._say(f"model {spec.model_uri} already on this node at {target}")
                return target
            self._say(f"downloading model {spec.model_uri} from {spec.registry_uri}")
            os.environ["MLFLOW_TRACKING_URI"] = spec.registry_uri
            os.environ["MLFLOW_REGISTRY_URI"] = spec.registry_uri
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow.artifacts import download_artifacts

            partial = Path(str(target) + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            got = Path(download_artifacts(artifact_uri=spec.model_uri, dst_path=str(partial)))
            sandbox.make_readable(got)
            shutil.rmtree(target, ignore_errors=True)
            got.rename(target)
            shutil.rmtree(partial, ignore_errors=True)
            self._say(f"model downloaded to {target}")
            return target


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _port_is_free(host: str, port: int) -> bool:
    return bool(port) and _files.port_is_free(host, port)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
