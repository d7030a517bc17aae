"""Replicas forked from a zygote: a real zygote process, a real replica of a tiny model.

The zygote is the product's own interpreter warmed up once for the module; each test forks
replicas from it through ``LocalRuntime.start`` and checks what a launched replica
guarantees: it answers, it is found by its replica id, it sees only its own environment,
it is reaped when it stops, and it outlives a zygote that dies (the next start warms a new
one).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import psutil
import pytest

from endpoints.runtime import cgroups
from endpoints.runtime.base import ReplicaLimits, ReplicaSpec
from endpoints.runtime.local import (
    LocalRuntime,
    arguments,
    base_environment,
    replica_command,
    replica_environment,
    socket_path,
    wait_until,
)

pytestmark = [pytest.mark.any_database, pytest.mark.timeout(300)]


def _probe_model():
    """Answers, for every row, what the replica sees: its environment and random draws, the
    cgroups it was in when its model loaded, the size of its tmpfs mounts and whether it
    can write its root."""
    import mlflow

    class Probe(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            import resource

            with open("/proc/self/cgroup") as f:
                self.cgroup_at_load = f.read()
            self.data_limit_at_load = resource.getrlimit(resource.RLIMIT_DATA)[0]

        def predict(self, context, model_input: pd.DataFrame, params=None):
            import json
            import os
            import random

            import numpy

            def size(path):
                found = os.statvfs(path)
                return found.f_blocks * found.f_frsize

            try:
                with open("/probe.txt", "w") as f:
                    f.write("x")
                root = "ALLOWED"
            except OSError as exc:
                root = f"denied: {exc}"
            seen = {
                "env": sorted(os.environ),
                "random": random.random(),
                "numpy": float(numpy.random.rand()),
                "cwd": os.getcwd(),
                "cgroup at load": self.cgroup_at_load,
                "data limit at load": self.data_limit_at_load,
                "tmp": size("/tmp"),
                "shm": size("/dev/shm"),
                "root": root,
            }
            return [json.dumps(seen)] * len(model_input)

    return Probe()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    import mlflow

    path = tmp_path_factory.mktemp("model") / "probe"
    # Explicit requirements: inferring them loads the model in a subprocess (slow).
    mlflow.pyfunc.save_model(str(path), python_model=_probe_model(), pip_requirements=["mlflow"])
    return str(path)


@pytest.fixture(scope="module")
def zygote_dir(tmp_path_factory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("zyg")
    yield path
    LocalRuntime().stop_zygotes(within=str(path))
    LocalRuntime().release_all_groups()  # the cgroups this module's replicas left


@pytest.fixture
def runtime(model_path: str) -> Iterator[LocalRuntime]:
    runtime = LocalRuntime()
    yield runtime
    # A test that failed half-way leaves no replica running.
    for replica_id, pid in runtime.discover(within=model_path).items():
        runtime.kill(pid, replica_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(model_path: str, zygote_dir: Path, tmp_path: Path, replica_id: str) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=replica_id,
        model_path=model_path,
        host="127.0.0.1",
        port=_free_port(),
        log_path=str(tmp_path / "logs" / f"{replica_id}.log"),
        python=sys.executable,
        zygote_dir=str(zygote_dir),
    )


def _start(runtime: LocalRuntime, spec: ReplicaSpec) -> int:
    pid = runtime.start(spec)
    up = wait_until(lambda: runtime.probe(spec.host, spec.port, timeout=1), timeout=60)
    assert up, Path(spec.log_path).read_text()
    return pid


def _seen(spec: ReplicaSpec) -> dict:
    request = urllib.request.Request(
        f"http://{spec.host}:{spec.port}/invocations",
        data=json.dumps({"dataframe_split": {"columns": ["x"], "data": [[1]]}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(json.loads(response.read())["predictions"][0])


def _zygote(zygote_dir: Path) -> psutil.Process:
    path = socket_path(zygote_dir, sys.executable)
    return psutil.Process(LocalRuntime().discover_zygotes(str(path))[str(path)])


def _stop(runtime: LocalRuntime, pid: int, spec: ReplicaSpec) -> None:
    runtime.stop(pid, spec.replica_id, grace_seconds=10)
    assert not runtime.is_alive(pid, spec.replica_id)


def test_a_forked_replica_answers_and_is_found_like_a_launched_one(
    runtime, model_path, zygote_dir, tmp_path
):
    spec = _spec(model_path, zygote_dir, tmp_path, "v1-fork0001")
    pid = _start(runtime, spec)
    zygote = _zygote(zygote_dir)
    assert runtime.take_zygote_starts() == [sys.executable]
    assert psutil.Process(pid).ppid() == zygote.pid  # forked, not launched
    assert arguments(psutil.Process(pid).cmdline()) == replica_command(spec)
    assert runtime.discover(within=model_path)["v1-fork0001"] == pid
    assert os.getsid(pid) == pid  # its own session: a signal to the zygote's misses it
    seen = _seen(spec)
    # The app marks its own environment as serving when it loads (forked or launched).
    assert set(seen["env"]) - {"_MLFLOW_IS_IN_SERVING_ENVIRONMENT"} == set(
        replica_environment(spec)
    )
    assert "SPT_NOENV" not in seen["env"]
    # What /proc shows of its environment is the zygote's short one, never a title.
    shown = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    shown_names = {item.decode().partition("=")[0] for item in shown if item}
    assert set(base_environment()) <= shown_names
    assert "replica v1-fork0001: loading model" in Path(spec.log_path).read_text()
    assert runtime.discover_zygotes(str(zygote_dir)) == {
        str(socket_path(zygote_dir, sys.executable)): zygote.pid
    }
    _stop(runtime, pid, spec)


def test_the_socket_is_private_and_the_zygote_is_no_replica(runtime, model_path, zygote_dir):
    path = socket_path(zygote_dir, sys.executable)
    runtime.warm_zygote(sys.executable, str(zygote_dir))
    assert wait_until(path.exists, timeout=60)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _zygote(zygote_dir).pid not in runtime.discover().values()


def test_siblings_draw_different_random_numbers(runtime, model_path, zygote_dir, tmp_path):
    specs = [_spec(model_path, zygote_dir, tmp_path, f"v1-rand000{i}") for i in range(2)]
    pids = [_start(runtime, spec) for spec in specs]
    first, second = (_seen(spec) for spec in specs)
    assert first["random"] != second["random"]
    assert first["numpy"] != second["numpy"]
    for pid, spec in zip(pids, specs, strict=True):
        _stop(runtime, pid, spec)


def test_siblings_share_no_ipc_namespace(runtime, model_path, zygote_dir, tmp_path):
    """System V and POSIX IPC objects of one replica are out of its siblings' reach."""
    specs = [_spec(model_path, zygote_dir, tmp_path, f"v1-ipcs000{i}") for i in range(2)]
    pids = [_start(runtime, spec) for spec in specs]
    zygote = _zygote(zygote_dir).pid
    namespaces = {os.readlink(f"/proc/{pid}/ns/ipc") for pid in (*pids, zygote)}
    assert len(namespaces) == 3, namespaces
    for pid, spec in zip(pids, specs, strict=True):
        _stop(runtime, pid, spec)


