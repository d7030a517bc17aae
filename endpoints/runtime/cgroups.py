"""What a replica may use, enforced before its model's code runs: a control group of its own
(cgroup v2 where a subtree offers the cpu, memory and pids controllers, else v1 where they
are mounted and writable), or, where neither can be used, rlimits the replica sets itself
as the floor. docs/provisioning.md ("Workload limits") says what each one bounds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .base import ReplicaLimits

log = logging.getLogger(__name__)

V2, V1, FLOOR = "cgroup v2", "cgroup v1", "rlimits"
CONTROLLERS = ("cpu", "memory", "pids")
# The group every replica's group is made in, relative to each hierarchy's root; the
# settings name one per installation (``serving-ui/<hash of its data directory>``).
PARENT_ENV = "SERVING_CGROUP_PARENT"
DEFAULT_PARENT = "serving-ui"
MOUNTS = "/proc/self/mounts"
# The quota is handed out per 10 ms, not the kernel's default 100 ms: a group with more
# busy threads than its CPUs spends its quota on every core at once, then waits; shorter
# bursts keep its neighbours' requests from meeting a long one.
CPU_PERIOD_US = 10_000
MIB = 1024 * 1024
# The floor: what a replica sets on itself before loading its model ("data=…,nproc=…").
RLIMITS_ENV = "SERVING_REPLICA_RLIMITS"
RLIMITS = {"data": resource.RLIMIT_DATA, "nproc": resource.RLIMIT_NPROC}
# How long removing a group waits for the processes left in it to die.
REMOVE_WAIT_SECONDS = 5.0
# A group without a process is removed by a sweep only once it is this old.
SWEEP_AFTER_SECONDS = 60.0
OPTIONAL = ("memory.swap.max", "memory.oom.group", "memory.memsw.limit_in_bytes")


@dataclass(frozen=True)
class Hierarchy:
    """Where replica groups are made: ``parents`` maps each controller to the directory
    (one for all three with v2, one per controller's mount with v1)."""

    kind: str
    parents: dict[str, str] = field(default_factory=dict)

    def dirs(self, replica_id: str) -> dict[str, Path]:
        """{controller: the replica's group directory}."""
        return {c: Path(parent) / replica_id for c, parent in self.parents.items()}

    def unique_dirs(self, replica_id: str) -> list[Path]:
        return sorted(set(self.dirs(replica_id).values()))


# --- which hierarchy ---------------------------------------------------------------------------


def mounts(path: str = MOUNTS) -> list[tuple[str, str, list[str]]]:
    """(mount point, type, options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                point = parts[1].replace("\\040", " ")
                found.append((point, parts[2], parts[3].split(",")))
    return found


def detect(parent: str = DEFAULT_PARENT, *, mounts_file: str = MOUNTS) -> Hierarchy | None:
    """v2 where the group replicas' groups go in would offer cpu, memory and pids and can
    be written; else v1 where all three controllers are mounted writable; else None."""
    found = mounts(mounts_file)
    for point, kind, _ in found:
        if kind == "cgroup2" and _v2_usable(Path(point), parent):
            return Hierarchy(V2, {c: str(Path(point) / parent) for c in CONTROLLERS})
    parents = {}
    for controller in CONTROLLERS:
        for point, kind, options in found:
            if kind == "cgroup" and controller in options and _writable(Path(point) / parent):
                parents[controller] = str(Path(point) / parent)
                break
    return Hierarchy(V1, parents) if len(parents) == len(CONTROLLERS) else None


def _v2_usable(root: Path, parent: str) -> bool:
    """The deepest existing group on the way to ``parent`` offers the three controllers
    (``cgroup.controllers``: a delegated subtree, or the root) and may be written."""
    existing = _deepest_existing(root / parent)
    offered = _words(existing / "cgroup.controllers")
    return all(c in offered for c in CONTROLLERS) and os.access(existing, os.W_OK)


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _deepest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path) -> bool:
    return os.access(_deepest_existing(path), os.W_OK)


@cache
def hierarchy(parent: str) -> Hierarchy | None:
    """``detect`` once per process and parent (mounts do not change under a running host)."""
    found = detect(parent)
    log.info("runtime: replica limits with %s", found.kind if found else FLOOR)
    return found


def parent_group() -> str:
    return os.environ.get(PARENT_ENV, "").strip("/") or DEFAULT_PARENT


# --- a replica's group ---------------------------------------------------------------------


def create(where: Hierarchy, replica_id: str, limits: ReplicaLimits) -> None:
    """The replica's group with ``limits`` written (0: that one unlimited)."""
    dirs = where.dirs(replica_id)
    for path in set(dirs.values()):
        if where.kind == V2:
            _make_v2(path)
        else:
            path.mkdir(parents=True, exist_ok=True)
    for name, value in settings(where.kind, limits).items():
        target = dirs[name.split(".", 1)[0]] / name
        # Swap accounting and group kills are kernel options: without them, nothing to set.
        if name not in OPTIONAL or target.exists():
            target.write_text(value)


def _make_v2(path: Path) -> None:
    """The missing levels down to ``path``, each parent first handing the three
    controllers down (``cgroup.subtree_control``; a group without processes may)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for level in reversed(missing):
        control = level.parent / "cgroup.subtree_control"
        enabled = _words(control)
        wanted = [f"+{c}" for c in CONTROLLERS if c not in enabled]
        if wanted:
            control.write_text(" ".join(wanted))
        level.mkdir(exist_ok=True)


def settings(kind: str, limits: ReplicaLimits) -> dict[str, str]:
    """{file: value} of a replica's group, in the order they must be written (v1 takes
    the memory limit before memory+swap, which may not be below it)."""
    values: dict[str, str] = {}
    memory = limits.memory_mb * MIB
    if kind == V2:
        if limits.cpus:
            values["cpu.max"] = f"{round(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"
        if memory:
            values["memory.max"] = str(memory)
            values["memory.swap.max"] = "0"
            # The whole group goes together: no half of a replica is left behind.
            values["memory.oom.group"] = "1"
    else:
        if limits.cpus:
            values["cpu.cfs_period_us"] = str(CPU_PERIOD_US)
            values["cpu.cfs_quota_us"] = str(round(limits.cpus * CPU_PERIOD_US))
        if memory:
            values["memory.limit_in_bytes"] = str(memory)
            values["memory.memsw.limit_in_bytes"] = str(memory)
    if limits.max_processes:
        values["pids.max"] = str(limits.max_processes)
    return values


def join(where: Hierarchy, replica_id: str, pid: int) -> None:
    """Move process ``pid`` (and the children it makes from now on) into the group."""
    for path in where.unique_dirs(replica_id):
        (path / "cgroup.procs").write_text(str(pid))


def joiner(where: Hierarchy, replica_id: str) -> Callable[[], None]:
    """For a child between fork and exec: joins the group with nothing but system calls
    (the paths are made before the fork)."""
    paths = [os.fsencode(path / "cgroup.procs") for path in where.unique_dirs(replica_id)]

    def join_self() -> None:
        for path in paths:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # 0: the writing process itself
            finally:
                os.close(fd)

    return join_self


def oom_kills(where: Hierarchy, replica_id: str) -> int:
    """How many of the group's processes the kernel killed for want of memory."""
    memory = where.dirs(replica_id)["memory"]
    name = "memory.events" if where.kind == V2 else "memory.oom_control"
    try:
        text = (memory / name).read_text()
    except OSError:
        return 0
    fields = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    return int(fields.get("oom_kill", 0))


