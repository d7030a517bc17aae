"""Settings for the test suite: the real stack, isolated per test run.

Each run gets its own data directory (SQLite database, MLflow registry, replica logs) and
its own Redis port, exported as environment variables so that the worker and web server
processes the integration fixtures start see exactly the same configuration.

With pytest-xdist (``pytest -n N``) each worker gets its own of all of these (and its own
test database): the controller process imports these settings too and its workers inherit
its environment, so a worker takes fresh values in place of the controller's.

``SERVING_TEST_DB=postgres`` runs the suite on PostgreSQL instead: the run starts its own
throwaway server on 127.0.0.1 (``endpoints.dev.devdb``; initdb into the data directory, a free
port, a password generated into a 0600 file next to it) and stops it when the run ends. The
processes the fixtures start inherit its URL.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from .private import default_redis_url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PER_WORKER = (
    "REDIS_URL",
    "TEST_DATABASE_PATH",
    "SERVING_REPLICA_PORT_MIN",
    "SERVING_REPLICA_PORT_MAX",
    # Replica cgroups under a parent of the worker's own (the product names it after its
    # data directory): a worker whose session ends sweeps its own empty groups, never
    # another's just made for a replica about to join it.
    "SERVING_CGROUP_PARENT",
)
# "gw0", "gw1", … in a pytest-xdist worker (and the processes it starts); "" otherwise.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if "SERVING_VAR_DIR" not in os.environ:
    os.environ["SERVING_VAR_DIR"] = tempfile.mkdtemp(prefix="serving-ui-test-")
if os.environ.get("SERVING_TEST_WORKER", "") != WORKER:
    # A worker that inherited the controller's settings: a data directory of its own inside
    # the controller's, and its own Redis, database and replica ports (set below).
    os.environ["SERVING_VAR_DIR"] = tempfile.mkdtemp(
        prefix=f"{WORKER}-", dir=os.environ["SERVING_VAR_DIR"]
    )
    for _name in _PER_WORKER:
        os.environ.pop(_name, None)
os.environ["SERVING_TEST_WORKER"] = WORKER
# The run's own Redis, with the run's own password (as the product's embedded one).
if "REDIS_URL" not in os.environ:
    os.environ["REDIS_URL"] = default_redis_url(Path(os.environ["SERVING_VAR_DIR"]), _free_port())
os.environ.setdefault("RECONCILE_INTERVAL_SECONDS", "1")
os.environ.setdefault("SERVING_DRAIN_SECONDS", "0.5")
# Only versions whose stage has scale to zero on are affected: tests see it within seconds.
os.environ.setdefault("SERVING_SCALE_TO_ZERO_AFTER_SECONDS", "6")
# Replica ports apart from a product (or another test run) on the same machine: a block of
# 400 per run, picked by the first process of the run, and 50 of it per xdist worker.
_ports = int(os.environ.setdefault("SERVING_TEST_PORTS", str(30000 + os.getpid() % 80 * 400)))
_ports += int(WORKER.removeprefix("gw") or 0) % 8 * 50
os.environ.setdefault("SERVING_REPLICA_PORT_MIN", str(_ports))
os.environ.setdefault("SERVING_REPLICA_PORT_MAX", str(_ports + 49))
os.environ.setdefault("MANAGE_RATE_LIMIT", "10000/min")

TEST_DB = os.environ.get("SERVING_TEST_DB", "sqlite")
if TEST_DB not in ("sqlite", "postgres"):
    raise RuntimeError(f"SERVING_TEST_DB is {TEST_DB!r}: use sqlite or postgres")
if TEST_DB == "postgres" and "SERVING_TEST_PG_PORT" not in os.environ:
    # The first process of the run (pytest) starts the server; its children inherit the port.
    import atexit
    import shutil
    from pathlib import Path

    from endpoints.dev import devdb

    # A directory of its own: as root the server runs as the postgres user, which cannot
    # enter the (private) data directory of the run; this one lets it through (0711: in,
    # not list) to the data directory initdb gives it.
    _pg_dir = Path(tempfile.mkdtemp(prefix="serving-ui-test-pg-"))
    _pg_dir.chmod(0o711)
    atexit.register(shutil.rmtree, _pg_dir, ignore_errors=True)
    _pg = devdb.start_postgres(_pg_dir / "data", _pg_dir, _pg_dir / devdb.PASSWORD_FILE)
    atexit.register(_pg.process.stop)
    os.environ["SERVING_TEST_PG_PORT"] = str(_pg.port)
    os.environ["SERVING_TEST_PG_DIR"] = str(_pg_dir)
if TEST_DB == "postgres":
    from endpoints.dev import devdb

    # Django creates (and drops) this database; the fixtures' processes use it too. The
    # workers of one run share the server, each with a database of its own.
    TEST_PG_NAME = f"test_serving_{WORKER}" if WORKER else "test_serving"
    os.environ["DATABASE_URL"] = devdb.url(
        int(os.environ["SERVING_TEST_PG_PORT"]),
        TEST_PG_NAME,
        devdb.password(Path(os.environ["SERVING_TEST_PG_DIR"]) / devdb.PASSWORD_FILE),
    )

from .settings import *  # noqa: E402, F403
from .settings import DATABASES, VAR_DIR  # noqa: E402

if TEST_DB == "postgres":
    DATABASES["default"]["TEST"] = {"NAME": TEST_PG_NAME}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    os.environ.setdefault("TEST_DATABASE_PATH", str(VAR_DIR / "test-db.sqlite3"))
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DATABASE_PATH"]}
    # Processes started by the fixtures use the test database.
    os.environ["DATABASE_URL"] = f"sqlite:///{os.environ['TEST_DATABASE_PATH']}"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
