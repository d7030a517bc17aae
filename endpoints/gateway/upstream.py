"""Forwarding to replicas from threads (the web UI's request sender): pooled keep-alive
connections, one retry on another replica. The front door's event loop uses the async
twin in ``streams``; both share the request head, answer parsing and size cap here.

Replicas are MLflow's scoring server; the gateway only ever sends it ``POST /invocations``
and reads one answer, so the client here does only that (see docs/performance.md).
"""

from __future__ import annotations

import select
import socket
import threading
import time

from endpoints.errors import ServingError, Timeout, Unavailable

from .reporting import LoadTracker
from .routing import Address, RoutingCache, Target

INVOCATIONS = "/invocations"
JSON = "application/json"
CONNECT_TIMEOUT_SECONDS = 2.0
# Idle connections kept per replica; a burst above it opens extra ones that are closed.
POOL_CONNECTIONS = 32
MAX_ANSWER_HEAD = 65536


class ReplicaUnreachable(Exception):
    pass


class ReplicaTimeout(Exception):
    pass


class ResponseTooLarge(ServingError):
    """A replica answered more than the gateway holds in memory for one request."""

    error_code = "BAD_GATEWAY"
    status = 502


def too_large(limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"The model's answer exceeds the limit of {limit} bytes.")


def too_slow(read_timeout: float) -> Timeout:
    return Timeout(f"The model did not answer within {read_timeout:g} seconds.")


def unreachable(target: Target) -> Unavailable:
    """The second replica tried could not be reached either: the caller may retry."""
    return Unavailable(
        f"Version {target.version} of model '{target.model_name}' could not "
        "be reached; retry shortly."
    )


def retry_target(target: Target, fresh: Target | None) -> Target:
    """What the one retry goes to: the newest routing's version when it has replicas (the
    unreachable one may just have been replaced), else the same version."""
    return fresh if fresh is not None and fresh.replicas else target


def request_head(address: Address, content_type: str, length: int) -> bytes:
    # Built from scratch: the caller's Authorization and cookies never go on.
    return (
        f"POST {INVOCATIONS} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode("latin-1")


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

    def idle_and_open(self) -> bool:
        """False when the replica closed this kept connection (or sent something unasked)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        self.sock.close()

    def exchange(
        self, head: bytes, body: bytes, timeout: float, max_bytes: int
    ) -> tuple[int, str, bytes, bool]:
        """Send one request, return ``(status, content type, body, keep-alive)``."""
        deadline = time.monotonic() + timeout
        self.max_bytes = max_bytes
        if len(body) <= 65536:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_ANSWER_HEAD:
                raise ReplicaUnreachable("oversized answer headers")
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
            raise ReplicaUnreachable("the replica closed the connection")
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
        except ReplicaUnreachable:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ReplicaUnreachable(f"malformed answer from the replica: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


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
        routing: RoutingCache,
    ) -> tuple[int, str, bytes]:
        """Post to the least-loaded replica of ``target``; when it cannot be reached, once
        more to another one from the newest routing (it may just have been replaced).

        Raises Timeout when the replica does not answer in time, Unavailable when no
        replica could be reached."""
        tried: set[Address] = set()
        while True:
            address = load.pick(target.replicas, tried)
            try:
                return self.post(address, body, content_type)
            except ReplicaTimeout as exc:
                raise too_slow(self._read_timeout) from exc
            except ReplicaUnreachable as exc:
                if tried:
                    raise unreachable(target) from exc
                tried.add(address)
                target = retry_target(target, routing.current().table.lookup(target))
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
        except (ReplicaUnreachable, OSError, ValueError) as exc:
            conn.close()
            raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
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
