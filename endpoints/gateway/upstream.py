"""What both ways of forwarding to replicas share: the one request the gateway sends
(``POST /invocations``), reading the answer's head, the size cap, the errors, and the rule
for when a request may go to a second replica (``never_read``). The clients are
``upstream_async`` (the front door's event loop) and ``upstream_blocking`` (threads).

A replica is the product's replica server or MLflow's; either way the gateway reads one
answer framed by Content-Length, chunked encoding or the end of the connection, so the
clients do only that, by hand (see docs/performance.md).
"""

from __future__ import annotations

import errno
import socket
import struct

from endpoints.errors import ServingError, Timeout, Unavailable

from .routing_table import Address, Target

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
    another replica. ``stopped``: the replica closed or reset the connection without a
    whole answer (it died: killed, out of memory, crashed), not a garbled answer."""

    def __init__(self, reason: str, *, stopped: bool = False) -> None:
        super().__init__(reason)
        self.stopped = stopped


class ReplicaTimeout(Exception):
    pass


class ConnectionClosed(Exception):
    """The replica closed the connection before its answer was complete."""


class BadAnswer(Exception):
    """The replica sent something that is not an HTTP answer the gateway reads."""


class BadGateway(ServingError):
    error_code = "BAD_GATEWAY"
    status = 502


class ReplicaStopped(BadGateway):
    """The replica stopped with the request inside it."""

    error_code = "REPLICA_STOPPED"


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


def failed(target: Target, failure: ReplicaFailed) -> BadGateway:
    """A replica failed with the request inside it: not retried, by the gateway or by the
    message (no Retry-After), since the request itself may be what made it fail. One that
    stopped (its process ended: killed at its memory limit, crashed) says so; the reason
    is in the endpoint's events, which the reconcile loop writes once it sees the exit."""
    replica = f"The replica serving version {target.version} of model '{target.model_name}'"
    not_again = (
        "The request was not sent to another replica: the model may have run, or the "
        "request may be what made it fail."
    )
    if failure.stopped:
        return ReplicaStopped(
            f"{replica} stopped while handling the request ({failure}). {not_again} The "
            "endpoint's events say why it stopped (for instance, out of memory)."
        )
    return BadGateway(
        f"{replica} failed while handling the request ({failure}). {not_again} The "
        "version's service logs say more."
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
# Anything else fails the request: 502 REPLICA_STOPPED for a connection closed or reset
# after the request was acknowledged, or before its answer was whole (a replica that read
# it and then died: ``os._exit``, ``kill -9``, out of memory), 502 BAD_GATEWAY for a
# malformed answer, 504 for a timeout.

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
    return ReplicaFailed(reason, stopped=isinstance(exc, (ConnectionClosed, OSError)))


def request_head(address: Address, content_type: str, length: int) -> bytes:
    # Built from scratch: the caller's Authorization and cookies never go on.
    return (
        f"POST {INVOCATIONS} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode("latin-1")


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
