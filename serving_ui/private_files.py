"""Secrets this installation generates for itself, kept under ``var/`` readable by its
owner only: created with mode 0600 (never a moment with wider permissions) and complete
(another process starting at the same time reads the same value, never a partial one).

Imported by the settings before Django is configured, so it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

REDIS_PASSWORD_FILE = "redis_password"  # noqa: S105 (a file name)


def private_file(path: Path, make) -> str:
    """The content of ``path``, written first as ``make()`` when the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(make())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)  # atomic; the first writer wins
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip()


def redis_password(var_dir: Path) -> str:
    """The password of the Redis server this installation starts (generated once)."""
    return private_file(var_dir / REDIS_PASSWORD_FILE, lambda: secrets.token_urlsafe(32))


def default_redis_url(var_dir: Path, port: int = 6379) -> str:
    """The embedded Redis on loopback, with this installation's password."""
    return f"redis://:{redis_password(var_dir)}@127.0.0.1:{port}/0"
