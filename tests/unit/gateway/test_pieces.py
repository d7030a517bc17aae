"""Unit tests of the gateway's pieces: URL parsing, request normalising, body limits,
answer translation, admission and replica choice, and the upstream client against a
local fake server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from endpoints.errors import BadRequest, PayloadTooLarge, RateLimited, Unauthenticated
from endpoints.gateway.admission import EndpointLimit
from endpoints.gateway.bodies import (
    BadFraming,
    BodyBudget,
    ClientGone,
    Limit,
    OverBudget,
    RouteLimits,
    early_refusal,
    read_body,
)
from endpoints.gateway.front import body_limit, origin_path, whole_body
from endpoints.gateway.reporting import LoadTracker
from endpoints.gateway.scoring import (
    error_answer,
    normalise_request,
    parse_path,
    status_line,
    translate_answer,
)
from endpoints.gateway.upstream import (
    JSON,
    ReplicaFailed,
    ReplicaTimeout,
    ReplicaUnreachable,
    ResponseTooLarge,
)
from endpoints.gateway.upstream_async import StreamUpstream
from endpoints.gateway.upstream_blocking import Upstream
from tests.support.upstream import close_pool

MIB = 1024 * 1024

# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/model-endpoint/iris-classifier/Production/invocations",
            ("iris-classifier", "Production"),
        ),
        ("/model/iris-classifier/Production/invocations", ("iris-classifier", "Production")),
        ("/model/iris-classifier/2/invocations", ("iris-classifier", "2")),
        ("/model-endpoint/ElasticNet/1/invocations/", ("ElasticNet", "1")),
        # ASGI hands the path over decoded as UTF-8.
        ("/model/modèle/1/invocations", ("modèle", "1")),
    ],
)
def test_scoring_urls_give_model_and_selector(path, expected):
    assert parse_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/model/iris-classifier/invocations",
        "/model//1/invocations",
        "/model/iris-classifier/1/",
        "/model/iris-classifier/1/ping",
        "/model/iris-classifier/1/invocations/extra",
        "/models/iris-classifier/1/invocations",
        "/api/2.0/preview/mlflow/endpoints-v2/list",
    ],
)
def test_other_paths_are_not_scoring_urls(path):
    assert parse_path(path) is None


def test_path_tricks_only_ever_give_a_name_to_look_up():
    # Whatever the path holds, it only yields a name compared with the endpoints' names;
    # the forwarded path is always /invocations on a replica address from the table.
    for path, name in [
        ("/model/../admin/1/invocations", "../admin"),
        ("/model/http://evil.example:80/x/1/invocations", "http://evil.example:80/x"),
        ("/model/a@127.0.0.1:6379/1/invocations", "a@127.0.0.1:6379"),
        ("/model/a\r\nHost: x/1/invocations", "a\r\nHost: x"),
    ]:
        assert parse_path(path) == (name, "1")


# --- requests --------------------------------------------------------------------------------


def test_missing_content_type_means_json():
    assert normalise_request(b"{}", None) == (b"{}", JSON)
    assert normalise_request(b"{}", "") == (b"{}", JSON)


def test_other_content_types_pass_unchanged():
    assert normalise_request(b"a,b\n1,2\n", "text/csv") == (b"a,b\n1,2\n", "text/csv")
    assert normalise_request(b"{}", "application/json; charset=utf-8")[1] == (
        "application/json; charset=utf-8"
    )


def test_a_json_string_holding_the_request_is_decoded_once():
    inner = json.dumps({"dataframe_records": [{"a": 1}]})
    body = json.dumps(inner).encode()
    assert normalise_request(body, JSON) == (inner.encode(), JSON)
    # Not decoded twice: the inner text is forwarded as it was sent.
    twice = json.dumps(json.dumps(inner)).encode()
    assert normalise_request(twice, JSON)[0] == json.dumps(inner).encode()


def test_a_csv_body_starting_with_a_quote_is_not_touched():
    body = b'"a","b"\n1,2\n'
    assert normalise_request(body, "text/csv") == (body, "text/csv")


def test_a_content_type_with_control_characters_is_refused():
    with pytest.raises(BadRequest):
        normalise_request(b"{}", "application/json\r\nX-Injected: 1")


def _receiver(*chunks: bytes, disconnect: bool = False):
    """An ASGI ``receive`` handing out ``chunks``; it counts how many were taken."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    taken = []

    async def receive():
        taken.append(1)
        return messages[len(taken) - 1]

    receive.taken = taken
    return receive


