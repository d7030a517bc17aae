"""How a replica forked from a sandboxed zygote confines itself before any model code runs
(Linux system calls; the rules are ``sandbox``'s, the filter ``seccomp``'s)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

from . import seccomp
from .sandbox import SHM, TMP, python_paths, runtime_paths

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
READ_ONLY = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def become_subreaper() -> None:
    """A zygote adopts the replicas its short-lived intermediate children leave behind."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def new_namespaces() -> None:
    """In a zygote's child, before it forks the replica: new mount, process and IPC
    namespaces (the replica, forked next, is process 1 of its own; it shares no System V
    or POSIX message queue, semaphore or shared memory with other replicas)."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def confine_child(
    model_path: str,
    hidden: list[str],
    uid: int | None,
    *,
    own_network: bool = False,
    tmp_mb: int = 0,
) -> None:
    """In the replica, before any model code: only ``model_path`` of the ``hidden``
    directories stays in view (read-only), a fresh ``/proc``, ``/tmp`` and ``/dev/shm``
    (each tmpfs at most ``tmp_mb`` MiB; 0: the kernel's default, half the host's memory),
    with ``own_network`` a network namespace of its own; then the unprivileged user and
    ``no_new_privs`` (no capability left to undo any of it) and, with ``own_network``, the
    filter that keeps the sockets made on the host's network from connecting anywhere."""
    if own_network:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(net)")
        _loopback_up()
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    covers = [TMP]
    for path in sorted(hidden, key=len):
        if not any(_within(path, cover) for cover in covers):
            covers.append(path)
    # What the replica needs from under a cover (its model; the code and the interpreter
    # when they live under /tmp), held open while covered, then bound back from the
    # descriptor.
    needed = [model_path, *python_paths(sys.executable), *runtime_paths()]
    kept: dict[str, int] = {}
    for path in sorted({os.path.realpath(p) for p in needed}):  # a parent before its own
        if any(_within(path, c) for c in covers) and not any(_within(path, k) for k in kept):
            kept[path] = os.open(path, os.O_PATH)
    size = f",size={tmp_mb * 1024 * 1024}" if tmp_mb else ""
    for path in covers:
        mode = "mode=1777" if path == TMP else "mode=0755"
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, mode + size)
    if os.path.isdir(SHM):
        _mount("tmpfs", SHM, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" + size)
    for path, fd in kept.items():
        _bind_back(fd, path)
    for path in covers:
        if path != TMP:
            _mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")
    drop(uid)
    if own_network:
        seccomp.install()


def _bind_back(fd: int, path: str) -> None:
    """``path`` (open as ``fd``) bound read-only where a cover hid it."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    _mount(None, path, None, READ_ONLY)
    os.close(fd)


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: the interface name, then its flags (40 bytes)


def _loopback_up() -> None:
    """A new network namespace's loopback interface starts down (bwrap brings it up for
    a launched replica; this does the same for a forked one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def drop(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # clears every capability
    else:
        # Not root: a user namespace of its own leaves it no capability over its mounts.
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def close_inherited(keep: int | None) -> None:
    """Every descriptor but the standard three and ``keep``: nothing the zygote held (or
    a library opened in it) reaches model code."""
    top = os.sysconf("SC_OPEN_MAX")
    if keep is None:
        os.closerange(3, top)
    else:
        os.closerange(3, keep)
        os.closerange(keep + 1, top)
