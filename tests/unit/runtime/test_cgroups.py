"""How a replica's limits are held (``runtime.cgroups``), on a fake cgroup tree in a
temporary directory: which hierarchy is chosen from the mounts, what a replica's group is
given, what it says after an out-of-memory kill, and the rlimit floor (set in a child
process: the test's own limits stay as they are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from endpoints.runtime import cgroups
from endpoints.runtime.base import ReplicaLimits, ReplicaSpec

SMALL = ReplicaLimits(cpus=1, memory_mb=4096, max_processes=256, tmp_mb=1024)
MIB = 1024 * 1024


def _mounts(tmp_path: Path, *lines: tuple[str, str, str]) -> str:
    """A mounts file listing ``(directory under tmp_path, type, options)``."""
    text = "".join(
        f"cgroup {tmp_path / point} {kind} {options} 0 0\n" for point, kind, options in lines
    )
    path = tmp_path / "mounts"
    path.write_text("proc /proc proc rw 0 0\n" + text)
    return str(path)


def _v2_root(tmp_path: Path, controllers: str) -> Path:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def _v1_mounts(tmp_path: Path) -> list[tuple[str, str, str]]:
    """This machine's layout: each controller a hierarchy of its own."""
    for name in ("cpu", "cpuacct", "memory", "pids"):
        (tmp_path / name).mkdir(exist_ok=True)
    return [
        ("cpu", "cgroup", "rw,relatime,cpu"),
        ("cpuacct", "cgroup", "rw,relatime,cpuacct"),
        ("memory", "cgroup", "rw,relatime,memory"),
        ("pids", "cgroup", "rw,relatime,pids"),
    ]


# --- which hierarchy ----------------------------------------------------------------------------


def test_v2_is_chosen_where_its_controllers_list_cpu_memory_and_pids(tmp_path):
    _v2_root(tmp_path, "cpuset cpu io memory hugetlb pids")
    mounts = _mounts(tmp_path, ("unified", "cgroup2", "rw"), *_v1_mounts(tmp_path))
    found = cgroups.detect("serving-ui/abc", mounts_file=mounts)
    assert found is not None and found.kind == cgroups.V2
    assert set(found.parents.values()) == {str(tmp_path / "unified" / "serving-ui" / "abc")}


def test_v1_is_chosen_where_the_v2_mount_offers_no_controller(tmp_path):
    """As on this machine: cgroup2 mounted beside v1, with nothing in cgroup.controllers."""
    _v2_root(tmp_path, "")
    mounts = _mounts(tmp_path, ("unified", "cgroup2", "rw"), *_v1_mounts(tmp_path))
    found = cgroups.detect("serving-ui/abc", mounts_file=mounts)
    assert found is not None and found.kind == cgroups.V1
    assert found.parents == {
        "cpu": str(tmp_path / "cpu" / "serving-ui" / "abc"),
        "memory": str(tmp_path / "memory" / "serving-ui" / "abc"),
        "pids": str(tmp_path / "pids" / "serving-ui" / "abc"),
    }


