"""Forwarding to replicas from threads (the web UI's request sender): pooled keep-alive
connections, one retry on another replica. The front door's event loop uses the async
twin in ``streams``; both share the request head, answer parsing, size cap and the rule
for when a request may go to another replica, here.

Replicas are MLflow's scoring server; the gateway only ever sends it ``POST /invocations``
and reads one answer, so the client here does only that (see docs/performance.md).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from endpoints.errors import ServingError, Timeout, Unavailable

from .reporting import LoadTracker
from .routing import Address, Target

INVOCATIONS = "/invocations"
JSON = "application/json"
CONNECT_TIMEOUT_SECONDS = 2.0
# Idle connections kept per replica; a burst above it opens extra ones that are closed.
POOL_CONNECTIONS = 32
MAX_ANSWER_HEAD = 65536


class ReplicaUnreachable(Exception):
    """The request cannot have reached the model (see ``never_read``): another replica
    may take it."""


class ReplicaFailed(Exception):
    """The exchange failed once the replica may have read the request: it is not sent to
    another replica."""


class ReplicaTimeout(Exception):
    pass


class ConnectionClosed(Exception):
    """The replica closed the connection before its answer was complete."""


class BadAnswer(Exception):
    """The replica sent something that is not an HTTP answer the gateway reads."""


class BadGateway(ServingError):
    error_code = "BAD_GATEWAY"
    status = 502


class ResponseTooLarge(BadGateway):
    """A replica answered more than the gateway holds in memory for one request."""


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


def failed(target: Target, reason: str) -> BadGateway:
    """A replica failed with the request inside it: not retried, by the gateway or by the
    message (no Retry-After), since the request itself may be what made it fail."""
    return BadGateway(
        f"The replica serving version {target.version} of model '{target.model_name}' "
        f"failed while handling the request ({reason}). The request was not sent to "
        "another replica: the model may have run, or the request may be what made it "
        "fail. The version's service logs say more."
    )


def retry_target(target: Target, fresh: Target | None) -> Target:
    """What the one retry goes to: the newest routing's version when it has replicas (the
    unreachable one may just have been replaced), else the same version."""
    return fresh if fresh is not None and fresh.replicas else target


# --- when a request may go to another replica ------------------------------------------------
#
# A request goes to a second replica only when the first cannot have read all of it: a
# replica runs the model on a whole request only, so the model did not run there, and a
# request that kills replicas cannot kill a second one. TCP tells, the connection's age
# does not (a kept connection that closes before an answer is as likely a replica that
# read the request and died as one that had closed it while idle):
#
# - the connection could not be opened: nothing was sent;
# - no byte of an answer arrived, and
#   - the replica's host acknowledged no byte of the request (``bytes_acked`` did not
#     move): the replica had closed the connection before the request arrived. This is the
#     stale keep-alive case: a pooled connection the replica closed while it was idle (its
#     idle timeout, or a draining replica closing its idle connections), the close seen
#     only after sending;
#   - or the connection was reset: a socket closed with unread data is reset instead of
#     closed in order, so the replica closed it without reading all of the request (or the
#     request reached a socket that was closed already).
#
# Anything else fails the request with 502 BAD_GATEWAY: above all a connection closed in
# order after the request was acknowledged (a replica that read it and then died:
# ``os._exit``, ``kill -9``, out of memory), a partial or malformed answer, a timeout (504).

# Where Linux's ``struct tcp_info`` keeps ``tcpi_bytes_acked`` (since Linux 4.1).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_TCP_INFO = getattr(socket, "TCP_INFO", None)
RESETS = frozenset({errno.ECONNRESET, errno.EPIPE})


def bytes_acked(sock: socket.socket) -> int | None:
    """The bytes sent on ``sock`` that the peer's TCP acknowledged (the SYN counts one);
    None where the platform does not say, or the socket is closed."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    return _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]


def never_read(
    exc: BaseException, *, answered: bool, acked_before: int | None, acked_after: int | None
) -> bool:
    """Whether an exchange that failed with ``exc`` proves that the replica did not read
    all of the request (the rule above); False whenever that is not certain.

    ``answered``: a byte of the answer arrived; ``acked_before`` / ``acked_after``:
    ``bytes_acked`` before the request was sent and once it failed."""
    if answered:
        return False
    if isinstance(exc, OSError) and exc.errno in RESETS:
        return True
    return acked_before is not None and acked_after == acked_before


def failure_of(
    exc: Exception, *, answered: bool, acked_before: int | None, sock: socket.socket
) -> ReplicaUnreachable | ReplicaFailed:
    """The failed exchange as the retry sees it (``sock``: its connection, still open)."""
    reason = str(exc) or type(exc).__name__
    acked_after = bytes_acked(sock)
    if never_read(exc, answered=answered, acked_before=acked_before, acked_after=acked_after):
        return ReplicaUnreachable(reason)
    return ReplicaFailed(reason)


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


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise BadAnswer(f"malformed answer from the replica: {lines[0]!r}") from None
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
                raise failed(target, str(exc)) from exc
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