LIMIT = Limit(100, "over 100")


def _read(receive, limit: Limit = LIMIT, budget: BodyBudget | None = None) -> bytes:
    budget = budget or BodyBudget(1000)

    async def read() -> bytes:
        with budget.hold() as hold:
            return await read_body(receive, limit, hold)

    return asyncio.run(read())


def test_body_is_read_up_to_the_limit():
    assert _read(_receiver(b"x" * 100)) == b"x" * 100
    assert _read(_receiver(b"x" * 60, b"x" * 40)) == b"x" * 100


def test_chunked_body_over_the_limit_is_refused_while_reading_and_the_rest_left_unread():
    receive = _receiver(*[b"x" * 50_000] * 10)
    with pytest.raises(PayloadTooLarge):
        _read(receive, Limit(100_000, "over"), BodyBudget(MIB))
    assert len(receive.taken) == 3


def test_a_413_closes_the_connection():
    assert ("Connection", "close") in error_answer(PayloadTooLarge("big")).headers


def test_a_client_that_leaves_mid_body_gets_no_answer():
    with pytest.raises(ClientGone):
        _read(_receiver(b"x", disconnect=True))


# --- judged from the head: the route's limit, the framing, the process's budget -------------


def _headers(length: int | None = None, *, chunked: bool = False) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"127.0.0.1")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return headers


def test_a_body_is_judged_by_its_content_length_before_it_is_read():
    budget = BodyBudget(1000)
    assert early_refusal(_headers(100), LIMIT, budget) is None
    assert early_refusal(_headers(chunked=True), LIMIT, budget) is None  # judged while read
    assert early_refusal(_headers(), LIMIT, budget) is None
    too_large = early_refusal(_headers(101), LIMIT, budget)
    assert isinstance(too_large, PayloadTooLarge) and too_large.message == "over 100"


def test_both_content_length_and_transfer_encoding_are_refused_and_close_the_connection():
    refusal = early_refusal(_headers(5, chunked=True), LIMIT, BodyBudget(1000))
    assert isinstance(refusal, BadFraming) and refusal.status == 400
    assert ("Connection", "close") in error_answer(refusal).headers


def test_invalid_content_length_is_a_bad_request():
    refusal = early_refusal([(b"content-length", b"ten")], LIMIT, BodyBudget(1000))
    assert isinstance(refusal, BadFraming)


def test_the_budget_counts_what_requests_hold_and_gives_it_back():
    budget = BodyBudget(150)
    with budget.hold() as first:
        first.take(100)
        assert budget.held == 100
        assert isinstance(early_refusal(_headers(51), LIMIT, budget), OverBudget)
        assert early_refusal(_headers(50), LIMIT, budget) is None
        with pytest.raises(OverBudget):
            _read(_receiver(b"x" * 30, b"x" * 30), budget=budget)
        # The refused request gave back what it had taken.
        assert budget.held == 100
    assert budget.held == 0


def test_a_body_over_the_budget_is_a_503_that_closes_the_connection():
    answer = error_answer(BodyBudget(10).refusal())
    assert answer.status == 503
    assert json.loads(answer.body)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert ("Retry-After", "1") in answer.headers
    assert ("Connection", "close") in answer.headers


