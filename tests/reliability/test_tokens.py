"""Access tokens: prefixed, stored only as SHA-256, never written anywhere in plaintext,
and refused once revoked or expired, by the API and the gateway alike."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.conf import settings

from tests.support import iris
from tests.support.deployment import Live
from tests.support.stack import wait_for

API = "/api/2.0/"
STATUS = "preview/mlflow/endpoints-v2/get-status"


def _create_token(live: Live, comment: str) -> dict:
    response = requests.post(
        live.base + API + "token/create",
        json={"comment": comment, "lifetime_seconds": 3600},
        headers=live.headers("querier"),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _use_everywhere(live: Live, token: str) -> None:
    """Send the token every way a client may: gateway and API, bearer and basic, valid
    and failing calls (errors are where credentials most often end up in logs)."""
    bearer = {"Authorization": f"Bearer {token}"}
    scored = requests.post(live.url(), json=iris.SPLIT, headers=bearer, timeout=30)
    assert scored.status_code == 200, scored.text
    basic = requests.post(live.url("1", "model"), json=iris.SPLIT, auth=("token", token))
    assert basic.status_code == 200, basic.text
    bad_input = requests.post(live.url(), json={"nope": 1}, headers=bearer, timeout=30)
    assert bad_input.status_code == 400
    status = requests.get(
        live.base + API + STATUS, params={"registered_model_name": live.model}, headers=bearer
    )
    assert status.status_code == 200
    assert requests.get(live.base + API + "no-such-call", headers=bearer).status_code == 404
    assert requests.post(live.base + API + STATUS, headers=bearer).status_code == 405


SCANNER = """
import json, sys
from pathlib import Path
root, secrets = Path(sys.argv[1]), [s.encode() for s in json.loads(sys.stdin.read())]
files, hits = [], []
for path in root.rglob("*"):
    if path.is_file() and not path.is_symlink():
        data = path.read_bytes()
        files.append(str(path))
        hits += [str(path) for s in secrets if s in data]
print(json.dumps({"scanned": len(files), "files": files, "hits": hits}))
"""


def _scan_files(root: Path, secrets: list[str]) -> dict:
    """Search every file under ``root`` for the secrets, in a separate process: closing a
    descriptor of the SQLite database file in this process would drop the POSIX locks
    its own database connection relies on."""
    result = subprocess.run(
        [sys.executable, "-c", SCANNER, str(root)],
        input=json.dumps(secrets),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)


def _redis_dump(redis_server) -> bytes:
    chunks = []
    for key in redis_server.scan_iter(count=1000):
        chunks.append(key)
        kind = redis_server.type(key)
        if kind == b"string":
            chunks.append(redis_server.get(key) or b"")
        elif kind == b"hash":
            for k, v in redis_server.hgetall(key).items():
                chunks += [k, v]
        elif kind == b"list":
            chunks += redis_server.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            chunks += (
                redis_server.smembers(key)
                if kind == b"set"
                else [m for m, _ in redis_server.zrange(key, 0, -1, withscores=True)]
            )
        elif kind == b"stream":
            for _, fields in redis_server.xrange(key):
                for k, v in fields.items():
                    chunks += [k, v]
    return b"\n".join(chunks)


def test_token_plaintext_is_nowhere_in_database_logs_or_redis(
    live, django_db_blocker, redis_server
):
    from endpoints.models import AccessToken

    created = _create_token(live, "scan-me")
    plaintext = created["token_value"]
    assert plaintext.startswith("sui_")
    assert len(plaintext) >= 40  # a prefix and 32 random bytes
    _use_everywhere(live, plaintext)

    with django_db_blocker.unblock():
        row = AccessToken.objects.get(pk=created["token_info"]["token_id"])
    assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row.prefix == plaintext[: len(row.prefix)]
    assert len(row.prefix) <= 12, "the stored prefix must not give away the secret part"

    secrets = [plaintext, *live.tokens.values()]
    # The whole data directory: SQLite database (with its journal/WAL), MLflow registry,
    # web, worker and replica logs.
    found = _scan_files(Path(settings.VAR_DIR), secrets)
    assert found["scanned"] > 3
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        assert str(settings.DATABASES["default"]["NAME"]) in found["files"]
    else:
        # PostgreSQL keeps its tables (and write-ahead log) in its own data directory.
        database = _scan_files(Path(os.environ["SERVING_TEST_PG_DIR"]), secrets)
        assert database["scanned"] > 3
        found["hits"] += database["hits"]
    assert found["hits"] == [], "a token in plaintext in these files"
    dump = _redis_dump(redis_server)
    for secret in secrets:
        assert secret.encode() not in dump, "a token in plaintext in Redis"


def test_a_revoked_token_is_refused_by_gateway_and_api(live):
    created = _create_token(live, "revoke-me")
    token = created["token_value"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.post(live.url(), json=iris.SPLIT, headers=bearer).status_code == 200
    revoked = requests.post(
        live.base + API + "token/delete",
        json={"token_id": created["token_info"]["token_id"]},
        headers=live.headers("querier"),
    )
    assert revoked.status_code == 200
    scored = requests.post(live.url(), json=iris.SPLIT, headers=bearer)
    assert scored.status_code == 401
    assert scored.json()["error_code"] == "UNAUTHENTICATED"
    status = requests.get(
        live.base + API + STATUS, params={"registered_model_name": live.model}, headers=bearer
    )
    assert status.status_code == 401


def test_an_expired_token_is_refused_by_gateway_and_api(live):
    response = requests.post(
        live.base + API + "token/create",
        json={"comment": "short-lived", "lifetime_seconds": 2},
        headers=live.headers("querier"),
        timeout=30,
    )
    token = response.json()["token_value"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.post(live.url(), json=iris.SPLIT, headers=bearer).status_code == 200

    def refused() -> bool:
        return requests.post(live.url(), json=iris.SPLIT, headers=bearer).status_code == 401

    # Expiry is a point in time: the gateway (which caches tokens) must notice it alone.
    wait_for(refused, timeout=15, what="the expired token to be refused", interval=0.5)
    status = requests.get(
        live.base + API + STATUS, params={"registered_model_name": live.model}, headers=bearer
    )
    assert status.status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sui_" + "A" * 43,  # well-formed, unknown
        "Bearer ",
        "Basic dG9rZW46",  # token: with an empty password
        "Basic !!!notbase64",
        "Token sui_abc",
    ],
)
def test_unknown_or_malformed_credentials_are_401_everywhere(live, header):
    scored = requests.post(live.url(), json=iris.SPLIT, headers={"Authorization": header})
    assert scored.status_code == 401
    status = requests.get(
        live.base + API + STATUS,
        params={"registered_model_name": live.model},
        headers={"Authorization": header},
    )
    assert status.status_code == 401
    assert set(status.json()) == {"error_code", "message"}


def test_generated_tokens_are_prefixed_random_and_hashed_with_sha256(db):
    """(In-process; also makes the test database available when this file runs alone.)"""
    from endpoints.models import AccessToken, hash_token

    tokens = {AccessToken.generate() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("sui_") and len(t) >= 40 for t in tokens)
    token = tokens.pop()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
