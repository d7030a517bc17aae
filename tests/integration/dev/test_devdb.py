"""The throwaway PostgreSQL server (the PostgreSQL test run, ``make run-cluster``) lets in
only who gives its role's password: over TCP on loopback and over its Unix socket alike.

A real server from ``endpoints.dev.devdb``, started as the product starts it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from endpoints.dev import devdb
from endpoints.dev.devstack import LOOPBACK, StackError

pytestmark = [
    pytest.mark.any_database,
    pytest.mark.skipif(
        devdb.binaries() is None, reason="PostgreSQL is not installed (`make system-deps`)"
    ),
]


@pytest.fixture(autouse=True)
def _no_client_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client finds no password of its own (environment, ~/.pgpass) to fall back on."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    # Under /tmp itself: as root the server runs as the postgres user, which cannot enter
    # pytest's (private) temporary directories.
    path = Path(tempfile.mkdtemp(prefix="serving-ui-devdb-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def main(home: Path) -> Path:
    return home / "main"


@pytest.fixture(scope="module")
def server(main: Path) -> Iterator[devdb.Postgres]:
    pg = devdb.start_postgres(main / "data", main, main / devdb.PASSWORD_FILE)
    yield pg
    pg.process.stop()


def _refused(**params: object) -> str:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(user=devdb.ROLE, dbname="postgres", connect_timeout=10, **params)
    return str(refused.value)


def test_a_connection_without_the_password_is_refused(server, main):
    over_tcp = _refused(host=LOOPBACK, port=server.port)
    assert "no password supplied" in over_tcp
    over_socket = _refused(host=str(main / "data"), port=server.port)
    assert "no password supplied" in over_socket


def test_a_connection_with_a_wrong_password_is_refused(server, main):
    for host in (LOOPBACK, str(main / "data")):
        refused = _refused(host=host, port=server.port, password=server.password + "x")
        assert "password authentication failed" in refused


def test_the_url_devdb_gives_connects_and_the_password_file_is_private(server, main):
    devdb.create_database(server.port, "serving", server.password)
    with psycopg.connect(server.url("serving"), connect_timeout=10) as conn:
        row = conn.execute("select current_user, current_database()").fetchone()
        method = conn.execute("show password_encryption").fetchone()
    assert row == (devdb.ROLE, "serving")
    assert method == ("scram-sha-256",)
    password_file = main / devdb.PASSWORD_FILE
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.stat().st_uid == os.geteuid()
    assert devdb.password(password_file) == server.password
    assert len(server.password) >= 32
    # initdb's copy of the password is gone; nothing else holds it next to the data.
    assert sorted(p.name for p in main.iterdir()) == sorted(
        ["data", devdb.PASSWORD_FILE, "postgres.log"]
    )
    assert not devdb.trusting(main / "data")


def test_a_restart_on_the_same_data_directory_keeps_the_password(home):
    here = home / "restart"
    first = devdb.start_postgres(here / "data", here, here / devdb.PASSWORD_FILE)
    first.process.stop()
    again = devdb.start_postgres(here / "data", here, here / devdb.PASSWORD_FILE)
    try:
        assert again.password == first.password
        with psycopg.connect(again.url("postgres"), connect_timeout=10) as conn:
            assert conn.execute("select current_user").fetchone() == (devdb.ROLE,)
    finally:
        again.process.stop()


def test_a_data_directory_initialised_with_trust_is_not_started(home):
    here = home / "trusting"
    here.mkdir(mode=0o755)
    data = here / "data"
    data.mkdir()
    owner = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        owner = ["runuser", "-u", "postgres", "--"]
    # As an older version initialised it.
    subprocess.run(
        [
            *owner,
            str(devdb.binaries() / "initdb"),
            "-D",
            str(data),
            "-U",
            devdb.ROLE,
            "-A",
            "trust",
        ],
        capture_output=True,
        check=True,
    )
    with pytest.raises(StackError, match="trust authentication") as refused:
        devdb.start_postgres(data, here, here / devdb.PASSWORD_FILE)
    assert "Remove that directory" in str(refused.value)
    assert not (here / devdb.PASSWORD_FILE).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: the server then runs as postgres")
def test_as_root_the_cluster_starts_beside_a_private_var_directory(tmp_path):
    """`make run-cluster` as root: var/ is 0700 and the checkout may be in /root (0700), so
    the postgres user reaches neither; the server keeps its data in a directory only that
    user may enter, and var/ stays closed."""
    tmp_path.chmod(0o700)  # as /root is
    var = tmp_path / "checkout" / "var"
    var.mkdir(parents=True, mode=0o700)
    (var / "cluster").mkdir()
    data = devdb.data_directory(var)
    assert data == devdb.data_directory(var)  # the same at every start
    another = devdb.data_directory(tmp_path / "another" / "var")
    shutil.rmtree(another.parent)
    assert data != another
    try:
        pg = devdb.start_postgres(data, var / "cluster", var / devdb.PASSWORD_FILE)
        try:
            with psycopg.connect(pg.url("postgres"), connect_timeout=10) as conn:
                assert conn.execute("select current_user").fetchone() == (devdb.ROLE,)
        finally:
            pg.process.stop()
        for directory in (data, data.parent):
            assert directory.owner() == devdb.SERVER_USER
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(var.stat().st_mode) == 0o700
        password_file = var / devdb.PASSWORD_FILE
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert password_file.owner() == "root"
        # initdb's copy of the password is gone.
        assert [p.name for p in data.parent.iterdir()] == [data.name]
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)
