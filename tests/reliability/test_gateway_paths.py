"""The gateway forwards only to known replicas, and model servers hold no secrets.

Hostile scoring paths (dot segments, encoded dots and slashes, ``@host:port``, full URLs,
CR/LF, NUL, overlong UTF-8) go through the real gateway with an admin's token (so
authorization is not what stops them). A canary HTTP server on loopback stands for
"anything else": it must never see a request, every answer must be an error in the
product's JSON shape (never a 5xx) or the real model's predictions: an answer of a
replica's other routes (``/ping``, ``/version``, ``/health``) or of any other server would
be neither.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support import iris
from tests.support.deployment import Live

BODY = json.dumps(iris.SPLIT).encode()
IRIS_ANSWER = b'{"predictions": [0]}'


def raw_request(live: Live, target: str, *, host: str | None = None) -> tuple[int, bytes]:
    """Send ``POST <target> HTTP/1.1`` exactly as written (no client normalisation)."""
    address = live.base.removeprefix("http://").split(":")
    head = (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: {host or live.base.removeprefix('http://')}\r\n"
        f"Authorization: Bearer {live.tokens['admin']}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection((address[0], int(address[1])), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + BODY)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    status = int(status_line.split()[1])
    body = rest.partition(b"\r\n\r\n")[2]
    return status, body


def hostile_paths(canary: tuple[str, int]) -> list[str]:
    c = f"{canary[0]}:{canary[1]}"
    return [
        "/model-endpoint/../../admin/invocations",
        "/model-endpoint/iris-classifier/../../../ping/invocations",
        "/model-endpoint/%2e%2e/%2e%2e/invocations",
        "/model-endpoint/iris-classifier/..%2f..%2fadmin/invocations",
        "/model-endpoint/iris-classifier/%2e%2e%2f1/invocations",
        "/model-endpoint/..%5c..%5cadmin/1/invocations",
        f"/model/@{c}/invocations",
        f"/model/iris-classifier@{c}/1/invocations",
        f"/model-endpoint/iris-classifier/1@{c}/invocations",
        f"/model-endpoint/http://{c}/x/invocations",
        f"/model-endpoint/http:%2f%2f{c}%2fx/1/invocations",
        f"/model-endpoint//{c}/1/invocations",
        f"/model-endpoint/iris-classifier/Production%0d%0aHost:%20{c}/invocations",
        "/model-endpoint/iris-classifier/Production/invocations%0d%0aX-Injected:%201",
        "/model-endpoint/iris-classifier%00/Production/invocations",
        "/model-endpoint/%c0%ae%c0%ae/%c0%ae%c0%ae/invocations",
        "/model-endpoint/iris-classifier/1/invocations/../../2/invocations",
        "/model-endpoint/iris-classifier/Production/invocations?url=http://" + c,
        "/model-endpoint/iris-classifier/Production/invocations#@" + c,
        f"http://{c}/model-endpoint/iris-classifier/Production/invocations",
        "/model/" + "a/" * 300 + "invocations",
    ]


def check_answer(status: int, body: bytes) -> None:
    assert status < 500, (status, body)
    if status == 200:
        assert body == IRIS_ANSWER, body
    else:
        assert body.startswith(b'{"error_code"'), body


def test_hostile_paths_never_reach_anything_but_known_replicas(live, canary):
    canary.clear()
    answers = {}
    for path in hostile_paths(canary.address):
        status, body = raw_request(live, path)
        check_answer(status, body)
        answers[path] = status
    # A Host header naming another server changes nothing either.
    status, body = raw_request(
        live,
        "/model-endpoint/iris-classifier/Production/invocations",
        host=f"{canary.address[0]}:{canary.address[1]}",
    )
    assert (status, body) == (200, IRIS_ANSWER)
    assert canary.requests == []
    # Dot segments are not resolved: no hostile path was served by another route.
    assert answers["/model-endpoint/iris-classifier/1/invocations/../../2/invocations"] != 200


SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n "),
    min_size=0,
    max_size=20,
)
ENCODED = st.builds(
    lambda raw: "".join(f"%{b:02x}" if b < 0x30 or b > 0x7A else chr(b) for b in raw.encode()),
    SEGMENT,
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    prefix=st.sampled_from(["/model-endpoint/", "/model/"]),
    name=st.one_of(st.just("iris-classifier"), ENCODED),
    selector=st.one_of(st.sampled_from(["Production", "1", "2", "Staging"]), ENCODED),
    suffix=st.sampled_from(["/invocations", "/invocations/", "", "/ping", "/%2e%2e/invocations"]),
)
def test_generated_paths_answer_json_and_never_5xx(live, canary, prefix, name, selector, suffix):
    status, body = raw_request(live, f"{prefix}{name}/{selector}{suffix}")
    assert status < 500, (status, body)
    assert body.startswith(b'{"predictions"') or body.startswith(b'{"error_code"'), body
    assert canary.requests == []


def test_model_servers_get_no_secrets_in_their_environment(live, django_db_blocker):
    """The running replicas' real environments (from /proc), not just the function that
    builds them: no Django secret, database, Redis or broker settings, no tokens."""
    from endpoints.models import Replica, ReplicaState

    with django_db_blocker.unblock():
        pids = list(
            Replica.objects.filter(
                version__endpoint__registered_model_name="iris-classifier",
                state=ReplicaState.RUNNING,
            ).values_list("pid", flat=True)
        )
    assert pids and all(pids)
    forbidden_names = re.compile(
        r"SECRET|PASSWORD|TOKEN|DATABASE|REDIS|CELERY|BROKER|DJANGO|AWS_|API_KEY", re.I
    )
    secret_values = [settings.SECRET_KEY, settings.REDIS_URL, *live.tokens.values()]
    for pid in pids:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().partition("=")[::2] for item in raw if item)
        assert "MLFLOW_TRACKING_URI" in env  # it is the replica's own environment
        leaked = [k for k in env if forbidden_names.search(k)]
        assert leaked == [], leaked
        for value in secret_values:
            assert value not in "\0".join(env.values())


def test_replica_environment_drops_everything_not_listed(db, monkeypatch):
    """Whatever the worker's environment holds, a replica gets only what it needs.
    (In-process; also makes the test database available when this file runs alone.)"""
    from endpoints.runtime import ReplicaSpec
    from endpoints.runtime.local import replica_environment

    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "AWS_SECRET_ACCESS_KEY", "HTTP_PROXY"):
        monkeypatch.setenv(name, "do-not-pass")
    spec = ReplicaSpec(
        replica_id="r", model_path="/m", host="127.0.0.1", port=1, log_path="/l", python="py"
    )
    env = replica_environment(spec)
    assert "do-not-pass" not in env.values()