def test_each_route_has_its_own_body_limit(settings):
    settings.API_MAX_BODY_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    settings.SERVING = {**settings.SERVING, "MAX_PAYLOAD_BYTES": 3 * MIB}
    limits = RouteLimits.from_settings()
    assert body_limit(limits, "/model-endpoint/m/Production/invocations").size == 3 * MIB
    assert body_limit(limits, "/model/m/1/invocations").size == 3 * MIB
    assert body_limit(limits, "/api/2.0/preview/mlflow/endpoints-v2/enable").size == 1000
    assert "API_MAX_BODY_BYTES" in body_limit(limits, "/api/x").message
    assert body_limit(limits, "/login/").size == 2000
    assert body_limit(limits, "/admin/login/").size == 2000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = None
    assert body_limit(RouteLimits.from_settings(), "/login/").size == 3 * MIB


def test_absolute_form_targets_are_routed_by_their_path():
    assert origin_path("http://127.0.0.1:6379/model/a/1/invocations") == "/model/a/1/invocations"
    assert origin_path("/model/a/1/invocations") == "/model/a/1/invocations"


def test_the_endpoint_limit_is_per_endpoint():
    limit = EndpointLimit(2)
    assert limit.acquire(1) and limit.acquire(1)
    assert not limit.acquire(1)
    assert limit.acquire(2)
    limit.release(1)
    assert limit.acquire(1)


# --- answers ---------------------------------------------------------------------------------


def test_replica_answers_pass_unchanged():
    answer = translate_answer(200, JSON, b'{"predictions": [0]}')
    assert (answer.status, answer.body) == (200, b'{"predictions": [0]}')
    error = b'{"error_code": "BAD_REQUEST", "message": "no"}'
    assert translate_answer(400, JSON, error).body == error


def test_plain_text_errors_get_the_rest_error_shape():
    answer = translate_answer(415, "text/plain; charset=utf-8", b"This predictor only supports")
    assert answer.status == 415
    assert json.loads(answer.body) == {
        "error_code": "BAD_REQUEST",
        "message": "This predictor only supports",
    }


def test_replica_timeout_answer_becomes_a_json_504():
    answer = translate_answer(504, JSON, b"Request processing time exceeded limit")
    assert answer.status == 504
    assert json.loads(answer.body)["error_code"] == "DEADLINE_EXCEEDED"


def test_error_answers_carry_fitting_headers():
    assert ("Retry-After", "1") in error_answer(RateLimited("busy")).headers
    assert error_answer(RateLimited("busy")).status == 429
    assert any(h == "WWW-Authenticate" for h, _ in error_answer(Unauthenticated("x")).headers)
    assert json.loads(error_answer(RateLimited("busy")).body) == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "busy",
    }


def test_status_lines():
    assert status_line(200) == "200 OK"
    assert status_line(429) == "429 Too Many Requests"
    assert status_line(599) == "599 Unknown"


# --- admission and replica choice -------------------------------------------------------------


def test_admission_stops_at_the_limit_and_frees_on_finish():
    tracker = LoadTracker()
    assert all(tracker.admit(1, limit=3) for _ in range(3))
    assert not tracker.admit(1, limit=3)
    assert tracker.admit(2, limit=3)  # another version has its own limit
    tracker.finish(1, 200, 5.0)
    assert tracker.admit(1, limit=3)


def test_least_loaded_replica_is_chosen():
    tracker = LoadTracker()
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    first = tracker.pick((a, b), set())
    second = tracker.pick((a, b), set())
    assert {first, second} == {a, b}
    tracker.release(a)
    assert tracker.pick((a, b), set()) == a  # b still has one in flight


def test_idle_replicas_take_turns():
    tracker = LoadTracker()
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    picks = []
    for _ in range(4):
        address = tracker.pick((a, b), set())
        tracker.release(address)
        picks.append(address)
    assert picks.count(a) == picks.count(b) == 2


