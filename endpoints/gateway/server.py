"""The web server: ``python -m endpoints.gateway.server --host H --port P --processes N``.
It binds one socket and forks N processes, each running the front door
(``serving_ui.asgi``) under a single-worker uvicorn on it, over ``connection``'s protocol.
uvicorn's own workers would lose TCP_NODELAY (~45 ms per keep-alive request; see
docs/performance.md). The parent only supervises: a dead worker is replaced, SIGTERM stops
all. With ``METRICS_LISTEN`` one more process serves ``/metrics`` there (``ops``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import sys
import time
import traceback
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from uvicorn import Config, Server

from .connection import FrontDoorProtocol

# A stopping worker finishes requests in flight for up to this long.
GRACEFUL_SECONDS = 20
BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    # The protocol must be named: asyncio turns Nagle's algorithm off only on sockets whose
    # ``proto`` says TCP, and accepted connections inherit it from this one. With proto 0
    # every answer waits for a delayed acknowledgement (~40 ms per keep-alive request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve(sock: socket.socket, *, access_log: bool) -> None:
    """One worker: uvicorn with the front door on ``sock`` (in a forked child)."""
    # Imported (Django set up) by the parent before forking: pages are shared.
    from serving_ui.asgi import application

    config = Config(
        application,
        http=FrontDoorProtocol,
        # The product has no WebSocket: an upgrade request is an ordinary request.
        ws="none",
        lifespan="on",
        access_log=access_log,
        log_level="info" if access_log else "warning",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        backlog=BACKLOG,
    )
    Server(config).run(sockets=[sock])


def fork_worker(sock: socket.socket, access_log: bool) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = 0
        try:
            serve(sock, access_log=access_log)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def bind_metrics(address: str) -> WSGIServer:
    """The ``METRICS_LISTEN`` server (``host:port``), bound here so a replacement process
    serves the same socket."""
    from .ops import metrics_wsgi_app

    host, _, port = address.rpartition(":")
    return make_server(
        host or "127.0.0.1", int(port), metrics_wsgi_app, handler_class=_QuietHandler
    )


def fork_metrics(server: WSGIServer) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = 0
        try:
            server.serve_forever()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


class Supervisor:
    def __init__(
        self,
        sock: socket.socket,
        processes: int,
        access_log: bool,
        metrics: WSGIServer | None = None,
    ) -> None:
        self.sock = sock
        self.access_log = access_log
        self.processes = processes
        self.metrics = metrics
        self.metrics_pid = 0
        self.stopping = False
        self.workers: set[int] = set()

    def stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> None:
        self.workers = {fork_worker(self.sock, self.access_log) for _ in range(self.processes)}
        if self.metrics is not None:
            self.metrics_pid = fork_metrics(self.metrics)
            self.workers.add(self.metrics_pid)
        while not self.stopping:
            pid, _ = _reap(block_seconds=0.5)
            if pid and pid in self.workers:
                self.workers.discard(pid)
                print(f"web worker {pid} exited; starting another", file=sys.stderr)
                if pid == self.metrics_pid and self.metrics is not None:
                    self.metrics_pid = fork_metrics(self.metrics)
                    self.workers.add(self.metrics_pid)
                else:
                    self.workers.add(fork_worker(self.sock, self.access_log))
        self._stop_workers()

    def _stop_workers(self) -> None:
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SECONDS + 5
        while self.workers and time.monotonic() < deadline:
            pid, _ = _reap(block_seconds=0.1)
            self.workers.discard(pid)
        for pid in self.workers:
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _reap(block_seconds: float) -> tuple[int, int]:
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pid, status = 0, 0
    if pid == 0:
        time.sleep(block_seconds)
    return pid, status


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _raise_file_limit() -> None:
    # Every open connection is a descriptor; the soft limit is often only 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_ui.settings")
    _raise_file_limit()
    from django.conf import settings

    import serving_ui.asgi  # noqa: F401  (Django set up once, before the workers fork)

    FrontDoorProtocol.head_timeout = float(settings.SERVING["HEADER_TIMEOUT_SECONDS"])
    FrontDoorProtocol.body_timeout = float(settings.SERVING["BODY_TIMEOUT_SECONDS"])
    sock = bind(args.host, args.port)
    listen = settings.METRICS["LISTEN"]
    supervisor = Supervisor(
        sock, args.processes, args.access_log, bind_metrics(listen) if listen else None
    )
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    supervisor.run()


if __name__ == "__main__":
    main()
