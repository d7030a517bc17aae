"""Request bodies at the front door: each route's size limit, judged from the request head
before a byte of the body is read, the cap on the bytes one process holds for bodies
(``SERVING_MAX_BUFFERED_BODY_BYTES``), and reading a body on the event loop under both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from endpoints.errors import BadRequest, PayloadTooLarge, Unavailable

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Header = tuple[bytes, bytes]


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


class OverBudget(Unavailable):
    """The process holds as many body bytes as it may."""


class BadFraming(BadRequest):
    """A body whose length cannot be trusted (both Content-Length and Transfer-Encoding:
    two framings, one of them a lie; or a Content-Length that is no number)."""


# Refusals given with the body (or its rest) unread: the connection cannot carry another
# request, so the answer says ``Connection: close``.
UNREAD_BODY_ERRORS = (PayloadTooLarge, OverBudget, BadFraming)


@dataclass(frozen=True)
class Limit:
    """The largest body a route takes, and what its 413 says."""

    size: int
    message: str

    def refusal(self) -> PayloadTooLarge:
        return PayloadTooLarge(self.message)


def scoring_limit(size: int) -> Limit:
    return Limit(size, f"The request body exceeds the limit of {size // (1024 * 1024)} MB.")


@dataclass(frozen=True)
class RouteLimits:
    scoring: Limit
    api: Limit
    pages: Limit

    @classmethod
    def from_settings(cls) -> RouteLimits:
        scoring = scoring_limit(int(settings.SERVING["MAX_PAYLOAD_BYTES"]))
        api = int(settings.API_MAX_BODY_BYTES)
        api_message = f"The request body exceeds the API's limit of {api} bytes"
        # No page takes a file: Django refuses a form body over this size anyway, so the
        # front door need not read more of one. Without Django's limit, pages get scoring's.
        pages = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        pages_message = f"The request body exceeds the pages' limit of {pages} bytes"
        return cls(
            scoring=scoring,
            api=Limit(api, f"{api_message} (API_MAX_BODY_BYTES)."),
            pages=scoring
            if pages is None
            else Limit(pages, f"{pages_message} (DATA_UPLOAD_MAX_MEMORY_SIZE)."),
        )


class BodyBudget:
    """The bytes of request bodies this process holds (being read, or held by a request
    in progress) against its cap. Used from the event loop only: no lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def fits(self, size: int) -> bool:
        return self.held + size <= self.capacity

    @contextlib.contextmanager
    def hold(self) -> Iterator[Hold]:
        """A request's share, given back when the request is over."""
        share = Hold(self)
        try:
            yield share
        finally:
            self.held -= share.size

    def refusal(self) -> OverBudget:
        return OverBudget(
            "The server is holding as many request bodies as it may "
            f"(SERVING_MAX_BUFFERED_BODY_BYTES, {self.capacity} bytes per process); "
            "try again shortly."
        )


class Hold:
    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        if not self.budget.fits(size):
            raise self.budget.refusal()
        self.budget.held += size
        self.size += size


def early_refusal(
    headers: Iterable[Header], limit: Limit, budget: BodyBudget
) -> BadFraming | PayloadTooLarge | OverBudget | None:
    """Why a request's body may not be read at all, judged from its head (None: it may)."""
    length: bytes | None = None
    framed = False
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            framed = True
    if length is None:
        return None
    if framed:
        # RFC 9112, 6.1: a server must close the connection after answering such a request.
        return BadFraming("A request may not carry both Content-Length and Transfer-Encoding.")
    try:
        size = int(length)
    except ValueError:
        return BadFraming("Invalid Content-Length header.")
    if size > limit.size:
        return limit.refusal()
    if not budget.fits(size):
        return budget.refusal()
    return None


async def read_body(receive: Receive, limit: Limit, hold: Hold) -> bytes:
    """The request body, refusing more than ``limit`` (also without Content-Length) and
    more than the process's budget; the rest of a refused body is never read."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit.size:
            raise limit.refusal()
        hold.take(len(chunk))
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
