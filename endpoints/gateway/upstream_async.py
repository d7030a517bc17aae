"""Forwarding to replicas from the event loop: pooled asyncio streams, one retry on
another replica when the first cannot have read the request (``upstream.never_read``).
The twin for threads is ``upstream_blocking``; both speak what ``upstream`` defines, by
hand, because a general-purpose async client costs several times what the whole hop
costs here (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .reporting import LoadTracker
from .routing_table import Address, Target
from .upstream import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_ANSWER_HEAD,
    POOL_CONNECTIONS,
    BadAnswer,
    ConnectionClosed,
    ReplicaFailed,
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

READ_SIZE = 65536

Refresh = Callable[[Target], Awaitable[Target | None]]


class StreamConnection:
    """One keep-alive HTTP/1.1 connection to a replica on asyncio streams."""

    def __init__(
        self, address: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.address = address
        self.reader = reader
        self.writer = writer
        self.sock = writer.get_extra_info("socket")
        # For the retry rule: what the replica had acknowledged before the current request,
        # and whether a byte of its answer arrived.
        self.acked: int | None = None
        self.answered = False

    @classmethod
    async def open(cls, address: Address) -> StreamConnection:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection(*address, limit=MAX_ANSWER_HEAD)
        except (OSError, TimeoutError) as exc:
            raise ReplicaUnreachable(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
        return cls(address, reader, writer)

    def idle_and_open(self) -> bool:
        """False when the replica closed this kept connection (or sent something unasked)."""
        return not (self.reader.at_eof() or self.reader._buffer or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()

    def failure(self, exc: Exception) -> ReplicaUnreachable | ReplicaFailed:
        """What the exchange that failed with ``exc`` means for a retry (asked before the
        connection is closed; after a reset asyncio has closed the socket already, and the
        reset alone decides)."""
        # A reset can cut the answer's head short: its first bytes stay in the buffer.
        answered = self.answered or bool(self.reader._buffer)
        return failure_of(exc, answered=answered, acked_before=self.acked, sock=self.sock)

    async def exchange(
        self, head: bytes, body: bytes, max_bytes: int
    ) -> tuple[int, str, bytes, bool]:
        """Send one request, return ``(status, content type, body, keep-alive)``."""
        self.acked = bytes_acked(self.sock)
        self.answered = False
        self.writer.write(head + body if len(body) <= READ_SIZE else head)
        if len(body) > READ_SIZE:
            self.writer.write(body)
        await self.writer.drain()
        try:
            raw_head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.answered = True
            raise BadAnswer("oversized answer headers") from None
        except asyncio.IncompleteReadError as exc:
            self.answered = bool(exc.partial)
            raise ConnectionClosed("the replica closed the connection") from None
        self.answered = True
        status, headers = parse_head(raw_head[:-4])
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = await self._read_chunked(max_bytes)
        elif "content-length" in headers:
            data = await self._read_exactly(int(headers["content-length"]), max_bytes)
        else:
            data = await self._read_to_close(max_bytes)
            headers["connection"] = "close"
        keep = headers.get("connection", "").lower() != "close"
        return status, headers.get("content-type", "application/json"), data, keep

    async def _read_exactly(self, length: int, max_bytes: int) -> bytes:
        if length > max_bytes:
            raise too_large(max_bytes)
        try:
            return await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ConnectionClosed("the replica closed the connection") from None

    async def _read_line(self) -> bytes:
        try:
            return (await self.reader.readuntil(b"\r\n"))[:-2]
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise BadAnswer("malformed chunked answer") from None

    async def _read_chunked(self, max_bytes: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while size := int((await self._read_line()).split(b";", 1)[0], 16):
            total += size
            if total > max_bytes:
                raise too_large(max_bytes)
            parts.append(await self._read_exactly(size, max_bytes))
            await self._read_line()
        while await self._read_line():  # trailers, up to the empty line
            pass
        return b"".join(parts)

    async def _read_to_close(self, max_bytes: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := await self.reader.read(READ_SIZE):
            total += len(chunk)
            if total > max_bytes:
                raise too_large(max_bytes)
            parts.append(chunk)
        return b"".join(parts)


class StreamUpstream:
    """Keep-alive stream connections to replicas, for one event loop."""

    def __init__(self, read_timeout: float, max_response_bytes: int) -> None:
        self._idle: dict[Address, list[StreamConnection]] = {}
        self._read_timeout = read_timeout
        self._max_response = max_response_bytes

    async def forward(
        self, target: Target, body: bytes, content_type: str, *, load: LoadTracker, refresh: Refresh
    ) -> tuple[int, str, bytes]:
        """Post to the least-loaded replica of ``target``; when that one cannot have read
        the request (``never_read``), once more to another one from the newest routing
        (``refresh``: it may just have been replaced).

        Raises Timeout, Unavailable, or BadGateway (a replica failed with the request
        inside it, or answered more than the cap)."""
        tried: set[Address] = set()
        while True:
            address = load.pick(target.replicas, tried)
            try:
                return await self.post(address, body, content_type)
            except TimeoutError as exc:
                raise too_slow(self._read_timeout) from exc
            except ReplicaFailed as exc:
                raise failed(target, exc) from exc
            except ReplicaUnreachable as exc:
                if tried:
                    raise unreachable(target) from exc
                tried.add(address)
                target = retry_target(target, await refresh(target))
            finally:
                load.release(address)

    async def post(
        self, address: Address, body: bytes, content_type: str
    ) -> tuple[int, str, bytes]:
        conn = await self._checkout(address)
        try:
            async with asyncio.timeout(self._read_timeout):
                status, answer_type, data, keep = await conn.exchange(
                    request_head(address, content_type, len(body)), body, self._max_response
                )
        except (TimeoutError, ResponseTooLarge, asyncio.CancelledError):
            conn.close()
            raise
        except (ConnectionClosed, BadAnswer, OSError, ValueError) as exc:
            failure = conn.failure(exc)
            conn.close()
            raise failure from exc
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        return status, answer_type, data

    async def _checkout(self, address: Address) -> StreamConnection:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.idle_and_open():
                return conn
            conn.close()
        return await StreamConnection.open(address)

    def _checkin(self, conn: StreamConnection) -> None:
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < POOL_CONNECTIONS:
            idle.append(conn)
        else:
            conn.close()

    def prune(self, keep: set[Address]) -> None:
        """Close the connections to replicas that are gone (their ports may be reused)."""
        for address in [a for a in self._idle if a not in keep]:
            for conn in self._idle.pop(address):
                conn.close()