def test_a_replica_that_failed_is_avoided_when_there_is_another():
    tracker = LoadTracker()
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    assert all(tracker.pick((a, b), {a}) == b for _ in range(3))
    assert tracker.pick((a,), {a}) == a  # the only one: tried again on a fresh connection


def test_reports_count_requests_but_not_refusals():
    tracker = LoadTracker()
    for status in (200, 200, 400, 401, 403, 429):
        tracker.admit(7, limit=10)
        tracker.finish(7, status, 10.0)
    tracker.admit(7, limit=10)  # still in flight
    tracker.admit(7, limit=10)
    tracker.finish(7, 200, 0.0)
    (report,) = tracker.take_reports()
    assert (report.requests, report.errors, report.in_flight, report.peak) == (4, 1, 1, 2)
    assert report.latency_ms_sum == 30.0
    assert report.latency_ms_max == 10.0
    # The next interval starts from what is still in flight.
    tracker.finish(7, 200, 1.0)
    (report,) = tracker.take_reports()
    assert (report.requests, report.in_flight, report.peak) == (1, 0, 1)
    # An idle version is reported once more with zeros, then forgotten.
    (report,) = tracker.take_reports()
    assert (report.requests, report.in_flight, report.peak) == (0, 0, 0)
    assert tracker.take_reports() == []


# --- the upstream client against a fake replica ------------------------------------------------