def memory_limit_mb(where: Hierarchy, replica_id: str) -> int:
    """The group's memory limit in MiB; 0 when it has none (or no group)."""
    memory = where.dirs(replica_id)["memory"]
    name = "memory.max" if where.kind == V2 else "memory.limit_in_bytes"
    try:
        value = (memory / name).read_text().strip()
    except OSError:
        return 0
    return int(value) // MIB if value.isdigit() and int(value) < 2**62 else 0


def stop_reason(where: Hierarchy | None, replica_id: str) -> str:
    """Why the group's replica stopped, when its limits say so; "" otherwise."""
    if where is None or not oom_kills(where, replica_id):
        return ""
    limit = memory_limit_mb(where, replica_id)
    return f"out of memory (limit {limit} MiB)" if limit else "out of memory"


def members(where: Hierarchy, replica_id: str) -> set[int]:
    found: set[int] = set()
    for path in where.unique_dirs(replica_id):
        with contextlib.suppress(OSError, ValueError):
            found |= {int(p) for p in (path / "cgroup.procs").read_text().split()}
    return found


def remove(where: Hierarchy, replica_id: str) -> bool:
    """Kill what is left in the group and remove it; False when it could not be removed
    yet (a process still exiting: a later call removes it)."""
    deadline = time.monotonic() + REMOVE_WAIT_SECONDS
    while (left := members(where, replica_id)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    removed = True
    for path in where.unique_dirs(replica_id):
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            removed = False
    return removed


def sweep(where: Hierarchy, keep: set[str], *, older_than: float = SWEEP_AFTER_SECONDS) -> int:
    """Remove the empty groups of replicas that are gone (not in ``keep``): only empty
    ones, and not just made (a replica that is starting joins its group right after),
    so a sweep never stops a process. Returns how many it removed."""
    removed = 0
    for replica_id in groups(where) - keep:
        dirs = where.unique_dirs(replica_id)
        try:
            young = any(time.time() - path.stat().st_mtime < older_than for path in dirs)
        except OSError:
            continue  # removed meanwhile
        if young or members(where, replica_id):
            continue
        removed += remove(where, replica_id)
    return removed


def remove_parent(where: Hierarchy) -> None:
    """The installation's own group, once no replica group is left in it."""
    for parent in set(where.parents.values()):
        with contextlib.suppress(OSError):
            Path(parent).rmdir()


def groups(where: Hierarchy) -> set[str]:
    """The replica ids that have a group under this installation's parent."""
    found: set[str] = set()
    for parent in set(where.parents.values()):
        with contextlib.suppress(OSError):
            found |= {p.name for p in Path(parent).iterdir() if p.is_dir()}
    return found


# --- the floor -------------------------------------------------------------------------------


def floor(limits: ReplicaLimits, *, own_user_namespace: bool) -> dict[str, int]:
    """The rlimits a replica sets itself where no group can hold it: its data segment
    (every private writable mapping: what ``malloc`` and NumPy allocate) and, only where
    it runs in a user namespace of its own, its processes and threads (RLIMIT_NPROC
    counts per user and namespace: with the product's or a shared uid it would count
    other processes too)."""
    values = {}
    if limits.memory_mb:
        values["data"] = limits.memory_mb * MIB
    if limits.max_processes and own_user_namespace:
        values["nproc"] = limits.max_processes
    return values


def floor_env(values: dict[str, int]) -> dict[str, str]:
    if not values:
        return {}
    return {RLIMITS_ENV: ",".join(f"{name}={value}" for name, value in sorted(values.items()))}


def apply_floor(environ: MutableMapping[str, str]) -> dict[str, int]:
    """In the replica before its model loads: set (and take out of ``environ``) the
    rlimits the runtime asked for; soft and hard alike, so model code cannot raise them."""
    text = environ.pop(RLIMITS_ENV, "")
    applied: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name in RLIMITS and value.isdigit():
            resource.setrlimit(RLIMITS[name], (int(value), int(value)))
            applied[name] = int(value)
    return applied


# --- one replica's enforcement ------------------------------------------------------------------


@dataclass(frozen=True)
class Enforcement:
    """How one replica's limits are held: its group (``where``), or the floor (``env``
    for the replica to set on itself), or nothing (no limit asked)."""

    replica_id: str
    backend: str = ""
    where: Hierarchy | None = None
    env: dict[str, str] = field(default_factory=dict)

    def join(self, pid: int) -> None:
        if self.where is not None:
            join(self.where, self.replica_id, pid)

    def joiner(self) -> Callable[[], None] | None:
        return joiner(self.where, self.replica_id) if self.where is not None else None


def _held(limits: ReplicaLimits) -> bool:
    """Whether ``limits`` asks for anything a group (or the floor) holds."""
    return bool(limits.cpus or limits.memory_mb or limits.max_processes)


def backend_for(limits: ReplicaLimits, parent: str) -> str:
    """How ``limits`` would be held on this host: a group's version, the floor, or ""."""
    if not _held(limits):
        return ""
    where = hierarchy(parent)
    return where.kind if where is not None else FLOOR


def prepare(
    replica_id: str, limits: ReplicaLimits, *, parent: str, own_user_namespace: bool
) -> Enforcement:
    """Before a replica starts: its group made, or the floor chosen when no group can be."""
    if not _held(limits):
        return Enforcement(replica_id)
    where = hierarchy(parent)
    if where is not None:
        try:
            create(where, replica_id, limits)
        except OSError as exc:
            log.warning("runtime: no cgroup for replica %s (%s): rlimits instead", replica_id, exc)
            with contextlib.suppress(OSError):
                remove(where, replica_id)
        else:
            return Enforcement(replica_id, where.kind, where)
    values = floor(limits, own_user_namespace=own_user_namespace)
    return Enforcement(replica_id, FLOOR, None, floor_env(values))


def describe(limits: ReplicaLimits, backend: str) -> str:
    """``limits`` and how they are held, in words for an event."""
    parts = []
    if limits.cpus:
        parts.append(f"{limits.cpus:g} CPU")
    if limits.memory_mb:
        parts.append(f"{limits.memory_mb} MiB memory")
    if limits.max_processes:
        parts.append(f"{limits.max_processes} processes")
    if limits.tmp_mb:
        parts.append(f"{limits.tmp_mb} MiB per tmpfs")
    if not parts:
        return "no limits"
    held = {
        V2: "held by cgroup v2",
        V1: "held by cgroup v1",
        FLOOR: "held by rlimits (no cgroup can be used on this host)",
    }.get(backend, "")
    return ", ".join(parts) + (f"; {held}" if held else "")
