"""The benchmark's clients (``endpoints.bench.client``): each sends every request of a run
over the connections it says it opened, with the target's method, body and headers, and
counts answers other than 200 as errors. A local keep-alive server records what arrives."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from endpoints.bench import client
from endpoints.bench.load import BODY, destination, measure_in_subprocess, send_once

TOKEN = "bench-token"


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    seen: list[tuple[int, str, str, str, bytes]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(body)

    def do_GET(self) -> None:
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        with self.lock:
            self.seen.append(
                (
                    self.client_address[1],
                    self.command,
                    self.path,
                    self.headers.get("Authorization", ""),
                    body,
                )
            )
        out = b'{"predictions": [0]}'
        self.send_response(503 if self.path.endswith("/busy") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, list]]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], Recorder.seen
    finally:
        httpd.shutdown()
        httpd.server_close()


SEQUENTIAL = [
    client.HTTP_CLIENT,
    client.REQUESTS,
    pytest.param(
        client.CURL,
        marks=pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed"),
    ),
    client.MINIMAL,
]


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_a_sequential_client_sends_every_request_over_one_connection(server, name):
    port, seen = server
    target = destination("127.0.0.1", port, "/invocations", {"Authorization": f"Bearer {TOKEN}"})
    load = {"clients": 1, "total": 30, "max_seconds": 60, "warmup": 5}
    result = client.run({"client": name, "target": target, "load": load})
    assert result.errors == 0
    assert result.connections == 1
    assert len(seen) == 35
    assert len({port for port, *_ in seen}) == 1
    assert {request[1:] for request in seen} == {
        ("POST", "/invocations", f"Bearer {TOKEN}", BODY.encode())
    }


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_answers_other_than_200_are_counted_as_errors(server, name):
    port, _ = server
    load = {"clients": 1, "total": 10, "max_seconds": 60, "warmup": 2}
    target = destination("127.0.0.1", port, "/busy")
    assert client.run({"client": name, "target": target, "load": load}).errors == 10


def test_concurrent_minimal_clients_each_keep_one_connection(server):
    port, seen = server
    load = {"clients": 4, "total": 40, "max_seconds": 60, "warmup": 4}
    target = destination("127.0.0.1", port, "/login/", method="GET")
    result = client.run({"client": client.MINIMAL, "target": target, "load": load})
    assert (result.errors, result.connections) == (0, 4)
    assert len({port for port, *_ in seen}) == 4
    assert {request[1:3] for request in seen} == {("GET", "/login/")}


def test_a_measurement_runs_in_a_fresh_interpreter_reading_its_spec_from_stdin(server):
    port, seen = server
    target = destination("127.0.0.1", port, "/invocations", {"Authorization": f"Bearer {TOKEN}"})
    load = {"clients": 1, "total": 20, "max_seconds": 60, "warmup": 2}
    result = measure_in_subprocess(client.HTTP_CLIENT, target, load)
    assert (result.errors, result.connections) == (0, 1)
    assert len(seen) == 22


def test_a_single_request_reports_status_headers_in_lower_case_and_body(server):
    port, seen = server
    status, headers, body = send_once(destination("127.0.0.1", port, "/busy"))
    assert (status, headers["content-type"], body) == (
        503,
        "application/json",
        b'{"predictions": [0]}',
    )
    assert [request[1:] for request in seen] == [("POST", "/busy", "", BODY.encode())]
