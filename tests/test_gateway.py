"""Unit tests of the gateway's pieces: URL parsing, request normalising, body limits,
answer translation, admission and replica choice, and the upstream client against a
local fake server."""

from __future__ import annotations

import io
import json
import socket
import threading

import pytest

from endpoints.errors import BadRequest, PayloadTooLarge, RateLimited, Unauthenticated
from endpoints.gateway.app import (
    error_answer,
    normalise_request,
    parse_path,
    read_body,
    status_line,
    translate_answer,
)
from endpoints.gateway.reporting import LoadTracker
from endpoints.gateway.upstream import JSON, ReplicaTimeout, ReplicaUnreachable, Upstream

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
        # Names are UTF-8; WSGI hands the path over as latin-1 decoded bytes.
        ("/model/modèle/1/invocations".encode().decode("latin-1"), ("modèle", "1")),
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
        "/model/\xff/1/invocations",
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


def _environ(body: bytes, *, length: bool = True) -> dict:
    environ = {"wsgi.input": io.BytesIO(body)}
    if length:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def test_body_is_read_up_to_the_limit():
    assert read_body(_environ(b"x" * 100), limit=100) == b"x" * 100
    assert read_body(_environ(b"x" * 100, length=False), limit=100) == b"x" * 100


def test_body_over_the_limit_is_refused_by_its_length():
    with pytest.raises(PayloadTooLarge):
        read_body(_environ(b"x" * 101), limit=100)


def test_chunked_body_over_the_limit_is_refused_while_reading():
    with pytest.raises(PayloadTooLarge):
        read_body(_environ(b"x" * 200_000, length=False), limit=100_000)


def test_an_oversized_body_is_drained_so_the_client_reads_the_413():
    stream = io.BytesIO(b"x" * 300)
    with pytest.raises(PayloadTooLarge) as caught:
        read_body({"wsgi.input": stream, "CONTENT_LENGTH": "300"}, limit=100)
    assert stream.read() == b""  # all of it read: the connection stays usable
    assert not caught.value.close_connection
    assert not any(h == "Connection" for h, _ in error_answer(caught.value).headers)


def test_a_huge_body_closes_the_connection_instead():
    with pytest.raises(PayloadTooLarge) as caught:
        read_body(_environ(b"x" * 1_000_000, length=False), limit=1000)
    assert caught.value.close_connection
    assert ("Connection", "close") in error_answer(caught.value).headers


def test_invalid_content_length_is_a_bad_request():
    with pytest.raises(BadRequest):
        read_body({"wsgi.input": io.BytesIO(b""), "CONTENT_LENGTH": "ten"}, limit=100)


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
    upstream = Upstream(read_timeout=5)
    try:
        for _ in range(2):
            assert upstream.post(fake.address, b"{}", JSON) == (200, JSON, b'{"predictions": [1]}')
    finally:
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
    try:
        assert Upstream(read_timeout=5).post(fake.address, b"{}", JSON)[2] == b'{"a": 1}'
    finally:
        fake.close()


def test_upstream_times_out_on_a_silent_replica():
    fake = FakeReplica([b"HANG"])
    try:
        with pytest.raises(ReplicaTimeout):
            Upstream(read_timeout=0.3).post(fake.address, b"{}", JSON)
    finally:
        fake.close()


def test_upstream_reports_a_closed_connection_and_a_refused_one():
    fake = FakeReplica([b"CLOSE"])
    try:
        with pytest.raises(ReplicaUnreachable):
            Upstream(read_timeout=5).post(fake.address, b"{}", JSON)
    finally:
        fake.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()
    with pytest.raises(ReplicaUnreachable):
        Upstream(read_timeout=5).post(free, b"{}", JSON)
