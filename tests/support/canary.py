"""An HTTP server that answers like a model server and remembers every request: hostile
paths through the gateway must reach nothing but the replicas it knows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Address = tuple[str, int]


@dataclass
class Canary:
    """Where the canary listens, and every request it was sent."""

    address: Address
    requests: list[dict] = field(default_factory=list)

    def clear(self) -> None:
        self.requests.clear()


@contextmanager
def serve_canary() -> Iterator[Canary]:
    """A canary on a free loopback port, in a thread of this process."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            payload = b'{"predictions": ["canary"]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _record

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Canary(("127.0.0.1", server.server_address[1]), seen)
    finally:
        server.shutdown()
        server.server_close()
