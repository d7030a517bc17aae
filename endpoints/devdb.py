"""A throwaway PostgreSQL server on loopback: the test suite on PostgreSQL and
``make run-cluster`` start one with Debian's ``postgresql`` binaries.

``initdb`` into a fresh directory, ``postgres`` listening on 127.0.0.1 only (its Unix socket
inside the data directory), trust authentication for one role. PostgreSQL refuses to run
as root, so as root both run as the ``postgres`` system user. Durability settings are off:
the data is thrown away when the server stops.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from .devstack import LOOPBACK, ManagedProcess, StackError, free_port

ROLE = "serving"
# Data that is thrown away need not survive a crash of this machine.
FAST_UNSAFE = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def binaries() -> Path | None:
    """The directory of ``initdb``, ``postgres`` and their tools: Debian's newest, else
    the one on PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _as_owner() -> list[str]:
    """The prefix that runs a PostgreSQL binary as a user it accepts."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def url(port: int, database: str) -> str:
    return f"postgres://{ROLE}@{LOOPBACK}:{port}/{database}"


def start_postgres(
    data_dir: Path, log_dir: Path | None, *, port: int = 0, timeout: float = 60, **kwargs
) -> tuple[ManagedProcess, int]:
    """initdb ``data_dir`` (unless it holds a cluster) and start ``postgres`` on loopback;
    returns the process and its port once it accepts connections."""
    bin_dir = binaries()
    if bin_dir is None:
        raise StackError("PostgreSQL is not installed: `make system-deps` installs it")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # The postgres user must reach the directory and own it.
        data_dir.parent.chmod(0o755)
        shutil.chown(data_dir, "postgres", "postgres")
    if not (data_dir / "PG_VERSION").exists():
        result = subprocess.run(
            [
                *_as_owner(),
                str(bin_dir / "initdb"),
                *("-D", str(data_dir), "-U", ROLE, "--auth=trust", "-E", "UTF8"),
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise StackError(f"initdb failed: {result.stderr.strip()[-2000:]}")
    settings = [f"listen_addresses={LOOPBACK}", f"unix_socket_directories={data_dir}"]
    settings += [*FAST_UNSAFE, "max_connections=200"]
    cmd = [*_as_owner(), str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port)]
    for setting in settings:
        cmd += ["-c", setting]
    server = ManagedProcess("postgres", cmd, log_dir, **kwargs).start()
    try:
        server.wait_until(
            lambda: _accepts(bin_dir, port), timeout=timeout, what="PostgreSQL", interval=0.1
        )
    except StackError:
        server.stop()
        raise
    return server, port


def _accepts(bin_dir: Path, port: int) -> bool:
    check = [str(bin_dir / "pg_isready"), "-h", LOOPBACK, "-p", str(port), "-U", ROLE, "-q"]
    return subprocess.run(check, check=False).returncode == 0


def create_database(port: int, name: str) -> None:
    """Create database ``name`` owned by the role (nothing when it exists)."""
    bin_dir = binaries()
    result = subprocess.run(
        [str(bin_dir / "createdb"), "-h", LOOPBACK, "-p", str(port), "-U", ROLE, name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode and "already exists" not in result.stderr:
        raise StackError(f"createdb {name} failed: {result.stderr.strip()}")
