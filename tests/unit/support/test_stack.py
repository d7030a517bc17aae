"""The suite's own stack: ``reconcile_paused`` stops the worker only between two writes,
which it tells by whether another connection is inside a transaction on the test database."""

from __future__ import annotations

import os
import sqlite3

from django.conf import settings

from tests.support.stack import database_held, wait_for


def _hold() -> tuple[object, str]:
    """Another connection inside a transaction that wrote nothing yet (as a process stopped
    between its statements is); the statement that ends it."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        connection = sqlite3.connect(database["NAME"], isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        return connection, "ROLLBACK"
    import psycopg

    connection = psycopg.connect(os.environ["DATABASE_URL"])
    connection.execute("SELECT 1")  # psycopg opens a transaction before it
    return connection, "ROLLBACK"


def _released() -> None:
    # The session's worker of this test process, if an earlier module started it, may be
    # inside a short transaction of its own at any moment: it ends within moments.
    wait_for(lambda: not database_held(), timeout=30, what="no connection inside a transaction")


def test_a_connection_inside_a_transaction_holds_the_database_until_it_ends(transactional_db):
    _released()
    connection, end = _hold()
    try:
        assert database_held()
        connection.execute(end)
        _released()
    finally:
        connection.close()
