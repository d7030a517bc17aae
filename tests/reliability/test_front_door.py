"""The front door under hostile connections and answers: half-open connections stop
nothing, an oversized body closes its connection unread, an oversized replica answer is a
502 in the product's error shape, and one endpoint at its limit leaves the others
answering.

Replicas here are fake model servers in this process (so a test can hold their answers
with events); the rows the gateway routes by are committed by hand, as the reconcile loop
would write them, and removed again afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from conftest import add_version, serve_product

from endpoints.kv import bump_generation
from endpoints.models import ServingEndpoint

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

HALF_OPEN = 250
PER_ENDPOINT = 2
MAX_PAYLOAD = 1_000_000
MAX_RESPONSE = 100_000
WAIT = 30  # seconds: a bound on every wait, never an ordering device


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


def _score(base: str, fakes: dict, key: str, **kwargs) -> requests.Response:
    return requests.post(
        f"{base}/model-endpoint/{fakes['names'][key]}/Production/invocations",
        json={"dataframe_records": [{"x": 1}]},
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
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # a reset after the answer also shows the server closed it
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
