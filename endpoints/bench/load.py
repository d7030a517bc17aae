"""Load for the benchmarks: the request bodies, timed runs of a client (sequential or
concurrent), their results, and half-open connections that never finish a request head.
No Django and no MLflow: the clients' interpreter (``endpoints.bench.client``) imports it."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROW = [5.1, 3.5, 1.4, 0.2]
# One row of the demo iris model, as a pandas "split" frame of doubles.
BODY = json.dumps({"dataframe_split": {"columns": FEATURES, "data": [ROW]}})
# The same row as a "records" frame: parsed and predicted MLflow's way.
RECORDS_BODY = json.dumps({"dataframe_records": [dict(zip(FEATURES, ROW, strict=True))]})
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int
    # TCP connections the client opened, all of its requests together (keep-alive: one per
    # client).
    connections: int = 0


class Client(Protocol):
    last_body: bytes
    connections: int

    def call(self) -> int:
        """Send the request, read the whole answer, return its status."""
        ...

    def close(self) -> None: ...


def destination(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    body: str = BODY,
) -> dict:
    """Where a client sends its request, and what: the JSON a client's process reads."""
    return {
        "host": host,
        "port": port,
        "path": path,
        "headers": headers or {},
        "method": method,
        "body": body if method == "POST" else "",
    }


def send_once(target: dict) -> tuple[int, dict[str, str], bytes]:
    """One request to ``target`` on a connection of its own: status, headers (names in
    lower case) and body."""
    conn = http.client.HTTPConnection(target["host"], target["port"], timeout=30)
    try:
        headers = dict(target["headers"])
        if target["body"]:
            headers["Content-Type"] = "application/json"
        conn.request(target["method"], target["path"], body=target["body"] or None, headers=headers)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


class KeepAliveClient:
    """A minimal HTTP/1.1 client on one socket, one ``sendall`` per request: its own cost
    stays far below the servers', so it measures throughput. It sets no socket option."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str],
        method: str = "POST",
        body: str = BODY,
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        data = body.encode()
        if data:
            lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        self.request = "\r\n".join([*lines, "", ""]).encode() + data
        self.sock = socket.create_connection((host, port))
        self.connections = 1
        self.buffer = bytearray()
        self.last_body = b""

    def call(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.buffer = bytearray(rest)
        while len(self.buffer) < length:
            self._receive()
        self.last_body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return int(head[9:12])

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def measure(
    make_client: Callable[[], Client],
    *,
    clients: int,
    total: int,
    max_seconds: float,
    warmup: int = 100,
) -> Result:
    """``total`` requests from ``clients`` clients at once (threads, each its own
    connection), after ``warmup`` requests that are not counted; stops early after
    ``max_seconds``."""
    per_client = max(1, total // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    connections = [make_client() for _ in range(clients)]
    for client in connections:
        for _ in range(max(1, warmup // clients)):
            client.call()
    start_gate = threading.Barrier(clients + 1)
    deadline = time.monotonic() + max_seconds

    def run(i: int) -> None:
        client, out = connections[i], latencies[i]
        start_gate.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            status = client.call()
            out.append(time.perf_counter() - t0)
            errors[i] += status != 200
            if time.monotonic() > deadline:
                break

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    opened = sum(client.connections for client in connections)
    for client in connections:
        client.close()
    return summarise(
        [x for out in latencies for x in out],
        elapsed=elapsed,
        errors=sum(errors),
        connections=opened,
    )


def summarise(latencies: list[float], *, elapsed: float, errors: int, connections: int) -> Result:
    """Percentiles (in ms) and rate of ``latencies`` (in seconds) taken over ``elapsed``."""
    merged = sorted(latencies)
    return Result(
        p50_ms=merged[len(merged) // 2] * 1000,
        p99_ms=merged[min(len(merged) - 1, int(len(merged) * 0.99))] * 1000,
        rps=len(merged) / elapsed,
        errors=errors,
        connections=connections,
    )


def measure_in_subprocess(client: str, target: dict, load: dict) -> Result:
    """One run of ``client`` (``endpoints.bench.client.CLIENTS``) from a fresh interpreter:
    the benchmark's own process has MLflow and Django loaded, whose background threads
    would compete with the client for the GIL. The spec goes through stdin, so the token
    in its headers is not on a command line."""
    spec = json.dumps({"client": client, "target": target, "load": load})
    out = subprocess.run(
        [sys.executable, "-m", "endpoints.bench.client"],
        cwd=PROJECT_ROOT,
        input=spec,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the {client} client failed: {out.stderr.strip()[-2000:]}")
    return Result(**json.loads(out.stdout))


def median(results: list[Result]) -> Result:
    return Result(
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        rps=statistics.median(r.rps for r in results),
        errors=sum(r.errors for r in results),
        connections=max(r.connections for r in results),
    )


class HalfOpen:
    """Connections that send half a request line and never more (a slow-loris client)."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.socks = []
        for _ in range(count):
            sock = socket.create_connection((host, port))
            sock.sendall(b"POST /model-endpoint/iris-classifier/Production/invoc")
            self.socks.append(sock)

    def still_open(self) -> int:
        """How many the server has not closed (a closed one reads as EOF at once)."""
        open_ = 0
        for sock in self.socks:
            sock.setblocking(False)
            try:
                open_ += sock.recv(1) != b""
            except BlockingIOError:
                open_ += 1
        return open_

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
