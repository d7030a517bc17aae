"""The benchmark's load generator: a minimal HTTP/1.1 keep-alive client, timed runs of
it (sequential or concurrent), and half-open connections that never finish their
request head. Run from a fresh interpreter by ``bench`` so the client's cost stays far
below the servers'."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BODY = json.dumps(
    {
        "dataframe_split": {
            "columns": [
                "sepal length (cm)",
                "sepal width (cm)",
                "petal length (cm)",
                "petal width (cm)",
            ],
            "data": [[5.1, 3.5, 1.4, 0.2]],
        }
    }
).encode()


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int


class KeepAliveClient:
    """A minimal HTTP/1.1 client on one socket: its own cost stays far below the servers'."""

    def __init__(
        self, host: str, port: int, path: str, headers: dict[str, str], method: str = "POST"
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        body = BODY if method == "POST" else b""
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.request = "\r\n".join([*lines, "", ""]).encode() + body
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    make_client, *, clients: int, total: int, max_seconds: float, warmup: int = 100
) -> Result:
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
    for client in connections:
        client.close()
    merged = sorted(x for out in latencies for x in out)
    return Result(
        p50_ms=merged[len(merged) // 2] * 1000,
        p99_ms=merged[min(len(merged) - 1, int(len(merged) * 0.99))] * 1000,
        rps=len(merged) / elapsed,
        errors=sum(errors),
    )


def measure_in_subprocess(target: dict, load: dict) -> Result:
    """Measure from a fresh interpreter: this process has MLflow and Django loaded, whose
    background threads would compete with the client for the GIL."""
    spec = json.dumps({"target": target, "load": load})
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, spec],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Result(**json.loads(out))


CLIENT_SCRIPT = """
import json, sys
from dataclasses import asdict
from endpoints.management.commands._load import KeepAliveClient, measure
spec = json.loads(sys.argv[1])
t = spec["target"]
make = lambda: KeepAliveClient(**t)
print(json.dumps(asdict(measure(make, **spec["load"]))))
"""


def median(results: list[Result]) -> Result:
    return Result(
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        rps=statistics.median(r.rps for r in results),
        errors=sum(r.errors for r in results),
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