def test_a_stopped_replica_leaves_no_zombie(runtime, model_path, zygote_dir, tmp_path):
    spec = _spec(model_path, zygote_dir, tmp_path, "v1-reap0001")
    pid = _start(runtime, spec)
    zygote = _zygote(zygote_dir)
    _stop(runtime, pid, spec)
    assert wait_until(lambda: not psutil.pid_exists(pid), timeout=10)
    assert [child.pid for child in zygote.children()] == []


def test_a_dead_zygote_is_recreated_and_its_replicas_keep_serving(
    runtime, model_path, zygote_dir, tmp_path
):
    survivor = _spec(model_path, zygote_dir, tmp_path, "v1-live0001")
    survivor_pid = _start(runtime, survivor)
    runtime.take_zygote_starts()
    old = _zygote(zygote_dir)
    old.send_signal(signal.SIGKILL)
    old.wait(10)

    spec = _spec(model_path, zygote_dir, tmp_path, "v1-next0001")
    pid = _start(runtime, spec)
    assert runtime.take_zygote_starts() == [sys.executable]
    assert _zygote(zygote_dir).pid != old.pid
    assert runtime.probe(survivor.host, survivor.port)
    assert runtime.discover(within=model_path) == {
        "v1-live0001": survivor_pid,
        "v1-next0001": pid,
    }
    _stop(runtime, pid, spec)
    _stop(runtime, survivor_pid, survivor)


def test_without_a_reachable_zygote_the_replica_is_launched(runtime, model_path, tmp_path):
    # A socket path too long to bind: no zygote can serve it.
    too_long = tmp_path / ("z" * 120)
    spec = _spec(model_path, too_long, tmp_path, "v1-spawn001")
    pid = _start(runtime, spec)
    # Launched by this process (through the sandbox's launcher when there is one).
    assert os.getpid() in {parent.pid for parent in psutil.Process(pid).parents()}
    assert runtime.take_zygote_starts() == []
    assert runtime.discover(within=model_path) == {"v1-spawn001": pid}
    _stop(runtime, pid, spec)


