"""``python -m endpoints.bench.client`` (a spec as JSON on stdin): one timed run of one
client against one target, printed as a ``load.Result`` in JSON.

The clients are what users run, as they run them: Python's ``http.client`` (one
``HTTPConnection`` reused), ``requests.Session``, and curl (one process sending every
request over one connection); none is given a socket option by the benchmark. The minimal
client of ``load`` is the one used with many concurrent clients.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .load import KeepAliveClient, Result, measure, summarise

MINIMAL, HTTP_CLIENT, REQUESTS, CURL = "minimal", "http.client", "requests.Session", "curl"
CLIENTS = (MINIMAL, HTTP_CLIENT, REQUESTS, CURL)


class HttpClient:
    """``http.client.HTTPConnection``, reused for every request."""

    def __init__(self, target: dict) -> None:
        self.target = target
        self.conn = http.client.HTTPConnection(target["host"], target["port"], timeout=60)
        self.connections = 0
        self._sock = None
        self.last_body = b""

    def call(self) -> int:
        t = self.target
        self.conn.request(t["method"], t["path"], body=t["body"] or None, headers=_headers(t))
        response = self.conn.getresponse()
        self.last_body = response.read()
        # http.client reconnects by itself when the server closed the connection.
        if self.conn.sock is not self._sock:
            self._sock, self.connections = self.conn.sock, self.connections + 1
        return response.status

    def close(self) -> None:
        self.conn.close()


class RequestsClient:
    """A ``requests.Session``: its pool keeps the connection between requests."""

    def __init__(self, target: dict) -> None:
        import requests

        self.session = requests.Session()
        self.url = f"http://{target['host']}:{target['port']}{target['path']}"
        self.target = target
        self.last_body = b""

    def call(self) -> int:
        t = self.target
        response = self.session.request(
            t["method"], self.url, data=t["body"] or None, headers=_headers(t), timeout=60
        )
        self.last_body = response.content
        return response.status_code

    @property
    def connections(self) -> int:
        pools = self.session.get_adapter(self.url).poolmanager.pools
        # urllib3's container of pools refuses iteration; it lists its keys.
        return sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118

    def close(self) -> None:
        self.session.close()


def _headers(target: dict) -> dict[str, str]:
    if target["body"]:
        return {"Content-Type": "application/json", **target["headers"]}
    return dict(target["headers"])


def curl_config(target: dict, count: int, body_path: Path) -> str:
    """A curl config (``curl -K``) sending ``count`` requests in one process: curl keeps
    the connection for the next URL of the same host. Each transfer writes its status, its
    time and the connections it opened."""
    url = json.dumps(f"http://{target['host']}:{target['port']}{target['path']}")
    write_out = "%{http_code} %{time_total} %{num_connects}\\n"
    lines = ["silent", "show-error", f'write-out = "{write_out}"']
    lines += [f"header = {json.dumps(f'{k}: {v}')}" for k, v in _headers(target).items()]
    if target["body"]:
        lines.append(f"data-binary = {json.dumps('@' + str(body_path))}")
    lines += [f'url = {url}\noutput = "/dev/null"'] * count
    return "\n".join(lines) + "\n"


def measure_curl(target: dict, *, total: int, warmup: int, max_seconds: float) -> Result:
    """``warmup`` + ``total`` requests from one curl process; the latencies are curl's own
    ``time_total`` of each transfer after the warm-up, the rate is over the whole run."""
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-curl-") as tmp:
        body_path, config_path = Path(tmp) / "body.json", Path(tmp) / "curl.conf"
        body_path.write_text(target["body"])
        # The config holds the token: readable by this user only (the directory is 0700).
        config_path.write_text(curl_config(target, warmup + total, body_path))
        t0 = time.perf_counter()
        out = subprocess.run(
            [curl, "-K", str(config_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=max_seconds * 10,
        ).stdout
        elapsed = time.perf_counter() - t0
    transfers = [line.split() for line in out.splitlines()]
    measured = transfers[warmup:]
    return summarise(
        [float(seconds) for _, seconds, _ in measured],
        # The rate of the whole run (the process's start and the warm-up included).
        elapsed=elapsed * len(measured) / len(transfers),
        errors=sum(status != "200" for status, _, _ in measured),
        connections=sum(int(connects) for _, _, connects in transfers),
    )


def run(spec: dict) -> Result:
    client, target, load = spec["client"], spec["target"], spec["load"]
    if client == CURL:
        if load["clients"] != 1:
            raise SystemExit("curl is measured as one sequential client")
        return measure_curl(
            target,
            total=load["total"],
            warmup=load.get("warmup", 100),
            max_seconds=load["max_seconds"],
        )
    makers = {
        MINIMAL: lambda: KeepAliveClient(**target),
        HTTP_CLIENT: lambda: HttpClient(target),
        REQUESTS: lambda: RequestsClient(target),
    }
    return measure(makers[client], **load)


if __name__ == "__main__":
    # Nothing else on stdout: the caller reads the result from it.
    sys.stdout.write(json.dumps(asdict(run(json.load(sys.stdin)))) + "\n")
