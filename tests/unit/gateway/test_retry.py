"""When the gateway sends a request to a second replica: only when the first cannot have
read it (``upstream.never_read``). A scripted loopback replica reads a request and closes
(what a replica that died of it does), closes a kept connection while idle (a stale
keep-alive connection), drops a waiting request unread (a reset) or cuts its answer short;
both clients, the event loop's streams and the threads' sockets, follow the same rule."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import threading

import pytest

from endpoints.gateway.reporting import LoadTracker
from endpoints.gateway.routing_table import Address, Target
from endpoints.gateway.upstream import (
    JSON,
    BadGateway,
    ConnectionClosed,
    never_read,
)
from endpoints.gateway.upstream_async import StreamConnection, StreamUpstream
from endpoints.gateway.upstream_blocking import ReplicaConnection, Upstream
from tests.support.upstream import close_pool

MIB = 1024 * 1024
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class ScriptedReplica:
    """A loopback replica serving one connection, one step per request:

    - ``answer``: read the request, answer 200 and keep the connection;
    - ``die``: read the request and close without answering (a replica that died of it);
    - ``cut``: read the request, send the start of an answer, close;
    - ``hangup``: close the kept connection while it is idle, reading nothing;
    - ``drop``: close as soon as a request is waiting, without reading it (a reset);
    - ``garble``: read the request, answer something that is not HTTP, close.
    """

    def __init__(self, *steps: str) -> None:
        self.steps = steps
        self.received: list[bytes] = []  # requests read whole
        self.done = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address: Address = self.server.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        self.server.close()  # one connection only
        with conn:
            for step in self.steps:
                if step == "hangup":
                    break
                if step == "drop":
                    select.select([conn], [], [], 10)
                    break
                self.received.append(_read_request(conn))
                if step == "die":
                    break
                if step == "cut":
                    conn.sendall(OK[:20])
                    break
                if step == "garble":
                    conn.sendall(b"not an answer\r\n\r\n")
                    break
                conn.sendall(OK)
        self.done.set()

    def close(self) -> None:
        self.server.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(65536)
    return data


def _target(address: Address) -> Target:
    return Target(
        version_pk=1,
        endpoint_pk=1,
        model_name="m",
        version="1",
        service_state="SERVICE_STATE_READY",
        service_message="",
        routable=True,
        scale_to_zero=False,
        replicas=(address,),
    )


class Threads:
    """The threads' client, as the web UI's request sender uses it."""

    connection = ReplicaConnection

    def __init__(self) -> None:
        self.upstream = Upstream(5, MIB)

    def post(self, address: Address) -> tuple[int, str, bytes]:
        return self.upstream.post(address, b"{}", JSON)

    def forward(self, first: Address, then: Address) -> tuple[int, str, bytes]:
        """Forward to ``first``; the newest routing has ``then`` instead."""
        return self.upstream.forward(
            _target(first), b"{}", JSON, load=LoadTracker(), refresh=lambda t: _target(then)
        )

    def close(self) -> None:
        close_pool(self.upstream)


class Streams(Threads):
    """The event loop's client, as the front door uses it (one loop: the pool is its)."""

    connection = StreamConnection

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.upstream = StreamUpstream(5, MIB)

    def post(self, address: Address) -> tuple[int, str, bytes]:
        return self.loop.run_until_complete(self.upstream.post(address, b"{}", JSON))

    def forward(self, first: Address, then: Address) -> tuple[int, str, bytes]:
        async def refresh(target: Target) -> Target:
            return _target(then)

        return self.loop.run_until_complete(
            self.upstream.forward(_target(first), b"{}", JSON, load=LoadTracker(), refresh=refresh)
        )

    def close(self) -> None:
        close_pool(self.upstream)
        self.loop.run_until_complete(asyncio.sleep(0))  # the loop closes the sockets
        self.loop.close()


@pytest.fixture(params=[Streams, Threads], ids=["streams", "threads"])
def client(request):
    client = request.param()
    yield client
    client.close()


@pytest.fixture
def other():
    """The replica the newest routing offers instead: it answers."""
    replica = ScriptedReplica("answer")
    yield replica
    replica.close()


