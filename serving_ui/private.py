"""Files only the product's own user may read: the generated secret key, the Redis and
development PostgreSQL passwords, the SQLite database, the token ``make run`` prints.

Each is created with mode 0600 by ``os.open`` itself (``O_CREAT | O_EXCL``), so there is no
moment at which it exists with the default permissions waiting for a ``chmod``, whatever
the process's umask. A generated secret is written whole into a temporary file and linked
into place, so two processes starting at once read the same complete value, never a partial
one. SQLite creates its ``-wal`` and ``-shm`` files with the database file's permissions, so
they are private too.

Imported by the settings before Django is configured, so it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

PRIVATE_MODE = 0o600
REDIS_PASSWORD_FILE = "redis_password"  # noqa: S105 (a file name)


def create_private(path: Path, content: str = "") -> bool:
    """Create ``path`` (mode 0600) holding ``content``; False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return True


def replace_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` atomically; the file is mode 0600 from its creation."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    create_private(temporary, content)
    os.replace(temporary, path)


def private_file(path: Path, make: Callable[[], str]) -> str:
    """The content of ``path``, written first as ``make()`` when the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        create_private(temporary, make())
        try:
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)  # atomic; the first writer wins
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip()


def secret_key(path: Path) -> str:
    """The key kept in ``path``, generated (50 random characters) on first use."""
    return private_file(path, lambda: secrets.token_urlsafe(50))


def generated_password(path: Path) -> str:
    """The password kept in ``path``, generated (32 random URL-safe characters) on first use."""
    return private_file(path, lambda: secrets.token_urlsafe(32))


def redis_password(var_dir: Path) -> str:
    """The password of the Redis server this installation starts (generated once)."""
    return generated_password(var_dir / REDIS_PASSWORD_FILE)


def default_redis_url(var_dir: Path, port: int = 6379) -> str:
    """The embedded Redis on loopback, with this installation's password."""
    return f"redis://:{redis_password(var_dir)}@127.0.0.1:{port}/0"


def private_sqlite(database: str) -> None:
    """Create the SQLite file ``database`` empty and 0600 before SQLite opens it (SQLite
    would create it with the umask's permissions). In-memory databases are left alone."""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        create_private(Path(database))
