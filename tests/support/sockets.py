"""The TCP sockets another process holds, and what a client sees of a keep-alive scoring
path: the pieces of the default-path checks (``test_default_path``, the Ray cluster's)."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import socket
import statistics
import time
from collections.abc import Iterator

import psutil
import requests

from tests.support import iris

SYS_PIDFD_GETFD = 438
# The cliff the latency guard detects: a normal answer takes 1-3 ms here; Nagle meeting
# a client's delayed ACK costs 40 ms or more.
CLIFF_MS = 15.0

_libc = ctypes.CDLL(None, use_errno=True)


def tcp_sockets(pid: int) -> Iterator[socket.socket]:
    """Copies of the TCP sockets of process ``pid`` (``pidfd_getfd``: needs the right to
    trace it, which root has over the replicas' unprivileged user)."""
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                error = ctypes.get_errno()
                if error == 9:  # EBADF: closed meanwhile
                    continue
                raise OSError(error, f"pidfd_getfd of {pid}: {os.strerror(error)}")
            sock = socket.socket(fileno=fd)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                yield sock
            else:
                sock.close()
    finally:
        os.close(pidfd)


def nodelay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def connected(pids: list[int], *, local=None, peer=None) -> list[socket.socket]:
    """The connected sockets of ``pids`` whose own or far address is the one given."""
    found = []
    for pid in pids:
        for sock in tcp_sockets(pid):
            try:
                ends = (sock.getsockname()[:2], sock.getpeername()[:2])
            except OSError:
                sock.close()  # not connected: a listener
                continue
            if (local is None or ends[0] == local) and (peer is None or ends[1] == peer):
                found.append(sock)
            else:
                sock.close()
    return found


def process_tree(pid: int) -> list[int]:
    process = psutil.Process(pid)
    return [pid, *(child.pid for child in process.children(recursive=True))]


def median_ms(call, count: int = 50) -> float:
    call()  # the connection is made and warm
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


class HttpClientCalls:
    """One ``http.client`` connection, reused, as a user's script holds it."""

    def __init__(self, base: str, path: str, token: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.path = path
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self.body = json.dumps(iris.SPLIT)

    def __call__(self) -> None:
        self.conn.request("POST", self.path, self.body, self.headers)
        answer = self.conn.getresponse()
        data = answer.read()
        assert answer.status == 200, data

    def local_address(self) -> tuple[str, int]:
        return self.conn.sock.getsockname()[:2]

    def close(self) -> None:
        self.conn.close()


def answers(base: str, path: str, token: str) -> bool:
    """Whether the front door answers a scoring request at ``path`` with 200: a running
    replica is routed to only once its version is READY and the front door has seen it."""
    answer = requests.post(
        base + path, json=iris.SPLIT, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return answer.status_code == 200


def session_call(base: str, path: str, token: str):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    def call() -> None:
        answer = session.post(base + path, json=iris.SPLIT, timeout=30)
        assert answer.status_code == 200, answer.text

    return call


def assert_nagle_off(
    base: str, path: str, token: str, *, web_pid: int, replica_pids: list[int], replica
) -> None:
    """Every TCP socket of a keep-alive scoring request has ``TCP_NODELAY``: the one the
    front door accepted, the gateway's to the replica and the one the replica accepted."""
    call = HttpClientCalls(base, path, token)
    try:
        call()
        web = process_tree(web_pid)
        replica = tuple(replica)
        accepted = connected(web, peer=call.local_address())
        upstream = connected(web, peer=replica)
        at_replica = connected(replica_pids, local=replica)
        assert len(accepted) == 1, accepted
        assert upstream, "the gateway holds no connection to the replica"
        assert at_replica, "the replica holds no connection from the gateway"
        for where, found in (
            ("accepted by the front door", accepted),
            ("from the gateway to the replica", upstream),
            ("accepted by the replica", at_replica),
        ):
            assert all(nodelay(sock) for sock in found), where
            for sock in found:
                sock.close()
    finally:
        call.close()


def assert_no_cliff(base: str, path: str, token: str, client: str, rounds: int = 3) -> None:
    """50 sequential keep-alive requests from ``client`` have a median under the cliff, in
    one of ``rounds`` tries: the stall is the same on every request of every round, while
    a machine busy with other work only slows some rounds."""
    if client == "http.client":
        call = HttpClientCalls(base, path, token)
    else:
        call = session_call(base, path, token)
    medians = []
    for _ in range(rounds):
        medians.append(median_ms(call))
        if medians[-1] < CLIFF_MS:
            return
    raise AssertionError(f"{client}: medians {', '.join(f'{m:.1f}' for m in medians)} ms")


CLIENTS = ("http.client", "requests.Session")
