"""A throwaway PostgreSQL server on loopback for the PostgreSQL test run and
``make run-cluster``, with Debian's binaries: one role whose password (generated once into a
0600 file, passed to the tools through ``PGPASSWORD``) is required over TCP and the socket
alike, since model code runs on the same machine. As root it runs as the ``postgres``
user; durability is off (docs/security.md, docs/deploy.md).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from serving_ui.private import create_private, generated_password

from .devstack import LOOPBACK, ManagedProcess, StackError, free_port

ROLE = "serving"
# The system user PostgreSQL runs as when the product runs as root (Debian's package's).
SERVER_USER = "postgres"
PASSWORD_FILE = "postgres_password"  # noqa: S105 (a file name)
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
    return ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []


def data_directory(var_dir: Path) -> Path:
    """Where ``make run-cluster`` keeps the data of the installation whose files are in
    ``var_dir``: ``var/cluster/postgres``, or, as root, a directory under the postgres user's
    home that only that user may enter (created here), named after ``var_dir`` (one per
    checkout, kept across starts).

    As root the server runs as the postgres user, which can reach nothing under ``var/``
    (0700, the secrets' directory) nor, often, the checkout itself (``/root`` is 0700);
    opening either to it would open them to every local user."""
    if os.geteuid() != 0:
        return var_dir / "cluster" / "postgres"
    try:
        home = Path(pwd.getpwnam(SERVER_USER).pw_dir)
    except KeyError:
        raise StackError("PostgreSQL is not installed: `make system-deps` installs it") from None
    if not home.is_dir():
        raise StackError(f"The {SERVER_USER} user's home directory {home} does not exist.")
    key = hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:16]
    home = home / "serving-ui"
    for directory in (home, home / key):
        directory.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(directory, SERVER_USER, SERVER_USER)
        directory.chmod(0o700)
    return home / key / "data"


def url(port: int, database: str, password: str) -> str:
    return f"postgres://{ROLE}:{quote(password, safe='')}@{LOOPBACK}:{port}/{database}"


def password(password_file: Path) -> str:
    """The role's password, as ``start_postgres`` generated it into ``password_file``."""
    return password_file.read_text().strip()


class Postgres(NamedTuple):
    process: ManagedProcess
    port: int
    password: str

    def url(self, database: str) -> str:
        return url(self.port, database, self.password)


def start_postgres(
    data_dir: Path,
    log_dir: Path | None,
    password_file: Path,
    *,
    port: int = 0,
    timeout: float = 60,
    **kwargs,
) -> Postgres:
    """initdb ``data_dir`` (unless it holds a cluster) with the password kept in
    ``password_file`` (generated on first use) and start ``postgres`` on loopback; returns
    once it accepts connections."""
    bin_dir = binaries()
    if bin_dir is None:
        raise StackError("PostgreSQL is not installed: `make system-deps` installs it")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data_dir, SERVER_USER, SERVER_USER)
        _check_reachable(data_dir)
    if (data_dir / "PG_VERSION").exists():
        _check_initialised(data_dir, password_file)
    else:
        _initdb(bin_dir, data_dir, generated_password(password_file))
    secret = password(password_file)
    settings = [f"listen_addresses={LOOPBACK}", f"unix_socket_directories={data_dir}"]
    settings += [*FAST_UNSAFE, "max_connections=200"]
    cmd = [*_as_owner(), str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port)]
    for setting in settings:
        cmd += ["-c", setting]
    server = ManagedProcess("postgres", cmd, log_dir, **kwargs).start()
    try:
        server.wait_until(
            lambda: _accepts(bin_dir, port, secret),
            timeout=timeout,
            what="PostgreSQL",
            interval=0.1,
        )
    except StackError:
        server.stop()
        raise
    return Postgres(server, port, secret)


def _check_reachable(data_dir: Path) -> None:
    """As root: the postgres user must reach and write ``data_dir``, or initdb and the
    server fail with a bare "Permission denied"."""
    if subprocess.run([*_as_owner(), "test", "-w", str(data_dir)], check=False).returncode:
        raise StackError(
            f"The {SERVER_USER} user, which PostgreSQL runs as when started as root, cannot "
            f"reach {data_dir}: every directory above it must let that user in."
        )


def _initdb(bin_dir: Path, data_dir: Path, secret: str) -> None:
    """A new cluster whose role needs ``secret`` on every connection, local or TCP.

    initdb reads the password from a file: a copy created 0600 next to the data directory,
    handed to the postgres user (as root) and removed as soon as initdb is done. (Not a
    pipe: as root, initdb runs as the postgres user, who may not open a pipe root made.)"""
    copy = data_dir.parent / f".{data_dir.name}.pwfile.{secrets.token_hex(4)}"
    create_private(copy, secret + "\n")
    try:
        if os.geteuid() == 0:
            shutil.chown(copy, SERVER_USER, SERVER_USER)
        result = subprocess.run(
            [
                *_as_owner(),
                str(bin_dir / "initdb"),
                *("-D", str(data_dir), "-U", ROLE, "-E", "UTF8"),
                *("--auth=scram-sha-256", f"--pwfile={copy}"),
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        copy.unlink(missing_ok=True)
    if result.returncode:
        raise StackError(f"initdb failed: {result.stderr.strip()[-2000:]}")


def _check_initialised(data_dir: Path, password_file: Path) -> None:
    """Refuse a cluster that would let anyone in, or whose password is lost."""
    if trusting(data_dir):
        raise StackError(
            f"{data_dir} holds a PostgreSQL cluster initialised with trust authentication "
            f"(by an older version): any local process could connect to it as {ROLE!r}, so "
            "it is not started. Remove that directory (its data is lost) and start again: "
            f"a new cluster is initialised that requires the password kept in {password_file}."
        )
    if not password_file.exists():
        raise StackError(
            f"{data_dir} holds a PostgreSQL cluster but its password file {password_file} "
            "is missing. Remove that directory (its data is lost) and start again."
        )


def trusting(data_dir: Path) -> bool:
    """Whether the cluster in ``data_dir`` lets any connection in without a password."""
    for line in (data_dir / "pg_hba.conf").read_text().splitlines():
        if "trust" in line.split("#", 1)[0].split():
            return True
    return False


def _with_password(secret: str) -> dict[str, str]:
    """The environment of a PostgreSQL tool: the password in ``PGPASSWORD``."""
    return {**os.environ, "PGPASSWORD": secret}


def _accepts(bin_dir: Path, port: int, secret: str) -> bool:
    check = [str(bin_dir / "pg_isready"), "-h", LOOPBACK, "-p", str(port), "-U", ROLE, "-q"]
    return subprocess.run(check, env=_with_password(secret), check=False).returncode == 0


def create_database(port: int, name: str, secret: str) -> None:
    """Create database ``name`` owned by the role (nothing when it exists)."""
    bin_dir = binaries()
    result = subprocess.run(
        [str(bin_dir / "createdb"), "-h", LOOPBACK, "-p", str(port), "-U", ROLE, name],
        capture_output=True,
        text=True,
        env=_with_password(secret),
        check=False,
    )
    if result.returncode and "already exists" not in result.stderr:
        raise StackError(f"createdb {name} failed: {result.stderr.strip()}")