# --- limits ---------------------------------------------------------------------------------------

MIB = 1024 * 1024


def _hierarchy() -> cgroups.Hierarchy:
    where = cgroups.hierarchy(cgroups.parent_group())
    if where is None:
        pytest.skip("no cgroup hierarchy this user may write: the floor holds replicas")
    return where


def _memory_group(text: str) -> str:
    """The memory controller's group in a ``/proc/<pid>/cgroup`` (v1, else v2's line)."""
    lines = [line.split(":", 2) for line in text.splitlines() if line]
    return next((p for _, c, p in lines if c == "memory"), next(p for n, _, p in lines if n == "0"))


@pytest.mark.parametrize("how", ["forked", "launched"])
def test_a_replica_is_in_its_group_with_sized_tmpfs_mounts_before_its_model_loads(
    runtime, model_path, zygote_dir, tmp_path, how
):
    where = _hierarchy()
    # A socket path too long to bind: no zygote serves it, the replica is launched.
    zygotes = zygote_dir if how == "forked" else tmp_path / ("z" * 120)
    spec = replace(
        _spec(model_path, zygotes, tmp_path, f"v1-{how}01"),
        limits=ReplicaLimits(cpus=1, memory_mb=1024, max_processes=64, tmp_mb=32),
    )
    pid = _start(runtime, spec)
    assert runtime.enforcement(spec.replica_id) == where.kind
    seen = _seen(spec)
    # Its model's code ran in its group from the start, with the group's limits. Seen from
    # the sandbox, a group's path is relative to the cgroup namespace bwrap made: the
    # zygote's group for a forked replica, for a launched one the group bwrap joined
    # before it ran (the worker never moves a launched replica later).
    assert _memory_group(Path(f"/proc/{pid}/cgroup").read_text()).endswith(spec.replica_id)
    at_load = _memory_group(seen["cgroup at load"])
    assert at_load.endswith(f"/{spec.replica_id}") if how == "forked" else at_load == "/"
    assert pid in cgroups.members(where, spec.replica_id)
    assert cgroups.memory_limit_mb(where, spec.replica_id) == 1024
    # Its /tmp and /dev/shm are the size asked for; nothing else it sees takes writes.
    assert (seen["tmp"], seen["shm"]) == (32 * MIB, 32 * MIB)
    assert seen["root"].startswith("denied"), seen["root"]
    _stop(runtime, pid, spec)
    assert spec.replica_id not in cgroups.groups(where)  # removed with it


def test_a_forked_replica_that_cannot_join_its_group_stops_before_its_model_loads(
    runtime, model_path, zygote_dir, tmp_path, monkeypatch
):
    where = _hierarchy()

    def refuse(where: cgroups.Hierarchy, replica_id: str, pid: int) -> None:
        raise PermissionError("the group refused the process")

    monkeypatch.setattr(cgroups, "join", refuse)
    spec = replace(
        _spec(model_path, zygote_dir, tmp_path, "v1-nogroup1"),
        limits=ReplicaLimits(memory_mb=1024),
    )
    with pytest.raises(OSError, match="could not be put in its limits"):
        runtime.start(spec)
    log = Path(spec.log_path)
    assert wait_until(lambda: "not placed in its limits" in log.read_text(), timeout=30)
    assert wait_until(lambda: "v1-nogroup1" not in runtime.discover(within=model_path), timeout=10)
    assert "loading model" not in log.read_text()
    assert "v1-nogroup1" not in cgroups.groups(where)


@pytest.mark.parametrize("how", ["forked", "launched"])
def test_where_no_group_can_be_made_a_replica_sets_its_rlimits_before_its_model_loads(
    runtime, model_path, zygote_dir, tmp_path, monkeypatch, how
):
    monkeypatch.setattr(cgroups, "hierarchy", lambda parent: None)
    zygotes = zygote_dir if how == "forked" else tmp_path / ("z" * 120)
    spec = replace(
        _spec(model_path, zygotes, tmp_path, f"v1-floor-{how[0]}"),
        limits=ReplicaLimits(memory_mb=2048, max_processes=64, tmp_mb=32),
    )
    pid = _start(runtime, spec)
    assert runtime.enforcement(spec.replica_id) == cgroups.FLOOR
    seen = _seen(spec)
    assert seen["data limit at load"] == 2048 * MIB
    assert cgroups.RLIMITS_ENV not in seen["env"]  # taken out before the model runs
    assert (seen["tmp"], seen["shm"]) == (32 * MIB, 32 * MIB)
    _stop(runtime, pid, spec)
