"""The suite's own stack: ``reconcile_paused`` stops the worker only between two writes,
which it tells by whether another connection is inside a transaction on the test database."""

from __future__ import annotations

import os
import sqlite3

from django.conf import settings

from tests.support.stack import database_held


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


def test_a_connection_inside_a_transaction_holds_the_database_until_it_ends(transactional_db):
    assert not database_held()
    connection, end = _hold()
    try:
        assert database_held()
        connection.execute(end)
        assert not database_held()
    finally:
        connection.close()
