"""Forwarding to replicas from threads (the web UI's request sender without JavaScript):
pooled keep-alive sockets, one retry on another replica when the first cannot have read
the request (``upstream.never_read``). The event loop's twin is ``upstream_async``."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

from .reporting import LoadTracker
from .routing_table import Address, Target
from .upstream import (
    CONNECT_TIMEOUT_SECONDS,
    JSON,
    MAX_ANSWER_HEAD,
    POOL_CONNECTIONS,
    BadAnswer,
    ConnectionClosed,
    ReplicaFailed,
    ReplicaTimeout,
    ReplicaUnreachable,
    ResponseTooLarge,
    bytes_acked,
    failed,
    failure_of,
    parse_head,
    request_head,
    retry_target,
    too_large,
    too_slow,
    unreachable,
)


class ReplicaConnection:
    """One keep-alive HTTP/1.1 connection to a replica.

    A deliberately small client: it only ever sends ``POST /invocations`` to MLflow's
    scoring server and reads one answer (Content-Length or chunked). It costs a fraction of
    a general-purpose client per request, which is most of what the gateway adds (see
    docs/performance.md)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_SECONDS)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A bytearray: appending and cutting the front stay linear in the answer's size.
        self.buffer = bytearray()
        # For the retry rule: what the replica had acknowledged before the current request,
        # and whether a byte of its answer arrived.
        self.acked: int | None = None
        self.answered = False

    def idle_and_open(self) -> bool:
        """False when the replica closed this kept connection (or sent something unasked)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        self.sock.close()

    def failure(self, exc: Exception) -> ReplicaUnreachable | ReplicaFailed:
        """What the exchange that failed with ``exc`` means for a retry (asked before the
        connection is closed)."""
        return failure_of(exc, answered=self.answered, acked_before=self.acked, sock=self.sock)

    def exchange(
        self, head: bytes, body: bytes, timeout: float, max_bytes: int
    ) -> tuple[int, str, bytes, bool]:
        """Send one request, return ``(status, content type, body, keep-alive)``."""
        deadline = time.monotonic() + timeout
        self.max_bytes = max_bytes
        self.acked = bytes_acked(self.sock)
        self.answered = False
        if len(body) <= 65536:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_ANSWER_HEAD:
                raise BadAnswer("oversized answer headers")
            self._receive(deadline)
        status, headers = parse_head(bytes(self.buffer[:end]))
        del self.buffer[: end + 4]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = self._read_chunked(deadline)
        elif "content-length" in headers:
            data = self._read_exactly(int(headers["content-length"]), deadline)
        else:
            data = self._read_to_close(deadline)
            headers["connection"] = "close"
        keep = headers.get("connection", "").lower() != "close"
        return status, headers.get("content-type", JSON), data, keep

    def _receive(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the replica did not answer in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("the replica closed the connection")
        self.answered = True
        self.buffer += chunk
        if len(self.buffer) > self.max_bytes + MAX_ANSWER_HEAD:
            raise too_large(self.max_bytes)

    def _read_exactly(self, length: int, deadline: float) -> bytes:
        if length > self.max_bytes:
            raise too_large(self.max_bytes)
        while len(self.buffer) < length:
            self._receive(deadline)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        return data

    def _read_line(self, deadline: float) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._receive(deadline)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def _read_chunked(self, deadline: float) -> bytes:
        parts = []
        total = 0
        while size := int(self._read_line(deadline).split(b";", 1)[0], 16):
            total += size
            if total > self.max_bytes:
                raise too_large(self.max_bytes)
            parts.append(self._read_exactly(size, deadline))
            self._read_line(deadline)
        while self._read_line(deadline):  # trailers, up to the empty line
            pass
        return b"".join(parts)

    def _read_to_close(self, deadline: float) -> bytes:
        try:
            while True:
                self._receive(deadline)
        except ConnectionClosed:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data


class Upstream:
    """Keep-alive connections to replicas, shared by the threads of one process."""

    def __init__(self, read_timeout: float, max_response_bytes: int) -> None:
        self._idle: dict[Address, list[ReplicaConnection]] = {}
        self._lock = threading.Lock()
        self._read_timeout = read_timeout
        self._max_response = max_response_bytes

    def forward(
        self,
        target: Target,
        body: bytes,
        content_type: str,
        *,
        load: LoadTracker,
        refresh: Callable[[Target], Target | None],
    ) -> tuple[int, str, bytes]:
        """Post to the least-loaded replica of ``target``; when that one cannot have read
        the request (``never_read``), once more to another one from the newest routing
        (``refresh``: it may just have been replaced).

        Raises Timeout when the replica does not answer in time, Unavailable when no
        replica could be reached, BadGateway when one failed with the request inside it or
        answered more than the cap."""
        tried: set[Address] = set()
        while True:
            address = load.pick(target.replicas, tried)
            try:
                return self.post(address, body, content_type)
            except ReplicaTimeout as exc:
                raise too_slow(self._read_timeout) from exc
            except ReplicaFailed as exc:
                raise failed(target, exc) from exc
            except ReplicaUnreachable as exc:
                if tried:
                    raise unreachable(target) from exc
                tried.add(address)
                target = retry_target(target, refresh(target))
            finally:
                load.release(address)

    def post(self, address: Address, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        head = request_head(address, content_type, len(body))
        conn = self._checkout(address)
        try:
            status, answer_type, data, keep = conn.exchange(
                head, body, self._read_timeout, self._max_response
            )
        except ResponseTooLarge:
            conn.close()
            raise
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            conn.close()
            raise ReplicaTimeout(str(exc)) from exc
        except (ConnectionClosed, BadAnswer, OSError, ValueError) as exc:
            failure = conn.failure(exc)
            conn.close()
            raise failure from exc
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        return status, answer_type, data

    def _checkout(self, address: Address) -> ReplicaConnection:
        while True:
            with self._lock:
                idle = self._idle.get(address)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.idle_and_open():
                return conn
            conn.close()
        try:
            return ReplicaConnection(address)
        except OSError as exc:
            raise ReplicaUnreachable(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc

    def _checkin(self, conn: ReplicaConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.address, [])
            if len(idle) < POOL_CONNECTIONS:
                idle.append(conn)
                return
        conn.close()

    def prune(self, keep: set[Address]) -> None:
        """Close the connections to replicas that are gone (their ports may be reused)."""
        with self._lock:
            gone = [a for a in self._idle if a not in keep]
            closing = [conn for a in gone for conn in self._idle.pop(a)]
        for conn in closing:
            conn.close()