class FakeReplica:
    """A loopback HTTP server answering each request with the next canned answer."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while self.answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                answer = self.answers.pop(0)
                if answer == b"HANG":
                    self.release.wait(10)
                    return
                if answer == b"CLOSE":
                    return
                if answer.startswith(b"LAST:"):  # an answer that ends with the connection
                    conn.sendall(answer[5:])
                    return
                conn.sendall(answer)

    def close(self) -> None:
        self.release.set()
        self.server.close()


def _http(status: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_upstream_sends_only_content_type_and_reuses_the_connection():
    fake = FakeReplica([_http("200 OK", b'{"predictions": [1]}')] * 2)
    upstream = Upstream(5, MIB)
    try:
        for _ in range(2):
            assert upstream.post(fake.address, b"{}", JSON) == (200, JSON, b'{"predictions": [1]}')
    finally:
        close_pool(upstream)
        fake.close()
    assert len(fake.requests) == 2  # both on the one connection the fake accepts
    head = fake.requests[0].split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("post /invocations http/1.1")
    assert "authorization" not in head and "cookie" not in head
    assert "content-type: application/json" in head


def test_upstream_reads_chunked_answers():
    body = b'4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
    )
    fake = FakeReplica([answer + body])
    upstream = Upstream(5, MIB)
    try:
        assert upstream.post(fake.address, b"{}", JSON)[2] == b'{"a": 1}'
    finally:
        close_pool(upstream)
        fake.close()


def test_upstream_times_out_on_a_silent_replica():
    fake = FakeReplica([b"HANG"])
    try:
        with pytest.raises(ReplicaTimeout):
            Upstream(0.3, MIB).post(fake.address, b"{}", JSON)
    finally:
        fake.close()


def test_upstream_reports_a_replica_that_closed_after_reading_and_a_refused_one():
    fake = FakeReplica([b"CLOSE"])
    try:
        # It read the request: the model may have run, so it is not for another replica.
        with pytest.raises(ReplicaFailed):
            Upstream(5, MIB).post(fake.address, b"{}", JSON)
    finally:
        fake.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()
    with pytest.raises(ReplicaUnreachable):
        Upstream(5, MIB).post(free, b"{}", JSON)


# --- the event loop's stream client against a fake replica ---------------------------------------


def _stream_post(fake: FakeReplica, *, max_bytes: int = MIB, timeout: float = 5, times: int = 1):
    async def run():
        upstream = StreamUpstream(timeout, max_bytes)
        try:
            return [await upstream.post(fake.address, b"{}", JSON) for _ in range(times)]
        finally:
            close_pool(upstream)
            await asyncio.sleep(0)  # the loop closes the sockets

    try:
        return asyncio.run(run())
    finally:
        fake.close()


def test_streams_reuse_the_connection_and_send_no_credentials():
    fake = FakeReplica([_http("200 OK", b'{"predictions": [1]}')] * 2)
    assert _stream_post(fake, times=2) == [(200, JSON, b'{"predictions": [1]}')] * 2
    assert len(fake.requests) == 2  # both on the one connection the fake accepts
    head = fake.requests[0].split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("post /invocations http/1.1")
    assert "authorization" not in head and "cookie" not in head


def test_streams_read_chunked_and_close_delimited_answers():
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
        b'4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert _stream_post(FakeReplica([chunked]))[0][2] == b'{"a": 1}'
    to_close = b"LAST:HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[1, 2]"
    assert _stream_post(FakeReplica([to_close]))[0][2] == b"[1, 2]"


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_streams_refuse_an_answer_over_the_cap(framing):
    body = b"x" * 5000
    if framing == "length":
        answer = _http("200 OK", body)
    elif framing == "chunked":
        answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        answer += b"".join(b"3e8\r\n" + b"x" * 1000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    else:
        answer = b"LAST:HTTP/1.1 200 OK\r\n\r\n" + body
    with pytest.raises(ResponseTooLarge) as caught:
        _stream_post(FakeReplica([answer]), max_bytes=4000)
    assert caught.value.status == 502
    assert error_answer(caught.value).status == 502


def test_a_large_answer_is_read_in_linear_time():
    body = b"x" * (64 * MIB)
    fake = FakeReplica([_http("200 OK", body)])
    [(status, _, data)] = _stream_post(fake, max_bytes=64 * MIB, timeout=20)
    assert (status, len(data)) == (200, len(body))


def test_the_thread_client_refuses_an_answer_over_the_cap_too():
    fake = FakeReplica([_http("200 OK", b"x" * 5000)])
    try:
        with pytest.raises(ResponseTooLarge):
            Upstream(5, 4000).post(fake.address, b"{}", JSON)
    finally:
        fake.close()


def test_streams_time_out_on_a_silent_replica_and_report_a_refused_one():
    with pytest.raises(TimeoutError):
        _stream_post(FakeReplica([b"HANG"]), timeout=0.3)
    with pytest.raises(ReplicaFailed):
        _stream_post(FakeReplica([b"CLOSE"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()
    with pytest.raises(ReplicaUnreachable):
        asyncio.run(StreamUpstream(5, MIB).post(free, b"{}", JSON))


# --- page requests: the body is read on the loop before the page app runs ----------------------


def _run_whole_body(receive, limit: int = 100, budget: BodyBudget | None = None):
    seen = {}
    sent = []

    async def page_app(scope, receive, send):
        seen["message"] = await receive()

    async def send(message):
        sent.append(message)

    budget = budget or BodyBudget(1000)
    asyncio.run(whole_body(page_app, {"type": "http"}, receive, send, Limit(limit, "over"), budget))
    return seen, sent


def test_a_page_app_gets_the_whole_body_at_once():
    seen, _ = _run_whole_body(_receiver(b"a=1&", b"b=2"))
    assert seen["message"] == {"type": "http.request", "body": b"a=1&b=2", "more_body": False}


def test_a_page_body_over_the_limit_is_refused_before_the_app_runs():
    seen, sent = _run_whole_body(_receiver(b"x" * 60, b"x" * 60))
    assert seen == {}
    assert sent[0]["status"] == 413


def test_a_page_body_counts_against_the_budget_until_the_page_has_answered():
    budget = BodyBudget(1000)
    during = []

    async def page_app(scope, receive, send):
        during.append(budget.held)

    async def send(message):
        pass

    receive = _receiver(b"a=1&", b"b=2")
    asyncio.run(whole_body(page_app, {"type": "http"}, receive, send, LIMIT, budget))
    assert during == [7]
    assert budget.held == 0