def test_v1_takes_a_hierarchy_that_mounts_several_controllers_together(tmp_path):
    for name in ("cpu,cpuacct", "memory", "pids"):
        (tmp_path / name).mkdir()
    mounts = _mounts(
        tmp_path,
        ("cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
        ("memory", "cgroup", "rw,memory"),
        ("pids", "cgroup", "rw,pids"),
    )
    found = cgroups.detect(mounts_file=mounts)
    assert found is not None and found.parents["cpu"].startswith(str(tmp_path / "cpu,cpuacct"))


@pytest.mark.parametrize(
    "lines",
    [
        [],  # no cgroup mounted at all
        [("memory", "cgroup", "rw,memory")],  # v1 without cpu and pids
        [("unified", "cgroup2", "rw")],  # v2 offering only some controllers
    ],
    ids=["nothing", "v1-memory-only", "v2-without-pids"],
)
def test_no_hierarchy_where_not_all_three_controllers_can_be_used(tmp_path, lines):
    (tmp_path / "memory").mkdir()
    _v2_root(tmp_path, "cpu memory")
    assert cgroups.detect(mounts_file=_mounts(tmp_path, *lines)) is None


# --- a replica's group ---------------------------------------------------------------------------


def test_a_v1_group_gets_the_quota_the_memory_and_swap_limit_and_the_process_limit(tmp_path):
    where = cgroups.detect("serving-ui/abc", mounts_file=_mounts(tmp_path, *_v1_mounts(tmp_path)))
    group = where.dirs("v1-aaaa")
    # What the kernel makes in a new memory group (swap accounting on, as here).
    group["memory"].mkdir(parents=True)
    (group["memory"] / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    cgroups.create(where, "v1-aaaa", SMALL)
    assert (group["cpu"] / "cpu.cfs_quota_us").read_text() == "10000"
    assert (group["cpu"] / "cpu.cfs_period_us").read_text() == "10000"
    assert (group["memory"] / "memory.limit_in_bytes").read_text() == str(4096 * MIB)
    assert (group["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(4096 * MIB)
    assert (group["pids"] / "pids.max").read_text() == "256"


def test_v1_writes_the_memory_limit_before_memory_and_swap():
    """The kernel refuses a memory+swap limit below the memory limit in force."""
    names = list(cgroups.settings(cgroups.V1, SMALL))
    assert names.index("memory.limit_in_bytes") < names.index("memory.memsw.limit_in_bytes")


def test_a_v2_group_is_handed_its_controllers_on_the_way_and_gets_its_limits(tmp_path):
    root = _v2_root(tmp_path, "cpu memory pids io")
    where = cgroups.detect(
        "serving-ui/abc", mounts_file=_mounts(tmp_path, ("unified", "cgroup2", "rw"))
    )
    cgroups.create(where, "v1-bbbb", ReplicaLimits(cpus=0.5, memory_mb=512, max_processes=64))
    for level in (root, root / "serving-ui", root / "serving-ui" / "abc"):
        assert (level / "cgroup.subtree_control").read_text().split() == [
            "+cpu",
            "+memory",
            "+pids",
        ]
    group = root / "serving-ui" / "abc" / "v1-bbbb"
    assert (group / "cpu.max").read_text() == "5000 10000"
    assert (group / "memory.max").read_text() == str(512 * MIB)
    assert (group / "pids.max").read_text() == "64"
    # Without swap accounting or group kills in the kernel, those files do not exist.
    assert not (group / "memory.swap.max").exists()


def test_zero_means_unlimited_and_nothing_is_written_for_it():
    assert cgroups.settings(cgroups.V1, ReplicaLimits(memory_mb=1024)) == {
        "memory.limit_in_bytes": str(1024 * MIB),
        "memory.memsw.limit_in_bytes": str(1024 * MIB),
    }
    assert cgroups.settings(cgroups.V2, ReplicaLimits()) == {}


@pytest.mark.parametrize(
    ("kind", "files", "reason"),
    [
        (
            cgroups.V1,
            {
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                "memory.limit_in_bytes": str(4096 * MIB),
            },
            "out of memory (limit 4096 MiB)",
        ),
        (
            cgroups.V2,
            {
                "memory.events": "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n",
                "memory.max": str(8192 * MIB),
            },
            "out of memory (limit 8192 MiB)",
        ),
        # The limit was reached and memory reclaimed, but nothing was killed.
        (cgroups.V1, {"memory.oom_control": "oom_kill 0\n", "memory.failcnt": "40"}, ""),
        (cgroups.V2, {"memory.events": "max 3\noom 0\noom_kill 0\n"}, ""),
    ],
    ids=["v1-killed", "v2-killed", "v1-not-killed", "v2-not-killed"],
)
def test_the_stop_reason_says_out_of_memory_with_the_limit_only_after_a_kill(
    tmp_path, kind, files, reason
):
    where = cgroups.Hierarchy(kind, {c: str(tmp_path) for c in cgroups.CONTROLLERS})
    (tmp_path / "v1-cccc").mkdir()
    for name, text in files.items():
        (tmp_path / "v1-cccc" / name).write_text(text)
    assert cgroups.stop_reason(where, "v1-cccc") == reason


def test_a_replica_without_a_group_has_no_stop_reason(tmp_path):
    where = cgroups.Hierarchy(cgroups.V1, {c: str(tmp_path) for c in cgroups.CONTROLLERS})
    assert cgroups.stop_reason(where, "v1-gone") == ""
    assert cgroups.stop_reason(None, "v1-gone") == ""


def test_groups_lists_the_replicas_of_this_installation_only(tmp_path):
    where = cgroups.detect("serving-ui/abc", mounts_file=_mounts(tmp_path, *_v1_mounts(tmp_path)))
    for rid in ("v1-aaaa", "v2-bbbb"):
        cgroups.create(where, rid, ReplicaLimits(max_processes=8))
    other = cgroups.detect("serving-ui/xyz", mounts_file=_mounts(tmp_path, *_v1_mounts(tmp_path)))
    cgroups.create(other, "v1-zzzz", ReplicaLimits(max_processes=8))
    assert cgroups.groups(where) == {"v1-aaaa", "v2-bbbb"}


def test_a_sweep_removes_only_old_empty_groups_of_replicas_that_are_gone(tmp_path, monkeypatch):
    """It never stops a process: a group with one in it, or one just made (its replica is
    about to join it), stays."""
    where = cgroups.Hierarchy(cgroups.V2, {c: str(tmp_path) for c in cgroups.CONTROLLERS})
    an_hour_ago = time.time() - 3600
    for rid, procs, old in [
        ("v1-live", "", True),
        ("v1-gone", "", True),
        ("v1-new", "", False),
        ("v1-busy", "4242\n", True),
    ]:
        (tmp_path / rid).mkdir()
        (tmp_path / rid / "cgroup.procs").write_text(procs)
        if old:
            os.utime(tmp_path / rid, (an_hour_ago, an_hour_ago))
    removed: list[str] = []
    monkeypatch.setattr(cgroups, "remove", lambda where, rid: removed.append(rid) or True)
    assert cgroups.sweep(where, keep={"v1-live"}) == 1
    assert removed == ["v1-gone"]


def test_no_limits_need_no_group_and_no_floor():
    enforced = cgroups.prepare(
        "v1-dddd", ReplicaLimits(tmp_mb=64), parent="serving-ui/none", own_user_namespace=True
    )
    assert (enforced.backend, enforced.where, enforced.env) == ("", None, {})


# --- the floor -----------------------------------------------------------------------------------


def test_the_floor_bounds_processes_only_in_a_user_namespace_of_the_replicas_own():
    """RLIMIT_NPROC counts every process of a user (in a namespace): with the product's
    uid, or the sandbox uid every replica shares, it would count others too."""
    assert cgroups.floor(SMALL, own_user_namespace=True) == {"data": 4096 * MIB, "nproc": 256}
    assert cgroups.floor(SMALL, own_user_namespace=False) == {"data": 4096 * MIB}


FLOOR_CHILD = """
import resource, sys
from endpoints.runtime import cgroups
environ = {cgroups.RLIMITS_ENV: sys.argv[1], "OTHER": "kept"}
applied = cgroups.apply_floor(environ)
assert cgroups.RLIMITS_ENV not in environ and environ == {"OTHER": "kept"}, environ
print(applied, resource.getrlimit(resource.RLIMIT_DATA))
try:
    block = bytearray(512 * 1024 * 1024)
except MemoryError:
    print("refused")
try:
    resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
except (ValueError, OSError):
    print("cannot raise")
"""


def test_a_replica_on_the_floor_cannot_allocate_past_its_memory_nor_raise_the_limit():
    values = cgroups.floor(ReplicaLimits(memory_mb=256), own_user_namespace=False)
    (text,) = cgroups.floor_env(values).values()
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CHILD, text],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    limit = 256 * MIB
    assert out == [f"{{'data': {limit}}} ({limit}, {limit})", "refused", "cannot raise"]


def test_describe_says_what_holds_the_limits():
    assert cgroups.describe(SMALL, cgroups.V1) == (
        "1 CPU, 4096 MiB memory, 256 processes, 1024 MiB per tmpfs; held by cgroup v1"
    )
    assert cgroups.describe(ReplicaLimits(), "") == "no limits"


def test_a_spec_sent_to_another_process_as_a_dict_keeps_its_limits():
    spec = ReplicaSpec("v1-eeee", "/m", "127.0.0.1", 1, "/l", sys.executable, limits=SMALL)
    assert ReplicaSpec(**json.loads(json.dumps(asdict(spec)))) == spec
