"""The front door under hostile connections and answers: half-open connections stop
nothing, an oversized body closes its connection unread (and every client still reads the
413), heads and bodies have deadlines, the bytes a process buffers for bodies are capped,
an oversized replica answer is a 502 in the product's error shape, and one endpoint at its
limit leaves the others answering.

Replicas here are fake model servers in this process (so a test can hold their answers
with events); the rows the gateway routes by are committed by hand, as the reconcile loop
would write them, and removed again afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO, NamedTuple

import aiohttp
import httpx
import pytest
import requests

from endpoints.kv import bump_generation
from endpoints.models import ServingEndpoint
from tests.support.rows import add_version
from tests.support.stack import serve_product

pytestmark = pytest.mark.any_database

HALF_OPEN = 250
PER_ENDPOINT = 2
MAX_PAYLOAD = 1_000_000
MAX_RESPONSE = 100_000
# Bodies of ~0.9 MB: two held at once fit the process's budget, a third does not.
MAX_BUFFERED = 2_500_000
DEADLINE_SECONDS = 2
METRICS_TOKEN = "metrics-front-door-1"
WAIT = 30  # seconds: a bound on every wait, never an ordering device
MIB = 1024 * 1024
API_URL = "/api/2.0/preview/mlflow/endpoints-v2/enable"


class FakeReplica:
    """A model server answering ``size`` bytes of JSON; ``gate`` (when given) holds each
    answer until it is set, and ``arrived`` counts requests that reached it."""

    def __init__(self, size: int = 20, gate: threading.Event | None = None) -> None:
        self.arrived = threading.Semaphore(0)
        payload = json.dumps({"predictions": ["x" * size]}).encode()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.arrived.release()
                if gate is not None:
                    gate.wait(WAIT)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = ("127.0.0.1", self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def small_front_door(redis_server, stack_log_dir) -> Iterator[str]:
    env = {
        "SERVING_MAX_IN_FLIGHT_PER_ENDPOINT": str(PER_ENDPOINT),
        "SERVING_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
        "SERVING_MAX_RESPONSE_BYTES": str(MAX_RESPONSE),
        "SERVING_MAX_BUFFERED_BODY_BYTES": str(MAX_BUFFERED),
        "SERVING_HEADER_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
        "SERVING_BODY_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    yield from serve_product("front-door-limits", stack_log_dir, workers=1, env=env)


@pytest.fixture(scope="module")
def fakes(django_db_blocker, reconcile_paused, admin_token) -> Iterator[dict]:
    """Endpoints served by fake replicas: ``quick``, ``gated`` (held by ``gate``) and
    ``huge`` (answers more than MAX_RESPONSE)."""
    from django.contrib.auth import get_user_model

    gate = threading.Event()
    replicas = {
        "quick": FakeReplica(),
        "gated": FakeReplica(gate=gate),
        "huge": FakeReplica(size=MAX_RESPONSE * 2),
    }
    prefix = f"fd-{uuid.uuid4().hex[:6]}"
    names = {key: f"{prefix}-{key}" for key in replicas}
    with django_db_blocker.unblock():
        owner = get_user_model().objects.get(username=admin_token["username"])
        for key, replica in replicas.items():
            endpoint = ServingEndpoint.objects.create(
                registered_model_name=names[key], creator=owner, state="READY"
            )
            add_version(endpoint, "1", "Production", replicas=[replica.address])
        bump_generation()
    try:
        yield {"names": names, "replicas": replicas, "gate": gate, "token": admin_token["token"]}
    finally:
        gate.set()
        with django_db_blocker.unblock():
            ServingEndpoint.objects.filter(registered_model_name__in=names.values()).delete()
            bump_generation()
        for replica in replicas.values():
            replica.close()


@pytest.fixture(scope="module")
def admin_token(django_db_setup, django_db_blocker) -> Iterator[dict]:
    from django.contrib.auth import get_user_model

    from endpoints import services

    username = f"fd-admin-{uuid.uuid4().hex[:6]}"
    with django_db_blocker.unblock():
        user = get_user_model().objects.create_superuser(username, password="pw-fd-1234")
        _, token = services.token_create(user=user, name="front door")
    yield {"username": username, "token": token}
    with django_db_blocker.unblock():
        user.delete()


def _scoring_path(fakes: dict, key: str) -> str:
    return f"/model-endpoint/{fakes['names'][key]}/Production/invocations"


def _score(base: str, fakes: dict, key: str, **kwargs) -> requests.Response:
    kwargs.setdefault("json", {"dataframe_records": [{"x": 1}]})
    return requests.post(
        base + _scoring_path(fakes, key),
        headers={"Authorization": f"Bearer {fakes['token']}"},
        timeout=WAIT,
        **kwargs,
    )


def _address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def _half_open(base: str, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(_address(base), timeout=WAIT)
        sock.sendall(b"POST /model-endpoint/x/Production/invoc")  # half a request line
        socks.append(sock)
    return socks


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True


def test_half_open_connections_stop_neither_the_ui_nor_scoring(db, web_server, fakes):
    socks = _half_open(web_server, HALF_OPEN)
    try:
        login = requests.get(f"{web_server}/login/", timeout=10)
        assert login.status_code == 200
        scored = _score(web_server, fakes, "quick")
        assert scored.status_code == 200, scored.text
        assert scored.json() == {"predictions": ["x" * 20]}
        # They were all held while both answered: the server did not just drop them.
        assert all(_still_open(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_a_413_closes_the_connection_without_reading_the_rest(db, small_front_door, fakes):
    head = (
        f"POST /model-endpoint/{fakes['names']['quick']}/Production/invocations HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {fakes['token']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {MAX_PAYLOAD * 50}\r\n\r\n"
    ).encode()
    with socket.create_connection(_address(small_front_door), timeout=WAIT) as sock:
        sock.sendall(head + b" " * 65536)  # a sliver of the announced body, then nothing
        received = b""
        while chunk := sock.recv(65536):  # to the end: a reset would lose the answer
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.split()[1] == b"413"
    assert b"connection: close" in rest.lower()
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error_code"] == "REQUEST_ENTITY_TOO_LARGE"


def test_a_replica_answer_over_the_cap_is_a_502_in_the_error_shape(db, small_front_door, fakes):
    response = _score(small_front_door, fakes, "huge")
    assert response.status_code == 502
    assert response.json()["error_code"] == "BAD_GATEWAY"
    assert str(MAX_RESPONSE) in response.json()["message"]
    # The front door still answers on the next request.
    assert _score(small_front_door, fakes, "quick").status_code == 200


def test_an_endpoint_at_its_limit_gets_429_while_another_answers(db, small_front_door, fakes):
    gated = fakes["replicas"]["gated"]
    results: list[requests.Response | None] = [None] * PER_ENDPOINT
    fakes["gate"].clear()

    def hold(i: int) -> None:
        results[i] = _score(small_front_door, fakes, "gated")

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(PER_ENDPOINT)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(PER_ENDPOINT):
            assert gated.arrived.acquire(timeout=WAIT), "a held request never reached the model"
        refused = _score(small_front_door, fakes, "gated")
        assert refused.status_code == 429
        assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert refused.headers["Retry-After"] == "1"
        other = _score(small_front_door, fakes, "quick")
        assert other.status_code == 200, other.text
    finally:
        fakes["gate"].set()
        for thread in threads:
            thread.join(WAIT)
    assert [r.status_code for r in results] == [200] * PER_ENDPOINT


# --- raw HTTP/1.1 on a socket ------------------------------------------------------------------


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        assert self.headers["content-type"] == "application/json", self
        return json.loads(self.body)


@contextlib.contextmanager
def _connection(base: str) -> Iterator[tuple[socket.socket, BinaryIO]]:
    with (
        socket.create_connection(_address(base), timeout=WAIT) as sock,
        sock.makefile("rb") as reader,
    ):
        yield sock, reader


def _head(
    method: str, path: str, *, length: int | None = None, token: str | None = None, extra=()
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def _reply(reader: BinaryIO) -> Reply:
    """The next answer on the connection (framed by its Content-Length)."""
    status_line = reader.readline()
    assert status_line, "the connection closed without an answer"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return Reply(int(status_line.split()[1]), headers, body)


def _closed(reader: BinaryIO) -> bool:
    """The server closes the connection with nothing more to say (one kept open makes the
    read time out after WAIT, which fails the test)."""
    return reader.read() == b""


# --- early answers reach every client ----------------------------------------------------------


def _urllib(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _requests(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    response = requests.post(url, data=body, headers=headers, timeout=WAIT)
    return response.status_code, response.content


def _httpx(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    response = httpx.post(url, content=body, headers=headers, timeout=WAIT)
    return response.status_code, response.content


def _aiohttp(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async def post() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            return response.status, await response.read()

    return asyncio.run(post())


def _curl(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    args = ["curl", "-sS", "--max-time", str(WAIT), "-o", "-", "-w", "\n%{http_code}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*args, "--data-binary", "@-", url], input=body, capture_output=True, timeout=WAIT + 5
    )
    assert done.returncode == 0, done.stderr
    answer, _, status = done.stdout.rpartition(b"\n")
    return int(status), answer


CLIENTS: dict[str, Callable[[str, bytes, dict[str, str]], tuple[int, bytes]]] = {
    "urllib": _urllib,
    "requests": _requests,
    "httpx": _httpx,
    "aiohttp": _aiohttp,
    "curl": _curl,
}


@pytest.mark.parametrize("size", [17 * MIB, 64 * MIB], ids=["17MiB", "64MiB"])
@pytest.mark.parametrize("route", ["scoring", "api"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_reads_the_413_for_a_body_over_the_limit(
    db, web_server, fakes, client, route, size
):
    # urllib (like any client that writes the whole body before it reads) only sees the
    # answer if the server reads and discards the rest instead of resetting the connection.
    path = _scoring_path(fakes, "quick") if route == "scoring" else API_URL
    headers = {"Authorization": f"Bearer {fakes['token']}", "Content-Type": "application/json"}
    status, body = CLIENTS[client](web_server + path, b" " * size, headers)
    assert status == 413, body[:200]
    assert json.loads(body)["error_code"] == "REQUEST_ENTITY_TOO_LARGE"


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (b"G(ET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 40_000, 431, "BAD_REQUEST"),
        (
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "NOT_IMPLEMENTED",
        ),
    ],
    ids=["bad-request-line", "head-too-large", "unknown-coding"],
)
def test_a_bad_head_is_answered_in_json_even_while_the_client_keeps_sending(
    db, web_server, head, status, code
):
    with _connection(web_server) as (sock, reader):
        # Megabytes after the bad head: closed at once, the connection would be reset
        # under the client while it writes, and the answer lost.
        sock.sendall(head + b"a" * (8 * MIB))
        reply = _reply(reader)
        assert reply.status == status
        assert reply.json()["error_code"] == code
        assert reply.headers["connection"] == "close"
        assert _closed(reader)


@pytest.mark.parametrize("route", ["scoring", "api"])
def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_closed(
    db, web_server, fakes, route
):
    path = _scoring_path(fakes, "quick") if route == "scoring" else API_URL
    smuggled = _head(
        "POST", path, length=5, token=fakes["token"], extra=["Transfer-Encoding: chunked"]
    )
    with _connection(web_server) as (sock, reader):
        # A second request right behind it must never be answered (RFC 9112, 6.1).
        sock.sendall(smuggled + b"0\r\n\r\n" + _head("GET", "/healthz"))
        reply = _reply(reader)
        assert reply.status == 400
        assert "Transfer-Encoding" in reply.json()["message"]
        assert _closed(reader)


# --- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("earlier", [0, 1, 2], ids=["first", "second", "third"])
def test_every_request_head_has_a_deadline_also_on_a_kept_alive_connection(
    db, small_front_door, earlier
):
    with _connection(small_front_door) as (sock, reader):
        for _ in range(earlier):
            sock.sendall(_head("GET", "/healthz"))
            assert _reply(reader).status == 200
        sock.sendall(b"G")  # one byte of the next head, then nothing
        assert _closed(reader)


@pytest.mark.parametrize("route", ["scoring", "api", "page"])
def test_a_body_that_stops_arriving_is_answered_408_at_its_deadline(
    db, small_front_door, fakes, route
):
    path = {"scoring": _scoring_path(fakes, "quick"), "api": API_URL, "page": "/login/"}[route]
    with _connection(small_front_door) as (sock, reader):
        sock.sendall(_head("POST", path, length=1000, token=fakes["token"]) + b"{")
        reply = _reply(reader)
        assert reply.status == 408
        assert reply.json()["error_code"] == "DEADLINE_EXCEEDED"
        assert _closed(reader)


def test_a_body_still_arriving_after_an_early_answer_has_a_deadline_too(
    db, small_front_door, fakes
):
    path = _scoring_path(fakes, "quick")
    with _connection(small_front_door) as (sock, reader):
        sock.sendall(_head("POST", path, length=1000) + b"{")  # no token: 401 at once
        assert _reply(reader).status == 401
        sock.sendall(b" ")  # the body goes on trickling
        assert _closed(reader)


@pytest.mark.parametrize(
    ("path", "setting", "limit"),
    [
        (API_URL, "API_MAX_BODY_BYTES", 1024 * 1024),
        ("/login/", "DATA_UPLOAD_MAX_MEMORY_SIZE", 2621440),
    ],
    ids=["api", "page"],
)
def test_a_body_over_its_routes_limit_is_refused_before_a_byte_is_read(
    db, small_front_door, path, setting, limit
):
    with _connection(small_front_door) as (sock, reader):
        # No token, a sliver of the body: the answer comes from the head alone.
        sock.sendall(_head("POST", path, length=limit + 1) + b" " * 1024)
        reply = _reply(reader)
        assert reply.status == 413
        assert setting in reply.json()["message"]
        assert reply.headers["connection"] == "close"
        assert _closed(reader)


# --- the bytes one process buffers for bodies --------------------------------------------------


def test_bodies_over_the_process_budget_get_503_until_held_ones_are_answered(
    db, small_front_door, fakes
):
    big = {"dataframe_records": [{"x": "y" * 900_000}]}
    gated = fakes["replicas"]["gated"]
    held: list[requests.Response] = []
    fakes["gate"].clear()
    threads = [
        threading.Thread(
            target=lambda: held.append(_score(small_front_door, fakes, "gated", json=big))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            assert gated.arrived.acquire(timeout=WAIT), "a held request never reached the model"
        # Two bodies held in memory: a third does not fit, whatever its route ...
        refused = [
            _score(small_front_door, fakes, "quick", json=big),
            requests.post(small_front_door + API_URL, json=big, timeout=WAIT),
        ]
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
            assert "SERVING_MAX_BUFFERED_BODY_BYTES" in response.json()["message"]
            assert response.headers["Retry-After"] == "1"
        # ... while a small one still does.
        assert _score(small_front_door, fakes, "quick").status_code == 200
    finally:
        fakes["gate"].set()
        for thread in threads:
            thread.join(WAIT)
    assert [r.status_code for r in held] == [200, 200]
    assert _score(small_front_door, fakes, "quick", json=big).status_code == 200


# --- /metrics ----------------------------------------------------------------------------------


def test_metrics_follows_the_transport_rules_of_scoring_answers(db, web_server):
    refused = requests.get(web_server + "/metrics", headers={"Host": "evil.example"}, timeout=WAIT)
    assert refused.status_code == 400
    assert "ALLOWED_HOSTS" in refused.json()["message"]
    asked = requests.get(web_server + "/metrics", timeout=WAIT)
    assert asked.status_code == 401
    assert asked.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "credentials", ["tökén".encode("latin-1"), "tökén €".encode()], ids=["latin-1", "utf-8"]
)
@pytest.mark.parametrize("route", ["metrics", "scoring", "api"])
def test_a_non_ascii_token_is_a_json_401(db, small_front_door, fakes, credentials, route):
    path = {
        "metrics": "/metrics",
        "scoring": _scoring_path(fakes, "quick"),
        "api": "/api/2.0/preview/mlflow/endpoints-v2/list",
    }[route]
    method = "POST" if route == "scoring" else "GET"
    with _connection(small_front_door) as (sock, reader):
        head = _head(method, path, length=2 if method == "POST" else None)
        sock.sendall(
            head.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + credentials + b"\r\n\r\n", 1)
            + (b"{}" if method == "POST" else b"")
        )
        reply = _reply(reader)
    assert reply.status == 401
    assert reply.json()["error_code"] == "UNAUTHENTICATED"
