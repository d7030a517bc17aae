"""The front door's HTTP/1.1 connections: uvicorn's h11 protocol with a deadline for every
request head and every request body, JSON answers for heads it refuses itself, and a
lingering close after any answer given while the client may still be sending.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from endpoints.errors import BadRequest, ServingError

# A lingering close reads and discards what the client still sends for at most this long
# and this much (more than a client writing a body of several times the largest limit
# sends on a fast link), then closes.
LINGER_SECONDS = 10.0
LINGER_BYTES = 256 * 1024 * 1024


def head_refusal(status: int, head_limit: int) -> ServingError:
    """The answer to a request head h11 refused, by the status h11 suggests."""
    if status == 431:
        return ServingError(
            f"The request head is larger than {head_limit} bytes.",
            error_code="BAD_REQUEST",
            status=431,
        )
    if status == 501:
        return ServingError(
            "Only Transfer-Encoding: chunked is supported.",
            error_code="NOT_IMPLEMENTED",
            status=501,
        )
    return BadRequest("The request is not valid HTTP/1.1.")


class _Connection(h11.Connection):
    """h11's connection, remembering why it refused the client's bytes (uvicorn only
    answers 400, whatever h11's hint)."""

    refused: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refused = exc
            raise


class _Transport:
    """The connection's transport as uvicorn's code sees it: its ``close`` is the
    protocol's, which lingers when it must."""

    def __init__(self, transport: asyncio.Transport, protocol: FrontDoorProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close()

    def is_closing(self) -> bool:
        return self._protocol.closing or self._transport.is_closing()


class FrontDoorProtocol(H11Protocol):
    """uvicorn's h11 protocol, with what it lacks at a public port.

    - Deadlines: a request head (the first on a connection and every later one) must be
      complete ``head_timeout`` after the connection opened or the previous answer was
      sent, else the connection is closed; a request body ``body_timeout`` after its head,
      else 408 (or, when the answer was already given, a close). uvicorn itself only
      times out a connection that stays silent after an answer.
    - A head h11 cannot parse is answered in the product's JSON shape with h11's status
      (400, 431 for a head too large, 501), where uvicorn answers a plain-text 400.
    - A lingering close: closing a socket whose input is unread makes the kernel reset
      the connection, and a reset discards the answer at a client that writes its whole
      body before reading (Python's urllib). After an answer given before the request was
      read (413, 503, 408, a refused head), the connection stops writing (the client
      reads the answer, then end of file), reads and discards for a bounded time and
      size, then closes.

    These are connection-level: the ASGI app cannot see a head that never completes, a
    body it did not read, or the moment of closing. A subclass is the smallest place that
    does: the rest of uvicorn's protocol (parsing, flow control, keep-alive, shutdown)
    stays as it is.
    """

    head_timeout = 30.0
    body_timeout = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self.conn = _Connection(h11.SERVER, size)
        self.head_limit = size
        self.closing = False
        self._lingering = False
        self._linger_left = LINGER_BYTES
        self._timer: asyncio.TimerHandle | None = None
        self._following: tuple[object, object] | None = None

    # --- what uvicorn calls ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.raw = transport
        self.transport = _Transport(transport, self)  # type: ignore[assignment]
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discard(data)
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def send_400_response(self, msg: str) -> None:
        refused = self.conn.refused
        hint = refused.error_status_hint if refused is not None else 400
        self._answer(head_refusal(hint, self.head_limit))

    def shutdown(self) -> None:
        if self.closing:
            self.raw.close()  # a lingering connection stops lingering
        else:
            super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._lingering = False
        self._cancel_timer()
        super().connection_lost(exc)

    # --- deadlines -------------------------------------------------------------------------

    def _follow(self) -> None:
        """Arms the deadline for what the client owes now: a head, or the rest of a body."""
        if self.closing:
            return
        state = self.conn.their_state
        key = (state, self.cycle)
        if key == self._following:
            return
        self._following = key
        self._cancel_timer()
        if state is h11.IDLE:
            self._timer = self.loop.call_later(self.head_timeout, self._head_overdue)
        elif state is h11.SEND_BODY:
            self._timer = self.loop.call_later(self.body_timeout, self._body_overdue)

    def _head_overdue(self) -> None:
        # Nothing was answered, so there is nothing to linger for: a plain close.
        self._timer = None
        self.closing = True
        self.raw.close()

    def _body_overdue(self) -> None:
        self._timer = None
        self._answer(
            ServingError(
                f"The request body did not arrive within {self.body_timeout:g} seconds.",
                error_code="DEADLINE_EXCEEDED",
                status=408,
            )
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- answers and closing -----------------------------------------------------------------

    def _answer(self, error: ServingError) -> None:
        """Answers ``error`` in the product's JSON shape (unless an answer has begun), then
        closes. A request in flight sees its client gone, and whatever its app sends later
        is dropped."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        body = json.dumps(error.as_json()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        events = (
            h11.Response(
                status_code=error.status,
                headers=headers,
                reason=HTTPStatus(error.status).phrase.encode(),
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        try:
            data = b"".join(self.conn.send(event) or b"" for event in events)
        except h11.LocalProtocolError:
            data = b""  # an answer had begun: there is nothing more to say
        if data and not self.raw.is_closing():
            self.raw.write(data)
        self.close()

    def close(self) -> None:
        """Closes the connection; lingers first when the client may still be sending (its
        body unread, or its head refused)."""
        if self.closing:
            return
        self.closing = True
        self._cancel_timer()
        if self.raw.is_closing() or not self._client_may_be_sending():
            self.raw.close()
            return
        self._lingering = True
        self.raw.resume_reading()
        if self.raw.can_write_eof():
            self.raw.write_eof()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.raw.close)

    def _client_may_be_sending(self) -> bool:
        """A body not read to its end, a head refused, or requests sent behind this one."""
        if self.conn.their_state in (h11.SEND_BODY, h11.ERROR):
            return True
        return bool(self.conn.trailing_data[0])

    def _discard(self, data: bytes) -> None:
        self._linger_left -= len(data)
        if self._linger_left <= 0:
            self.raw.close()