def _kept(client, *steps: str) -> ScriptedReplica:
    """A replica the client already holds a kept connection to (one request answered);
    ``steps`` come after that."""
    replica = ScriptedReplica("answer", *steps)
    assert client.post(replica.address)[0] == 200
    return replica


# --- not sent again: the replica may have read it ----------------------------------------------


@pytest.mark.parametrize("kept", [True, False], ids=["kept-connection", "new-connection"])
def test_a_replica_that_read_the_request_and_died_is_not_sent_it_again(client, other, kept):
    first = _kept(client, "die") if kept else ScriptedReplica("die")
    with pytest.raises(BadGateway) as caught:
        client.forward(first.address, other.address)
    # The client learns that the replica stopped, and where to read why.
    assert (caught.value.status, caught.value.error_code) == (502, "REPLICA_STOPPED")
    assert "stopped while handling the request" in caught.value.message
    assert "events say why" in caught.value.message
    assert "not sent to another replica" in caught.value.message
    assert len(first.received) == (2 if kept else 1)
    assert other.received == []


def test_an_answer_cut_short_is_not_sent_again(client, other):
    first = _kept(client, "cut")
    with pytest.raises(BadGateway) as caught:
        client.forward(first.address, other.address)
    assert caught.value.error_code == "REPLICA_STOPPED"
    assert other.received == []


def test_a_replica_answering_something_else_than_http_is_a_bad_gateway(client, other):
    """Only a replica that stopped is said to have stopped: a garbled answer came from a
    running one."""
    first = _kept(client, "garble")
    with pytest.raises(BadGateway) as caught:
        client.forward(first.address, other.address)
    assert (caught.value.status, caught.value.error_code) == (502, "BAD_GATEWAY")
    assert "not sent to another replica" in caught.value.message
    assert other.received == []


# --- sent to another: the first cannot have read it --------------------------------------------


def test_a_kept_connection_the_replica_closed_while_idle_is_retried_on_another(
    client, other, monkeypatch
):
    first = _kept(client, "hangup")
    first.done.wait(5)
    # The close reaches the gateway only after it sent the request (the race a pooled
    # connection always has with the replica's idle timeout or its drain).
    monkeypatch.setattr(client.connection, "idle_and_open", lambda self: True)
    assert client.forward(first.address, other.address) == (200, JSON, b"{}")
    assert len(first.received) == 1
    assert len(other.received) == 1


def test_a_request_the_replica_dropped_unread_is_retried_on_another(client, other):
    first = _kept(client, "drop")
    assert client.forward(first.address, other.address) == (200, JSON, b"{}")
    assert len(first.received) == 1
    assert len(other.received) == 1


def test_a_refused_connection_is_retried_on_another(client, other):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()
    assert client.forward(free, other.address) == (200, JSON, b"{}")
    assert len(other.received) == 1


# --- the rule itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "answered", "acked_before", "acked_after", "expected"),
    [
        # Closed in order before the request arrived: nothing of it acknowledged.
        (ConnectionClosed(), False, 11, 11, True),
        # Closed in order after acknowledging it: it may have read it.
        (ConnectionClosed(), False, 11, 31, False),
        # Reset: closed with the request unread (its socket gone, so TCP_INFO is too).
        (ConnectionResetError(errno.ECONNRESET, "reset"), False, 11, None, True),
        (BrokenPipeError(errno.EPIPE, "broken pipe"), False, 11, None, True),
        # An answer had begun: it read the request.
        (ConnectionResetError(errno.ECONNRESET, "reset"), True, 11, None, False),
        (ConnectionClosed(), True, 11, 11, False),
        # Unknown (no TCP_INFO, or asyncio's own "Connection lost"): never resent.
        (ConnectionClosed(), False, None, None, False),
        (ConnectionResetError("Connection lost"), False, 11, None, False),
    ],
)
def test_never_read_is_certain_or_false(exc, answered, acked_before, acked_after, expected):
    assert (
        never_read(exc, answered=answered, acked_before=acked_before, acked_after=acked_after)
        is expected
    )
