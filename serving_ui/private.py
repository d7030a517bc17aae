"""Files only the product's own user may read: the generated secret key, the SQLite
database, the token ``make run`` prints.

Each is created with mode 0600 by ``os.open`` itself (``O_CREAT | O_EXCL``), so there is no
moment at which it exists with the default permissions waiting for a ``chmod``, whatever
the process's umask. SQLite creates its ``-wal`` and ``-shm`` files with the database
file's permissions, so they are private too.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

PRIVATE_MODE = 0o600


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


def secret_key(path: Path) -> str:
    """The key kept in ``path``, generated (50 random characters) on first use. Two
    processes starting at once agree: only one creates the file, both read it."""
    if create_private(path, secrets.token_urlsafe(50)):
        return path.read_text().strip()
    key = path.read_text().strip()
    if not key:  # another process created it and has not written yet
        time.sleep(0.1)
        key = path.read_text().strip()
    return key


def private_sqlite(database: str) -> None:
    """Create the SQLite file ``database`` empty and 0600 before SQLite opens it (SQLite
    would create it with the umask's permissions). In-memory databases are left alone."""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        create_private(Path(database))
